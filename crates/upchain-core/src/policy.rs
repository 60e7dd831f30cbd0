//! The installation's policy: a K8sUpgrade asks, the installation decides.
//!
//! Whatever amounts to root on the nodes (the runner image, the node script, the SSH key,
//! the host keys, the package repositories, where runner Jobs run) or to upchain's own
//! power (force-deleting Pods, hooks) is set by whoever installs upchain: the chart's
//! `policy` values, rendered into a ConfigMap that the operator reads at start. Only
//! those who may change the release can change it; a K8sUpgrade chooses within it, and
//! anything outside is refused by the `policy` gate, naming the field and the policy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};
use upchain_api::{CONTROL_PLANE_LABEL, DrainTimeoutAction, HostKeyPolicy, K8sUpgradeSpec, KeyRef};

/// The gate's name, as Blocked conditions and `upchain check` show it.
pub const GATE: &str = "policy";

/// What the installation decides, as the chart renders it (`policy.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallPolicy {
    /// The node Jobs.
    pub runner: RunnerPolicy,
    /// The drain's forceful options.
    #[serde(default)]
    pub drain: DrainPolicy,
    /// The pre- and post-run hooks and the external etcd check.
    #[serde(default)]
    pub hooks: HookPolicy,
    /// Where etcd snapshots go.
    #[serde(default)]
    pub snapshot: SnapshotPolicy,
}

/// Where the etcd snapshot is copied off the node: whoever installs upchain decides it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotPolicy {
    /// A PersistentVolumeClaim in the runner namespace, mounted only in the snapshot Job;
    /// empty: no destination, and a K8sUpgrade with spec.snapshot is Blocked.
    #[serde(default)]
    pub persistent_volume_claim: String,
}

/// How the node Jobs run; each is root on every node through the SSH key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerPolicy {
    /// The one namespace node and hook Jobs are created in (where the chart's Role is).
    pub namespace: String,
    /// Let that namespace be kube-system.
    #[serde(default)]
    pub allow_system_namespace: bool,
    /// The runner image; it receives the SSH key.
    pub image: String,
    /// Refuse to start when `image` is not given by digest.
    #[serde(default = "yes")]
    pub require_image_digest: bool,
    /// The node script's ConfigMap and key.
    pub script_config_map: KeyRef,
    /// The SSH key's Secret and key.
    pub ssh_secret: KeyRef,
    /// The nodes' host keys' ConfigMap and key.
    pub known_hosts: KeyRef,
    /// Let a K8sUpgrade set `hostKeyPolicy: AcceptNew`.
    #[serde(default)]
    pub allow_accept_new_host_keys: bool,
    /// The values `spec.runner.repository.url` may take (the node script's own default is
    /// used when it is unset).
    #[serde(default)]
    pub repository_urls: Vec<String>,
    /// The values `spec.runner.repository.keyUrl` may take.
    #[serde(default)]
    pub repository_key_urls: Vec<String>,
    /// Labels every node Job's node must have; a K8sUpgrade may add others.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The tolerations node Jobs may have: a K8sUpgrade's are a choice among them, and
    /// node Jobs get all of them when it sets none.
    #[serde(default = "control_plane_toleration")]
    pub tolerations: Vec<Toleration>,
}

/// The drain's options that delete Pods instead of evicting them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainPolicy {
    /// Let a K8sUpgrade set `drain.onTimeout: Force` and
    /// `drain.deletePdbBlockedSingleReplicaPods` (the chart then grants `pods delete`).
    #[serde(default)]
    pub allow_force: bool,
}

/// What hooks may do: they always run powerless (crate::hooks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookPolicy {
    /// Let K8sUpgrades run hook and check Jobs at all.
    #[serde(default = "yes")]
    pub allowed: bool,
}

impl Default for HookPolicy {
    fn default() -> Self {
        Self { allowed: true }
    }
}

fn yes() -> bool {
    true
}

