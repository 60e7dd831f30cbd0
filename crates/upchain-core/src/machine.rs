//! The phase machine: `decide(upgrade, observed, now) -> Decision`.
//!
//! Every step is level-based: it compares what the status intends with what the cluster
//! shows and emits the actions that close the gap. The operator persists the decision's
//! status before it carries out the actions, so the intent (the node in progress and its
//! step) is on record before any cordon, eviction or Job. Repeating a decision against an
//! unchanged cluster repeats only idempotent actions (same cordon, same Job name).

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{
    APPROVE_ANNOTATION, Approval, DrainTimeoutAction, GateRecord, HookKind, HookRecord, K8sUpgrade,
    K8sUpgradeSpec, K8sUpgradeStatus, NodeRecord, NodeRole, NodeStep, Phase, RETRY_ANNOTATION,
    RunRecord, SilenceRecord, SnapshotRecord,
};

use crate::conditions::{self, Desired, types};
use crate::drain::drain_progress;
use crate::gates;
use crate::job::{NodeJob, Owner, job_name, untagged_job_name};
use crate::observe::{JobState, Observed, ObservedNode, OtherUpgrade};
use crate::plan::{Plan, plan};
use crate::version::KubeVersion;
use crate::window::{WindowState, window_state};

/// How often a drain re-checks its Pods while they leave.
pub const DRAIN_POLL: Duration = Duration::from_secs(5);
/// How often a K8sUpgrade waiting for another one, or for postflight, looks again.
pub const WAIT_POLL: Duration = Duration::from_secs(30);
/// Runs kept in status.history.
pub const HISTORY_LIMIT: usize = 5;

/// Done nodes that keep their full record in status; older ones fold into
/// `upgradedNodes`. A record is about 300 bytes: 5,000 of them would pass etcd's 1.5 MiB
/// object limit, and a status write past it fails.
pub const DONE_RECORDS_KEPT: usize = 100;
/// How a draining node's message starts while budgets hold it.
const WAITING_ON_BUDGETS: &str = "waiting on PodDisruptionBudget(s)";
/// How a draining node's message begins while Pods the drain options forbid evicting hold it.
const WAITING_ON_HELD: &str = "the drain holds back Pods it may not evict:";
/// How a draining node's message begins while it deletes single replicas budgets hold.
const DELETING_BLOCKED: &str = "deleting single-replica Pod(s)";
/// Safety bound on transitions taken in one decision.
const MAX_TRANSITIONS: usize = 64;

/// Something the operator must do to the cluster, or record.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Mark the node unschedulable.
    Cordon {
        /// The node.
        node: String,
    },
    /// Mark the node schedulable again.
    Uncordon {
        /// The node.
        node: String,
    },
    /// Evict these Pods (namespace/name) through the Eviction API, respecting PDBs.
    Evict {
        /// The node being drained.
        node: String,
        /// The Pods.
        pods: Vec<String>,
        /// Grace period override, from spec.drain.gracePeriodSeconds.
        grace_period_seconds: Option<i64>,
    },
    /// Delete these Pods without the Eviction API (drain timed out with onTimeout: Force).
    DeletePods {
        /// The node being drained.
        node: String,
        /// The Pods.
        pods: Vec<String>,
    },
    /// Create the Job, or adopt it if it already exists (its name is deterministic).
    CreateJob(Box<Job>),
    /// Delete a finished node Job (its Pods go with it), when its K8sUpgrade is deleted.
    DeleteJob {
        /// The Job, in the runner namespace.
        name: String,
    },
    /// Create the node's Alertmanager silence, or extend it (same ID), until `ends_at`;
    /// the operator records the ID Alertmanager returns in status.silences.
    Silence {
        /// The node.
        node: String,
        /// The silence to extend; None creates one.
        id: Option<String>,
        /// When it is to end.
        ends_at: Timestamp,
    },
    /// Expire the Alertmanager silence of a node no longer in progress.
    ExpireSilence {
        /// The node.
        node: String,
        /// The silence.
        id: String,
    },
    /// Record an Event on the K8sUpgrade.
    Event(Event),
    /// Send a notification to the configured webhook.
    Notify(Notification),
}

impl Action {
    /// True for actions that change the cluster (everything but Events and notifications).
    pub fn is_mutating(&self) -> bool {
        !matches!(self, Action::Event(_) | Action::Notify(_))
    }
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// A run started.
    Started,
    /// A gate refused the run.
    Blocked,
    /// No progress for stallTimeout.
    Stalled,
    /// A node or the spec failed the run.
    Failed,
    /// Every node runs the target.
    Succeeded,
}

impl NotifyKind {
    /// The notification kind an Event reason stands for, if any.
    fn for_reason(reason: &str) -> Option<Self> {
        match reason {
            "RunStarted" => Some(Self::Started),
            "Blocked" => Some(Self::Blocked),
            "Stalled" => Some(Self::Stalled),
            "NodeFailed" | "InvalidSpec" | "VersionPolicy" | "HookFailed" => Some(Self::Failed),
            "Succeeded" => Some(Self::Succeeded),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Blocked => "blocked",
            Self::Stalled => "stalled",
            Self::Failed => "failed",
            Self::Succeeded => "succeeded",
        }
    }
}

/// A notification: sent once per transition, never carrying a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// What it is about.
    pub kind: NotifyKind,
    /// The text, naming the K8sUpgrade.
    pub text: String,
}

/// An Event to record on the K8sUpgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason, a bounded set.
    pub reason: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// The node it is about, if any: Events about different nodes are kept apart.
    pub node: Option<String>,
}

/// What one reconcile decided: the next status, what to do, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to write (server-side apply on /status) before the actions.
    pub status: K8sUpgradeStatus,
    /// The actions to carry out, in order.
    pub actions: Vec<Action>,
    /// Reconcile again after this long even if nothing changes; None waits for a change.
    pub requeue: Option<Duration>,
}

/// True when this status holds the one-upgrade-per-cluster lock: a run is under way,
/// blocked, or failed with nodes touched.
pub fn holds_lock(status: &K8sUpgradeStatus) -> bool {
    match status.phase {
        Some(
            Phase::Preflight
            | Phase::Snapshot
            | Phase::ControlPlane
            | Phase::Workers
            | Phase::Postflight
            | Phase::Blocked,
        ) => true,
        Some(Phase::Failed) => status
            .nodes
            .iter()
            .any(|n| n.step == NodeStep::Failed || n.step.is_active()),
        _ => false,
    }
}

impl OtherUpgrade {
    /// Reduces another K8sUpgrade to what the lock needs.
    pub fn from_upgrade(upgrade: &K8sUpgrade) -> Self {
        let status = upgrade.status.clone().unwrap_or_default();
        Self {
            name: upgrade.metadata.name.clone().unwrap_or_default(),
            holds_lock: holds_lock(&status),
            waiting: matches!(status.phase, None | Some(Phase::Pending)) && !upgrade.spec.paused,
            created: upgrade
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
        }
    }
}

/// The snapshot record, if it belongs to the run that started at `run_started`: a record
/// from an earlier run says nothing about this one.
fn of_this_run<'a>(
    record: Option<&'a SnapshotRecord>,
    run_started: Option<&Time>,
) -> Option<&'a SnapshotRecord> {
    let run_started = run_started.map_or(0, |t| t.0.as_second());
    record.filter(|s| s.started_at.0.as_second() >= run_started)
}

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

