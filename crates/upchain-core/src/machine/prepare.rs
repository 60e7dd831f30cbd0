//! The prepare checks: before the first node is cordoned, one Job per node checks over
//! SSH, changing nothing, that the node can be upgraded: a supported OS, the target's
//! packages in the configured repository, free disk, and on the first control-plane node
//! `kubeadm upgrade plan` offering the target.
//!
//! They run for every node of the plan at preflight (at most
//! spec.runner.prepareConcurrency at once), not per batch before its cordon: a mirror
//! that lacks the target, or one node on an unsupported OS, is then found before the
//! first drain rather than halfway through the workers, so a run never stops half-done
//! for a reason that was knowable at its start. The cost is time before the first node
//! (nodes / concurrency × one check, about 15 s each).

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::PrepareRecord;

use super::decision::Action;
use super::one_off::{JobOutcome, NextAttempt, OneOffRecord};
use super::{Machine, STOP};
use crate::job::{JobMode, NodeJob, prepare_job_name};
use crate::observe::Observed;
use crate::plan::Plan;
use crate::reason::Reason;
use crate::version::KubeVersion;

/// Where a node's prepare check stands after this decision.
enum Check {
    /// It runs, or waits for a slot.
    Running,
    /// It passed now.
    Passed,
    /// It failed now: why.
    Failed(String),
}

impl<'r> From<&'r PrepareRecord> for OneOffRecord<'r> {
    fn from(r: &'r PrepareRecord) -> Self {
        OneOffRecord::new(
            r.attempt,
            r.completed_at.as_ref(),
            r.succeeded,
            r.message.as_deref(),
        )
    }
}

impl<'a> Machine<'a> {
    /// Before the first node: every node of the plan passes its prepare check, or the
    /// run is Blocked naming each node that failed and why.
    pub(super) fn prepare_the_nodes(&mut self, first: bool, plan: &Plan) -> ControlFlow<()> {
        if !first {
            self.status.prepare.clear();
            self.status.prepared_count = 0;
            return ControlFlow::Continue(());
        }
        let mark = self.prepared_mark(plan);
        let observed: &'a Observed = self.observed;
        let marked: std::collections::HashSet<&'a str> = observed
            .nodes
            .iter()
            .filter(|n| n.prepared.as_deref() == Some(mark.as_str()))
            .map(|n| n.name.as_str())
            .collect();
        let passed = |node: &str| marked.contains(node);
        // A pass is on record in status until its node shows the mark.
        self.status
            .prepare
            .retain(|r| !(r.succeeded && passed(&r.node)));
        let concurrency = usize::try_from(self.spec.runner.prepare_concurrency)
            .unwrap_or(1)
            .max(1);
        let mut running = self
            .status
            .prepare
            .iter()
            .filter(|r| r.completed_at.is_none())
            .count();
        let mut failures = Vec::new();
        let mut waiting = 0;
        let mut passed_now = false;
        let mut prepared: i32 = 0;
        for step in &plan.steps {
            if passed(&step.name) {
                prepared += 1;
                continue;
            }
            let record = self.status.prepare.iter().find(|r| r.node == step.name);
            let attempt = match self.next_attempt(record.map(OneOffRecord::from), true) {
                NextAttempt::Done => {
                    // Passed, and its mark not seen yet: placed again if it was lost.
                    prepared += 1;
                    self.act(Action::MarkPrepared {
                        node: step.name.clone(),
                        run: mark.clone(),
                    });
                    continue;
                }
                NextAttempt::Run(attempt) => attempt,
                NextAttempt::Failed { message, retry_in } => {
                    self.requeue_within(retry_in.unwrap_or_default());
                    failures.push(message);
                    continue;
                }
            };
            waiting += 1;
            if record.is_none_or(|r| r.attempt != attempt) {
                if running >= concurrency {
                    continue;
                }
                running += 1;
                self.start_prepare(step, plan.target, attempt);
            }
            match self.watch_prepare(step, plan) {
                Check::Running => {}
                Check::Passed => {
                    waiting -= 1;
                    prepared += 1;
                    passed_now = true;
                    self.act(Action::MarkPrepared {
                        node: step.name.clone(),
                        run: mark.clone(),
                    });
                }
                Check::Failed(failure) => {
                    waiting -= 1;
                    failures.push(failure);
                }
            }
        }
        self.status.prepared_count = prepared;
        if !failures.is_empty() {
            self.block(failures);
            return STOP;
        }
        if passed_now && waiting == 0 {
            self.event(
                false,
                Reason::NodesPrepared,
                format!(
                    "all {} node(s) passed the prepare check for {}",
                    plan.steps.len(),
                    plan.target
                ),
            );
        }
        if waiting > 0 {
            self.note(
                Reason::Preparing,
                format!("checking {waiting} node(s) before any is cordoned ({prepared} passed)"),
            );
            return STOP;
        }
        ControlFlow::Continue(())
    }

