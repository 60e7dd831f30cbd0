//! Gate verdicts: pure functions over observations, each reason saying what to fix.
//!
//! A gate whose source could not be read refuses with that reason: an unreachable
//! Prometheus is not a quiet one.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use upchain_api::{
    DEFAULT_CONTAINERD_FLOORS, GatesSpec, K8sUpgradeSpec, NodeRecord, RunnerSpec, UpgradeKind,
};

use crate::observe::ObservedNode;
use crate::version::KubeVersion;

/// One gate's verdict: what it looked at, and every reason it refuses (none: it passes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The gate's name, as `upchain check` prints it.
    pub gate: String,
    /// What the gate looked at, in a few words.
    pub evidence: String,
    /// Why it refuses; empty when it passes.
    pub reasons: Vec<String>,
}

impl Verdict {
    /// True when the gate lets the run through.
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// What a source returned, or why it could not be read.
pub type Source<T> = Result<T, String>;

/// Everything the gates look at. `None` means the gate is off or was not gathered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateInputs {
    /// Alerts from Prometheus (firing and pending).
    pub alerts: Option<Source<Vec<Alert>>>,
    /// Deprecated APIs the API server still serves requests to.
    pub deprecated_apis: Option<Source<Vec<DeprecatedApi>>>,
    /// The addon matrix and each addon's running image.
    pub addons: Option<Source<AddonObservation>>,
    /// Helm releases (latest revision of each).
    pub helm_releases: Option<Source<Vec<HelmRelease>>>,
    /// Deployments.
    pub deployments: Option<Source<Vec<ObservedDeployment>>>,
    /// What exists of what the node Jobs need (namespace, script ConfigMap, SSH Secret).
    pub runner: Option<RunnerFacts>,
    /// The objects each health check selected.
    pub health_checks: Option<crate::health::HealthInputs>,
}

/// An alert from Prometheus's `/api/v1/alerts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// `alertname`.
    pub name: String,
    /// `firing` or `pending`.
    pub state: String,
    /// A short description of where it fires (its labels other than alertname).
    pub labels: String,
}

/// The `apiserver_requested_deprecated_apis` series with a positive value, from the API
/// server's Prometheus text exposition.
pub fn parse_deprecated_apis(text: &str) -> Vec<DeprecatedApi> {
    text.lines()
        .filter_map(|line| line.strip_prefix("apiserver_requested_deprecated_apis{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once('}')?;
            if value.trim().parse::<f64>().ok()? <= 0.0 {
                return None;
            }
            let label = |key: &str| {
                labels
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            Some(DeprecatedApi {
                group: label("group"),
                version: label("version"),
                resource: label("resource"),
                removed_release: label("removed_release"),
            })
        })
        .collect()
}

/// The latest revision of each release (Helm keeps one Secret per revision).
pub fn latest_revisions(revisions: impl IntoIterator<Item = HelmRelease>) -> Vec<HelmRelease> {
    let mut latest: BTreeMap<(String, String), HelmRelease> = BTreeMap::new();
    for release in revisions {
        let key = (release.namespace.clone(), release.name.clone());
        match latest.get(&key) {
            Some(kept) if kept.revision >= release.revision => {}
            _ => {
                latest.insert(key, release);
            }
        }
    }
    latest.into_values().collect()
}

/// One `apiserver_requested_deprecated_apis` series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeprecatedApi {
    /// API group (empty for the core group).
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// The Kubernetes minor that removes it, such as `1.35`.
    pub removed_release: String,
}

/// A Helm release's latest revision, from its release Secret's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelmRelease {
    /// Namespace.
    pub namespace: String,
    /// Release name.
    pub name: String,
    /// Revision.
    pub revision: u32,
    /// Status, such as deployed, failed or pending-upgrade.
    pub status: String,
}

/// A Deployment, reduced to what the workloads gate needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDeployment {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// spec.replicas.
    pub replicas: i32,
    /// status.updatedReplicas.
    pub updated: i32,
    /// status.availableReplicas.
    pub available: i32,
    /// The Available condition, when reported.
    pub available_condition: Option<bool>,
    /// The Progressing condition, when reported, with its reason.
    pub progressing_condition: Option<(bool, String)>,
}

impl ObservedDeployment {
    /// Reduces a Deployment to what the workloads gate and the addon matrix read.
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status == "True", c.reason.clone().unwrap_or_default()))
        };
        ObservedDeployment {
            namespace: d.metadata.namespace.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            available_condition: condition("Available").map(|(ok, _)| ok),
            progressing_condition: condition("Progressing"),
        }
    }
}

/// The addon matrix and what each addon runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddonObservation {
    /// The matrix, as parsed from the ConfigMap.
    pub matrix: AddonMatrix,
    /// Each addon's running image, by addon name.
    pub images: BTreeMap<String, Source<String>>,
}

/// The user-kept addon matrix (YAML in a ConfigMap key).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddonMatrix {
    /// The addons.
    pub addons: Vec<Addon>,
}

