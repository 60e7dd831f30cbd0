//! One-off Jobs of a run, made from the user's templates: the etcd snapshot and the
//! pre- and post-run hooks.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{HookKind, HookRecord, Phase, RETRY_ANNOTATION, SnapshotRecord};

use super::decision::Action;
use super::{Machine, STOP, of_this_run};
use crate::gates;
use crate::job::JobMode;
use crate::observe::JobState;
use crate::plan::Plan;
use crate::reason::Reason;

/// Whether a hook lets the run go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HookProgress {
    /// It succeeded, or there is none.
    Done,
    /// It runs, or failed: the step said so.
    Waiting,
}

/// The part of a one-off Job's status record (snapshot, hook) its lifecycle reads.
pub(super) struct OneOffRecord<'r> {
    attempt: i32,
    completed_at: Option<&'r Time>,
    succeeded: bool,
    message: Option<&'r str>,
}

impl<'r> OneOffRecord<'r> {
    pub(super) fn new(
        attempt: i32,
        completed_at: Option<&'r Time>,
        succeeded: bool,
        message: Option<&'r str>,
    ) -> Self {
        Self {
            attempt,
            completed_at,
            succeeded,
            message,
        }
    }
}

impl<'r> From<&'r SnapshotRecord> for OneOffRecord<'r> {
    fn from(r: &'r SnapshotRecord) -> Self {
        Self {
            attempt: r.attempt,
            completed_at: r.completed_at.as_ref(),
            succeeded: r.verified,
            message: r.message.as_deref(),
        }
    }
}

impl<'r> From<&'r HookRecord> for OneOffRecord<'r> {
    fn from(r: &'r HookRecord) -> Self {
        Self {
            attempt: r.attempt,
            completed_at: r.completed_at.as_ref(),
            succeeded: r.succeeded,
            message: r.message.as_deref(),
        }
    }
}

/// What a one-off Job's record says to do next.
pub(super) enum NextAttempt {
    /// It succeeded in this run.
    Done,
    /// Run this attempt, or keep watching it.
    Run(i32),
    /// The last attempt failed; `retry_in` is how long until the next one, None where
    /// none comes by itself.
    Failed {
        message: String,
        retry_in: Option<Duration>,
    },
}

/// How this attempt's Job stands.
pub(super) enum JobOutcome {
    Succeeded,
    /// It failed or did not finish in time: why, as "failed (...)" or "did not finish
    /// within ...".
    Failed(String),
    /// Not finished; the timeout is this far off.
    Running(Duration),
}

impl<'a> Machine<'a> {
    /// The attempt a one-off Job is at: the first, the one under way, or, once the last
    /// failed, the next after the recheck interval (when `retried`).
    pub(super) fn next_attempt(
        &self,
        record: Option<OneOffRecord<'_>>,
        retried: bool,
    ) -> NextAttempt {
        let Some(record) = record else {
            return NextAttempt::Run(1);
        };
        if record.succeeded {
            return NextAttempt::Done;
        }
        let Some(failed_at) = record.completed_at else {
            return NextAttempt::Run(record.attempt);
        };
        let message = record.message.unwrap_or_default().to_owned();
        if !retried {
            return NextAttempt::Failed {
                message,
                retry_in: None,
            };
        }
        let waited = self.elapsed(failed_at);
        match self
            .recheck_interval()
            .checked_sub(waited)
            .filter(|left| !left.is_zero())
        {
            Some(left) => NextAttempt::Failed {
                message,
                retry_in: Some(left),
            },
            None => NextAttempt::Run(record.attempt + 1),
        }
    }

