//! Gate verdicts: pure functions over observations, each reason saying what to fix.
//!
//! A gate whose source could not be read refuses with that reason: an unreachable
//! Prometheus is not a quiet one.

mod alerts;
mod cluster;
mod compatibility;
mod control_plane;
mod helm;
mod postflight;
mod runner;
#[cfg(test)]
mod tests;
mod workloads;

pub use alerts::*;
pub use cluster::*;
pub use compatibility::*;
pub use control_plane::*;
pub use helm::*;
pub use postflight::*;
pub use runner::*;
pub use workloads::*;

use std::time::Duration;

use upchain_api::{GatesSpec, K8sUpgradeSpec, NodeRecord, UpgradeKind};

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
    /// The StatefulSets and DaemonSets, for the same gate.
    pub sets: Option<Source<Vec<ObservedSet>>>,
    /// What exists of what the node Jobs need (namespace, script ConfigMap, SSH Secret).
    pub runner: Option<RunnerFacts>,
    /// The objects each health check selected.
    pub health_checks: Option<crate::health::HealthInputs>,
    /// What the analysis checks' queries returned (those measured at this moment).
    pub analysis: Option<crate::analysis::AnalysisInputs>,
    /// The control plane's static Pods and the API server's /readyz.
    pub control_plane: Option<Source<ControlPlaneObservation>>,
    /// What the installation's policy refused in the spec (crate::policy::Settled).
    pub policy_refusals: Vec<String>,
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

/// Every check's verdict at one moment: what `decide` and `upchain check` both judge by.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The built-in gates: every preflight gate before the run, the node gate between nodes.
    pub gates: Vec<Verdict>,
    /// The health checks (spec.gates.healthChecks) that were read, each with how long it
    /// may fail before it blocks.
    pub health_checks: Vec<(Verdict, Duration)>,
}

/// The one entry point of the checks: the built-in gates (all of them `before_the_run`,
/// the node gate between nodes) and the health checks, over what was observed.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    spec: &K8sUpgradeSpec,
    nodes: &[ObservedNode],
    inputs: &GateInputs,
    plan: &crate::plan::Plan,
    records: &[NodeRecord],
    now: i64,
    before_the_run: bool,
) -> Evaluation {
    let target = plan.target;
    let mut gates = if before_the_run {
        preflight(spec, nodes, inputs, target, plan.kind, records, now)
    } else {
        vec![nodes_gate(nodes, &spec.nodes.skip, records)]
    };
    // A spec edited beyond the policy mid-run stops the next node too.
    if before_the_run || !inputs.policy_refusals.is_empty() {
        gates.insert(0, policy_gate(&inputs.policy_refusals));
    }
    if let Some(control_plane) = &inputs.control_plane {
        let workers_next = plan
            .next_batch()
            .any(|step| step.role == upchain_api::NodeRole::Worker)
            .then_some(target);
        gates.push(control_plane_gate(
            nodes,
            control_plane,
            records,
            workers_next,
        ));
    }
    let health_checks = inputs
        .health_checks
        .as_ref()
        .map(|objects| {
            spec.gates
                .health_checks
                .iter()
                .enumerate()
                .filter_map(|(index, check)| {
                    let verdict = crate::health::verdict(index, check, objects.get(&check.name)?);
                    Some((verdict, Duration::from(check.timeout)))
                })
                .collect()
        })
        .unwrap_or_default();
    Evaluation {
        gates,
        health_checks,
    }
}

/// The policy gate: the spec asks for nothing the installation does not allow.
fn policy_gate(refusals: &[String]) -> Verdict {
    verdict(
        crate::policy::GATE,
        "the runner, drain and hook fields the spec sets, against the installation's policy"
            .to_owned(),
        refusals.to_vec(),
    )
}

/// Every gate that applies before the first node is touched.
fn preflight(
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
        snapshot_gate(spec, kind, target),
    ];
    if let Some(facts) = &inputs.runner {
        verdicts.push(runner_gate(spec, facts));
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
        verdicts.push(helm_gate(releases, gates.helm_failed_releases));
    }
    if let Some(deployments) = inputs.deployments.as_ref() {
        let none = Ok(Vec::new());
        verdicts.push(workloads_gate(
            deployments,
            inputs.sets.as_ref().unwrap_or(&none),
        ));
    }
    verdicts
}

/// The snapshot gate: a minor upgrade has an etcd snapshot configured, or a waiver with
/// its reason (kubeadm cannot downgrade a control plane; going back is a restore). The
/// snapshot itself is taken and verified after the gates pass.
fn snapshot_gate(spec: &K8sUpgradeSpec, kind: UpgradeKind, target: KubeVersion) -> Verdict {
    let (evidence, reasons) = match (&spec.snapshot, &spec.snapshot_waiver) {
        (Some(snapshot), _) => match &snapshot.persistent_volume_claim {
            Some(claim) => (
                format!(
                    "taken through the node step before the first node, test-restored, and \
                     copied to PersistentVolumeClaim {claim}"
                ),
                Vec::new(),
            ),
            None => (
                "no destination".to_owned(),
                vec![
                    "spec.snapshot asks for an etcd snapshot, but the installation gives it \
                     nowhere to go: set policy.snapshot.persistentVolumeClaim in the chart \
                     values"
                        .to_owned(),
                ],
            ),
        },
        (None, Some(waiver)) if kind == UpgradeKind::Minor => {
            (format!("waived: {}", waiver.reason), Vec::new())
        }
        (None, None) if kind == UpgradeKind::Minor => (
            "none configured".to_owned(),
            vec![format!(
                "a minor upgrade (to {target}) needs a verified etcd snapshot first, as \
                 kubeadm cannot downgrade the control plane: set `spec.snapshot: {{}}` (it is \
                 taken through the node step, to the installation's destination), or waive \
                 it with spec.snapshotWaiver.reason"
            )],
        ),
        (None, _) => (
            "none configured (a patch upgrade does not need one)".to_owned(),
            Vec::new(),
        ),
    };
    verdict("snapshot", evidence, reasons)
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
