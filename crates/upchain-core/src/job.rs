//! The batch/v1 Job that upgrades one node.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};
use upchain_api::{
    ATTEMPT_LABEL, CONTROL_PLANE_LABEL, HostKeyPolicy, NODE_ANNOTATION, NODE_LABEL, NodeRole,
    RunnerSpec, TARGET_LABEL, UPGRADE_ANNOTATION, UPGRADE_LABEL, UPGRADE_UID_ANNOTATION,
    UpgradeKind,
};

use crate::plan::hex_prefix;
use crate::version::KubeVersion;

/// Longest name a label value or a Job (whose name becomes a Pod label) may have.
const MAX_NAME: usize = 63;
/// Where the node script is mounted in the Job's container.
const SCRIPT_PATH: &str = "/etc/upchain/script/upgrade-node.sh";
/// Where the SSH key is mounted in the Job's container.
const SSH_KEY_PATH: &str = "/etc/upchain/ssh/id";
/// Where the nodes' known host keys are mounted in the Job's container.
const KNOWN_HOSTS_PATH: &str = "/etc/upchain/known-hosts/known_hosts";
/// The node Job's container, named when its log and exit code are read: a Pod may also
/// hold an injected sidecar.
pub const RUNNER_CONTAINER: &str = "upgrade";
/// Unprivileged user of the runner image.
const RUNNER_UID: i64 = 65532;

/// The command the Job's container runs: it checks every value, copies the node script and
/// the run's parameters to the node and runs the script there, detached from the session.
pub const RUNNER_COMMAND: &str = include_str!("runner.sh");

/// What a node Job does on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobMode {
    /// Upgrades the node (after its drain).
    Upgrade,
    /// Checks, changing nothing, that the node can be upgraded (before any cordon).
    Prepare,
    /// Reads etcd's members, health, leader, alarms and progress through the node's member.
    EtcdCheck,
    /// Saves, reads back and test-restores an etcd snapshot on the node, and copies it to
    /// the installation's destination.
    EtcdSnapshot,
}

impl JobMode {
    /// The value the Job's command reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::Prepare => "prepare",
            Self::EtcdCheck => "etcd-check",
            Self::EtcdSnapshot => "etcd-snapshot",
        }
    }
}

/// The K8sUpgrade that owns a Job.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its uid.
    pub uid: &'a str,
}

/// Everything that decides one node Job.
#[derive(Clone, Debug)]
pub struct NodeJob<'a> {
    /// The K8sUpgrade the Job belongs to.
    pub owner: Owner<'a>,
    /// How Jobs run.
    pub runner: &'a RunnerSpec,
    /// The node to upgrade.
    pub node: &'a str,
    /// Its InternalIP.
    pub node_ip: &'a str,
    /// Its role.
    pub role: NodeRole,
    /// True for the node that runs `kubeadm upgrade apply`.
    pub first_control_plane: bool,
    /// Patch or Minor for this node.
    pub kind: UpgradeKind,
    /// The version to install.
    pub target: KubeVersion,
    /// 1 for the first Job of this node in this run.
    pub attempt: i32,
    /// Every node being drained or upgraded at the same time: the Job runs on none of them.
    pub batch: &'a [String],
    /// Upgrade the node, or only check it.
    pub mode: JobMode,
    /// An upgrade Job sent after the last one lost its SSH session: it attaches to the run
    /// on the node or reports how it ended, and never starts the run over.
    pub reattach: bool,
    /// Whether a control-plane node outside the batch exists: by default the Job runs on
    /// one, and only runs on a worker when the cluster's one control-plane node is in it.
    pub control_plane_available: bool,
    /// The run's start (seconds): etcd Jobs, several per run, carry it in their names.
    pub run_started: i64,
    /// Where an etcd snapshot Job copies the snapshot: the installation's
    /// PersistentVolumeClaim in the runner namespace.
    pub snapshot_claim: Option<&'a str>,
}