    /// What a node that passed this run's prepare check carries in its
    /// `upchain.dev/prepared` annotation: the K8sUpgrade, the target and the run's start, so
    /// that a pass for another run or target never counts.
    fn prepared_mark(&self, plan: &Plan) -> String {
        let started = self
            .status
            .started_at
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        format!("{}/{}/{started}", self.owner().name, plan.target)
    }

    fn start_prepare(&mut self, step: &crate::plan::Step, target: KubeVersion, attempt: i32) {
        let owner = self.owner();
        let job = prepare_job_name(owner, &step.name, target, attempt);
        self.status.prepare.retain(|r| r.node != step.name);
        self.status.prepare.push(PrepareRecord {
            node: step.name.clone(),
            job,
            attempt,
            started_at: Time(self.now),
            completed_at: None,
            succeeded: false,
            message: None,
        });
        self.progressed();
    }

    /// Follows a node's prepare Job: creates it until it shows, records its end.
    fn watch_prepare(&mut self, step: &crate::plan::Step, plan: &Plan) -> Check {
        let Some(index) = self.status.prepare.iter().position(|r| r.node == step.name) else {
            return Check::Running; // waits for a slot
        };
        let record = self.status.prepare[index].clone();
        let timeout = Duration::from_secs(
            u64::try_from(self.spec.runner.active_deadline_seconds).unwrap_or(3600),
        );
        let observed = self.observed.job(&record.job);
        let namespace = &self.spec.runner.namespace;
        match self.job_outcome(observed.map(|j| &j.state), &record.started_at, timeout) {
            JobOutcome::Succeeded => {
                let record = &mut self.status.prepare[index];
                record.completed_at = Some(Time(self.now));
                record.succeeded = true;
                self.progressed();
                Check::Passed
            }
            JobOutcome::Failed(how) => {
                let evidence = observed.and_then(|j| j.evidence.as_ref());
                let exit = observed
                    .map(crate::observe::ObservedJob::exit_described)
                    .unwrap_or_default();
                let last_line = evidence
                    .and_then(|e| e.log.as_ref().ok())
                    .and_then(|log| crate::evidence::log_tail(log).pop())
                    .map(|line| format!(": {line}"))
                    .unwrap_or_default();
                let message = format!(
                    "node {}: the prepare check Job {namespace}/{} {how}{exit}{last_line}; no \
                     node was drained. Fix the node or the repository (spec.runner.repository); \
                     the check is retried every recheck interval",
                    step.name, record.job
                );
                let record = &mut self.status.prepare[index];
                record.completed_at = Some(Time(self.now));
                record.message = Some(message.clone());
                self.node_event(true, Reason::PrepareFailed, &step.name, message.clone());
                Check::Failed(message)
            }
            JobOutcome::Running(left) => {
                let batch = [step.name.clone()];
                let job = NodeJob {
                    owner: self.owner(),
                    runner: &self.spec.runner,
                    node: &step.name,
                    node_ip: &step.internal_ip,
                    role: step.role,
                    first_control_plane: step.first_control_plane,
                    kind: step.kind,
                    target: plan.target,
                    attempt: record.attempt,
                    batch: &batch,
                    mode: JobMode::Prepare,
                    reattach: false,
                    control_plane_available: self.control_plane_available(&batch),
                    run_started: self.run_started(),
                    snapshot_claim: None,
                }
                .render();
                self.act(Action::CreateJob(Box::new(job)));
                self.requeue_within(left);
                Check::Running
            }
        }
    }
}
