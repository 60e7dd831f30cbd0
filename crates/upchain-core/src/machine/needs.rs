//! The observation contract: what the operator must read for the next decision.

use upchain_api::{
    AnalysisStage, K8sUpgrade, K8sUpgradeSpec, K8sUpgradeStatus, NodeStep, Phase, PrepareRecord,
};

use crate::observe::ObservedNode;
use crate::plan::plan;
use crate::version::KubeVersion;

/// Everything the operator must read for the next decision besides the Nodes it caches:
/// the operator only fetches what this says, and the decision gets nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Every preflight gate's inputs (the run has not touched a node yet, or is Blocked).
    pub preflight: bool,
    /// Prometheus alerts (before each node).
    pub alerts: bool,
    /// The objects the health checks select (before the run and before each node).
    pub health_checks: bool,
    /// The analysis checks (spec.gates.analysis) whose queries to run: those of the
    /// boundary while the next batch may start, those of the soak while a batch soaks.
    pub analysis: Vec<String>,
    /// The postflight's inputs.
    pub postflight: bool,
    /// The hook Jobs in progress (status.hooks).
    pub hooks: bool,
    /// The control plane's static Pods, `/readyz` and kubeadm-config: for the plan (which
    /// node runs `kubeadm upgrade apply`), the control-plane gate (before the run and at
    /// each node boundary) and a control-plane node coming back. Read while a run is
    /// under way, so the plan it shows does not change between reads.
    pub control_plane: bool,
    /// The nodes whose Pods (and then the PodDisruptionBudgets) to read: those draining,
    /// and the next batch's when it may start, so the decision that starts a node records
    /// its drain preview and cordons it in one go.
    pub pods_of: Vec<String>,
    /// The nodes whose heartbeat (their Lease in kube-node-lease) to read: those Rejoining,
    /// the only ones a decision uncordons. A node whose Job just ended is Rejoining at the
    /// next decision, which reads it; none is read while its Job runs.
    pub heartbeats_of: Vec<String>,
    /// Which of the run's node Jobs to read.
    pub jobs: JobsToRead,
    /// The finished node Jobs whose Pod's evidence (exit code, times, log) to read: those
    /// of nodes still Upgrading, which the decision moves past their Job, and the prepare
    /// checks under way.
    pub evidence_of: Vec<String>,
}

/// Which of the run's node Jobs to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobsToRead {
    /// Every one: deletion deletes the finished ones.
    All,
    /// Those of these nodes: draining (a decision can move one on to its Job), upgrading,
    /// or under a prepare check. A node past its Job never reads it again, so a long run does not re-read
    /// its finished Jobs on every reconcile.
    OfNodes(Vec<String>),
}

impl Default for JobsToRead {
    fn default() -> Self {
        Self::OfNodes(Vec::new())
    }
}

impl Needs {
    /// What deleting a K8sUpgrade reads: its Jobs, no gate.
    pub fn for_deletion() -> Self {
        Self {
            jobs: JobsToRead::All,
            ..Self::default()
        }
    }
}

/// Whether a Node change can move `upgrade`'s next decision, so that the operator wakes it
/// for one: only while a run is under way or Blocked. A K8sUpgrade that is finished, or
/// Pending, is woken by its spec, its Jobs, the lock's release, its window or its recheck,
/// never by Nodes: kubelets post status every few seconds, and a finished K8sUpgrade kept
/// in the cluster by GitOps must not cost a read for each.
pub fn woken_by_nodes(upgrade: &K8sUpgrade) -> bool {
    upgrade
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|phase| phase.is_running() || phase == Phase::Blocked)
}

/// The one definition of "at a node boundary": the next batch may start within the next
/// decision, as no node drains or runs its Job (one rejoining or soaking may finish within
/// it). The checks and the next batch's Pods are read then, so that decision has them.
fn next_batch_may_start(status: &K8sUpgradeStatus) -> bool {
    !status
        .nodes
        .iter()
        .any(|n| matches!(n.step, NodeStep::Draining | NodeStep::Upgrading))
}