/// What to gather for `upgrade`, from its spec and last status: sources the gates read
/// are only queried while a gate will look at them.
pub fn needs(upgrade: &K8sUpgrade) -> Needs {
    let spec = &upgrade.spec;
    let none = K8sUpgradeStatus::default();
    let status = upgrade.status.as_ref().unwrap_or(&none);
    let at_boundary = !status.nodes.iter().any(|n| n.step.is_active());
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

/// Folds the oldest Done records past [`DONE_RECORDS_KEPT`] into `upgraded_nodes`.
fn fold_done_records(status: &mut K8sUpgradeStatus) {
    let done = status
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Done)
        .count();
    let mut surplus = done.saturating_sub(DONE_RECORDS_KEPT);
    if surplus == 0 {
        return;
    }
    let pinned = status.target_version.clone();
    let mut kept = Vec::with_capacity(status.nodes.len() - surplus);
    for record in std::mem::take(&mut status.nodes) {
        if surplus > 0 && record.step == NodeStep::Done {
            surplus -= 1;
            // A record of an earlier target is history, not this run's progress.
            if Some(&record.target_version) == pinned.as_ref() {
                status.upgraded_nodes.push(record.name);
            }
        } else {
            kept.push(record);
        }
    }
    status.nodes = kept;
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
    let at_boundary = status.is_none_or(|s| {
        !s.nodes
            .iter()
            .any(|n| matches!(n.step, NodeStep::Draining | NodeStep::Upgrading))
    });
    let finished = status
        .and_then(|s| s.phase)
        .is_some_and(|p| matches!(p, Phase::Succeeded | Phase::Failed));
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

/// Records in `status` the silences the operator placed in Alertmanager for the decision's
/// `Action::Silence`s (the ID is Alertmanager's, known only once it answered).
pub fn record_silences(status: &mut K8sUpgradeStatus, placed: Vec<SilenceRecord>) {
    for record in placed {
        // A node that left progress within the decision keeps no record.
        if !status
            .nodes
            .iter()
            .any(|n| n.name == record.node && n.step.is_active())
        {
            continue;
        }
        match status.silences.iter_mut().find(|s| s.node == record.node) {
            Some(existing) => *existing = record,
            None => status.silences.push(record),
        }
    }
}

/// Decides the next status and actions for `upgrade` given what was observed at `now`.
pub fn decide(upgrade: &K8sUpgrade, observed: &Observed, now: Timestamp) -> Decision {
    // Status times have second resolution; deciding at that resolution keeps a decision
    // equal to its own round trip through the API server.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let previous = upgrade.status.clone().unwrap_or_default();
    let mut machine = Machine {
        upgrade,
        spec: &upgrade.spec,
        observed,
        nodes: observed.nodes_by_name(),
        now,
        status: previous.clone(),
        actions: Vec::new(),
        requeue: None,
        state: State::default(),
    };
    for _ in 0..MAX_TRANSITIONS {
        let before = machine.status.clone();
        machine.actions.retain(|a| !a.is_mutating());
        machine.requeue = None;
        machine.step();
        if machine.status == before {
            break;
        }
    }
    machine.finish(&previous)
}

/// Whether a hook lets the run go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookProgress {
    /// It succeeded, or there is none.
    Done,
    /// It runs, or failed: the step said so.
    Waiting,
}

/// Why the run is where it is, for the conditions.
#[derive(Clone, Debug, Default)]
struct State {
    reason: &'static str,
    message: String,
}

struct Machine<'a> {
    upgrade: &'a K8sUpgrade,
    spec: &'a K8sUpgradeSpec,
    observed: &'a Observed,
    /// The observed nodes by name: looked up once per record on every step.
    nodes: HashMap<&'a str, &'a ObservedNode>,
    now: Timestamp,
    status: K8sUpgradeStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    state: State,
}