/// One addon of the matrix.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Addon {
    /// The addon's name, as reasons name it.
    pub name: String,
    /// Kind of the workload whose image tag is the addon's version: Deployment,
    /// DaemonSet or StatefulSet.
    pub kind: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload.
    pub workload: String,
    /// Container whose image is read; the first container when unset.
    #[serde(default)]
    pub container: Option<String>,
    /// From each addon version on, the highest Kubernetes minor it supports.
    pub supports: Vec<AddonSupport>,
}

/// From an addon version on, the highest Kubernetes minor it supports.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddonSupport {
    /// The addon version this row starts at, such as `1.12`.
    pub version: String,
    /// The highest Kubernetes minor it supports, such as `1.34`.
    pub max_kubernetes: String,
}

impl AddonMatrix {
    /// Parses the matrix, saying what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let matrix: Self = serde_yaml::from_str(text)
            .map_err(|e| format!("the addon matrix is not valid: {e}"))?;
        for addon in &matrix.addons {
            if !["Deployment", "DaemonSet", "StatefulSet"].contains(&addon.kind.as_str()) {
                return Err(format!(
                    "addon {}: kind must be Deployment, DaemonSet or StatefulSet, not {}",
                    addon.name, addon.kind
                ));
            }
            for row in &addon.supports {
                if numbers(&row.version).is_empty() || minor_of(&row.max_kubernetes).is_none() {
                    return Err(format!(
                        "addon {}: supports rows need a version such as 1.12 and a \
                         maxKubernetes such as 1.34",
                        addon.name
                    ));
                }
            }
        }
        Ok(matrix)
    }
}

/// The leading numeric components of a version or image tag (`v1.12.3-rc1` -> 1, 12, 3).
fn numbers(version: &str) -> Vec<u64> {
    version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map_while(|part| part.parse().ok())
        .collect()
}

fn target_minor(target: KubeVersion) -> (u64, u64) {
    (u64::from(target.major), u64::from(target.minor))
}

fn minor_of(version: &str) -> Option<(u64, u64)> {
    match numbers(version).as_slice() {
        [major, minor, ..] => Some((*major, *minor)),
        _ => None,
    }
}

/// The tag of an image reference (`repo/name:v1.2.3@sha256:...` -> `v1.2.3`).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let name = without_digest.rsplit('/').next().unwrap_or(without_digest);
    name.split_once(':').map(|(_, tag)| tag)
}

fn verdict(gate: &str, evidence: String, reasons: Vec<String>) -> Verdict {
    Verdict {
        gate: gate.to_owned(),
        evidence,
        reasons,
    }
}

fn unreachable(gate: &'static str, what: &str, error: &str) -> Verdict {
    verdict(
        gate,
        format!("{what} could not be read"),
        vec![format!(
            "{what} could not be read ({error}); the gate refuses rather than pass unchecked"
        )],
    )
}

/// The node gate, checked before the first change and again before every batch: every
/// node Ready, none under Memory, Disk or PID pressure, none cordoned by someone else.
/// Nodes in `skip` are left out; a node upchain itself cordoned is not a reason.
pub fn nodes_gate(nodes: &[ObservedNode], skip: &[String], records: &[NodeRecord]) -> Verdict {
    let cordoned_by_us: HashSet<&str> = records
        .iter()
        .filter(|r| r.cordoned)
        .map(|r| r.name.as_str())
        .collect();
    let mut reasons = Vec::new();
    for node in nodes.iter().filter(|n| !skip.contains(&n.name)) {
        if !node.ready {
            reasons.push(format!(
                "node {} is not Ready: upchain takes no node out of service while another is \
                 down; repair it, or add it to spec.nodes.skip",
                node.name
            ));
        }
        if !node.pressure.is_empty() {
            reasons.push(format!(
                "node {} reports {}: free the resource first",
                node.name,
                node.pressure.join(", ")
            ));
        }
        if node.unschedulable && !cordoned_by_us.contains(node.name.as_str()) {
            reasons.push(format!(
                "node {} is cordoned, and not by upchain: uncordon it (kubectl uncordon {}) or \
                 add it to spec.nodes.skip",
                node.name, node.name
            ));
        }
    }
    verdict(
        "nodes",
        format!("{} node(s) Ready, no pressure, none cordoned", nodes.len()),
        reasons,
    )
}

/// No node became Ready within the quiet period, other than the nodes this run upgraded.
pub fn quiet_gate(
    nodes: &[ObservedNode],
    quiet_period: Duration,
    now: i64,
    upgraded: &[NodeRecord],
) -> Verdict {
    let period = i64::try_from(quiet_period.as_secs()).unwrap_or(i64::MAX);
    let upgraded: HashSet<&str> = upgraded.iter().map(|r| r.name.as_str()).collect();
    let mut reasons = Vec::new();
    for node in nodes {
        if upgraded.contains(node.name.as_str()) {
            continue;
        }
        let Some(since) = node.ready_since else {
            continue;
        };
        let ago = now.saturating_sub(since);
        if ago < period {
            reasons.push(format!(
                "node {} changed Ready {} ago, within the quiet period of {}: a node that just \
                 rebooted is not yet proven; the run starts once it has been stable for the \
                 whole period (or shorten spec.gates.quietPeriod)",
                node.name,
                human(ago),
                human(period)
            ));
        }
    }
    verdict(
        "quiet period",
        format!("no node changed Ready in the last {}", human(period)),
        reasons,
    )
}

