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

impl<'a> Machine<'a> {
    /// How long a failed one-off Job (snapshot, pre-run hook) waits before its next
    /// attempt, counted from when it failed; None once the recheck interval has passed.
    pub(super) fn retry_wait(
        &self,
        failed_at: Option<&Time>,
        started_at: &Time,
    ) -> Option<Duration> {
        let waited = self.elapsed(failed_at.unwrap_or(started_at));
        self.recheck_interval()
            .checked_sub(waited)
            .filter(|left| !left.is_zero())
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
        self.note("HookFailed", message);
    }

    /// Before the first node, the etcd snapshot, when the spec asks for one.
    pub(super) fn take_the_snapshot(&mut self, first: bool) -> ControlFlow<()> {
        if !first || self.spec.snapshot.is_none() || self.snapshot_verified() {
            return ControlFlow::Continue(());
        }
        self.snapshot();
        STOP
    }

    /// Before the first node, the pre-run hook, when the spec has one.
    pub(super) fn run_the_pre_hook(&mut self, first: bool) -> ControlFlow<()> {
        if first && self.hook(HookKind::Pre) == HookProgress::Waiting {
            return STOP;
        }
        ControlFlow::Continue(())
    }
}