impl<'a> Machine<'a> {
    fn node(&self, name: &str) -> Option<&'a ObservedNode> {
        self.nodes.get(name).copied()
    }

    fn name(&self) -> &str {
        self.upgrade.metadata.name.as_deref().unwrap_or_default()
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.record(Event {
            warning,
            reason,
            message,
            node: None,
        });
    }

    fn node_event(&mut self, warning: bool, reason: &'static str, node: &str, message: String) {
        self.record(Event {
            warning,
            reason,
            message,
            node: Some(node.to_owned()),
        });
    }

    /// Records an Event, and notifies when it is a transition people are told about.
    fn record(&mut self, event: Event) {
        if let Some(kind) = NotifyKind::for_reason(event.reason)
            && self.spec.notify.is_some()
        {
            let notification = Action::Notify(Notification {
                kind,
                text: format!(
                    "K8sUpgrade {} {}: {}",
                    self.name(),
                    kind.as_str(),
                    event.message
                ),
            });
            self.act(notification);
        }
        self.act(Action::Event(event));
    }

    fn act(&mut self, action: Action) {
        if !self.actions.contains(&action) {
            self.actions.push(action);
        }
    }

    fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn note(&mut self, reason: &'static str, message: impl Into<String>) {
        self.state = State {
            reason,
            message: message.into(),
        };
    }

    fn set_phase(&mut self, phase: Phase) {
        self.status.phase = Some(phase);
    }

    fn progressed(&mut self) {
        self.status.last_progress_at = Some(Time(self.now));
    }

    fn elapsed(&self, since: &Time) -> Duration {
        Duration::try_from(self.now.duration_since(since.0)).unwrap_or_default()
    }

    /// One transition (or none, at a fixpoint).
    fn step(&mut self) {
        self.handle_retry();

        let active: Vec<usize> = (0..self.status.nodes.len())
            .filter(|&i| self.status.nodes[i].step.is_active())
            .collect();
        if !active.is_empty() {
            let batch: Vec<String> = active
                .iter()
                .map(|&i| self.status.nodes[i].name.clone())
                .collect();
            for &i in &active {
                self.advance_node(i, &batch);
            }
            let role = self.status.nodes[active[0]].role;
            if self.status.nodes.iter().any(|n| n.step == NodeStep::Failed) {
                return self.fail_on_node();
            }
            self.set_phase(match role {
                NodeRole::ControlPlane => Phase::ControlPlane,
                NodeRole::Worker => Phase::Workers,
            });
            let step = self.status.nodes[active[0]].step;
            return self.note(
                "NodeInProgress",
                format!("{} is {}", batch.join(", "), step.as_str()),
            );
        }

        // At a node boundary from here on.
        self.release_skipped_failures();
        if self.failed_node().is_some() {
            return self.fail_on_node();
        }
        if self.status.phase == Some(Phase::Succeeded) && self.spec_target_unchanged() {
            return self.note("Succeeded", "every selected node runs the target version");
        }
        if let Some(holder) = self.lock_holder() {
            self.set_phase(Phase::Pending);
            self.requeue_within(WAIT_POLL);
            return self.note(
                "WaitingForUpgrade",
                format!(
                    "waiting for K8sUpgrade {holder}, which is upgrading this cluster; \
                     one upgrade runs at a time"
                ),
            );
        }

        let target = match KubeVersion::parse_target(&self.spec.target_version) {
            Ok(target) => target,
            Err(error) => {
                return self.refuse("InvalidSpec", format!("spec.targetVersion: {error}"));
            }
        };
        if let Err(error) = crate::health::validate(&self.spec.gates.health_checks) {
            return self.refuse("InvalidSpec", error);
        }
        for kind in [HookKind::Pre, HookKind::Post] {
            if let Some(Err(error)) = crate::hooks::hook(self.spec.hooks.as_ref(), kind)
                .map(|h| crate::hooks::template(h, kind))
            {
                return self.refuse("InvalidSpec", error);
            }
        }
        let plan = match plan(target, &self.spec.nodes, &self.observed.nodes) {
            Ok(plan) => plan,
            Err(error) => return self.refuse("VersionPolicy", error.to_string()),
        };
        self.status.plan = plan.to_status();
        self.status.plan_hash = Some(plan.hash());

        if self.spec.paused {
            self.requeue = None;
            return self.note(
                "Paused",
                "spec.paused is true: no node is started until it is false",
            );
        }
        let new_run = self.status.started_at.is_none() || !self.run_in_progress();
        let retargeted = self.status.target_version.as_deref() != Some(&target.to_string());
        if (new_run || retargeted) && !plan.is_complete() {
            let manual = self.spec.approval == Approval::Manual;
            let approved = self.annotation(APPROVE_ANNOTATION).map(str::trim);
            if manual && approved != Some(plan.hash().as_str()) {
                return self.await_approval(&plan, new_run);
            }
            self.status.approved_plan_hash = manual.then(|| plan.hash());
        }
        if new_run {
            self.start_run(&plan);
        } else if retargeted {
            self.event(
                false,
                "TargetChanged",
                format!(
                    "target changed from {} to {target} at a node boundary; the plan was \
                     recomputed from the nodes' versions",
                    self.status.target_version.as_deref().unwrap_or("none")
                ),
            );
            self.status.target_version = Some(target.to_string());
            self.status.upgrade_kind = Some(plan.kind);
        }

        if plan.is_complete() {
            return self.postflight();
        }
        // Before the run's first node every gate applies; between nodes, the node gate and
        // (waited out for a while first) the alert gate.
        let first = self.status.nodes.is_empty() && self.status.upgraded_nodes.is_empty();
        if !self.gate_sources_read() {
            // A node finished within this decision and the next one's checks were not
            // read for it: look again at once, with them.
            self.requeue_within(Duration::ZERO);
            return self.note("ReadingChecks", "reading the checks before the next node");
        }
        let verdicts = self.gate_verdicts(first, &plan);
        self.record_gates(&verdicts);
        let mut reasons = gates::reasons(&verdicts);
        if let Some((waiting, failing)) = self.health_checks(&mut reasons) {
            self.requeue_within(self.recheck_interval().min(waiting));
            return self.note(
                "WaitingForHealthChecks",
                format!(
                    "the next node waits for {} to pass (the run is Blocked once a check's \
                     timeout has passed)",
                    failing.join(", ")
                ),
            );
        }
        if !first && let Some(alerts) = gates::alerts(&self.spec.gates, &self.observed.gates) {
            self.record_gates(std::slice::from_ref(&alerts));
            if alerts.passed() {
                self.status.alerts_waiting_since = None;
            } else if reasons.is_empty() && self.status.phase != Some(Phase::Blocked) {
                let since = self
                    .status
                    .alerts_waiting_since
                    .get_or_insert(Time(self.now))
                    .clone();
                let max_wait = self
                    .spec
                    .gates
                    .prometheus
                    .as_ref()
                    .map_or(Duration::ZERO, |p| Duration::from(p.max_wait));
                let waited = self.elapsed(&since);
                if waited < max_wait {
                    self.requeue_within(self.recheck_interval().min(max_wait - waited));
                    return self.note(
                        "WaitingForAlerts",
                        format!(
                            "the next node waits for firing alerts to clear (blocked after {}): \
                             {}",
                            gates::human(i64::try_from(max_wait.as_secs()).unwrap_or(i64::MAX)),
                            alerts.reasons.join("; ")
                        ),
                    );
                }
                reasons.extend(alerts.reasons);
            } else {
                reasons.extend(alerts.reasons);
            }
        }
        if !reasons.is_empty() {
            return self.block(reasons);
        }
        self.status.alerts_waiting_since = None;

        if let Some(window) = &self.spec.window {
            match window_state(window, self.now) {
                Ok(WindowState::Open { .. }) => self.status.next_window_at = None,
                Ok(WindowState::Closed { opens_at, blackout }) => {
                    self.unblock();
                    self.status.next_window_at = Some(Time(opens_at));
                    let wait =
                        Duration::try_from(opens_at.duration_since(self.now)).unwrap_or_default();
                    self.requeue_within(wait);
                    return match blackout {
                        Some(blackout) => self.note(
                            "InBlackout",
                            format!("in the {blackout}; the next node starts at {opens_at}"),
                        ),
                        None => self.note(
                            "OutsideWindow",
                            format!(
                                "outside the maintenance window; the next node starts when it \
                                 opens at {opens_at}"
                            ),
                        ),
                    };
                }
                Err(error) => return self.refuse("InvalidSpec", error),
            }
        }
        if first && self.spec.snapshot.is_some() && !self.snapshot_verified() {
            return self.snapshot();
        }
        if first && self.hook(HookKind::Pre) == HookProgress::Waiting {
            return;
        }
        let held = self.held_in_next_batch(&plan);
        if !held.is_empty() {
            return self.block(held);
        }
        self.unblock();
        self.start_batch(&plan);
    }

    /// Why a node of the next batch may not be drained yet: Pods whose eviction would
    /// lose what nothing brings back, unless the spec allows it (the drain's options).
    fn held_in_next_batch(&self, plan: &Plan) -> Vec<String> {
        plan.next_batch()
            .filter_map(|step| Some((step, self.observed.pods.get(&step.name)?)))
            .flat_map(|(step, pods)| {
                drain_progress(
                    pods,
                    self.observed.operator_pod.as_deref(),
                    &self.observed.budgets,
                    &self.spec.drain,
                )
                .held_reasons(&step.name)
            })
            .collect()
    }

    /// True when every configured check that reads a source outside the API (alerts,
    /// health checks) had its source read for this decision.
    fn gate_sources_read(&self) -> bool {
        let gates = &self.observed.gates;
        (self.spec.gates.prometheus.is_none() || gates.alerts.is_some())
            && (self.spec.gates.health_checks.is_empty() || gates.health_checks.is_some())
    }

    /// Judges the health checks: a failing one adds its reasons once its timeout has
    /// passed (or at once when something else already refuses); until then the run waits,
    /// and this returns how long until the first timeout and the checks waited for.
    fn health_checks(&mut self, reasons: &mut Vec<String>) -> Option<(Duration, Vec<String>)> {
        let inputs = self.observed.gates.health_checks.as_ref()?;
        let mut verdicts = Vec::new();
        let mut overdue = Vec::new();
        let mut pending = Vec::new();
        let since = self
            .status
            .health_checks_failing_since
            .clone()
            .unwrap_or(Time(self.now));
        let waited = self.elapsed(&since);
        let blocked = self.status.phase == Some(Phase::Blocked) || !reasons.is_empty();
        for (index, check) in self.spec.gates.health_checks.iter().enumerate() {
            let Some(objects) = inputs.get(&check.name) else {
                continue;
            };
            let verdict = crate::health::verdict(index, check, objects);
            let timeout = Duration::from(check.timeout);
            if !verdict.passed() {
                if blocked || waited >= timeout {
                    overdue.extend(verdict.reasons.iter().cloned());
                } else {
                    pending.push((
                        timeout - waited,
                        verdict.gate.clone(),
                        verdict.reasons.clone(),
                    ));
                }
            }
            verdicts.push(verdict);
        }
        self.record_gates(&verdicts);
        if overdue.is_empty() && pending.is_empty() {
            self.status.health_checks_failing_since = None;
            return None;
        }
        self.status.health_checks_failing_since = Some(since);
        reasons.extend(overdue);
        if !reasons.is_empty() {
            // Blocked anyway: list every failing check.
            reasons.extend(pending.into_iter().flat_map(|(_, _, r)| r));
            return None;
        }
        let first_timeout = pending.iter().map(|(left, _, _)| *left).min()?;
        Some((
            first_timeout,
            pending.into_iter().map(|(_, gate, _)| gate).collect(),
        ))
    }

    /// Before a run's first node every preflight gate; between nodes the node gate.
    fn gate_verdicts(&self, first: bool, plan: &Plan) -> Vec<gates::Verdict> {
        if first {
            gates::preflight(
                self.spec,
                &self.observed.nodes,
                &self.observed.gates,
                plan.target,
                plan.kind,
                &self.status.nodes,
                self.now.as_second(),
            )
        } else {
            vec![gates::nodes_gate(
                &self.observed.nodes,
                &self.spec.nodes.skip,
                &self.status.nodes,
            )]
        }
    }

    /// Replaces the records of these checks in status.gates with their verdicts.
    fn record_gates(&mut self, verdicts: &[gates::Verdict]) {
        for verdict in verdicts {
            let record = GateRecord {
                name: verdict.gate.to_owned(),
                passed: verdict.passed(),
                evidence: verdict.evidence.clone(),
            };
            match self.status.gates.iter_mut().find(|g| g.name == record.name) {
                Some(existing) => *existing = record,
                None => self.status.gates.push(record),
            }
        }
    }

    /// The value of one of the K8sUpgrade's annotations.
    fn annotation(&self, key: &str) -> Option<&'a str> {
        let annotations = self.upgrade.metadata.annotations.as_ref()?;
        annotations.get(key).map(String::as_str)
    }

    /// spec.approval Manual: shows the plan and the checks' verdicts and waits, changing
    /// nothing, until the approve annotation carries this plan's hash.
    fn await_approval(&mut self, plan: &Plan, new_run: bool) {
        let hash = plan.hash();
        let verdicts = self.gate_verdicts(new_run, plan);
        self.record_gates(&verdicts);
        let refusing = verdicts.iter().filter(|v| !v.passed()).count();
        let stale = self
            .annotation(APPROVE_ANNOTATION)
            .map(|old| {
                format!(
                    " The annotation carries {old}, an earlier plan's hash: the plan changed \
                     since it was approved."
                )
            })
            .unwrap_or_default();
        let message = format!(
            "waiting for approval of plan {hash}: {} node(s) to {} ({} upgrade), {} of {} \
             checks refusing now. Review status.plan and status.gates, then approve with: \
             kubectl annotate k8su {} {APPROVE_ANNOTATION}={hash} --overwrite.{stale}",
            plan.steps.len(),
            plan.target,
            plan.kind.as_str(),
            refusing,
            verdicts.len(),
            self.name(),
        );
        let already_said = conditions::get(&self.status.conditions, types::READY)
            .is_some_and(|c| c.reason == "AwaitingApproval" && c.message.contains(&hash));
        if !already_said {
            self.event(false, "AwaitingApproval", message.clone());
        }
        if new_run {
            self.set_phase(Phase::Pending);
            self.status.blocked_reasons.clear();
        }
        self.requeue_within(self.recheck_interval());
        self.note("AwaitingApproval", message);
    }

    /// Leaves Blocked once nothing refuses any more.
    fn unblock(&mut self) {
        if self.status.phase == Some(Phase::Blocked) {
            self.event(false, "Unblocked", "every check passes again".to_owned());
            self.set_phase(Phase::Preflight);
        }
        self.status.blocked_reasons.clear();
    }

    /// How long a failed one-off Job (snapshot, pre-run hook) waits before its next
    /// attempt, counted from when it failed; None once the recheck interval has passed.
    fn retry_wait(&self, failed_at: Option<&Time>, started_at: &Time) -> Option<Duration> {
        let waited = self.elapsed(failed_at.unwrap_or(started_at));
        self.recheck_interval()
            .checked_sub(waited)
            .filter(|left| !left.is_zero())
    }

    fn recheck_interval(&self) -> Duration {
        Duration::from(self.spec.gates.recheck_interval)
    }

    /// Blocked: nothing is changed, every reason is listed, the gates are rechecked.
    fn block(&mut self, reasons: Vec<String>) {
        if self.status.phase != Some(Phase::Blocked) || self.status.blocked_reasons != reasons {
            self.event(
                true,
                "Blocked",
                format!("nothing was changed: {}", reasons.join("; ")),
            );
        }
        self.status.blocked_reasons = reasons;
        self.set_phase(Phase::Blocked);
        self.requeue_within(self.recheck_interval());
        self.note("GatesFailed", self.status.blocked_reasons.join("; "));
    }

    /// True when this run's snapshot Job succeeded.
    fn snapshot_verified(&self) -> bool {
        of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        )
        .is_some_and(|s| s.verified)
    }

    /// Takes the etcd snapshot: creates the Job from the CronJob's template, waits for it
    /// within the timeout; a failure blocks the run and is retried after the recheck
    /// interval under a new attempt.
    fn snapshot(&mut self) {
        let Some(spec) = self.spec.snapshot.clone() else {
            return;
        };
        let run_started = self
            .status
            .started_at
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let current = of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        )
        .cloned();
        let attempt = match &current {
            None => 1,
            Some(record) if record.completed_at.is_none() => record.attempt,
            Some(record) => {
                // The previous attempt failed: retry once the recheck interval has passed.
                if let Some(left) =
                    self.retry_wait(record.completed_at.as_ref(), &record.started_at)
                {
                    let reason = record.message.clone().unwrap_or_default();
                    self.requeue_within(left);
                    return self.block(vec![reason]);
                }
                record.attempt + 1
            }
        };
        let name = crate::snapshot::snapshot_job_name(self.name(), run_started, attempt);
        let inputs = self.observed.snapshot.as_ref();
        let template = match inputs.map(|i| &i.template) {
            Some(Ok(template)) => {
                let field = format!("CronJob {}/{} jobTemplate", spec.namespace, spec.cron_job);
                if let Some(error) = crate::template::job_template_error(template, &field) {
                    return self.block(vec![format!(
                        "the etcd snapshot cannot be taken: {error}; fix the CronJob"
                    )]);
                }
                template.clone()
            }
            Some(Err(error)) => {
                return self.block(vec![format!(
                    "the etcd snapshot cannot be taken: CronJob {}/{} could not be read \
                     ({error}); fix spec.snapshot or create the CronJob",
                    spec.namespace, spec.cron_job
                )]);
            }
            // Not gathered yet: the operator reads it on the next pass.
            None => {
                self.requeue_within(Duration::from_secs(1));
                return self.note("Snapshot", "reading the snapshot CronJob");
            }
        };
        self.unblock();
        self.set_phase(Phase::Snapshot);
        let is_new = current.as_ref().is_none_or(|r| r.job != name);
        if is_new {
            self.status.snapshot = Some(SnapshotRecord {
                job: name.clone(),
                started_at: Time(self.now),
                completed_at: None,
                verified: false,
                attempt,
                message: None,
            });
            self.progressed();
            self.event(
                false,
                "SnapshotStarted",
                format!("taking an etcd snapshot with Job {}/{name}", spec.namespace),
            );
        }
        let owner = Owner {
            name: self.name(),
            uid: self.upgrade.metadata.uid.as_deref().unwrap_or_default(),
        };
        let job = crate::snapshot::job_from_template(&template, owner, &spec.namespace, &name);
        let state = inputs
            .and_then(|i| i.job.as_ref())
            .filter(|job| job.name == name)
            .map(|job| job.state.clone());
        let now = Time(self.now);
        let Some(record) = self.status.snapshot.as_mut() else {
            return;
        };
        let started = record.started_at.clone();
        match state {
            Some(JobState::Succeeded) => {
                record.verified = true;
                record.completed_at = Some(now);
                record.message = Some("the snapshot Job succeeded".to_owned());
                self.progressed();
                self.event(
                    false,
                    "SnapshotTaken",
                    format!("etcd snapshot Job {}/{name} succeeded", spec.namespace),
                );
                self.set_phase(Phase::Preflight);
            }
            Some(JobState::Failed { reason, message }) => {
                let why = format!(
                    "the etcd snapshot Job {}/{name} failed ({reason}: {message}); no node was \
                     touched. Check its logs; it is retried every recheck interval",
                    spec.namespace
                );
                record.completed_at = Some(now);
                record.message = Some(why.clone());
                self.block(vec![why]);
            }
            _ => {
                let timeout = Duration::from(spec.timeout);
                let waited = self.elapsed(&started);
                if waited >= timeout {
                    let why = format!(
                        "the etcd snapshot Job {}/{name} did not finish within {}; no node \
                         was touched. Check why it hangs; it is retried every recheck interval",
                        spec.namespace,
                        gates::human(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX))
                    );
                    if let Some(record) = self.status.snapshot.as_mut() {
                        record.completed_at = Some(Time(self.now));
                        record.message = Some(why.clone());
                    }
                    return self.block(vec![why]);
                }
                self.act(Action::CreateJob(Box::new(job)));
                self.requeue_within(timeout - waited);
                self.note(
                    "Snapshot",
                    format!(
                        "waiting for the etcd snapshot Job {}/{name}",
                        spec.namespace
                    ),
                );
            }
        }
    }

    fn spec_target_unchanged(&self) -> bool {
        KubeVersion::parse_target(&self.spec.target_version)
            .is_ok_and(|t| self.status.target_version.as_deref() == Some(&t.to_string()))
    }

    fn run_in_progress(&self) -> bool {
        !matches!(
            self.status.phase,
            None | Some(Phase::Pending | Phase::Succeeded | Phase::Failed)
        ) || self.status.nodes.iter().any(|n| n.step == NodeStep::Failed)
            || self.failed_post_hook().is_some()
    }

    /// This run's post-run hook, when it failed: the run stays Failed until a retry.
    fn failed_post_hook(&self) -> Option<&HookRecord> {
        self.status
            .hooks
            .iter()
            .find(|h| h.kind == HookKind::Post && h.completed_at.is_some() && !h.succeeded)
    }

    /// Runs the hook of `kind` (spec.hooks) once per run: Done when it succeeded or there is
    /// none. A failed pre-run hook blocks (nothing was touched) and is retried every recheck
    /// interval; a failed post-run hook fails the run until the retry annotation.
    fn hook(&mut self, kind: HookKind) -> HookProgress {
        let Some(spec) = crate::hooks::hook(self.spec.hooks.as_ref(), kind).cloned() else {
            return HookProgress::Done;
        };
        let Ok(template) = crate::hooks::template(&spec, kind) else {
            return HookProgress::Waiting; // refused with the reason before the plan
        };
        let current = self.status.hooks.iter().find(|h| h.kind == kind).cloned();
        let attempt = match &current {
            None => 1,
            Some(record) if record.succeeded => return HookProgress::Done,
            Some(record) if record.completed_at.is_none() => record.attempt,
            Some(record) => {
                let message = record.message.clone().unwrap_or_default();
                if kind == HookKind::Post {
                    self.fail_on_hook(message);
                    return HookProgress::Waiting;
                }
                if let Some(left) =
                    self.retry_wait(record.completed_at.as_ref(), &record.started_at)
                {
                    self.block(vec![message]);
                    self.requeue_within(left);
                    return HookProgress::Waiting;
                }
                record.attempt + 1
            }
        };
        let run_started = self
            .status
            .started_at
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let name = crate::hooks::job_name(self.name(), kind, run_started, attempt);
        let job = format!("{}/{name}", spec.namespace);
        if current.as_ref().is_none_or(|r| r.job != job) {
            self.status.hooks.retain(|h| h.kind != kind);
            self.status.hooks.push(HookRecord {
                kind,
                job: job.clone(),
                attempt,
                started_at: Time(self.now),
                completed_at: None,
                succeeded: false,
                message: None,
            });
            self.unblock();
            self.progressed();
            self.event(
                false,
                "HookStarted",
                format!("running the {}-run hook Job {job}", kind.as_str()),
            );
        }
        let state = self
            .observed
            .hook_jobs
            .iter()
            .find(|j| j.name == name)
            .map(|j| j.state.clone());
        let started = self
            .status
            .hooks
            .iter()
            .find(|h| h.kind == kind)
            .map_or(Time(self.now), |h| h.started_at.clone());
        let timeout = Duration::from(spec.timeout);
        let waited = self.elapsed(&started);
        let failure = match state {
            Some(JobState::Succeeded) => {
                self.complete_hook(kind, true, "the Job succeeded".to_owned());
                self.progressed();
                self.event(
                    false,
                    "HookSucceeded",
                    format!("the {}-run hook Job {job} succeeded", kind.as_str()),
                );
                return HookProgress::Done;
            }
            Some(JobState::Failed { reason, message }) => format!(
                "the {}-run hook Job {job} failed ({reason}: {message})",
                kind.as_str()
            ),
            _ if waited >= timeout => format!(
                "the {}-run hook Job {job} did not finish within {}",
                kind.as_str(),
                gates::human(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX))
            ),
            _ => {
                let owner = Owner {
                    name: self.name(),
                    uid: self.upgrade.metadata.uid.as_deref().unwrap_or_default(),
                };
                let rendered =
                    crate::snapshot::job_from_template(&template, owner, &spec.namespace, &name);
                self.act(Action::CreateJob(Box::new(rendered)));
                self.requeue_within(timeout - waited);
                self.note(
                    "RunningHook",
                    format!("waiting for the {}-run hook Job {job}", kind.as_str()),
                );
                return HookProgress::Waiting;
            }
        };
        let failure = match kind {
            HookKind::Pre => format!(
                "{failure}; no node was touched. Check its logs; it is retried every recheck \
                 interval"
            ),
            HookKind::Post => format!(
                "{failure}; every node was upgraded. Check its logs, fix the cause, then set \
                 a new value on the {RETRY_ANNOTATION} annotation to run it again"
            ),
        };
        self.complete_hook(kind, false, failure.clone());
        match kind {
            HookKind::Pre => self.block(vec![failure]),
            HookKind::Post => {
                self.event(true, "HookFailed", failure.clone());
                self.fail_on_hook(failure);
            }
        }
        HookProgress::Waiting
    }

    fn complete_hook(&mut self, kind: HookKind, succeeded: bool, message: String) {
        let now = Time(self.now);
        if let Some(record) = self.status.hooks.iter_mut().find(|h| h.kind == kind) {
            record.completed_at = Some(now);
            record.succeeded = succeeded;
            record.message = Some(message);
        }
    }

    fn fail_on_hook(&mut self, message: String) {
        self.set_phase(Phase::Failed);
        self.note("HookFailed", message);
    }

    /// The K8sUpgrade this one must wait for, if any.
    fn lock_holder(&self) -> Option<String> {
        if self.run_in_progress() {
            return None;
        }
        let me = self.name();
        let created = self
            .upgrade
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        self.observed
            .others
            .iter()
            .filter(|o| o.name != me)
            .find(|o| o.holds_lock)
            .or_else(|| {
                // Two waiting at once: the older one (then the lower name) goes first.
                self.observed
                    .others
                    .iter()
                    .filter(|o| o.name != me)
                    .find(|o| {
                        !o.holds_lock
                            && o.created != 0
                            && (o.created, o.name.as_str()) < (created, me)
                            && o.waiting
                    })
            })
            .map(|o| o.name.clone())
    }

    /// A new value of the retry annotation retries the failed nodes from their drain, and a
    /// failed post-run hook as its next attempt.
    fn handle_retry(&mut self) {
        let Some(value) = self.annotation(RETRY_ANNOTATION) else {
            return;
        };
        if self.status.handled_retry.as_deref() == Some(value) {
            return;
        }
        self.status.handled_retry = Some(value.to_owned());
        let now = Time(self.now);
        if let Some(hook) = self
            .status
            .hooks
            .iter_mut()
            .find(|h| h.kind == HookKind::Post && h.completed_at.is_some() && !h.succeeded)
        {
            hook.attempt += 1;
            hook.started_at = now.clone();
            hook.completed_at = None;
            hook.message = Some("retrying after the upchain.dev/retry annotation changed".into());
            self.set_phase(Phase::Postflight);
            self.progressed();
        }
        let mut retried = Vec::new();
        for record in &mut self.status.nodes {
            if record.step == NodeStep::Failed {
                record.step = NodeStep::Draining;
                record.step_started_at = now.clone();
                record.failures = 0;
                record.finished_at = None;
                record.drain_preview = None;
                record.message =
                    Some("retrying after the upchain.dev/retry annotation changed".to_owned());
                retried.push(record.name.clone());
            }
        }
        if !retried.is_empty() {
            self.progressed();
            self.event(
                false,
                "Retrying",
                format!("retrying {}", retried.join(", ")),
            );
        }
    }

    /// A Failed node that was since added to spec.nodes.skip no longer fails the run; it is
    /// uncordoned, since upchain cordoned it.
    fn release_skipped_failures(&mut self) {
        let skip = &self.spec.nodes.skip;
        let uncordon: Vec<String> = self
            .status
            .nodes
            .iter()
            .filter(|r| r.step == NodeStep::Failed && r.cordoned && skip.contains(&r.name))
            .map(|r| r.name.clone())
            .collect();
        for node in uncordon {
            self.release_node(&node);
        }
    }

    /// Uncordons a node upchain cordoned, and forgets the cordon once the cluster shows it.
    fn release_node(&mut self, node: &str) {
        match self.node(node) {
            Some(n) if n.unschedulable => self.act(Action::Uncordon {
                node: node.to_owned(),
            }),
            _ => {
                if let Some(record) = self.status.nodes.iter_mut().find(|r| r.name == node) {
                    record.cordoned = false;
                }
            }
        }
    }

    fn failed_node(&self) -> Option<&NodeRecord> {
        self.status
            .nodes
            .iter()
            .find(|r| r.step == NodeStep::Failed && !self.spec.nodes.skip.contains(&r.name))
    }

    fn fail_on_node(&mut self) {
        let (name, message) = match self.failed_node() {
            Some(record) => (
                record.name.clone(),
                record.message.clone().unwrap_or_default(),
            ),
            None => return,
        };
        self.set_phase(Phase::Failed);
        self.note(
            "NodeFailed",
            format!(
                "node {name} failed: {message}. No other node is started. Fix the cause, then \
                 set a new value on the {RETRY_ANNOTATION} annotation to retry, or add the node \
                 to spec.nodes.skip"
            ),
        );
    }

    /// Refuses the spec: nothing is mutated, and the run waits for a corrected spec.
    fn refuse(&mut self, reason: &'static str, message: String) {
        let already_said = conditions::get(&self.status.conditions, types::READY)
            .is_some_and(|c| c.reason == reason && c.message == message);
        if self.status.phase != Some(Phase::Failed) || !already_said {
            self.event(true, reason, format!("{message}; nothing was changed"));
        }
        self.status.plan.clear();
        self.status.plan_hash = None;
        self.set_phase(Phase::Failed);
        self.note(reason, message);
    }

    fn start_run(&mut self, plan: &Plan) {
        if let Some(finished) = self.finished_run() {
            self.status.history.insert(0, finished);
            self.status.history.truncate(HISTORY_LIMIT);
        }
        let now = Time(self.now);
        self.status.nodes.clear();
        self.status.upgraded_nodes.clear();
        self.status.hooks.clear();
        self.status.completed_at = None;
        self.status.started_at = Some(now.clone());
        self.status.last_progress_at = Some(now);
        self.status.from_version = Some(plan.from_version.to_string());
        self.status.target_version = Some(plan.target.to_string());
        self.status.upgrade_kind = Some(plan.kind);
        self.set_phase(Phase::Preflight);
        self.event(
            false,
            "RunStarted",
            format!(
                "upgrading {} node(s) from {} to {} ({} upgrade)",
                plan.steps.len(),
                plan.from_version,
                plan.target,
                plan.kind.as_str()
            ),
        );
    }

    /// The record of the run that just ended, if the status holds one not yet recorded.
    fn finished_run(&self) -> Option<RunRecord> {
        self.status.started_at.as_ref()?;
        let target = self.status.target_version.clone()?;
        let result = self.status.phase?;
        if result == Phase::Succeeded {
            return None; // recorded when it succeeded
        }
        let failed = self
            .status
            .nodes
            .iter()
            .find(|n| n.step == NodeStep::Failed);
        Some(RunRecord {
            from_version: self.status.from_version.clone(),
            target_version: target,
            result,
            started_at: self.status.started_at.clone(),
            finished_at: Some(Time(self.now)),
            failed_node: failed.map(|n| n.name.clone()),
            reason: failed
                .and_then(|n| n.message.clone())
                .or_else(|| self.failed_post_hook().and_then(|h| h.message.clone())),
        })
    }

    fn start_batch(&mut self, plan: &Plan) {
        let now = Time(self.now);
        let mut started = Vec::new();
        for step in plan.next_batch() {
            let record = NodeRecord {
                name: step.name.clone(),
                role: step.role,
                first_control_plane: step.first_control_plane,
                kind: step.kind,
                target_version: plan.target.to_string(),
                version_before: step.version.to_string(),
                version_after: None,
                step: NodeStep::Draining,
                step_started_at: now.clone(),
                cordoned: true,
                attempts: 0,
                failures: 0,
                job: None,
                started_at: now.clone(),
                finished_at: None,
                message: None,
                waiting_for_pods: Vec::new(),
                waiting_for_budgets: Vec::new(),
                drain_preview: None,
                job_result: None,
            };
            self.status.nodes.retain(|r| r.name != step.name);
            self.status.upgraded_nodes.retain(|n| *n != step.name);
            self.status.nodes.push(record);
            started.push(step.name.clone());
        }
        self.progressed();
        for node in &started {
            self.node_event(
                false,
                "NodeStarted",
                node,
                format!("cordoning and draining {node} (target {})", plan.target),
            );
        }
    }

    fn postflight(&mut self) {
        if let Some(message) = self.failed_post_hook().and_then(|h| h.message.clone()) {
            return self.fail_on_hook(message);
        }
        self.set_phase(Phase::Postflight);
        let not_ready: Vec<&str> = self
            .observed
            .nodes
            .iter()
            .filter(|n| !n.ready && !self.spec.nodes.skip.contains(&n.name))
            .map(|n| n.name.as_str())
            .collect();
        if !not_ready.is_empty() {
            self.requeue_within(WAIT_POLL);
            return self.note(
                "Postflight",
                format!(
                    "every node is at the target; waiting for {} to be Ready",
                    not_ready.join(", ")
                ),
            );
        }
        let Some(inputs) = &self.observed.postflight else {
            // Gathered by the operator once the phase says Postflight.
            self.requeue_within(Duration::from_secs(1));
            return self.note(
                "Postflight",
                "every node is at the target; checking the control plane and workloads",
            );
        };
        let target = self
            .status
            .target_version
            .as_deref()
            .and_then(|t| KubeVersion::parse_target(t).ok());
        let mut verdicts: Vec<gates::Verdict> = target
            .map(|t| gates::postflight_gate(inputs, t))
            .into_iter()
            .collect();
        verdicts.extend(gates::alerts(&self.spec.gates, &self.observed.gates));
        let reasons = gates::reasons(&verdicts);
        if !reasons.is_empty() {
            // Every node was upgraded, so this is not Blocked; it stays here, and reports
            // Stalled after stallTimeout, until the cluster is healthy.
            self.requeue_within(self.recheck_interval());
            return self.note(
                "PostflightWaiting",
                format!(
                    "every node is at the target, but the postflight waits: {}",
                    reasons.join("; ")
                ),
            );
        }
        if self.hook(HookKind::Post) == HookProgress::Waiting {
            return;
        }
        let now = Time(self.now);
        self.set_phase(Phase::Succeeded);
        self.status.completed_at = Some(now.clone());
        self.progressed();
        let target = self.status.target_version.clone().unwrap_or_default();
        self.status.history.insert(
            0,
            RunRecord {
                from_version: self.status.from_version.clone(),
                target_version: target.clone(),
                result: Phase::Succeeded,
                started_at: self.status.started_at.clone(),
                finished_at: Some(now),
                failed_node: None,
                reason: None,
            },
        );
        self.status.history.truncate(HISTORY_LIMIT);
        self.event(
            false,
            "Succeeded",
            format!("every selected node runs {target}"),
        );
        self.note("Succeeded", "every selected node runs the target version");
    }

    fn advance_node(&mut self, index: usize, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Some(node) = self.node(&record.name) else {
            self.enter(
                index,
                NodeStep::Done,
                Some("the node left the cluster during its upgrade".to_owned()),
            );
            let record = &mut self.status.nodes[index];
            record.cordoned = false;
            record.finished_at = Some(Time(self.now));
            let name = record.name.clone();
            return self.node_event(
                true,
                "NodeRemoved",
                &name,
                format!("node {name} left the cluster during its upgrade"),
            );
        };
        let target = KubeVersion::parse_target(&record.target_version).ok();
        let at_target =
            target.is_some_and(|t| KubeVersion::parse_reported(&node.kubelet_version) == Ok(t));
        match record.step {
            NodeStep::Draining => self.drain(index, node.unschedulable, batch),
            NodeStep::Upgrading => self.upgrade_node(index, batch),
            NodeStep::Rejoining => {
                if node.unschedulable {
                    self.act(Action::Uncordon {
                        node: record.name.clone(),
                    });
                } else {
                    self.status.nodes[index].cordoned = false;
                }
                if node.ready && at_target && !node.unschedulable {
                    self.enter(index, NodeStep::Soaking, None);
                    self.node_event(
                        false,
                        "NodeRejoined",
                        &record.name,
                        format!("{} is Ready at {}", record.name, record.target_version),
                    );
                    return;
                }
                let timeout = Duration::from(self.spec.rejoin_timeout);
                let waited = self.elapsed(&record.step_started_at);
                if waited >= timeout {
                    return self.fail_node(
                        index,
                        format!(
                            "did not come back Ready with kubelet {} within {}s after its upgrade \
                             Job succeeded (kubelet reports {}, Ready={}); check the kubelet on \
                             the node (journalctl -u kubelet)",
                            record.target_version,
                            timeout.as_secs(),
                            node.kubelet_version,
                            node.ready
                        ),
                    );
                }
                self.requeue_within(timeout - waited);
            }
            NodeStep::Soaking => {
                if !(node.ready && at_target) {
                    self.enter(
                        index,
                        NodeStep::Rejoining,
                        Some("left Ready while soaking".to_owned()),
                    );
                    return self.node_event(
                        true,
                        "NodeNotReady",
                        &record.name,
                        format!("{} left Ready while soaking", record.name),
                    );
                }
                let soak = Duration::from(self.spec.soak);
                let soaked = self.elapsed(&record.step_started_at);
                if soaked >= soak {
                    let record = &mut self.status.nodes[index];
                    record.version_after = Some(node.kubelet_version.clone());
                    record.finished_at = Some(Time(self.now));
                    self.enter(index, NodeStep::Done, None);
                    let name = self.status.nodes[index].name.clone();
                    return self.node_event(
                        false,
                        "NodeUpgraded",
                        &name,
                        format!("{name} runs {}", node.kubelet_version),
                    );
                }
                self.requeue_within(soak - soaked);
            }
            NodeStep::Done | NodeStep::Failed => {}
        }
    }

    fn enter(&mut self, index: usize, step: NodeStep, message: Option<String>) {
        let record = &mut self.status.nodes[index];
        record.step = step;
        record.step_started_at = Time(self.now);
        record.message = message;
        record.waiting_for_pods.clear();
        record.waiting_for_budgets.clear();
        self.progressed();
    }

    fn fail_node(&mut self, index: usize, message: String) {
        let name = self.status.nodes[index].name.clone();
        self.enter(index, NodeStep::Failed, Some(message.clone()));
        self.status.nodes[index].finished_at = Some(Time(self.now));
        self.node_event(true, "NodeFailed", &name, format!("{name} {message}"));
    }

    fn drain(&mut self, index: usize, cordoned: bool, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Some(pods) = self.observed.pods.get(&record.name) else {
            // The operator lists the Pods of draining nodes; look again straight away, and
            // cordon once the preview says what the drain will do.
            return self.requeue_within(Duration::ZERO);
        };
        let progress = drain_progress(
            pods,
            self.observed.operator_pod.as_deref(),
            &self.observed.budgets,
            &self.spec.drain,
        );
        if record.drain_preview.is_none() {
            let preview = progress.preview();
            let blocked = if preview.blocked_by.is_empty() {
                String::new()
            } else {
                format!(
                    "; PodDisruptionBudget(s) {} allow no disruption now and will hold the \
                     drain until they do",
                    preview.blocked_by.join(", ")
                )
            };
            self.node_event(
                !preview.blocked_by.is_empty(),
                "DrainPreview",
                &record.name,
                format!(
                    "draining {} evicts {} Pod(s){}{blocked}",
                    record.name,
                    preview.evict_count,
                    if preview.evict.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", preview.evict.join(", "))
                    }
                ),
            );
            self.status.nodes[index].drain_preview = Some(preview);
        }
        if !cordoned {
            self.act(Action::Cordon {
                node: record.name.clone(),
            });
        }
        if cordoned && progress.is_done() {
            self.status.nodes[index].attempts += 1;
            self.enter(index, NodeStep::Upgrading, None);
            return self.upgrade_node(index, batch);
        }
        let timeout = Duration::from(self.spec.drain.timeout);
        let waited = self.elapsed(&record.step_started_at);
        if waited >= timeout {
            match self.spec.drain.on_timeout {
                DrainTimeoutAction::Fail => {
                    return self.fail_node(
                        index,
                        format!(
                            "drain timed out after {}s; these Pods did not leave: {}. A \
                             PodDisruptionBudget that allows no disruption is the usual cause",
                            timeout.as_secs(),
                            progress.waiting.join(", ")
                        ),
                    );
                }
                DrainTimeoutAction::Force => self.act(Action::DeletePods {
                    node: record.name.clone(),
                    pods: progress.waiting.clone(),
                }),
            }
        } else {
            if !progress.evict.is_empty() {
                self.act(Action::Evict {
                    node: record.name.clone(),
                    pods: progress.evict.clone(),
                    grace_period_seconds: self.spec.drain.grace_period_seconds,
                });
            }
            if !progress.delete.is_empty() {
                let message = format!(
                    "{DELETING_BLOCKED} {}: their PodDisruptionBudget allows no disruption \
                     and expects one Pod, so no eviction can ever move them \
                     (spec.drain.deletePdbBlockedSingleReplicaPods)",
                    progress.delete.join(", "),
                );
                if record.message.as_ref() != Some(&message) {
                    self.node_event(
                        true,
                        "DeletingBlockedPods",
                        &record.name,
                        format!("{} {message}", record.name),
                    );
                }
                self.status.nodes[index].message = Some(message);
                self.act(Action::DeletePods {
                    node: record.name.clone(),
                    pods: progress.delete.clone(),
                });
            }
        }
        let held = progress.held_reasons(&record.name);
        let record = &mut self.status.nodes[index];
        if !held.is_empty() {
            record.message = Some(format!(
                "{WAITING_ON_HELD} {}; or see drain.onTimeout",
                held.join("; ")
            ));
        } else if !progress.delete.is_empty() {
            // Said above.
        } else if !progress.blocked_by.is_empty() {
            record.message = Some(format!(
                "{WAITING_ON_BUDGETS} {} that allow no disruption now; scale up or relax them, \
                 or see drain.onTimeout",
                progress.blocked_by.join(", ")
            ));
        } else if record.message.as_deref().is_some_and(|m| {
            [WAITING_ON_BUDGETS, WAITING_ON_HELD, DELETING_BLOCKED]
                .iter()
                .any(|prefix| m.starts_with(prefix))
        }) {
            record.message = None;
        }
        record.waiting_for_pods = progress.waiting;
        record.waiting_for_budgets = progress.blocked_by;
        self.requeue_within(DRAIN_POLL);
    }

    fn upgrade_node(&mut self, index: usize, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Ok(target) = KubeVersion::parse_target(&record.target_version) else {
            return self.fail_node(
                index,
                format!("has an unreadable target {}", record.target_version),
            );
        };
        let upgrade = self.upgrade;
        let owner = Owner {
            name: upgrade.metadata.name.as_deref().unwrap_or_default(),
            uid: upgrade.metadata.uid.as_deref().unwrap_or_default(),
        };
        let untagged = untagged_job_name(owner.name, &record.name, target, record.attempts);
        let name = match &record.job {
            Some(job) if *job == untagged => untagged,
            _ => job_name(owner, &record.name, target, record.attempts),
        };
        if record.job.as_deref() != Some(&name) {
            self.status.nodes[index].job = Some(name.clone());
            self.node_event(
                false,
                "JobCreated",
                &record.name,
                format!(
                    "upgrade Job {name} for {} (attempt {})",
                    record.name, record.attempts
                ),
            );
        }
        let observed = self.observed.job(&name);
        if let Some(job) = observed.filter(|j| j.state != JobState::Running) {
            self.status.nodes[index].job_result = Some(crate::evidence::job_result(
                &name,
                &job.state,
                job.evidence.as_ref(),
            ));
        }
        match observed.map(|j| &j.state) {
            None => {
                let node_ip = self
                    .node(&record.name)
                    .and_then(|n| n.internal_ip.clone())
                    .unwrap_or_default();
                let job = NodeJob {
                    owner,
                    runner: &self.spec.runner,
                    node: &record.name,
                    node_ip: &node_ip,
                    role: record.role,
                    first_control_plane: record.first_control_plane,
                    kind: record.kind,
                    target,
                    attempt: record.attempts,
                    batch,
                }
                .render();
                self.act(Action::CreateJob(Box::new(job)));
            }
            Some(JobState::Running) => {}
            Some(JobState::Succeeded) => {
                self.enter(index, NodeStep::Rejoining, None);
                self.node_event(
                    false,
                    "JobSucceeded",
                    &record.name,
                    format!("upgrade Job {name} succeeded; uncordoning {}", record.name),
                );
            }
            Some(JobState::Failed { reason, message }) => {
                let failures = record.failures + 1;
                self.status.nodes[index].failures = failures;
                let detail = format!("upgrade Job {name} failed ({reason}: {message})");
                if failures < self.spec.runner.attempts {
                    self.status.nodes[index].attempts += 1;
                    self.enter(index, NodeStep::Upgrading, Some(detail.clone()));
                    self.node_event(
                        true,
                        "JobFailed",
                        &record.name,
                        format!(
                            "{detail}; retrying ({} of {} attempts used)",
                            failures, self.spec.runner.attempts
                        ),
                    );
                } else {
                    self.fail_node(
                        index,
                        format!(
                            "{detail} after {failures} attempt(s); the node is left cordoned. \
                             See kubectl -n {} logs job/{name}",
                            self.spec.runner.namespace
                        ),
                    );
                }
            }
        }
    }

    /// Keeps one Alertmanager silence per node in progress: created when the node starts,
    /// extended by `extendBy` once half of it is used (never past `maxDuration` from the
    /// node's start), and expired once the node is no longer in progress.
    fn silences(&mut self) {
        let spec = self.spec.gates.silences.as_ref();
        let active: Vec<(String, Timestamp)> = self
            .status
            .nodes
            .iter()
            .filter(|n| n.step.is_active() && spec.is_some())
            .map(|n| (n.name.clone(), n.started_at.0))
            .collect();
        let (kept, ended): (Vec<SilenceRecord>, Vec<SilenceRecord>) =
            std::mem::take(&mut self.status.silences)
                .into_iter()
                .partition(|r| active.iter().any(|(node, _)| *node == r.node));
        self.status.silences = kept;
        for record in ended {
            self.node_event(
                false,
                "SilenceExpired",
                &record.node,
                format!(
                    "expiring the Alertmanager silence {} of {}, which is no longer in progress",
                    record.id, record.node
                ),
            );
            self.act(Action::ExpireSilence {
                node: record.node,
                id: record.id,
            });
        }
        let Some(spec) = spec else {
            return;
        };
        let extend_by = Duration::from(spec.extend_by);
        let step = jiff::SignedDuration::try_from(extend_by).unwrap_or_default();
        let cap =
            jiff::SignedDuration::try_from(Duration::from(spec.max_duration)).unwrap_or_default();
        for (node, started) in active {
            let hard_end = started.saturating_add(cap).unwrap_or(started);
            let wanted = self
                .now
                .saturating_add(step)
                .unwrap_or(self.now)
                .min(hard_end);
            let record = self
                .status
                .silences
                .iter()
                .find(|r| r.node == node)
                .cloned();
            let left = record.as_ref().map_or(Duration::ZERO, |r| {
                Duration::try_from(r.ends_at.0.duration_since(self.now)).unwrap_or_default()
            });
            if left > extend_by / 2 {
                self.requeue_within(left - extend_by / 2);
                continue;
            }
            if wanted <= record.as_ref().map_or(self.now, |r| r.ends_at.0) {
                continue; // at its cap: the silence ends on its own
            }
            // The operator says so in an Event once Alertmanager answered with the ID.
            self.act(Action::Silence {
                node,
                id: record.map(|r| r.id),
                ends_at: wanted,
            });
            self.requeue_within(extend_by / 2);
        }
    }

    /// Fills in what is derived from the rest: conditions, summary columns, requeue.
    fn finish(mut self, previous: &K8sUpgradeStatus) -> Decision {
        self.silences();
        fold_done_records(&mut self.status);
        let generation = self.upgrade.metadata.generation;
        self.status.observed_generation = generation;
        let phase = self.status.phase.unwrap_or(Phase::Pending);
        if self.status.phase.is_none() {
            self.status.phase = Some(Phase::Pending);
        }

        let active: Vec<&NodeRecord> = self
            .status
            .nodes
            .iter()
            .filter(|n| n.step.is_active())
            .collect();
        self.status.current_node = (!active.is_empty()).then(|| {
            active
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        self.status.current_step = active.first().map(|n| n.step);
        let pinned = self.status.target_version.clone();
        let done = self
            .status
            .nodes
            .iter()
            .filter(|n| n.step == NodeStep::Done && Some(&n.target_version) == pinned.as_ref())
            .count()
            + self.status.upgraded_nodes.len();
        let remaining = self
            .status
            .plan
            .iter()
            .filter(|p| !active.iter().any(|a| a.name == p.name))
            .count()
            + active.len();
        self.status.progress = self
            .status
            .started_at
            .is_some()
            .then(|| format!("{done}/{}", done + remaining));

        let running = matches!(
            phase,
            Phase::Preflight
                | Phase::Snapshot
                | Phase::ControlPlane
                | Phase::Workers
                | Phase::Postflight
        );
        let State { reason, message } = self.state.clone();
        let (reason, message) = if reason.is_empty() {
            ("Pending", "waiting for the first check".to_owned())
        } else {
            (reason, message)
        };
        let now = self.now;
        let conditions = &mut self.status.conditions;
        conditions::set(
            conditions,
            if phase == Phase::Succeeded {
                Desired::yes(types::READY, "Succeeded", message.clone())
            } else {
                Desired::no(types::READY, reason, message.clone())
            },
            generation,
            now,
        );
        conditions::set(
            conditions,
            if running && !self.spec.paused {
                Desired::yes(types::PROGRESSING, reason, message.clone())
            } else {
                Desired::no(types::PROGRESSING, reason, message.clone())
            },
            generation,
            now,
        );
        conditions::set(
            conditions,
            if phase == Phase::Blocked {
                Desired::yes(types::BLOCKED, "GatesFailed", message.clone())
            } else {
                Desired::no(types::BLOCKED, "GatesPass", "no check refuses the run")
            },
            generation,
            now,
        );
        let this_run = of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        );
        let snapshot = match (&self.spec.snapshot, this_run) {
            (None, _) => Desired::no(
                types::SNAPSHOT_TAKEN,
                "NotConfigured",
                "no etcd snapshot is configured for this run",
            ),
            (Some(_), Some(record)) if record.verified => Desired::yes(
                types::SNAPSHOT_TAKEN,
                "Verified",
                format!("etcd snapshot Job {} succeeded", record.job),
            ),
            (Some(_), Some(record)) => Desired::no(
                types::SNAPSHOT_TAKEN,
                if record.completed_at.is_some() {
                    "Failed"
                } else {
                    "InProgress"
                },
                record
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("etcd snapshot Job {} is running", record.job)),
            ),
            (Some(_), None) => Desired::no(
                types::SNAPSHOT_TAKEN,
                "Pending",
                "the etcd snapshot is taken before the first node",
            ),
        };
        conditions::set(conditions, snapshot, generation, now);

        let stall_timeout = Duration::from(self.spec.stall_timeout);
        let quiet_for = self
            .status
            .last_progress_at
            .as_ref()
            .map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or_default());
        // Waiting for the maintenance window is not a stall: it is the plan.
        let waiting_for_window = self.status.next_window_at.is_some();
        let stalled = running
            && !self.spec.paused
            && !waiting_for_window
            && quiet_for.is_some_and(|q| q >= stall_timeout);
        if stalled && !conditions::is_true(&previous.conditions, types::STALLED) {
            let step = self.status.current_step.map_or("none", NodeStep::as_str);
            self.event(
                true,
                "Stalled",
                format!(
                    "no progress for {}s (phase {}, node {} at step {step})",
                    stall_timeout.as_secs(),
                    phase.as_str(),
                    self.status.current_node.as_deref().unwrap_or("none"),
                ),
            );
        }
        let conditions = &mut self.status.conditions;
        conditions::set(
            conditions,
            if stalled {
                Desired::yes(
                    types::STALLED,
                    "NoProgress",
                    format!("no progress for at least {}s", stall_timeout.as_secs()),
                )
            } else {
                Desired::no(
                    types::STALLED,
                    "Progressing",
                    "progress within spec.stallTimeout",
                )
            },
            generation,
            now,
        );
        if running
            && !stalled
            && !waiting_for_window
            && let Some(quiet) = quiet_for
        {
            self.requeue_within(stall_timeout.saturating_sub(quiet));
        }

        let mut actions = self.actions;
        // Events last: they describe what the mutating actions are doing.
        actions.sort_by_key(|a| !a.is_mutating());
        Decision {
            status: self.status,
            actions,
            requeue: self.requeue,
        }
    }
}