/// A duration in the largest whole units that fit, such as `3h12m` or `45s`.
pub fn human(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// No firing alert outside the ignore pattern.
pub fn alerts_gate(alerts: &Source<Vec<Alert>>, ignore: &str) -> Verdict {
    let alerts = match alerts {
        Ok(alerts) => alerts,
        Err(error) => return unreachable("alerts", "Prometheus alerts", error),
    };
    let ignore = match regex::Regex::new(ignore) {
        Ok(ignore) => ignore,
        Err(error) => {
            return verdict(
                "alerts",
                "the ignore pattern is invalid".to_owned(),
                vec![format!(
                    "spec.gates.prometheus.ignoreAlerts is not a valid regular expression: \
                     {error}"
                )],
            );
        }
    };
    let firing: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.state == "firing" && !ignore.is_match(&a.name))
        .collect();
    let reasons = firing
        .iter()
        .map(|a| {
            format!(
                "alert {} is firing{}: resolve it, or add it to \
                 spec.gates.prometheus.ignoreAlerts if it is harmless",
                a.name,
                if a.labels.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.labels)
                }
            )
        })
        .collect();
    verdict(
        "alerts",
        format!(
            "{} alert(s) from Prometheus, {} firing outside the ignore pattern",
            alerts.len(),
            firing.len()
        ),
        reasons,
    )
}

/// No API that the target removes is still requested.
pub fn deprecated_apis_gate(apis: &Source<Vec<DeprecatedApi>>, target: KubeVersion) -> Verdict {
    let apis = match apis {
        Ok(apis) => apis,
        Err(error) => {
            return unreachable(
                "deprecated APIs",
                "the API server's apiserver_requested_deprecated_apis metric",
                error,
            );
        }
    };
    let removed: Vec<&DeprecatedApi> = apis
        .iter()
        .filter(|api| minor_of(&api.removed_release).is_some_and(|r| r <= target_minor(target)))
        .collect();
    let reasons = removed
        .iter()
        .map(|api| {
            let group_version = if api.group.is_empty() {
                api.version.clone()
            } else {
                format!("{}/{}", api.group, api.version)
            };
            format!(
                "{} {group_version} is still requested and is removed in {}: migrate its \
                 clients to a served version (kubectl get --raw /metrics | grep \
                 apiserver_requested_deprecated_apis shows it; the API server's audit log \
                 names the caller)",
                api.resource, api.removed_release
            )
        })
        .collect();
    verdict(
        "deprecated APIs",
        format!(
            "{} deprecated API(s) requested, {} removed by {target}",
            apis.len(),
            removed.len()
        ),
        reasons,
    )
}

/// Every node's containerd is at least the floor the target minor needs.
pub fn containerd_gate(
    nodes: &[ObservedNode],
    floors: &BTreeMap<String, String>,
    target: KubeVersion,
) -> Verdict {
    let key = format!("{}.{}", target.major, target.minor);
    let floor = if floors.is_empty() {
        DEFAULT_CONTAINERD_FLOORS
            .iter()
            .find(|(minor, _)| *minor == key)
            .map(|(_, floor)| (*floor).to_owned())
    } else {
        floors.get(&key).cloned()
    };
    let Some(floor) = floor else {
        return verdict(
            "containerd",
            format!("no containerd floor is known for {key}"),
            Vec::new(),
        );
    };
    let wanted = numbers(&floor);
    let mut reasons = Vec::new();
    for node in nodes {
        let Some(version) = node.container_runtime.strip_prefix("containerd://") else {
            continue; // another runtime: no containerd floor applies
        };
        if numbers(version) < wanted {
            reasons.push(format!(
                "node {} runs containerd {version}, below {floor} that Kubernetes {key} needs: \
                 upgrade containerd on it first",
                node.name
            ));
        }
    }
    verdict(
        "containerd",
        format!("every node's containerd at least {floor} (Kubernetes {key})"),
        reasons,
    )
}