fn control_plane_toleration() -> Vec<Toleration> {
    vec![Toleration {
        key: Some(CONTROL_PLANE_LABEL.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some("NoSchedule".to_owned()),
        ..Toleration::default()
    }]
}

impl Default for InstallPolicy {
    /// The chart's defaults with its runner image by tag: what the simulator and the
    /// commands that run without an installation (`demo`, `plan`, `check`) judge by.
    fn default() -> Self {
        let key = |name: &str, key: &str| KeyRef {
            name: name.to_owned(),
            key: key.to_owned(),
        };
        Self {
            runner: RunnerPolicy {
                namespace: "upchain-system".to_owned(),
                allow_system_namespace: false,
                image: "ghcr.io/upchain-dev/upchain-runner:0.1.0".to_owned(),
                require_image_digest: false,
                script_config_map: key("upchain-node-upgrade", "upgrade-node.sh"),
                ssh_secret: key("upchain-ssh", "ssh-privatekey"),
                known_hosts: key("upchain-known-hosts", "known_hosts"),
                allow_accept_new_host_keys: false,
                repository_urls: Vec::new(),
                repository_key_urls: Vec::new(),
                node_selector: BTreeMap::new(),
                tolerations: control_plane_toleration(),
            },
            drain: DrainPolicy::default(),
            hooks: HookPolicy::default(),
            snapshot: SnapshotPolicy {
                persistent_volume_claim: "upchain-etcd-snapshots".to_owned(),
            },
        }
    }
}

/// A spec settled within the policy: the spec the run acts on, and what the policy refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    /// The spec with the installation's values where it left them unset, and where it
    /// asked for more than the policy allows (the run is Blocked then).
    pub spec: K8sUpgradeSpec,
    /// Each field set beyond the policy: the field, the policy and the fix.
    pub refusals: Vec<String>,
}

impl InstallPolicy {
    /// Reads the policy the chart renders, and checks that it is one to start with.
    pub fn parse(json: &str) -> Result<Self, String> {
        let policy: Self = serde_json::from_str(json).map_err(|e| {
            format!("the installation policy is not valid ({e}); render it with the chart's policy values")
        })?;
        policy.problems().map(|()| policy)
    }