/// What deleting a K8sUpgrade requires before its finalizer may be removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finalization {
    /// Uncordons of nodes upchain cordoned, and deletions of the run's finished Jobs.
    pub actions: Vec<Action>,
    /// Upgrade Jobs still running: a node's upgrade is never cut off half-way.
    pub waiting_for_jobs: Vec<String>,
}

impl Finalization {
    /// True when, once `actions` are carried out, the finalizer can go.
    pub fn can_let_go(&self) -> bool {
        self.waiting_for_jobs.is_empty()
    }
}

/// On deletion: let running node Jobs finish, uncordon every node upchain cordoned (a
/// node whose Job still runs stays cordoned until it finishes), and delete the finished
/// Jobs, which no owner reference ties to the K8sUpgrade. A Job the operator cannot see
/// is taken as not running, so a Job that was never created cannot hold the deletion.
pub fn finalize(upgrade: &K8sUpgrade, observed: &Observed) -> Finalization {
    let status = upgrade.status.clone().unwrap_or_default();
    let mut finalization = Finalization::default();
    for job in &observed.jobs {
        if job.state == JobState::Running {
            finalization.waiting_for_jobs.push(job.name.clone());
        }
    }
    let job_running = |record: &NodeRecord| {
        record
            .job
            .as_ref()
            .is_some_and(|job| finalization.waiting_for_jobs.contains(job))
    };
    let nodes = observed.nodes_by_name();
    for record in &status.nodes {
        let unschedulable = nodes
            .get(record.name.as_str())
            .is_some_and(|n| n.unschedulable);
        if record.cordoned && unschedulable && !job_running(record) {
            finalization.actions.push(Action::Uncordon {
                node: record.name.clone(),
            });
        }
    }
    finalization.actions.extend(
        observed
            .jobs
            .iter()
            .filter(|job| job.state != JobState::Running)
            .map(|job| Action::DeleteJob {
                name: job.name.clone(),
            }),
    );
    // A node whose Job still runs keeps its silence until it lapses.
    finalization.actions.extend(
        status
            .silences
            .iter()
            .filter(|s| {
                !status
                    .nodes
                    .iter()
                    .any(|r| r.name == s.node && job_running(r))
            })
            .map(|s| Action::ExpireSilence {
                node: s.node.clone(),
                id: s.id.clone(),
            }),
    );
    finalization
}
