//! One-off Jobs of a run, made from the user's templates: the etcd snapshot and the
//! pre- and post-run hooks.

use super::*;

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
        let job = crate::snapshot::job_from_template(template, self.owner(), namespace, name);
        self.act(Action::CreateJob(Box::new(job)));
        self.requeue_within(left);
        self.note(reason, waiting_for);
    }

    /// The run's start in seconds, which one-off Job names carry (one set per run).
    fn run_started(&self) -> i64 {
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

    /// Takes the etcd snapshot: creates the Job from the CronJob's template, waits for it
    /// within the timeout; a failure blocks the run and is retried after the recheck
    /// interval under a new attempt.
    pub(super) fn snapshot(&mut self) {
        let Some(spec) = self.spec.snapshot.clone() else {
            return;
        };
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
                let hung = current.as_ref().is_some_and(|record| {
                    self.observed
                        .snapshot
                        .as_ref()
                        .and_then(|i| i.job.as_ref())
                        .is_some_and(|j| j.name == record.job && j.state == JobState::Running)
                });
                if let (true, Some(record)) = (hung, current.as_ref()) {
                    self.act(Action::DeleteJob {
                        namespace: spec.namespace.clone(),
                        name: record.job.clone(),
                    });
                }
                self.requeue_within(retry_in.unwrap_or_default());
                return self.block(vec![message]);
            }
        };
        let name = crate::snapshot::snapshot_job_name(self.name(), self.run_started(), attempt);
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
                return self.note(Reason::Snapshot, "reading the snapshot CronJob");
            }
        };
        self.unblock();
        self.set_phase(Phase::Snapshot);
        let job = format!("{}/{name}", spec.namespace);
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
                attempt,
                message: None,
            });
            self.progressed();
            self.event(
                false,
                Reason::SnapshotStarted,
                format!("taking an etcd snapshot with Job {job}"),
            );
        }
        let state = inputs
            .and_then(|i| i.job.as_ref())
            .filter(|observed| observed.name == name)
            .map(|observed| &observed.state);
        let started = self
            .status
            .snapshot
            .as_ref()
            .map_or(Time(self.now), |r| r.started_at.clone());
        let outcome = self.job_outcome(state, &started, Duration::from(spec.timeout));
        let now = Time(self.now);
        let outcome = match (outcome, inputs.and_then(|i| i.log.as_ref())) {
            (JobOutcome::Succeeded, None) => {
                // Its log is read on the next pass.
                self.requeue_within(Duration::from_secs(1));
                return self.note(Reason::Snapshot, format!("reading the log of {job}"));
            }
            (JobOutcome::Succeeded, Some(Err(error))) => JobOutcome::Failed(format!(
                "succeeded, but its log could not be read ({error}), so the snapshot is \
                 unverified"
            )),
            (JobOutcome::Succeeded, Some(Ok(log))) => {
                match crate::snapshot::verify_report(log, spec.min_size_bytes) {
                    Ok(snapshot) => return self.snapshot_verified_as(snapshot, &job),
                    Err(problems) => JobOutcome::Failed(format!(
                        "succeeded, but its snapshot is unverified: {problems}"
                    )),
                }
            }
            (outcome, _) => outcome,
        };
        match outcome {
            JobOutcome::Succeeded => {}
            JobOutcome::Failed(how) => {
                let check = if how.starts_with("failed") || how.starts_with("succeeded") {
                    "Check its logs"
                } else {
                    "It is deleted; check why it hung"
                };
                let why = format!(
                    "the etcd snapshot Job {job} {how}; no node was touched. {check}; it is \
                     retried every recheck interval"
                );
                if let Some(record) = self.status.snapshot.as_mut() {
                    record.completed_at = Some(now);
                    record.message = Some(why.clone());
                }
                self.block(vec![why]);
            }
            JobOutcome::Running(left) => self.keep_running(
                &template,
                &spec.namespace,
                &name,
                left,
                Reason::Snapshot,
                format!("waiting for the etcd snapshot Job {job}"),
            ),
        }
    }

    /// Records the snapshot the Job reported and checked, and lets the run go on.
    fn snapshot_verified_as(&mut self, snapshot: crate::snapshot::VerifiedSnapshot, job: &str) {
        let message = format!(
            "{} bytes at revision {} ({} keys, hash {}), copied to {}",
            snapshot.size_bytes,
            snapshot.revision,
            snapshot.total_keys,
            snapshot.hash,
            snapshot.location
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
        let Some(next) = plan.next_batch().next() else {
            return ControlFlow::Continue(());
        };
        // The last check ran before a worker (a node with no control-plane record) once the
        // workers have begun.
        let workers_begun = self
            .status
            .hooks
            .iter()
            .filter(|h| h.kind == HookKind::EtcdCheck && h.succeeded)
            .filter_map(|h| h.before.as_deref())
            .any(|before| {
                self.status
                    .nodes
                    .iter()
                    .find(|n| n.name == before)
                    .is_none_or(|n| n.role == NodeRole::Worker)
                    && before != next.name
            });
        if next.role == NodeRole::Worker && workers_begun {
            return ControlFlow::Continue(());
        }
        match self.hook_before(HookKind::EtcdCheck, Some(&next.name)) {
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
