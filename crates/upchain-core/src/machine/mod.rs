//! The phase machine: `decide(upgrade, observed, now) -> Decision`.
//!
//! Every step is level-based: it compares what the status intends with what the cluster
//! shows and emits the actions that close the gap. The operator persists the decision's
//! status before it carries out the actions, so the intent (the node in progress and its
//! step) is on record before any cordon, eviction or Job. Repeating a decision against an
//! unchanged cluster repeats only idempotent actions (same cordon, same Job name).

mod analysis;
mod budget;
mod checks;
mod decision;
mod etcd;
mod finalize;
mod lock;
mod needs;
mod node_steps;
mod one_off;
mod postflight;
mod prepare;
mod run;
mod silences;
mod summary;

pub use budget::STATUS_BUDGET;
pub use decision::{Action, Decision, Event, Notification, NotifyKind};
pub use finalize::{Finalization, finalize};
pub use lock::holds_lock;
pub use needs::{JobsToRead, Needs, needs, woken_by_nodes};
pub use silences::{record_silences, silence_failed_event, silenced_event};

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{K8sUpgrade, K8sUpgradeSpec, K8sUpgradeStatus, NodeStep, Phase, SnapshotRecord};

use crate::conditions::{self, types};
use crate::job::Owner;
use crate::observe::{Observed, ObservedNode};
use crate::plan::Plan;
use crate::reason::Reason;
use crate::version::KubeVersion;

/// How often a drain re-checks its Pods while they leave.
pub const DRAIN_POLL: Duration = Duration::from_secs(5);
/// How often a K8sUpgrade waiting for another one, or for postflight, looks again.
pub const WAIT_POLL: Duration = Duration::from_secs(30);
/// Runs kept in status.history.
pub const HISTORY_LIMIT: usize = 5;

/// Done nodes that keep their full record in status; older ones are only counted, in
/// `upgradedWithoutRecord`. A record is 300 bytes to 2.5 kB (its log tail): the status
/// stays a few kilobytes whatever the cluster's size, and every write carries all of it.
pub const DONE_RECORDS_KEPT: usize = 10;
/// Nodes of the plan listed in `status.plan`; `status.pendingNodes` counts them all.
pub const PLAN_SHOWN: usize = 20;
/// What a step returns once it has made its change: the transition ends there.
const STOP: ControlFlow<()> = ControlFlow::Break(());
/// Safety bound on transitions taken in one decision.
const MAX_TRANSITIONS: usize = 64;

/// The snapshot record, if it belongs to the run that started at `run_started`: a record
/// from an earlier run says nothing about this one.
fn of_this_run<'a>(
    record: Option<&'a SnapshotRecord>,
    run_started: Option<&Time>,
) -> Option<&'a SnapshotRecord> {
    let run_started = run_started.map_or(0, |t| t.0.as_second());
    record.filter(|s| s.started_at.0.as_second() >= run_started)
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
        plan: None,
    };
    for _ in 0..MAX_TRANSITIONS {
        let before = machine.status.clone();
        machine.actions.retain(|a| !a.is_mutating());
        machine.requeue = None;
        let _ = machine.step();
        if machine.status == before {
            break;
        }
    }
    machine.finish(&previous)
}

/// Why the run is where it is, for the conditions.
#[derive(Clone, Debug)]
struct State {
    reason: Reason,
    message: String,
}

impl Default for State {
    fn default() -> Self {
        Self {
            reason: Reason::Pending,
            message: "waiting for the first check".to_owned(),
        }
    }
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
    /// The plan as last computed in this decision: the status shows only its head.
    plan: Option<Plan>,
}