    /// The outcome of the Job observed for this attempt, judged against its timeout.
    pub(super) fn job_outcome(
        &self,
        state: Option<&JobState>,
        started: &Time,
        timeout: Duration,
    ) -> JobOutcome {
        let waited = self.elapsed(started);
        match state {
            Some(JobState::Succeeded) => JobOutcome::Succeeded,
            Some(JobState::Failed { reason, message }) => {
                JobOutcome::Failed(format!("failed ({reason}: {message})"))
            }
            _ if waited >= timeout => JobOutcome::Failed(format!(
                "did not finish within {}",
                gates::human(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX))
            )),
            _ => JobOutcome::Running(timeout - waited),
        }
    }

    /// A one-off Job not finished: (re)applied from its template (an adopt when it
    /// exists), looked at again by its timeout, and said what the run waits for.
    fn keep_running(
        &mut self,
        template: &k8s_openapi::api::batch::v1::JobTemplateSpec,
        namespace: &str,
        name: &str,
        left: Duration,
        reason: Reason,
        waiting_for: String,
    ) {
        let job = crate::hooks::job_from_template(template, self.owner(), namespace, name);
        self.act(Action::CreateJob(Box::new(job)));
        self.requeue_within(left);
        self.note(reason, waiting_for);
    }

    /// The run's start in seconds, which one-off Job names carry (one set per run).
    pub(super) fn run_started(&self) -> i64 {
        self.status
            .started_at
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    }

    /// True when this run's snapshot Job succeeded.
    pub(super) fn snapshot_verified(&self) -> bool {
        of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        )
        .is_some_and(|s| s.verified)
    }

    /// Takes the etcd snapshot through the node step, on a control-plane node: creates
    /// the Job, waits for it within the timeout, and verifies what it reported; a failure
    /// blocks the run and is retried after the recheck interval under a new attempt.
    pub(super) fn snapshot(&mut self) {
        let Some(spec) = self.spec.snapshot.clone() else {
            return;
        };
        let namespace = self.spec.runner.namespace.clone();
        let current = of_this_run(
            self.status.snapshot.as_ref(),
            self.status.started_at.as_ref(),
        )
        .cloned();
        let attempt = match self.next_attempt(current.as_ref().map(OneOffRecord::from), true) {
            NextAttempt::Done => return,
            NextAttempt::Run(attempt) => attempt,
            NextAttempt::Failed { message, retry_in } => {
                // A Job given up on for its timeout still runs: it is stopped, so that the
                // next attempt never runs beside it.
                if let Some(record) = current.as_ref().filter(|record| {
                    self.observed
                        .job(&record.job)
                        .is_some_and(|j| j.state == JobState::Running)
                }) {
                    self.act(Action::DeleteJob {
                        namespace: namespace.clone(),
                        name: record.job.clone(),
                    });
                }
                self.requeue_within(retry_in.unwrap_or_default());
                return self.block(vec![message]);
            }
        };
        // Without a destination the snapshot gate refuses the run.
        let Some(claim) = spec.persistent_volume_claim.clone() else {
            return;
        };
        let Some(node) = self.etcd_node(&[]) else {
            return self.block(vec![
                "the etcd snapshot needs a control-plane node with a stacked etcd member, and \
                 the cluster shows none; with external etcd, use spec.snapshotWaiver and your \
                 own backups"
                    .to_owned(),
            ]);
        };
        let job = self.etcd_job(&node, JobMode::EtcdSnapshot, attempt, Some(&claim));
        let name = job.metadata.name.clone().unwrap_or_default();
        self.unblock();
        self.set_phase(Phase::Snapshot);
        let shown = format!("{namespace}/{name}");
        if current.as_ref().is_none_or(|r| r.job != name) {
            self.status.snapshot = Some(SnapshotRecord {
                job: name.clone(),
                started_at: Time(self.now),
                completed_at: None,
                verified: false,
                size_bytes: None,
                hash: None,
                revision: None,
                total_keys: None,
                location: None,
                sha256: None,
                restore_check: None,
                node: Some(node.name.clone()),
                attempt,
                message: None,
            });
            self.progressed();
            self.event(
                false,
                Reason::SnapshotStarted,
                format!(
                    "taking an etcd snapshot on {} with Job {shown}, to {claim}",
                    node.name
                ),
            );
        }
        let observed = self.observed.job(&name);
        let started = self
            .status
            .snapshot
            .as_ref()
            .map_or(Time(self.now), |r| r.started_at.clone());
        let outcome = self.job_outcome(
            observed.map(|j| &j.state),
            &started,
            Duration::from(spec.timeout),
        );
        let report = observed.and_then(|j| j.report.as_deref());
        let outcome = match (outcome, report) {
            (JobOutcome::Succeeded, None) => JobOutcome::Failed(
                "succeeded, but left no report in its termination message, so the snapshot \
                 is unverified"
                    .to_owned(),
            ),
            (JobOutcome::Succeeded, Some(report)) => {
                match crate::snapshot::verify_report(report, spec.min_size_bytes) {
                    Ok(snapshot) => return self.snapshot_verified_as(snapshot, &shown),
                    Err(problems) => JobOutcome::Failed(format!(
                        "succeeded, but its snapshot is unverified: {problems}"
                    )),
                }
            }
            (JobOutcome::Failed(how), _) => JobOutcome::Failed(format!(
                "{how}{}",
                observed
                    .map(crate::observe::ObservedJob::exit_described)
                    .unwrap_or_default()
            )),
            (outcome, _) => outcome,
        };
        match outcome {
            JobOutcome::Succeeded => {}
            JobOutcome::Failed(how) => {
                let check = if how.starts_with("failed") || how.starts_with("succeeded") {
                    "Check its log"
                } else {
                    "It is deleted; check why it hung"
                };
                let why = format!(
                    "the etcd snapshot Job {shown} {how}; no node was touched. {check}; it is \
                     retried every recheck interval"
                );
                if let Some(record) = self.status.snapshot.as_mut() {
                    record.completed_at = Some(Time(self.now));
                    record.message = Some(why.clone());
                }
                self.block(vec![why]);
            }
            JobOutcome::Running(left) => {
                self.act(Action::CreateJob(Box::new(job)));
                self.requeue_within(left);
                self.note(
                    Reason::Snapshot,
                    format!("waiting for the etcd snapshot Job {shown}"),
                );
            }
        }
    }

    /// Records the snapshot the Job reported and checked, and lets the run go on.
    fn snapshot_verified_as(&mut self, snapshot: crate::snapshot::VerifiedSnapshot, job: &str) {
        let message = format!(
            "{} bytes at revision {} ({} keys, hash {}) from {}, {}; copied to {} and read \
             back (sha256 {})",
            snapshot.size_bytes,
            snapshot.revision,
            snapshot.total_keys,
            snapshot.hash,
            snapshot.node,
            snapshot.restore_check,
            snapshot.location,
            snapshot.sha256
        );
        if let Some(record) = self.status.snapshot.as_mut() {
            record.verified = true;
            record.completed_at = Some(Time(self.now));
            record.message = Some(message.clone());
            record.size_bytes = Some(snapshot.size_bytes);
            record.hash = Some(snapshot.hash);
            record.revision = Some(snapshot.revision);
            record.total_keys = Some(snapshot.total_keys);
            record.location = Some(snapshot.location);
            record.sha256 = Some(snapshot.sha256);
            record.restore_check = Some(snapshot.restore_check);
        }
        self.progressed();
        self.event(
            false,
            Reason::SnapshotTaken,
            format!("etcd snapshot Job {job} verified: {message}"),
        );
        self.set_phase(Phase::Preflight);
    }

    /// This run's post-run hook, when it failed: the run stays Failed until a retry.
    pub(super) fn failed_post_hook(&self) -> Option<&HookRecord> {
        self.status
            .hooks
            .iter()
            .find(|h| h.kind == HookKind::Post && h.completed_at.is_some() && !h.succeeded)
    }

    /// Runs the hook of `kind` (spec.hooks) once per run: Done when it succeeded or there is
    /// none. A failed pre-run hook blocks (nothing was touched) and is retried every recheck
    /// interval; a failed post-run hook fails the run until the retry annotation.
    pub(super) fn hook(&mut self, kind: HookKind) -> HookProgress {
        self.hook_before(kind, None)
    }

    /// Runs the Job of `kind` once (per run, or, with `before`, per node it comes before).
    fn hook_before(&mut self, kind: HookKind, before: Option<&str>) -> HookProgress {
        let Some(spec) = crate::hooks::hook(self.spec, kind).cloned() else {
            return HookProgress::Done;
        };
        let Ok(template) = crate::hooks::template(&spec, kind) else {
            return HookProgress::Waiting; // refused with the reason before the plan
        };
        let what = crate::hooks::describe(kind);
        let current = self
            .status
            .hooks
            .iter()
            .find(|h| h.kind == kind && h.before.as_deref() == before)
            .cloned();
        // A failed post-run hook waits for the retry annotation; the others retry.
        let retried = kind != HookKind::Post;
        let attempt = match self.next_attempt(current.as_ref().map(OneOffRecord::from), retried) {
            NextAttempt::Done => return HookProgress::Done,
            NextAttempt::Run(attempt) => attempt,
            NextAttempt::Failed {
                message,
                retry_in: None,
            } => {
                self.fail_on_hook(message);
                return HookProgress::Waiting;
            }
            NextAttempt::Failed {
                message,
                retry_in: Some(left),
            } => {
                self.block(vec![message]);
                self.requeue_within(left);
                return HookProgress::Waiting;
            }
        };
        let name = crate::hooks::job_name(self.name(), kind, before, self.run_started(), attempt);
        let job = format!("{}/{name}", spec.namespace);
        if current.as_ref().is_none_or(|r| r.job != job) {
            self.status.hooks.retain(|h| h.kind != kind);
            self.status.hooks.push(HookRecord {
                kind,
                before: before.map(str::to_owned),
                job: job.clone(),
                attempt,
                started_at: Time(self.now),
                completed_at: None,
                succeeded: false,
                message: None,
            });
            self.unblock();
            self.progressed();
            self.event(false, Reason::HookStarted, format!("running {what} {job}"));
        }
        let state = self
            .observed
            .hook_jobs
            .iter()
            .find(|j| j.name == name)
            .map(|j| &j.state);
        let started = self
            .status
            .hooks
            .iter()
            .find(|h| h.kind == kind)
            .map_or(Time(self.now), |h| h.started_at.clone());
        let failure = match self.job_outcome(state, &started, Duration::from(spec.timeout)) {
            JobOutcome::Succeeded => {
                self.complete_hook(kind, true, "the Job succeeded".to_owned());
                self.progressed();
                self.event(
                    false,
                    Reason::HookSucceeded,
                    format!("{what} {job} succeeded"),
                );
                return HookProgress::Done;
            }
            JobOutcome::Failed(how) => format!("{what} {job} {how}"),
            JobOutcome::Running(left) => {
                self.keep_running(
                    &template,
                    &spec.namespace,
                    &name,
                    left,
                    Reason::RunningHook,
                    format!("waiting for {what} {job}"),
                );
                return HookProgress::Waiting;
            }
        };
        let failure = match (kind, before) {
            (HookKind::Post, _) => format!(
                "{failure}; every node was upgraded. Check its logs, fix the cause, then set \
                 a new value on the {RETRY_ANNOTATION} annotation to run it again"
            ),
            (_, Some(node)) => format!(
                "{failure}; {node} was not started. Check its logs and etcd; it is retried \
                 every recheck interval"
            ),
            _ => format!(
                "{failure}; no node was touched. Check its logs; it is retried every recheck \
                 interval"
            ),
        };
        self.complete_hook(kind, false, failure.clone());
        if kind == HookKind::Post {
            self.event(true, Reason::HookFailed, failure.clone());
            self.fail_on_hook(failure);
        } else {
            self.block(vec![failure]);
        }
        HookProgress::Waiting
    }

    /// spec.gates.externalEtcdCheck: before each control-plane node and before the first
    /// worker, the check Job must have succeeded for that node.
    pub(super) fn check_the_external_etcd(&mut self, plan: &Plan) -> ControlFlow<()> {
        let Some(before) = self.etcd_check_due_before(plan) else {
            return ControlFlow::Continue(());
        };
        match self.hook_before(HookKind::EtcdCheck, Some(&before)) {
            HookProgress::Done => ControlFlow::Continue(()),
            HookProgress::Waiting => STOP,
        }
    }

    pub(super) fn complete_hook(&mut self, kind: HookKind, succeeded: bool, message: String) {
        let now = Time(self.now);
        if let Some(record) = self.status.hooks.iter_mut().find(|h| h.kind == kind) {
            record.completed_at = Some(now);
            record.succeeded = succeeded;
            record.message = Some(message);
        }
    }

    pub(super) fn fail_on_hook(&mut self, message: String) {
        self.set_phase(Phase::Failed);
        self.note(Reason::HookFailed, message);
    }

    /// Before the first node, the etcd snapshot, when the spec asks for one.
    pub(super) fn take_the_snapshot(&mut self, first: bool, plan: &Plan) -> ControlFlow<()> {
        if !first || self.snapshot_verified() {
            return ControlFlow::Continue(());
        }
        if self.spec.snapshot.is_some() {
            self.snapshot();
            return STOP;
        }
        // Without a snapshot or a waiver, the snapshot gate refused a minor upgrade.
        let Some(waiver) = self
            .spec
            .snapshot_waiver
            .as_ref()
            .filter(|_| plan.kind == upchain_api::UpgradeKind::Minor)
        else {
            return ControlFlow::Continue(());
        };
        if self.status.snapshot_waived.as_deref() != Some(waiver.reason.as_str()) {
            self.status.snapshot_waived = Some(waiver.reason.clone());
            self.event(
                true,
                Reason::SnapshotWaived,
                format!(
                    "minor upgrade to {} without an etcd snapshot: {}",
                    plan.target, waiver.reason
                ),
            );
        }
        ControlFlow::Continue(())
    }

    /// Before the first node, the pre-run hook, when the spec has one.
    pub(super) fn run_the_pre_hook(&mut self, first: bool) -> ControlFlow<()> {
        if first && self.hook(HookKind::Pre) == HookProgress::Waiting {
            return STOP;
        }
        ControlFlow::Continue(())
    }
}