/// Where the snapshot destination is mounted in the snapshot Job's container.
const SNAPSHOT_DESTINATION: &str = "/var/lib/upchain/snapshots";

/// A name of at most 63 characters made of lowercase letters, digits and '-': `parts`
/// joined with '-', shortened with a hash of the whole when too long, so that distinct
/// inputs keep distinct names.
pub fn bounded_name(parts: &[&str]) -> String {
    let full: String = parts
        .join("-")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let trimmed = full.trim_matches('-');
    if trimmed.len() <= MAX_NAME {
        return trimmed.to_owned();
    }
    let hash = hex_prefix(&Sha256::digest(full.as_bytes()), 8);
    let head = trimmed[..MAX_NAME - hash.len() - 1].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// The deterministic name of a node's upgrade Job for one attempt. It ends in a tag of
/// the K8sUpgrade's uid: a K8sUpgrade deleted and applied again under the same name never
/// meets the finished Jobs of the old one (kept for their TTL), whose Pod templates are
/// immutable and may differ.
pub fn job_name(owner: Owner<'_>, node: &str, target: KubeVersion, attempt: i32) -> String {
    bounded_name(&[
        owner.name,
        node,
        &target.to_string(),
        &attempt.to_string(),
        &uid_tag(owner),
    ])
}

/// The name of a node's prepare Job for one attempt.
pub fn prepare_job_name(owner: Owner<'_>, node: &str, target: KubeVersion, attempt: i32) -> String {
    bounded_name(&[
        owner.name,
        "prepare",
        node,
        &target.to_string(),
        &attempt.to_string(),
        &uid_tag(owner),
    ])
}

/// What names one upgrade of one node on the node itself: a Job of the same run attaches
/// to the upgrade already going; a Job of another run is refused while it goes.
pub fn run_id(owner: Owner<'_>, target: KubeVersion) -> String {
    bounded_name(&[owner.name, &uid_tag(owner), &target.to_string()])
}

fn uid_tag(owner: Owner<'_>) -> String {
    hex_prefix(&Sha256::digest(owner.uid.as_bytes()), 6)
}

/// The name node Jobs had before they carried the uid tag: a Job an earlier upchain
/// started under it keeps it until it ends, so an operator upgraded mid-run never starts
/// a second Job for the same node.
pub fn untagged_job_name(upgrade: &str, node: &str, target: KubeVersion, attempt: i32) -> String {
    bounded_name(&[upgrade, node, &target.to_string(), &attempt.to_string()])
}

impl NodeJob<'_> {
    /// The Job's name.
    pub fn name(&self) -> String {
        match self.mode {
            JobMode::Upgrade => job_name(self.owner, self.node, self.target, self.attempt),
            JobMode::Prepare => prepare_job_name(self.owner, self.node, self.target, self.attempt),
            JobMode::EtcdCheck | JobMode::EtcdSnapshot => bounded_name(&[
                self.owner.name,
                self.mode.as_str(),
                self.node,
                &self.run_started.to_string(),
                &self.attempt.to_string(),
                &uid_tag(self.owner),
            ]),
        }
    }

    /// The container's environment: the run's parameters and where the mounts are.
    fn env(&self) -> Vec<EnvVar> {
        let runner = self.runner;
        let mut env = vec![
            ("MODE", self.mode.as_str().to_owned()),
            ("RUN_ID", run_id(self.owner, self.target)),
            (
                "TARGET_VERSION",
                self.target.to_string().trim_start_matches('v').to_owned(),
            ),
            ("UPGRADE_KIND", self.kind.as_str().to_owned()),
            ("NODE_NAME", self.node.to_owned()),
            ("NODE_IP", self.node_ip.to_owned()),
            ("NODE_ROLE", self.role.as_str().to_owned()),
            ("FIRST_CONTROL_PLANE", self.first_control_plane.to_string()),
            ("REATTACH", self.reattach.to_string()),
            ("SSH_USER", runner.ssh_user.clone()),
            ("SSH_PORT", runner.ssh_port.to_string()),
            (
                "HOST_KEY_POLICY",
                runner.host_key_policy.as_str().to_owned(),
            ),
            (
                "LOCK_TIMEOUT",
                runner.package_lock_timeout_seconds.to_string(),
            ),
            ("MIN_FREE_MIB", runner.min_free_disk_mib.to_string()),
            ("KUBELET_SETTLE", runner.kubelet_settle_seconds.to_string()),
            ("UPCHAIN_SCRIPT", SCRIPT_PATH.to_owned()),
            ("UPCHAIN_SSH_KEY", SSH_KEY_PATH.to_owned()),
            ("UPCHAIN_KNOWN_HOSTS", KNOWN_HOSTS_PATH.to_owned()),
            ("UPCHAIN_REPORT", "/dev/termination-log".to_owned()),
        ];
        if let Some(claim) = self
            .snapshot_claim
            .filter(|_| self.mode == JobMode::EtcdSnapshot)
        {
            env.push(("SNAPSHOT_DESTINATION", SNAPSHOT_DESTINATION.to_owned()));
            env.push((
                "SNAPSHOT_LOCATION",
                format!("pvc/{}/{claim}", self.runner.namespace),
            ));
        }
        // Unset, the node script's defaults apply (the chart's nodeScript.repository).
        let repository = &runner.repository;
        if let Some(mode) = repository.mode {
            env.push(("REPOSITORY", mode.as_str().to_owned()));
        }
        if let Some(url) = &repository.url {
            env.push(("REPOSITORY_URL", url.clone()));
        }
        if let Some(key_url) = &repository.key_url {
            env.push(("REPOSITORY_KEY_URL", key_url.clone()));
        }
        env.into_iter()
            .map(|(name, value)| EnvVar {
                name: name.to_owned(),
                value: Some(value),
                value_from: None,
            })
            .collect()
    }

    /// Where the Job may run: never on a node of the batch; on the nodes the runner's
    /// selector allows, or by default on a control-plane node.
    fn placement(&self) -> (Affinity, Option<BTreeMap<String, String>>, Vec<Toleration>) {
        let mut excluded: Vec<String> = self.batch.to_vec();
        excluded.push(self.node.to_owned());
        excluded.sort();
        excluded.dedup();
        let on_control_plane = self.runner.node_selector.is_none() && self.control_plane_available;
        let affinity = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        // One requirement per node: the API server allows a single value
                        // for In and NotIn on a node field, and a term's requirements all
                        // apply.
                        match_fields: Some(
                            excluded
                                .into_iter()
                                .map(|node| NodeSelectorRequirement {
                                    key: "metadata.name".to_owned(),
                                    operator: "NotIn".to_owned(),
                                    values: Some(vec![node]),
                                })
                                .collect(),
                        ),
                        match_expressions: on_control_plane.then(|| {
                            vec![NodeSelectorRequirement {
                                key: CONTROL_PLANE_LABEL.to_owned(),
                                operator: "Exists".to_owned(),
                                values: None,
                            }]
                        }),
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            ..Affinity::default()
        };
        let tolerations = self.runner.tolerations.clone().unwrap_or_else(|| {
            vec![Toleration {
                key: Some(CONTROL_PLANE_LABEL.to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some("NoSchedule".to_owned()),
                ..Toleration::default()
            }]
        });
        (affinity, self.runner.node_selector.clone(), tolerations)
    }

    /// Renders the Job.
    pub fn render(&self) -> Job {
        let labels: BTreeMap<String, String> = [
            (
                "app.kubernetes.io/name",
                format!("upchain-node-{}", self.mode.as_str()),
            ),
            ("app.kubernetes.io/managed-by", "upchain".to_owned()),
            (UPGRADE_LABEL, bounded_name(&[self.owner.name])),
            (NODE_LABEL, bounded_name(&[self.node])),
            (TARGET_LABEL, self.target.to_string()),
            (ATTEMPT_LABEL, self.attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let annotations: BTreeMap<String, String> = [
            (NODE_ANNOTATION, self.node),
            (UPGRADE_ANNOTATION, self.owner.name),
            (UPGRADE_UID_ANNOTATION, self.owner.uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (affinity, node_selector, tolerations) = self.placement();
        let snapshot_claim = self
            .snapshot_claim
            .filter(|_| self.mode == JobMode::EtcdSnapshot);
        let mut mounts = vec![
            mount("script", SCRIPT_PATH),
            mount("ssh-key", SSH_KEY_PATH),
            mount("known-hosts", KNOWN_HOSTS_PATH),
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ];
        if snapshot_claim.is_some() {
            mounts.push(VolumeMount {
                name: "snapshots".to_owned(),
                mount_path: SNAPSHOT_DESTINATION.to_owned(),
                ..VolumeMount::default()
            });
        }
        let container = Container {
            name: RUNNER_CONTAINER.to_owned(),
            image: Some(self.runner.image.clone()),
            command: Some(vec![
                "/bin/bash".to_owned(),
                "-c".to_owned(),
                RUNNER_COMMAND.to_owned(),
            ]),
            env: Some(self.env()),
            resources: self.runner.resources.clone(),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(mounts),
            ..Container::default()
        };

        Job {
            metadata: ObjectMeta {
                name: Some(self.name()),
                namespace: Some(self.runner.namespace.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                active_deadline_seconds: Some(self.runner.active_deadline_seconds),
                ttl_seconds_after_finished: Some(self.runner.ttl_seconds_after_finished),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_owned()),
                        // The Job only talks SSH to its node; it needs no API access.
                        automount_service_account_token: Some(false),
                        affinity: Some(affinity),
                        node_selector,
                        tolerations: Some(tolerations),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(RUNNER_UID),
                            run_as_group: Some(RUNNER_UID),
                            fs_group: Some(RUNNER_UID),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".to_owned(),
                                localhost_profile: None,
                            }),
                            ..PodSecurityContext::default()
                        }),
                        containers: vec![container],
                        volumes: Some(
                            [
                                Volume {
                                    name: "script".to_owned(),
                                    config_map: Some(ConfigMapVolumeSource {
                                        name: self.runner.script_config_map.name.clone(),
                                        items: Some(vec![key_to_path(
                                            &self.runner.script_config_map.key,
                                            "upgrade-node.sh",
                                        )]),
                                        default_mode: Some(0o555),
                                        optional: Some(false),
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "ssh-key".to_owned(),
                                    secret: Some(SecretVolumeSource {
                                        secret_name: Some(self.runner.ssh_secret.name.clone()),
                                        items: Some(vec![key_to_path(
                                            &self.runner.ssh_secret.key,
                                            "id",
                                        )]),
                                        default_mode: Some(0o440),
                                        optional: Some(false),
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "known-hosts".to_owned(),
                                    config_map: Some(ConfigMapVolumeSource {
                                        name: self.runner.known_hosts.name.clone(),
                                        items: Some(vec![key_to_path(
                                            &self.runner.known_hosts.key,
                                            "known_hosts",
                                        )]),
                                        default_mode: Some(0o444),
                                        // AcceptNew runs without one.
                                        optional: Some(
                                            self.runner.host_key_policy == HostKeyPolicy::AcceptNew,
                                        ),
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "tmp".to_owned(),
                                    empty_dir: Some(EmptyDirVolumeSource::default()),
                                    ..Volume::default()
                                },
                            ]
                            .into_iter()
                            .chain(snapshot_claim.map(|claim| Volume {
                                name: "snapshots".to_owned(),
                                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                    claim_name: claim.to_owned(),
                                    read_only: Some(false),
                                }),
                                ..Volume::default()
                            }))
                            .collect(),
                        ),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}

/// A read-only mount of the single file `path` from `volume`.
fn mount(volume: &str, path: &str) -> VolumeMount {
    let (dir, _) = path.rsplit_once('/').unwrap_or((path, ""));
    VolumeMount {
        name: volume.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        mode: None,
    }
}

/// The nodes a rendered Job may not be scheduled on.
pub fn excluded_nodes(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| {
            s.node_selector_terms
                .iter()
                .flat_map(|t| t.match_fields.iter().flatten())
                .filter(|r| r.key == "metadata.name" && r.operator == "NotIn")
                .flat_map(|r| r.values.iter().flatten().cloned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job<'a>(runner: &'a RunnerSpec, node: &'a str, batch: &'a [String]) -> NodeJob<'a> {
        NodeJob {
            owner: Owner {
                name: "to-1-35",
                uid: "uid-1",
            },
            runner,
            node,
            node_ip: "10.0.0.7",
            role: NodeRole::Worker,
            first_control_plane: false,
            kind: UpgradeKind::Minor,
            target: KubeVersion::new(1, 35, 2),
            attempt: 1,
            batch,
            mode: JobMode::Upgrade,
            reattach: false,
            control_plane_available: true,
            run_started: 0,
            snapshot_claim: None,
        }
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod")
    }

    fn required_terms(job: &Job) -> &NodeSelectorTerm {
        &pod(job)
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("required affinity")
            .node_selector_terms[0]
    }

    #[test]
    fn node_jobs_meet_the_restricted_pod_security_level() {
        let runner = crate::testing::runner();
        let batch = ["worker-1".to_owned()];
        for mode in [JobMode::Upgrade, JobMode::Prepare] {
            let rendered = NodeJob {
                mode,
                ..job(&runner, "worker-1", &batch)
            }
            .render();
            assert_eq!(
                crate::pod_security::violations(
                    pod(&rendered),
                    crate::pod_security::Level::Restricted
                ),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn jobs_run_on_a_control_plane_node_outside_the_batch_unless_none_is_left() {
        let runner = crate::testing::runner();
        let batch = vec!["cp-1".to_owned()];
        let on_control_plane = job(&runner, "cp-1", &batch).render();
        let role = required_terms(&on_control_plane)
            .match_expressions
            .as_ref()
            .expect("a role requirement");
        assert_eq!(role[0].key, CONTROL_PLANE_LABEL);
        assert_eq!(role[0].operator, "Exists");
        // The cluster's one control-plane node is being upgraded: a worker runs its Job.
        let only_control_plane = NodeJob {
            control_plane_available: false,
            ..job(&runner, "cp-1", &batch)
        }
        .render();
        assert!(
            required_terms(&only_control_plane)
                .match_expressions
                .is_none()
        );
        assert_eq!(excluded_nodes(&only_control_plane), ["cp-1"]);
        // A runner node selector replaces the default, and the tolerations follow the spec.
        let chosen = RunnerSpec {
            node_selector: Some([("upchain.dev/runner".to_owned(), "true".to_owned())].into()),
            tolerations: Some(Vec::new()),
            ..crate::testing::runner()
        };
        let selected = job(&chosen, "w-1", &batch).render();
        assert!(required_terms(&selected).match_expressions.is_none());
        assert_eq!(
            pod(&selected).node_selector.as_ref().expect("selector")["upchain.dev/runner"],
            "true"
        );
        assert_eq!(pod(&selected).tolerations.as_deref(), Some(&[][..]));
    }

    #[test]
    fn the_job_checks_host_keys_against_known_hosts_unless_told_otherwise() {
        let runner = crate::testing::runner();
        let rendered = job(&runner, "w-1", &[]).render();
        let known_hosts = pod(&rendered)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "known-hosts")
            .and_then(|v| v.config_map.as_ref())
            .expect("known hosts volume");
        assert_eq!(known_hosts.name, "upchain-known-hosts");
        assert_eq!(known_hosts.optional, Some(false));
        let env = |job: &Job, name: &str| {
            pod(job).containers[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(env(&rendered, "HOST_KEY_POLICY").as_deref(), Some("Strict"));
        assert_eq!(env(&rendered, "MODE").as_deref(), Some("upgrade"));
        let prepare = NodeJob {
            mode: JobMode::Prepare,
            reattach: false,
            ..job(&runner, "w-1", &[])
        }
        .render();
        assert_eq!(env(&prepare, "MODE").as_deref(), Some("prepare"));
        assert_ne!(prepare.metadata.name, rendered.metadata.name);
        assert_eq!(env(&prepare, "RUN_ID"), env(&rendered, "RUN_ID"));
    }

    #[test]
    fn renders_a_locked_down_job() {
        let runner = crate::testing::runner();
        let batch = vec!["w-1".to_owned(), "w-2".to_owned()];
        let rendered = job(&runner, "w-1", &batch).render();
        assert_eq!(
            rendered.metadata.name.as_deref(),
            Some("to-1-35-w-1-v1-35-2-1-4a49ac")
        );
        assert_eq!(
            rendered.metadata.namespace.as_deref(),
            Some("upchain-system")
        );
        let spec = rendered.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(604800));
        let pod = spec.template.spec.as_ref().expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let env: BTreeMap<_, _> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["TARGET_VERSION"], "1.35.2");
        assert_eq!(env["UPGRADE_KIND"], "minor");
        assert_eq!(env["NODE_NAME"], "w-1");
        assert_eq!(env["NODE_IP"], "10.0.0.7");
        assert_eq!(env["NODE_ROLE"], "worker");
        assert_eq!(env["FIRST_CONTROL_PLANE"], "false");
        assert!(
            pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name != "tmp")
                .all(|m| m.read_only == Some(true))
        );
        assert_eq!(excluded_nodes(&rendered), ["w-1", "w-2"]);
        // No owner reference: the garbage collector must never cut a node's upgrade off.
        assert!(rendered.metadata.owner_references.is_none());
        let annotations = rendered.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[UPGRADE_UID_ANNOTATION], "uid-1");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let node = "a".repeat(200);
        let owner = Owner {
            name: "upgrade",
            uid: "uid-1",
        };
        let a = job_name(owner, &node, KubeVersion::new(1, 35, 2), 1);
        let b = job_name(owner, &node, KubeVersion::new(1, 35, 2), 2);
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }

    #[test]
    fn a_recreated_upgrade_of_the_same_name_gets_other_job_names() {
        let target = KubeVersion::new(1, 35, 2);
        let old = Owner {
            name: "to-1-35",
            uid: "3f0c1a52-0000-4000-8000-000000000001",
        };
        let new = Owner {
            uid: "9b7e44d0-0000-4000-8000-000000000002",
            ..old
        };
        let name = job_name(old, "worker-1", target, 1);
        assert!(name.starts_with("to-1-35-worker-1-v1-35-2-1-"), "{name}");
        assert_ne!(name, job_name(new, "worker-1", target, 1));
        assert_eq!(name, job_name(old, "worker-1", target, 1));
    }

    proptest! {
        /// Invariant 1: a Job never lands on a node of its batch, nor on its own node.
        #[test]
        fn job_excludes_its_batch(
            batch in proptest::collection::btree_set("[a-z][a-z0-9.-]{0,40}[a-z0-9]", 1..8),
            pick in 0usize..8,
        ) {
            let batch: Vec<String> = batch.into_iter().collect();
            let node = batch[pick % batch.len()].clone();
            let runner = crate::testing::runner();
            let excluded = excluded_nodes(&job(&runner, &node, &batch).render());
            for member in &batch {
                prop_assert!(excluded.contains(member));
            }
        }

        #[test]
        fn names_are_valid_dns_labels(parts in proptest::collection::vec("[A-Za-z0-9.-]{0,120}", 1..4)) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let name = bounded_name(&parts);
            prop_assert!(name.len() <= 63);
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
            prop_assert_eq!(bounded_name(&parts), name);
        }
    }
}