/// Every addon in the matrix supports the target minor at its running version.
pub fn addons_gate(addons: &Source<AddonObservation>, target: KubeVersion) -> Verdict {
    let observation = match addons {
        Ok(observation) => observation,
        Err(error) => return unreachable("addons", "the addon matrix", error),
    };
    let wanted = target_minor(target);
    let mut reasons = Vec::new();
    for addon in &observation.matrix.addons {
        let image = match observation.images.get(&addon.name) {
            Some(Ok(image)) => image,
            Some(Err(error)) => {
                reasons.push(format!(
                    "addon {}: its version could not be read from {} {}/{} ({error}); fix \
                     the matrix entry",
                    addon.name, addon.kind, addon.namespace, addon.workload
                ));
                continue;
            }
            None => continue,
        };
        let running = image_tag(image).map(numbers).unwrap_or_default();
        if running.is_empty() {
            reasons.push(format!(
                "addon {}: the image {image} has no version tag to compare",
                addon.name
            ));
            continue;
        }
        let row = addon
            .supports
            .iter()
            .filter(|row| numbers(&row.version) <= running)
            .max_by_key(|row| numbers(&row.version));
        match row.and_then(|row| Some((row, minor_of(&row.max_kubernetes)?))) {
            Some((_, max)) if max >= wanted => {}
            Some((row, _)) => reasons.push(format!(
                "addon {} runs {} ({image}), which supports Kubernetes up to {}: upgrade it to \
                 a version that supports {}.{} first",
                addon.name,
                image_tag(image).unwrap_or_default(),
                row.max_kubernetes,
                target.major,
                target.minor
            )),
            None => reasons.push(format!(
                "addon {} runs {}, older than every version in the matrix: add a row for it \
                 or upgrade it",
                addon.name,
                image_tag(image).unwrap_or_default()
            )),
        }
    }
    verdict(
        "addons",
        format!(
            "{} addon(s) in the matrix checked against {}.{}",
            observation.matrix.addons.len(),
            target.major,
            target.minor
        ),
        reasons,
    )
}

/// No Helm release is pending; a failed one only warns (in the evidence).
pub fn helm_gate(releases: &Source<Vec<HelmRelease>>) -> Verdict {
    let releases = match releases {
        Ok(releases) => releases,
        Err(error) => return unreachable("helm", "Helm's release Secrets", error),
    };
    let reasons = releases
        .iter()
        .filter(|r| r.status.starts_with("pending-"))
        .map(|r| {
            format!(
                "Helm release {}/{} is {} at revision {}: an upgrade or install is in flight or \
                 was interrupted; let it finish, or roll it back (helm rollback {} -n {}) before \
                 the cluster is upgraded",
                r.namespace, r.name, r.status, r.revision, r.name, r.namespace
            )
        })
        .collect();
    let failed = releases.iter().filter(|r| r.status == "failed").count();
    verdict(
        "helm",
        format!(
            "{} release(s), none pending{}",
            releases.len(),
            if failed > 0 {
                format!("; {failed} failed (a warning only)")
            } else {
                String::new()
            }
        ),
        reasons,
    )
}

/// Every Deployment is reconciled: Available, Progressing, updated replicas not short of
/// available ones by more than 10% (autoscalers move replicas under our feet).
pub fn workloads_gate(deployments: &Source<Vec<ObservedDeployment>>) -> Verdict {
    let deployments = match deployments {
        Ok(deployments) => deployments,
        Err(error) => return unreachable("workloads", "Deployments", error),
    };
    let mut reasons = Vec::new();
    for d in deployments.iter().filter(|d| d.replicas > 0) {
        let name = format!("{}/{}", d.namespace, d.name);
        if d.available_condition == Some(false) {
            reasons.push(format!(
                "Deployment {name} is not Available ({} of {} replicas): fix it first, a drain \
                 would make it worse",
                d.available, d.replicas
            ));
        } else if let Some((false, reason)) = &d.progressing_condition {
            reasons.push(format!(
                "Deployment {name} is not progressing ({reason}): its rollout is stuck; fix or \
                 roll it back first"
            ));
        } else if f64::from(d.updated) < f64::from(d.available) * 0.9 {
            reasons.push(format!(
                "Deployment {name} has {} updated of {} available replicas: a rollout is still \
                 in flight; wait for it to finish",
                d.updated, d.available
            ));
        }
    }
    verdict(
        "workloads",
        format!("{} Deployment(s) reconciled", deployments.len()),
        reasons,
    )
}

/// What exists of what the node Jobs need, as the operator read it (the SSH Secret by
/// metadata only); each an error when it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerFacts {
    /// The runner namespace exists.
    pub namespace: Source<bool>,
    /// The data keys of the script ConfigMap; None when there is no such ConfigMap.
    pub script_keys: Source<Option<Vec<String>>>,
    /// The SSH Secret exists.
    pub ssh_secret: Source<bool>,
}