/// What to gather for `upgrade` over `nodes`, from its spec and last status: sources the
/// gates read are only queried while a gate will look at them.
pub fn needs(upgrade: &K8sUpgrade, nodes: &[ObservedNode]) -> Needs {
    let spec = &upgrade.spec;
    let none = K8sUpgradeStatus::default();
    let status = upgrade.status.as_ref().unwrap_or(&none);
    let at_boundary = next_batch_may_start(status);
    let retargeted = KubeVersion::parse_target(&spec.target_version)
        .is_ok_and(|t| status.target_version.as_deref() != Some(&t.to_string()));
    let preflight = match status.phase {
        None | Some(Phase::Pending | Phase::Preflight | Phase::Blocked | Phase::Snapshot) => true,
        Some(Phase::Succeeded | Phase::Failed) => retargeted,
        Some(_) => false,
    } && !spec.paused;
    let nodes_at = |steps: &[NodeStep]| -> Vec<String> {
        status
            .nodes
            .iter()
            .filter(|n| steps.contains(&n.step))
            .map(|n| n.name.clone())
            .collect()
    };
    // Prepare checks under way, whose Jobs the next decision follows.
    let preparing: Vec<&PrepareRecord> = status
        .prepare
        .iter()
        .filter(|r| r.completed_at.is_none())
        .collect();
    // The etcd check and the snapshot under way: their Jobs carry the node they ask.
    let etcd_jobs: Vec<(String, String)> = status
        .etcd
        .iter()
        .filter(|r| r.completed_at.is_none())
        .map(|r| (r.node.clone(), r.job.clone()))
        .chain(
            status
                .snapshot
                .iter()
                .filter(|r| r.completed_at.is_none())
                .filter_map(|r| Some((r.node.clone()?, r.job.clone()))),
        )
        .collect();
    Needs {
        preflight,
        alerts: spec.gates.prometheus.is_some()
            && (preflight || at_boundary || status.phase == Some(Phase::Postflight)),
        health_checks: !spec.gates.health_checks.is_empty()
            && !spec.paused
            && (preflight || at_boundary),
        analysis: analysis_to_query(spec, status, preflight, at_boundary),
        postflight: status.phase == Some(Phase::Postflight),
        hooks: status.hooks.iter().any(|h| h.completed_at.is_none()),
        control_plane: preflight || !status.phase.is_some_and(Phase::is_finished),
        pods_of: pods_to_read(upgrade, status, at_boundary, nodes),
        heartbeats_of: nodes_at(&[NodeStep::Rejoining]),
        jobs: JobsToRead::OfNodes(
            nodes_at(&[NodeStep::Draining, NodeStep::Upgrading])
                .into_iter()
                .chain(preparing.iter().map(|r| r.node.clone()))
                .chain(etcd_jobs.iter().map(|(node, _)| node.clone()))
                .collect(),
        ),
        evidence_of: status
            .nodes
            .iter()
            .filter(|n| n.step == NodeStep::Upgrading)
            .filter_map(|n| n.job.clone())
            .chain(preparing.iter().map(|r| r.job.clone()))
            .chain(etcd_jobs.into_iter().map(|(_, job)| job))
            .collect(),
    }
}

/// The analysis checks to query: before the run and at each boundary of a run under way
/// those of the boundary (`BeforeRun` and `BeforeBatch`, as the decision picks), while every
/// node in flight soaks those of the soak. None while paused, or stopped on a failure.
fn analysis_to_query(
    spec: &K8sUpgradeSpec,
    status: &K8sUpgradeStatus,
    preflight: bool,
    at_boundary: bool,
) -> Vec<String> {
    if spec.paused || status.phase == Some(Phase::Failed) {
        return Vec::new();
    }
    let in_progress = status
        .phase
        .is_some_and(|p| p.is_running() || p == Phase::Blocked);
    let boundary = preflight || (at_boundary && in_progress);
    let in_flight = status.nodes.iter().filter(|n| n.step.is_active());
    let soaking = in_flight.clone().next().is_some()
        && in_flight.clone().all(|n| n.step == NodeStep::Soaking);
    spec.gates
        .analysis
        .iter()
        .filter(|check| {
            let before = check.when.iter().any(|s| *s != AnalysisStage::AfterBatch);
            (boundary && before) || (soaking && check.when.contains(&AnalysisStage::AfterBatch))
        })
        .map(|check| check.name.clone())
        .collect()
}

/// The nodes whose Pods to read: those draining and, when the next batch may start, its
/// nodes.
fn pods_to_read(
    upgrade: &K8sUpgrade,
    status: &K8sUpgradeStatus,
    at_boundary: bool,
    nodes: &[ObservedNode],
) -> Vec<String> {
    let draining: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Draining)
        .map(|n| n.name.clone())
        .collect();
    if !at_boundary || upgrade.spec.paused || status.phase.is_some_and(Phase::is_finished) {
        return draining;
    }
    let Ok(target) = KubeVersion::parse_target(&upgrade.spec.target_version) else {
        return draining;
    };
    // The plan without the control plane's reads, which come later, and the last
    // decision's, which had them.
    let planned = status
        .plan
        .iter()
        .take_while(|p| Some(p.batch) == status.plan.first().map(|f| f.batch));
    let mut next: Vec<String> = planned.map(|p| p.name.clone()).collect();
    if let Ok(plan) = plan(target, &upgrade.spec.nodes, nodes, None) {
        next.extend(plan.next_batch().map(|step| step.name.clone()));
    }
    next.sort();
    next.dedup();
    if next.is_empty() { draining } else { next }
}
