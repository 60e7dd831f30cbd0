//! The observation contract: what the operator must read for the next decision.

use super::*;

/// What the operator must gather for the next decision, beyond nodes, Jobs and drains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Every preflight gate's inputs (the run has not touched a node yet, or is Blocked).
    pub preflight: bool,
    /// Prometheus alerts (before each node).
    pub alerts: bool,
    /// The objects the health checks select (before the run and before each node).
    pub health_checks: bool,
    /// The snapshot CronJob and Job.
    pub snapshot: bool,
    /// The postflight's inputs.
    pub postflight: bool,
    /// The hook Jobs in progress (status.hooks).
    pub hooks: bool,
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

/// What to gather for `upgrade`, from its spec and last status: sources the gates read
/// are only queried while a gate will look at them.
pub fn needs(upgrade: &K8sUpgrade) -> Needs {
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
    Needs {
        preflight,
        alerts: spec.gates.prometheus.is_some()
            && (preflight || at_boundary || status.phase == Some(Phase::Postflight)),
        health_checks: !spec.gates.health_checks.is_empty()
            && !spec.paused
            && (preflight || at_boundary),
        snapshot: spec.snapshot.is_some() && preflight,
        postflight: status.phase == Some(Phase::Postflight),
        hooks: status.hooks.iter().any(|h| h.completed_at.is_none()),
    }
}

/// The nodes whose upgrade Jobs the next decision reads: those upgrading, and those
/// draining (a decision can move one on to its Job). A node past its Job never reads it
/// again, so a long run does not re-read its finished Jobs on every reconcile.
pub fn nodes_with_jobs_to_read(status: Option<&K8sUpgradeStatus>) -> Vec<&str> {
    status
        .iter()
        .flat_map(|s| &s.nodes)
        .filter(|n| matches!(n.step, NodeStep::Draining | NodeStep::Upgrading))
        .map(|n| n.name.as_str())
        .collect()
}

/// The Jobs whose Pods' evidence (exit code, times, log) the next decision records: those
/// of nodes still Upgrading, which the decision will move past their Job once it ended.
pub fn jobs_awaiting_evidence(status: Option<&K8sUpgradeStatus>) -> Vec<&str> {
    status
        .iter()
        .flat_map(|s| &s.nodes)
        .filter(|n| n.step == NodeStep::Upgrading)
        .filter_map(|n| n.job.as_deref())
        .collect()
}

/// The nodes whose Pods the next decision reads: those draining, and, when the decision
/// may reach a node boundary (no node draining or upgrading), the next batch's nodes, so
/// that the decision that starts a node records its drain preview and cordons it in one
/// go rather than one reconcile later.
pub fn nodes_to_read_pods_of(upgrade: &K8sUpgrade, nodes: &[ObservedNode]) -> Vec<String> {
    let status = upgrade.status.as_ref();
    let draining: Vec<String> = status
        .iter()
        .flat_map(|s| &s.nodes)
        .filter(|n| n.step == NodeStep::Draining)
        .map(|n| n.name.clone())
        .collect();
    let at_boundary = status.is_none_or(next_batch_may_start);
    let finished = status.and_then(|s| s.phase).is_some_and(Phase::is_finished);
    if !at_boundary || upgrade.spec.paused || finished {
        return draining;
    }
    let Ok(target) = KubeVersion::parse_target(&upgrade.spec.target_version) else {
        return draining;
    };
    plan(target, &upgrade.spec.nodes, nodes)
        .map(|plan| plan.next_batch().map(|step| step.name.clone()).collect())
        .unwrap_or(draining)
}