/// What the node Jobs need and is missing, each named as a person would create it.
fn runner_missing(runner: &RunnerSpec, facts: &RunnerFacts) -> Vec<String> {
    let namespace = &runner.namespace;
    let unreadable = |what: String, error: &str| format!("{what} (could not be read: {error})");
    match &facts.namespace {
        Ok(true) => {}
        Ok(false) => return vec![format!("namespace {namespace}")],
        Err(error) => return vec![unreadable(format!("namespace {namespace}"), error)],
    }
    let mut missing = Vec::new();
    let script = &runner.script_config_map;
    let config_map = format!("ConfigMap {namespace}/{}", script.name);
    match &facts.script_keys {
        Ok(Some(keys)) if keys.contains(&script.key) => {}
        Ok(Some(_)) => missing.push(format!("key {} of {config_map}", script.key)),
        Ok(None) => missing.push(format!("{config_map} (the node script)")),
        Err(error) => missing.push(unreadable(config_map, error)),
    }
    let secret = format!("Secret {namespace}/{}", runner.ssh_secret.name);
    match &facts.ssh_secret {
        Ok(true) => {}
        Ok(false) => missing.push(format!("{secret} (the SSH key)")),
        Err(error) => missing.push(unreadable(secret, error)),
    }
    missing
}

/// What the node Jobs need exists.
pub fn runner_gate(runner: &RunnerSpec, facts: &RunnerFacts) -> Verdict {
    let reasons = runner_missing(runner, facts)
        .iter()
        .map(|what| {
            format!("{what} is missing: the node Jobs need it (see spec.runner); create it")
        })
        .collect();
    verdict(
        "runner",
        format!(
            "namespace {}, the script ConfigMap and the SSH Secret exist",
            runner.namespace
        ),
        reasons,
    )
}

/// Every gate that applies before the first node is touched.
pub fn preflight(
    spec: &K8sUpgradeSpec,
    nodes: &[ObservedNode],
    inputs: &GateInputs,
    target: KubeVersion,
    kind: UpgradeKind,
    records: &[NodeRecord],
    now: i64,
) -> Vec<Verdict> {
    let gates = &spec.gates;
    let mut verdicts = vec![
        nodes_gate(nodes, &spec.nodes.skip, records),
        quiet_gate(nodes, Duration::from(gates.quiet_period), now, records),
    ];
    if let Some(facts) = &inputs.runner {
        verdicts.push(runner_gate(&spec.runner, facts));
    }
    verdicts.extend(alerts(gates, inputs));
    if kind == UpgradeKind::Minor {
        verdicts.push(containerd_gate(
            nodes,
            &gates.compatibility.containerd_floors,
            target,
        ));
        if let Some(apis) = inputs.deprecated_apis.as_ref() {
            verdicts.push(deprecated_apis_gate(apis, target));
        }
        if let Some(addons) = inputs.addons.as_ref() {
            verdicts.push(addons_gate(addons, target));
        }
    }
    if let Some(releases) = inputs.helm_releases.as_ref() {
        verdicts.push(helm_gate(releases));
    }
    if let Some(deployments) = inputs.deployments.as_ref() {
        verdicts.push(workloads_gate(deployments));
    }
    verdicts
}

/// The alert gate, when Prometheus is configured and was read.
pub fn alerts(gates: &GatesSpec, inputs: &GateInputs) -> Option<Verdict> {
    let prometheus = gates.prometheus.as_ref()?;
    let alerts = inputs.alerts.as_ref()?;
    Some(alerts_gate(alerts, &prometheus.ignore_alerts))
}

/// Every refusing reason of `verdicts`, in order.
pub fn reasons(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .flat_map(|v| v.reasons.iter().cloned())
        .collect()
}

/// What the postflight looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostflightInputs {
    /// Control-plane static Pods (kube-apiserver, kube-controller-manager,
    /// kube-scheduler) on each control-plane node.
    pub static_pods: Vec<StaticPod>,
    /// Pods that should be running (not Succeeded or Failed) across the cluster.
    pub pods_expected: usize,
    /// Of those, how many are Ready.
    pub pods_ready: usize,
}