    /// Why the policy itself is unsafe or incomplete.
    fn problems(&self) -> Result<(), String> {
        let runner = &self.runner;
        let mut problems = Vec::new();
        if runner.require_image_digest && !is_by_digest(&runner.image) {
            problems.push(format!(
                "policy.runner.image {} is not given by digest: set runner.image.digest in \
                 the chart values (image@sha256:<64 hex digits>), or allow a tag with \
                 runner.image.allowTag: true",
                runner.image
            ));
        }
        if runner.namespace == "kube-system" && !runner.allow_system_namespace {
            problems.push(
                "policy.runner.namespace is kube-system: the node Jobs hold an SSH key that \
                 is root on every node, and belong in a namespace of their own; set \
                 runnerNamespace, or policy.runner.allowSystemNamespace: true"
                    .to_owned(),
            );
        }
        for (field, value) in [
            ("namespace", &runner.namespace),
            ("image", &runner.image),
            ("scriptConfigMap.name", &runner.script_config_map.name),
            ("sshSecret.name", &runner.ssh_secret.name),
            ("knownHosts.name", &runner.known_hosts.name),
        ] {
            if value.is_empty() {
                problems.push(format!("policy.runner.{field} is empty: set it"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The spec as the run acts on it: the installation's values where the spec leaves
    /// them unset, and every field it sets beyond the policy refused (and not used).
    pub fn settle(&self, spec: &K8sUpgradeSpec) -> Settled {
        let mut settled = spec.clone();
        let mut refusals = Vec::new();
        let installed = &self.runner;
        let runner = &mut settled.runner;
        let mut pinned = |field: &str, asked: &mut String, policy: &str, value: &str| {
            if !asked.is_empty() && asked != value {
                refusals.push(format!(
                    "{field} is {asked}, but the installation's {policy} is {value}: remove \
                     {field} (it then takes the installation's), or ask whoever installed \
                     upchain to change {policy}"
                ));
            }
            value.clone_into(asked);
        };
        pinned(
            "spec.runner.namespace",
            &mut runner.namespace,
            "policy.runner.namespace",
            &installed.namespace,
        );
        pinned(
            "spec.runner.image",
            &mut runner.image,
            "policy.runner.image",
            &installed.image,
        );
        for (field, asked, policy, value) in [
            (
                "spec.runner.scriptConfigMap",
                &mut runner.script_config_map,
                "policy.runner.scriptConfigMap",
                &installed.script_config_map,
            ),
            (
                "spec.runner.sshSecret",
                &mut runner.ssh_secret,
                "policy.runner.sshSecret",
                &installed.ssh_secret,
            ),
            (
                "spec.runner.knownHosts",
                &mut runner.known_hosts,
                "policy.runner.knownHosts",
                &installed.known_hosts,
            ),
        ] {
            if !asked.is_unset() && asked != value {
                refusals.push(format!(
                    "{field} is {}/{}, but the installation's {policy} is {}/{}: remove \
                     {field} (it then takes the installation's), or ask whoever installed \
                     upchain to change {policy}",
                    asked.name, asked.key, value.name, value.key
                ));
            }
            value.clone_into(asked);
        }
        if runner.host_key_policy == HostKeyPolicy::AcceptNew
            && !installed.allow_accept_new_host_keys
        {
            refusals.push(
                "spec.runner.hostKeyPolicy is AcceptNew (trust whatever key answers on a \
                 node's address), which policy.runner.allowAcceptNewHostKeys does not allow: \
                 remove it and give the nodes' host keys in the known-hosts ConfigMap"
                    .to_owned(),
            );
            runner.host_key_policy = HostKeyPolicy::Strict;
        }
        let repository = &mut runner.repository;
        for (field, asked, policy, allowed) in [
            (
                "spec.runner.repository.url",
                &mut repository.url,
                "policy.runner.repositoryUrls",
                &installed.repository_urls,
            ),
            (
                "spec.runner.repository.keyUrl",
                &mut repository.key_url,
                "policy.runner.repositoryKeyUrls",
                &installed.repository_key_urls,
            ),
        ] {
            if let Some(url) = asked.as_ref().filter(|u| !allowed.contains(u)) {
                refusals.push(format!(
                    "{field} is {url}, which is not in the installation's {policy} ({}): \
                     packages from it are installed as root on every node; remove {field} \
                     (the node script's repository applies), or ask whoever installed \
                     upchain to add it",
                    listed(allowed)
                ));
                *asked = None;
            }
        }
        let mut selector = installed.node_selector.clone();
        for (key, value) in runner.node_selector.iter().flatten() {
            match installed.node_selector.get(key) {
                Some(pinned) if pinned != value => refusals.push(format!(
                    "spec.runner.nodeSelector sets {key}={value}, but the installation's \
                     policy.runner.nodeSelector pins {key}={pinned}: remove it (node Jobs \
                     may run only where the installation says)"
                )),
                _ => {
                    selector.insert(key.clone(), value.clone());
                }
            }
        }
        runner.node_selector = (!selector.is_empty()).then_some(selector);
        let tolerations = match runner.tolerations.take() {
            None => installed.tolerations.clone(),
            Some(asked) => asked
                .into_iter()
                .filter(|toleration| {
                    let allowed = installed.tolerations.contains(toleration);
                    if !allowed {
                        refusals.push(format!(
                            "spec.runner.tolerations has {}, which is not among the \
                             installation's policy.runner.tolerations ({}): remove it",
                            describe_toleration(toleration),
                            installed
                                .tolerations
                                .iter()
                                .map(describe_toleration)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    allowed
                })
                .collect(),
        };
        runner.tolerations = Some(tolerations);
        if let Some(snapshot) = settled.snapshot.as_mut() {
            let installed = &self.snapshot.persistent_volume_claim;
            match snapshot.persistent_volume_claim.as_ref() {
                Some(asked) if asked != installed => refusals.push(format!(
                    "spec.snapshot.persistentVolumeClaim is {asked}, but the installation's \
                     policy.snapshot.persistentVolumeClaim is {}: remove it (it then takes \
                     the installation's)",
                    if installed.is_empty() {
                        "unset"
                    } else {
                        installed
                    }
                )),
                _ => {}
            }
            snapshot.persistent_volume_claim = Some(installed.clone()).filter(|c| !c.is_empty());
        }
        let drain = &mut settled.drain;
        if !self.drain.allow_force {
            if drain.on_timeout == DrainTimeoutAction::Force {
                refusals.push(
                    "spec.drain.onTimeout is Force (delete the Pods that would not leave, \
                     past their PodDisruptionBudgets), which policy.drain.allowForce does \
                     not allow: set onTimeout to Fail, or ask whoever installed upchain to \
                     set policy.drain.allowForce (the chart then grants pods delete)"
                        .to_owned(),
                );
                drain.on_timeout = DrainTimeoutAction::Fail;
            }
            if drain.delete_pdb_blocked_single_replica_pods {
                refusals.push(
                    "spec.drain.deletePdbBlockedSingleReplicaPods is true, which \
                     policy.drain.allowForce does not allow: remove it, or ask whoever \
                     installed upchain to set policy.drain.allowForce (the chart then \
                     grants pods delete)"
                        .to_owned(),
                );
                drain.delete_pdb_blocked_single_replica_pods = false;
            }
        }
        let has_hooks = settled.hooks.is_some() || settled.gates.external_etcd_check.is_some();
        if has_hooks && !self.hooks.allowed {
            refusals.push(
                "spec.hooks and spec.gates.externalEtcdCheck run Jobs, which \
                 policy.hooks.allowed does not allow on this installation: remove them"
                    .to_owned(),
            );
            settled.hooks = None;
            settled.gates.external_etcd_check = None;
        }
        Settled {
            spec: settled,
            refusals,
        }
    }
}

/// An image reference that names its content: `name@sha256:<64 hex digits>`.
pub fn is_by_digest(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(name, hex)| {
        !name.is_empty() && hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn listed(values: &[String]) -> String {
    if values.is_empty() {
        "none besides the node script's own".to_owned()
    } else {
        values.join(", ")
    }
}

fn describe_toleration(toleration: &Toleration) -> String {
    let key = toleration.key.as_deref().unwrap_or("*");
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    let value = toleration.value.as_deref().unwrap_or("");
    let effect = toleration.effect.as_deref().unwrap_or("any effect");
    format!("{{{key} {operator} {value} {effect}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use upchain_api::{HookSpec, HooksSpec};

    fn spec(runner: serde_json::Value) -> K8sUpgradeSpec {
        serde_json::from_value(serde_json::json!({"targetVersion": "1.35.2", "runner": runner}))
            .expect("spec")
    }

    #[test]
    fn unset_fields_take_the_installations_values_and_refuse_nothing() {
        let policy = InstallPolicy::default();
        let settled = policy.settle(&spec(serde_json::json!({})));
        assert_eq!(settled.refusals, Vec::<String>::new());
        let runner = &settled.spec.runner;
        assert_eq!(runner.namespace, "upchain-system");
        assert_eq!(runner.image, policy.runner.image);
        assert_eq!(runner.ssh_secret, policy.runner.ssh_secret);
        assert_eq!(runner.script_config_map, policy.runner.script_config_map);
        assert_eq!(runner.known_hosts, policy.runner.known_hosts);
        assert_eq!(
            runner.tolerations.as_ref(),
            Some(&policy.runner.tolerations)
        );
        assert_eq!(runner.node_selector, None);
    }

    #[test]
    fn fields_set_to_the_installed_values_keep_working() {
        let policy = InstallPolicy::default();
        let settled = policy.settle(&spec(serde_json::json!({
            "namespace": "upchain-system",
            "image": policy.runner.image,
            "sshSecret": {"name": "upchain-ssh", "key": "ssh-privatekey"},
            "scriptConfigMap": {"name": "upchain-node-upgrade", "key": "upgrade-node.sh"},
            "knownHosts": {"name": "upchain-known-hosts", "key": "known_hosts"},
            "hostKeyPolicy": "Strict",
            "tolerations": [{"key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        })));
        assert_eq!(settled.refusals, Vec::<String>::new());
    }

    #[test]
    fn every_field_beyond_the_policy_is_refused_by_name_and_not_used() {
        let policy = InstallPolicy::default();
        let cases = [
            (
                serde_json::json!({"namespace": "mine"}),
                "spec.runner.namespace is mine, but the installation's policy.runner.namespace",
            ),
            (
                serde_json::json!({"image": "evil/runner:latest"}),
                "spec.runner.image is evil/runner:latest",
            ),
            (
                serde_json::json!({"sshSecret": {"name": "other", "key": "k"}}),
                "spec.runner.sshSecret is other/k",
            ),
            (
                serde_json::json!({"scriptConfigMap": {"name": "mine", "key": "s.sh"}}),
                "spec.runner.scriptConfigMap is mine/s.sh",
            ),
            (
                serde_json::json!({"knownHosts": {"name": "mine", "key": "k"}}),
                "spec.runner.knownHosts is mine/k",
            ),
            (
                serde_json::json!({"hostKeyPolicy": "AcceptNew"}),
                "policy.runner.allowAcceptNewHostKeys",
            ),
            (
                serde_json::json!({"repository": {"url": "https://evil.example/k8s"}}),
                "policy.runner.repositoryUrls",
            ),
            (
                serde_json::json!({"repository": {"keyUrl": "https://evil.example/key"}}),
                "policy.runner.repositoryKeyUrls",
            ),
            (
                serde_json::json!({"tolerations": [{"operator": "Exists"}]}),
                "spec.runner.tolerations has {* Exists  any effect}",
            ),
        ];
        for (runner, expected) in cases {
            let settled = policy.settle(&spec(runner.clone()));
            assert_eq!(
                settled.refusals.len(),
                1,
                "{runner}: {:?}",
                settled.refusals
            );
            assert!(
                settled.refusals[0].contains(expected),
                "{runner}: {}",
                settled.refusals[0]
            );
            let acted_on = &settled.spec.runner;
            assert_eq!(acted_on.namespace, policy.runner.namespace);
            assert_eq!(acted_on.image, policy.runner.image);
            assert_eq!(acted_on.ssh_secret, policy.runner.ssh_secret);
            assert_eq!(acted_on.host_key_policy, HostKeyPolicy::Strict);
            assert_eq!(acted_on.repository.url, None);
            assert_eq!(acted_on.repository.key_url, None);
        }
    }

    #[test]
    fn the_installations_selector_stays_and_a_spec_may_only_add_to_it() {
        let mut policy = InstallPolicy::default();
        policy.runner.node_selector = BTreeMap::from([("pool".to_owned(), "ops".to_owned())]);
        let added = policy.settle(&spec(serde_json::json!({"nodeSelector": {"zone": "a"}})));
        assert_eq!(added.refusals, Vec::<String>::new());
        assert_eq!(
            added.spec.runner.node_selector,
            Some(BTreeMap::from([
                ("pool".to_owned(), "ops".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ]))
        );
        let moved = policy.settle(&spec(serde_json::json!({"nodeSelector": {"pool": "any"}})));
        assert!(
            moved.refusals[0].contains("pins pool=ops"),
            "{:?}",
            moved.refusals
        );
        assert_eq!(
            moved.spec.runner.node_selector,
            Some(BTreeMap::from([("pool".to_owned(), "ops".to_owned())]))
        );
    }

    #[test]
    fn force_and_hooks_only_where_the_installation_allows_them() {
        let mut asked = spec(serde_json::json!({}));
        asked.drain.on_timeout = DrainTimeoutAction::Force;
        asked.drain.delete_pdb_blocked_single_replica_pods = true;
        asked.hooks = Some(HooksSpec {
            pre: Some(
                serde_json::from_value::<HookSpec>(
                    serde_json::json!({"namespace": "upchain-system", "template": {}}),
                )
                .expect("hook"),
            ),
            post: None,
        });
        let mut policy = InstallPolicy::default();
        policy.hooks.allowed = false;
        let settled = policy.settle(&asked);
        assert_eq!(settled.refusals.len(), 3, "{:?}", settled.refusals);
        assert_eq!(settled.spec.drain.on_timeout, DrainTimeoutAction::Fail);
        assert!(!settled.spec.drain.delete_pdb_blocked_single_replica_pods);
        assert_eq!(settled.spec.hooks, None);
        policy.drain.allow_force = true;
        policy.hooks.allowed = true;
        assert_eq!(policy.settle(&asked).refusals, Vec::<String>::new());
    }

    #[test]
    fn a_policy_to_start_with_pins_its_image_and_keeps_out_of_kube_system() {
        let digest = format!(
            "ghcr.io/upchain-dev/upchain-runner@sha256:{}",
            "a".repeat(64)
        );
        let mut policy = InstallPolicy::default();
        policy.runner.require_image_digest = true;
        policy.runner.image = digest;
        let json = serde_json::to_string(&policy).expect("json");
        assert_eq!(InstallPolicy::parse(&json), Ok(policy.clone()));
        policy.runner.image = "ghcr.io/upchain-dev/upchain-runner:0.1.0".to_owned();
        let error =
            InstallPolicy::parse(&serde_json::to_string(&policy).expect("json")).expect_err("tag");
        assert!(error.contains("runner.image.digest"), "{error}");
        policy.runner.require_image_digest = false;
        policy.runner.namespace = "kube-system".to_owned();
        let error = InstallPolicy::parse(&serde_json::to_string(&policy).expect("json"))
            .expect_err("kube-system");
        assert!(error.contains("allowSystemNamespace"), "{error}");
        let error = InstallPolicy::parse(r#"{"runner": {"namespace": "x"}, "extra": 1}"#)
            .expect_err("unknown");
        assert!(error.contains("not valid"), "{error}");
    }

    proptest::proptest! {
        /// Whatever a spec asks, what the run acts on is within the policy.
        #[test]
        fn what_runs_is_always_within_the_policy(
            image in "[a-z/:@0-9]{0,20}",
            namespace in "[a-z-]{0,12}",
            url in proptest::option::of("https://[a-z.]{1,12}"),
            accept_new in proptest::bool::ANY,
        ) {
            let policy = InstallPolicy::default();
            let mut asked = spec(serde_json::json!({"image": image, "namespace": namespace}));
            asked.runner.repository.url = url;
            if accept_new {
                asked.runner.host_key_policy = HostKeyPolicy::AcceptNew;
            }
            let runner = policy.settle(&asked).spec.runner;
            proptest::prop_assert_eq!(&runner.image, &policy.runner.image);
            proptest::prop_assert_eq!(&runner.namespace, &policy.runner.namespace);
            proptest::prop_assert_eq!(runner.repository.url, None);
            proptest::prop_assert_eq!(runner.host_key_policy, HostKeyPolicy::Strict);
        }
    }
}