impl<'a> Machine<'a> {
    fn node(&self, name: &str) -> Option<&'a ObservedNode> {
        self.nodes.get(name).copied()
    }

    /// Whether a control-plane node outside `batch` can take node Jobs.
    fn control_plane_available(&self, batch: &[String]) -> bool {
        self.observed.nodes.iter().any(|n| {
            n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL) && !batch.contains(&n.name)
        })
    }

    /// The K8sUpgrade as the owner its Jobs name.
    fn owner(&self) -> Owner<'a> {
        Owner {
            name: self.upgrade.metadata.name.as_deref().unwrap_or_default(),
            uid: self.upgrade.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    fn name(&self) -> &str {
        self.upgrade.metadata.name.as_deref().unwrap_or_default()
    }

    fn event(&mut self, warning: bool, reason: Reason, message: String) {
        self.record(Event {
            warning,
            reason,
            message,
            node: None,
        });
    }

    fn node_event(&mut self, warning: bool, reason: Reason, node: &str, message: String) {
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

    fn note(&mut self, reason: Reason, message: impl Into<String>) {
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

    /// One transition (or none, at a fixpoint): the first step with something to do
    /// makes its change and ends the transition; `decide` repeats until nothing changes.
    fn step(&mut self) -> ControlFlow<()> {
        self.handle_retry();
        self.advance_nodes_in_progress()?;
        // At a node boundary from here on.
        self.release_skipped_failures();
        self.stop_at_a_failed_node()?;
        self.stay_succeeded()?;
        self.wait_for_the_running_upgrade()?;
        let plan = self.plan_from_a_valid_spec()?;
        self.stop_while_paused()?;
        self.start_or_retarget_the_run(&plan)?;
        self.postflight_once_complete(&plan)?;
        let first = self.before_the_first_node();
        self.read_the_checks_first()?;
        self.check_gates(first, &plan)?;
        self.wait_for_the_window()?;
        self.check_etcd_members(&plan)?;
        self.take_the_snapshot(first, &plan)?;
        self.run_the_pre_hook(first)?;
        self.prepare_the_nodes(first, &plan)?;
        self.hold_pods_the_drain_would_lose(&plan)?;
        self.check_the_external_etcd(&plan)?;
        self.unblock();
        self.start_batch(&plan);
        ControlFlow::Continue(())
    }

    /// The value of one of the K8sUpgrade's annotations.
    fn annotation(&self, key: &str) -> Option<&'a str> {
        let annotations = self.upgrade.metadata.annotations.as_ref()?;
        annotations.get(key).map(String::as_str)
    }

    /// Leaves Blocked once nothing refuses any more.
    fn unblock(&mut self) {
        if self.status.phase == Some(Phase::Blocked) {
            self.event(
                false,
                Reason::Unblocked,
                "every check passes again".to_owned(),
            );
            self.set_phase(Phase::Preflight);
        }
        self.status.blocked_reasons.clear();
    }

    fn recheck_interval(&self) -> Duration {
        Duration::from(self.spec.gates.recheck_interval)
    }

    /// Blocked: nothing is changed, every reason is listed, the gates are rechecked.
    fn block(&mut self, reasons: Vec<String>) {
        if self.status.phase != Some(Phase::Blocked) || self.status.blocked_reasons != reasons {
            self.event(
                true,
                Reason::Blocked,
                format!("nothing was changed: {}", reasons.join("; ")),
            );
        }
        self.status.blocked_reasons = reasons;
        self.set_phase(Phase::Blocked);
        self.requeue_within(self.recheck_interval());
        self.note(Reason::GatesFailed, self.status.blocked_reasons.join("; "));
    }

    fn spec_target_unchanged(&self) -> bool {
        KubeVersion::parse_target(&self.spec.target_version)
            .is_ok_and(|t| self.status.target_version.as_deref() == Some(&t.to_string()))
    }

    fn run_in_progress(&self) -> bool {
        self.status
            .phase
            .is_some_and(|p| p.is_running() || p == Phase::Blocked)
            || self.status.nodes.iter().any(|n| n.step == NodeStep::Failed)
            || self.failed_post_hook().is_some()
    }

    /// Refuses the spec: nothing is mutated, and the run waits for a corrected spec.
    fn refuse(&mut self, reason: Reason, message: String) {
        let already_said = conditions::get(&self.status.conditions, types::READY)
            .is_some_and(|c| c.reason == reason.as_str() && c.message == message);
        if self.status.phase != Some(Phase::Failed) || !already_said {
            self.event(true, reason, format!("{message}; nothing was changed"));
        }
        self.plan = None;
        self.status.plan.clear();
        self.status.pending_nodes = None;
        self.status.plan_hash = None;
        self.set_phase(Phase::Failed);
        self.note(reason, message);
    }
}