impl PostflightInputs {
    /// Adds one Pod to the counts: running Pods and their readiness, and the control
    /// plane's static Pods (kube-system, tier control-plane, by component).
    pub fn count(&mut self, pod: &Pod) {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if matches!(phase, "Succeeded" | "Failed") {
            return;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        self.pods_expected += 1;
        if ready {
            self.pods_ready += 1;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let component = labels.get("component").cloned().unwrap_or_default();
        let control_plane = labels.get("tier").is_some_and(|t| t == "control-plane")
            && pod.metadata.namespace.as_deref() == Some("kube-system")
            && [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]
            .contains(&component.as_str());
        if control_plane {
            let spec = pod.spec.as_ref();
            self.static_pods.push(StaticPod {
                node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                component,
                image: spec
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                running: phase == "Running" && ready,
            });
        }
    }
}

/// A control-plane static Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPod {
    /// Its node.
    pub node: String,
    /// Its component label, such as kube-apiserver.
    pub component: String,
    /// Its image.
    pub image: String,
    /// Running and Ready.
    pub running: bool,
}

/// The least share of Pods that must be Ready after the run.
pub const POD_READY_RATIO: f64 = 0.9;

/// The postflight: control-plane static Pods Running at the target image, at least 90%
/// of Pods Ready. (Every node at the target, and the alerts, are checked by the caller.)
pub fn postflight_gate(inputs: &PostflightInputs, target: KubeVersion) -> Verdict {
    let tag = target.to_string();
    let mut reasons = Vec::new();
    for pod in &inputs.static_pods {
        if !pod.running {
            reasons.push(format!(
                "{} on {} is not Running and Ready: check it (kubectl -n kube-system describe \
                 pod {}-{})",
                pod.component, pod.node, pod.component, pod.node
            ));
        } else if image_tag(&pod.image) != Some(tag.as_str()) {
            reasons.push(format!(
                "{} on {} runs {}, not {tag}: kubeadm did not move it; check the node's \
                 /etc/kubernetes/manifests",
                pod.component, pod.node, pod.image
            ));
        }
    }
    let ratio = if inputs.pods_expected == 0 {
        1.0
    } else {
        inputs.pods_ready as f64 / inputs.pods_expected as f64
    };
    if ratio < POD_READY_RATIO {
        reasons.push(format!(
            "only {} of {} Pods are Ready ({:.0}%, at least {:.0}% expected): look for Pods \
             that did not come back (kubectl get pods -A --field-selector \
             status.phase!=Running)",
            inputs.pods_ready,
            inputs.pods_expected,
            ratio * 100.0,
            POD_READY_RATIO * 100.0
        ));
    }
    verdict(
        "postflight",
        format!(
            "{} control-plane Pod(s) at {tag}, {}/{} Pods Ready",
            inputs.static_pods.len(),
            inputs.pods_ready,
            inputs.pods_expected
        ),
        reasons,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::NodeFixture;

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse_target(text).expect("version")
    }

    #[test]
    fn nodes_gate_lists_every_reason_and_ignores_skipped_nodes() {
        let mut pressured = NodeFixture::worker("w-3").build();
        pressured.pressure = vec!["DiskPressure".into()];
        let nodes = vec![
            NodeFixture::control_plane("cp-0").build(),
            NodeFixture::worker("w-1").not_ready().build(),
            NodeFixture::worker("w-2").cordoned().build(),
            pressured,
            NodeFixture::worker("w-4").not_ready().build(),
        ];
        let reasons = nodes_gate(&nodes, &["w-4".to_owned()], &[]).reasons;
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("w-1 is not Ready"));
        assert!(reasons[1].contains("kubectl uncordon w-2"));
        assert!(reasons[2].contains("DiskPressure"));
    }

    #[test]
    fn nodes_gate_passes_a_healthy_cluster() {
        let nodes = vec![
            NodeFixture::control_plane("cp-0").build(),
            NodeFixture::worker("w-1").build(),
        ];
        assert!(nodes_gate(&nodes, &[], &[]).passed());
    }

    #[test]
    fn quiet_gate_refuses_a_recent_ready_transition() {
        let mut rebooted = NodeFixture::worker("w-1").build();
        rebooted.ready_since = Some(100_000 - 3 * 3600);
        let nodes = vec![NodeFixture::worker("w-0").build(), rebooted];
        let verdict = quiet_gate(&nodes, Duration::from_secs(24 * 3600), 100_000, &[]);
        assert_eq!(verdict.reasons.len(), 1);
        assert!(
            verdict.reasons[0]
                .contains("node w-1 changed Ready 3h ago, within the quiet period of 24h"),
            "{:?}",
            verdict.reasons
        );
        assert!(quiet_gate(&nodes, Duration::from_secs(3600), 100_000, &[]).passed());
        assert!(quiet_gate(&nodes, Duration::ZERO, 100_000, &[]).passed());
    }

    fn alert(name: &str, state: &str) -> Alert {
        Alert {
            name: name.into(),
            state: state.into(),
            labels: "severity=critical".into(),
        }
    }

    #[test]
    fn alerts_gate_counts_firing_alerts_outside_the_ignore_pattern() {
        let alerts = Ok(vec![
            alert("Watchdog", "firing"),
            alert("KubeNodeNotReady", "firing"),
            alert("HighLatency", "pending"),
            alert("K8sUpgradeInFlight", "firing"),
        ]);
        let verdict = alerts_gate(&alerts, upchain_api::DEFAULT_IGNORE_ALERTS);
        assert_eq!(
            verdict.reasons,
            [
                "alert KubeNodeNotReady is firing (severity=critical): resolve it, or add it to \
              spec.gates.prometheus.ignoreAlerts if it is harmless"
            ]
        );
        assert!(alerts_gate(&Ok(vec![alert("Watchdog", "firing")]), "^Watchdog$").passed());
    }

    #[test]
    fn alerts_gate_refuses_when_prometheus_cannot_be_read() {
        let verdict = alerts_gate(&Err("connection refused".into()), ".*");
        assert!(!verdict.passed());
        assert!(
            verdict.reasons[0].contains("Prometheus alerts could not be read (connection refused)")
        );
        let bad = alerts_gate(&Ok(Vec::new()), "(");
        assert!(bad.reasons[0].contains("not a valid regular expression"));
    }

