//! The end of every decision: conditions, progress, stall, notifications, and the
//! Events that say what changed.

use std::time::Duration;

use upchain_api::{HostKeyPolicy, K8sUpgradeStatus, NodeRecord, NodeStep, Phase};

use super::decision::Decision;
use super::{DONE_RECORDS_KEPT, Machine, PLAN_SHOWN, State, budget, of_this_run};
use crate::conditions;
use crate::conditions::{Desired, types};
use crate::reason::Reason;

/// Drops the oldest Done records past [`DONE_RECORDS_KEPT`], counting those of this run's
/// target in `upgradedWithoutRecord`.
pub(super) fn fold_done_records(status: &mut K8sUpgradeStatus) {
    let done = status
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Done)
        .count();
    for _ in DONE_RECORDS_KEPT..done {
        budget::fold_oldest_done(status);
    }
}

impl<'a> Machine<'a> {
    /// The plan's head and its count: the nodes still to start. A plan not computed in
    /// this decision (a finished run) leaves the last one shown.
    fn show_the_plan(&mut self) {
        let Some(plan) = &self.plan else {
            return;
        };
        let started: std::collections::HashSet<&str> =
            self.status.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut pending = plan
            .steps
            .iter()
            .filter(|s| !started.contains(s.name.as_str()));
        let shown: Vec<_> = pending.by_ref().take(PLAN_SHOWN).collect();
        let count = shown.len() + pending.count();
        self.status.plan = shown
            .into_iter()
            .map(crate::plan::Step::to_status)
            .collect();
        self.status.pending_nodes = Some(i32::try_from(count).unwrap_or(i32::MAX));
    }

    /// Fills in what is derived from the rest: conditions, summary columns, requeue.
    pub(super) fn finish(mut self, previous: &K8sUpgradeStatus) -> Decision {
        self.silences();
        fold_done_records(&mut self.status);
        self.show_the_plan();
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
            let names: Vec<&str> = active.iter().map(|n| n.name.as_str()).collect();
            budget::name_the_batch(&names, ",")
        });
        self.status.current_step = active.first().map(|n| n.step);
        let pinned = self.status.target_version.clone();
        let done = self
            .status
            .nodes
            .iter()
            .filter(|n| n.step == NodeStep::Done && Some(&n.target_version) == pinned.as_ref())
            .count()
            + usize::try_from(self.status.upgraded_without_record).unwrap_or_default();
        let remaining = usize::try_from(self.status.pending_nodes.unwrap_or_default())
            .unwrap_or_default()
            + active.len();
        self.status.progress = self
            .status
            .started_at
            .is_some()
            .then(|| format!("{done}/{}", done + remaining));

        let running = phase.is_running();
        let State { reason, message } = self.state.clone();
        let now = self.now;
        let conditions = &mut self.status.conditions;
        conditions::set(
            conditions,
            if phase == Phase::Succeeded {
                Desired::yes(types::READY, Reason::Succeeded, message.clone())
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
                Desired::yes(types::BLOCKED, Reason::GatesFailed, message.clone())
            } else {
                Desired::no(
                    types::BLOCKED,
                    Reason::GatesPass,
                    "no check refuses the run",
                )
            },
            generation,
            now,
        );
        let this_run = of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        );
        let snapshot = match (&self.spec.snapshot, this_run) {
            (None, _) => match &self.status.snapshot_waived {
                Some(reason) => Desired::no(
                    types::SNAPSHOT_TAKEN,
                    Reason::SnapshotWaived,
                    format!("no etcd snapshot, waived: {reason}"),
                ),
                None => Desired::no(
                    types::SNAPSHOT_TAKEN,
                    Reason::NotConfigured,
                    "no etcd snapshot is configured for this run",
                ),
            },
            (Some(_), Some(record)) if record.verified => Desired::yes(
                types::SNAPSHOT_TAKEN,
                Reason::Verified,
                format!(
                    "etcd snapshot Job {} verified: {}",
                    record.job,
                    record.message.as_deref().unwrap_or_default()
                ),
            ),
            (Some(_), Some(record)) => Desired::no(
                types::SNAPSHOT_TAKEN,
                if record.completed_at.is_some() {
                    Reason::Failed
                } else {
                    Reason::InProgress
                },
                record
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("etcd snapshot Job {} is running", record.job)),
            ),
            (Some(_), None) => Desired::no(
                types::SNAPSHOT_TAKEN,
                Reason::Pending,
                "the etcd snapshot is taken before the first node",
            ),
        };
        conditions::set(conditions, snapshot, generation, now);

        let runner = &self.spec.runner;
        let host_keys = match runner.host_key_policy {
            HostKeyPolicy::Strict => Desired::yes(
                types::HOST_KEYS_VERIFIED,
                Reason::Verified,
                format!(
                    "node Jobs check host keys against ConfigMap {}/{} key {}",
                    runner.namespace, runner.known_hosts.name, runner.known_hosts.key
                ),
            ),
            HostKeyPolicy::AcceptNew => Desired::no(
                types::HOST_KEYS_VERIFIED,
                Reason::HostKeysUnchecked,
                "spec.runner.hostKeyPolicy is AcceptNew: a node whose host key the known hosts \
                 do not hold stops the run with the key it shows, for a person to confirm and \
                 add. Put the nodes' keys in spec.runner.knownHosts and set hostKeyPolicy \
                 Strict to have every key given rather than asked for",
            ),
        };
        conditions::set(conditions, host_keys, generation, now);

        let stall_timeout = Duration::from(self.spec.stall_timeout);
        let quiet_for = self
            .status
            .last_progress_at
            .as_ref()
            .map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or_default());
        // Waiting for the maintenance window is not a stall: it is the plan. Nor is
        // waiting, with no node touched, for an analysis check before the run (another
        // cluster's run to age, say): a stall is a cluster left half-done.
        let waiting_for_window = self.status.next_window_at.is_some()
            || (self.state.reason == Reason::WaitingForAnalysis && self.before_the_first_node());
        let stalled = running
            && !self.spec.paused
            && !waiting_for_window
            && quiet_for.is_some_and(|q| q >= stall_timeout);
        if stalled && !conditions::is_true(&previous.conditions, types::STALLED) {
            let step = self.status.current_step.map_or("none", NodeStep::as_str);
            self.event(
                true,
                Reason::Stalled,
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
                    Reason::NoProgress,
                    format!("no progress for at least {}s", stall_timeout.as_secs()),
                )
            } else {
                Desired::no(
                    types::STALLED,
                    Reason::Progressing,
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

        budget::fit_the_budget(&mut self.status);
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