    #[test]
    fn deprecated_apis_removed_by_the_target_refuse() {
        let apis = Ok(vec![
            DeprecatedApi {
                group: "flowcontrol.apiserver.k8s.io".into(),
                version: "v1beta3".into(),
                resource: "flowschemas".into(),
                removed_release: "1.32".into(),
            },
            DeprecatedApi {
                group: "example.io".into(),
                version: "v1beta1".into(),
                resource: "widgets".into(),
                removed_release: "1.37".into(),
            },
        ]);
        let verdict = deprecated_apis_gate(&apis, v("1.35.0"));
        assert_eq!(verdict.reasons.len(), 1);
        assert!(verdict.reasons[0].starts_with(
            "flowschemas flowcontrol.apiserver.k8s.io/v1beta3 is still requested and is removed in 1.32"
        ));
        assert!(deprecated_apis_gate(&Ok(Vec::new()), v("1.35.0")).passed());
        assert!(!deprecated_apis_gate(&Err("403".into()), v("1.35.0")).passed());
    }

    #[test]
    fn containerd_below_the_floor_refuses() {
        let mut old = NodeFixture::worker("w-1").build();
        old.container_runtime = "containerd://1.6.28".into();
        let mut cri_o = NodeFixture::worker("w-2").build();
        cri_o.container_runtime = "cri-o://1.30.0".into();
        let nodes = vec![NodeFixture::worker("w-0").build(), old, cri_o];
        let verdict = containerd_gate(&nodes, &BTreeMap::new(), v("1.35.2"));
        assert_eq!(
            verdict.reasons,
            [
                "node w-1 runs containerd 1.6.28, below 1.7.0 that Kubernetes 1.35 needs: upgrade \
              containerd on it first"
            ]
        );
        let floors = [("1.35".to_owned(), "1.7.23".to_owned())].into();
        assert_eq!(
            containerd_gate(&nodes, &floors, v("1.35.2")).reasons.len(),
            2
        );
        assert!(containerd_gate(&nodes, &BTreeMap::new(), v("1.40.0")).passed());
    }

    const MATRIX: &str = "addons:\n- name: ingress-nginx\n  kind: Deployment\n  namespace: ingress\n  workload: controller\n  supports:\n  - version: \"1.11\"\n    maxKubernetes: \"1.31\"\n  - version: \"1.12\"\n    maxKubernetes: \"1.35\"\n";

    fn addons(image: &str) -> Source<AddonObservation> {
        Ok(AddonObservation {
            matrix: AddonMatrix::parse(MATRIX).expect("matrix"),
            images: [("ingress-nginx".to_owned(), Ok(image.to_owned()))].into(),
        })
    }

    #[test]
    fn an_addon_whose_version_stops_short_of_the_target_refuses() {
        let verdict = addons_gate(
            &addons("registry.k8s.io/ingress-nginx/controller:v1.11.5@sha256:ab"),
            v("1.35.0"),
        );
        assert_eq!(
            verdict.reasons,
            [
                "addon ingress-nginx runs v1.11.5 (registry.k8s.io/ingress-nginx/controller:v1.11.5@sha256:ab), which supports Kubernetes up to 1.31: upgrade it to a version that supports 1.35 first"
            ]
        );
        assert!(addons_gate(&addons("registry:5000/controller:v1.12.1"), v("1.35.0")).passed());
        let older = addons_gate(&addons("controller:v1.9.0"), v("1.35.0"));
        assert!(older.reasons[0].contains("older than every version in the matrix"));
    }

    #[test]
    fn a_bad_matrix_is_explained() {
        let error = AddonMatrix::parse(
            "addons:\n- name: x\n  kind: Pod\n  namespace: a\n  workload: b\n  supports: []\n",
        )
        .expect_err("bad kind");
        assert!(
            error.contains("kind must be Deployment, DaemonSet or StatefulSet"),
            "{error}"
        );
        let error = AddonMatrix::parse("addons: 3").expect_err("not a list");
        assert!(
            error.starts_with("the addon matrix is not valid"),
            "{error}"
        );
    }

    #[test]
    fn pending_helm_releases_refuse_and_failed_ones_warn() {
        let release = |name: &str, status: &str| HelmRelease {
            namespace: "apps".into(),
            name: name.into(),
            revision: 4,
            status: status.into(),
        };
        let verdict = helm_gate(&Ok(vec![
            release("web", "deployed"),
            release("db", "pending-upgrade"),
            release("old", "failed"),
        ]));
        assert_eq!(verdict.reasons.len(), 1);
        assert!(
            verdict.reasons[0].starts_with("Helm release apps/db is pending-upgrade at revision 4")
        );
        assert!(verdict.evidence.contains("1 failed (a warning only)"));
        assert!(helm_gate(&Ok(vec![release("web", "deployed")])).passed());
        assert!(!helm_gate(&Err("forbidden".into())).passed());
    }

    fn deployment(updated: i32, available: i32) -> ObservedDeployment {
        ObservedDeployment {
            namespace: "apps".into(),
            name: "web".into(),
            replicas: 10,
            updated,
            available,
            available_condition: Some(true),
            progressing_condition: Some((true, "NewReplicaSetAvailable".into())),
        }
    }

    #[test]
    fn workloads_not_reconciled_refuse_with_a_tolerance() {
        assert!(workloads_gate(&Ok(vec![deployment(9, 10)])).passed());
        let short = workloads_gate(&Ok(vec![deployment(5, 10)]));
        assert!(short.reasons[0].contains("5 updated of 10 available"));
        let mut stuck = deployment(10, 10);
        stuck.progressing_condition = Some((false, "ProgressDeadlineExceeded".into()));
        assert!(workloads_gate(&Ok(vec![stuck])).reasons[0].contains("ProgressDeadlineExceeded"));
        let mut down = deployment(10, 2);
        down.available_condition = Some(false);
        assert!(workloads_gate(&Ok(vec![down])).reasons[0].contains("is not Available"));
    }

    #[test]
    fn postflight_wants_the_target_images_and_ready_pods() {
        let pod = |image: &str, running| StaticPod {
            node: "cp-1".into(),
            component: "kube-apiserver".into(),
            image: image.into(),
            running,
        };
        let good = PostflightInputs {
            static_pods: vec![pod("registry.k8s.io/kube-apiserver:v1.35.2", true)],
            pods_expected: 100,
            pods_ready: 95,
        };
        assert!(postflight_gate(&good, v("1.35.2")).passed());
        let bad = PostflightInputs {
            static_pods: vec![pod("registry.k8s.io/kube-apiserver:v1.34.2", true)],
            pods_expected: 100,
            pods_ready: 80,
        };
        let reasons = postflight_gate(&bad, v("1.35.2")).reasons;
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[1].contains("only 80 of 100 Pods are Ready"));
    }

    #[test]
    fn missing_runner_prerequisites_refuse_by_name() {
        let runner = RunnerSpec::default();
        let present = RunnerFacts {
            namespace: Ok(true),
            script_keys: Ok(Some(vec![runner.script_config_map.key.clone()])),
            ssh_secret: Ok(true),
        };
        assert!(runner_gate(&runner, &present).passed());
        let no_secret = RunnerFacts {
            ssh_secret: Ok(false),
            ..present.clone()
        };
        assert_eq!(
            runner_gate(&runner, &no_secret).reasons,
            [
                "Secret upchain-system/upchain-ssh (the SSH key) is missing: the node Jobs need \
              it (see spec.runner); create it"
            ]
        );
        let wrong_key = RunnerFacts {
            script_keys: Ok(Some(vec!["other.sh".to_owned()])),
            ..present.clone()
        };
        assert!(
            runner_gate(&runner, &wrong_key).reasons[0].starts_with(
                "key upgrade-node.sh of ConfigMap upchain-system/upchain-node-upgrade"
            )
        );
        let no_namespace = RunnerFacts {
            namespace: Ok(false),
            ..no_secret
        };
        assert_eq!(
            runner_gate(&runner, &no_namespace).reasons.len(),
            1,
            "only the namespace is named"
        );
    }

    #[test]
    fn deprecated_api_series_are_read_from_the_exposition() {
        let text = "# HELP apiserver_requested_deprecated_apis x\n\
            apiserver_requested_deprecated_apis{group=\"flowcontrol.apiserver.k8s.io\",removed_release=\"1.32\",resource=\"flowschemas\",subresource=\"\",version=\"v1beta3\"} 1\n\
            apiserver_requested_deprecated_apis{group=\"\",removed_release=\"1.40\",resource=\"widgets\",subresource=\"\",version=\"v1\"} 0\n\
            apiserver_request_total{code=\"200\"} 5\n";
        assert_eq!(
            parse_deprecated_apis(text),
            [DeprecatedApi {
                group: "flowcontrol.apiserver.k8s.io".into(),
                version: "v1beta3".into(),
                resource: "flowschemas".into(),
                removed_release: "1.32".into(),
            }]
        );
    }

    #[test]
    fn only_the_latest_helm_revision_counts() {
        let revision = |name: &str, revision, status: &str| HelmRelease {
            namespace: "apps".into(),
            name: name.into(),
            revision,
            status: status.into(),
        };
        let latest = latest_revisions([
            revision("web", 3, "pending-upgrade"),
            revision("web", 2, "superseded"),
            revision("db", 1, "deployed"),
            revision("web", 4, "deployed"),
        ]);
        assert_eq!(
            latest,
            [
                revision("db", 1, "deployed"),
                revision("web", 4, "deployed")
            ]
        );
    }

    #[test]
    fn image_tags_are_read_past_registries_and_digests() {
        assert_eq!(
            image_tag("registry:5000/a/b:v1.2.3@sha256:x"),
            Some("v1.2.3")
        );
        assert_eq!(image_tag("registry:5000/a/b"), None);
    }
}
