//! A run's life: start, approval, retry, a failed node, and the run record.

use std::ops::ControlFlow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{
    APPROVE_ANNOTATION, Approval, HookKind, NodeRecord, NodeStep, Phase, RETRY_ANNOTATION,
    RunRecord,
};

use super::decision::Action;
use super::{HISTORY_LIMIT, Machine, STOP};
use crate::conditions;
use crate::conditions::types;
use crate::plan::{Plan, plan};
use crate::reason::Reason;
use crate::version::KubeVersion;

impl<'a> Machine<'a> {
    /// spec.approval Manual: shows the plan and the checks' verdicts and waits, changing
    /// nothing, until the approve annotation carries this plan's hash.
    pub(super) fn await_approval(&mut self, plan: &Plan, new_run: bool) {
        let hash = plan.hash();
        let verdicts = self.evaluate(new_run, plan).gates;
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
        let already_said =
            conditions::get(&self.status.conditions, types::READY).is_some_and(|c| {
                c.reason == Reason::AwaitingApproval.as_str() && c.message.contains(&hash)
            });
        if !already_said {
            self.event(false, Reason::AwaitingApproval, message.clone());
        }
        if new_run {
            self.set_phase(Phase::Pending);
            self.status.blocked_reasons.clear();
        }
        self.requeue_within(self.recheck_interval());
        self.note(Reason::AwaitingApproval, message);
    }

    /// A new value of the retry annotation retries the failed nodes from their drain, and a
    /// failed post-run hook as its next attempt.
    pub(super) fn handle_retry(&mut self) {
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
                record.reattaches = 0;
                record.paused_retries = 0;
                record.finished_at = None;
                record.drain_preview = None;
                record.message =
                    Some("retrying after the upchain.dev/retry annotation changed".to_owned());
                retried.push(record.name.clone());
            }
        }
        if self.retry_failed_soak_analysis() {
            retried.push("the soak's analysis".to_owned());
        }
        if !retried.is_empty() {
            self.progressed();
            self.event(
                false,
                Reason::Retrying,
                format!("retrying {}", retried.join(", ")),
            );
        }
    }

    /// A Failed node that was since added to spec.nodes.skip no longer fails the run; it is
    /// uncordoned, since upchain cordoned it.
    pub(super) fn release_skipped_failures(&mut self) {
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
    pub(super) fn release_node(&mut self, node: &str) {
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

    pub(super) fn failed_node(&self) -> Option<&NodeRecord> {
        self.status
            .nodes
            .iter()
            .find(|r| r.step == NodeStep::Failed && !self.spec.nodes.skip.contains(&r.name))
    }

    pub(super) fn fail_on_node(&mut self) {
        let (name, message) = match self.failed_node() {
            Some(record) => (
                record.name.clone(),
                record.message.clone().unwrap_or_default(),
            ),
            None => return,
        };
        self.set_phase(Phase::Failed);
        self.note(
            Reason::NodeFailed,
            format!(
                "node {name} failed: {message}. No other node is started. Fix the cause, then \
                 set a new value on the {RETRY_ANNOTATION} annotation to retry, or add the node \
                 to spec.nodes.skip"
            ),
        );
    }

    pub(super) fn start_run(&mut self, plan: &Plan) {
        if let Some(finished) = self.finished_run() {
            self.status.history.insert(0, finished);
            self.status.history.truncate(HISTORY_LIMIT);
        }
        let now = Time(self.now);
        self.status.nodes.clear();
        self.status.upgraded_without_record = 0;
        self.status.hooks.clear();
        self.status.snapshot_waived = None;
        self.status.etcd = None;
        self.status.prepare.clear();
        self.status.prepared_count = 0;
        self.status.analysis.clear();
        self.status.completed_at = None;
        self.status.started_at = Some(now.clone());
        self.status.last_progress_at = Some(now);
        self.status.from_version = Some(plan.from_version.to_string());
        self.status.target_version = Some(plan.target.to_string());
        self.status.upgrade_kind = Some(plan.kind);
        self.set_phase(Phase::Preflight);
        if self.spec.runner.host_key_policy == upchain_api::HostKeyPolicy::AcceptNew {
            self.event(
                true,
                Reason::HostKeysUnchecked,
                "spec.runner.hostKeyPolicy is AcceptNew: a node whose SSH host key is not in \
                 the known hosts stops the run until a person confirms the key it shows"
                    .to_owned(),
            );
        }
        self.event(
            false,
            Reason::RunStarted,
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
    pub(super) fn finished_run(&self) -> Option<RunRecord> {
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
                .or_else(|| self.failed_post_hook().and_then(|h| h.message.clone()))
                .or_else(|| {
                    self.status
                        .analysis
                        .iter()
                        .find(|a| a.verdict == upchain_api::AnalysisVerdict::Failed)
                        .and_then(|a| a.message.clone())
                }),
        })
    }

    /// A failed node holds the run until it is retried or skipped.
    pub(super) fn stop_at_a_failed_node(&mut self) -> ControlFlow<()> {
        if self.failed_node().is_none() {
            return ControlFlow::Continue(());
        }
        self.fail_on_node();
        STOP
    }

    /// A run that succeeded stays so while the target is unchanged.
    pub(super) fn stay_succeeded(&mut self) -> ControlFlow<()> {
        if self.status.phase != Some(Phase::Succeeded) || !self.spec_target_unchanged() {
            return ControlFlow::Continue(());
        }
        self.note(
            Reason::Succeeded,
            "every selected node runs the target version",
        );
        STOP
    }

    /// The plan from the observed nodes, once the spec is valid and the version policy
    /// allows it; a refusal fails the spec with nothing changed.
    pub(super) fn plan_from_a_valid_spec(&mut self) -> ControlFlow<(), Plan> {
        let target = match KubeVersion::parse_target(&self.spec.target_version) {
            Ok(target) => target,
            Err(error) => {
                self.refuse(Reason::InvalidSpec, format!("spec.targetVersion: {error}"));
                return ControlFlow::Break(());
            }
        };
        if let Err(error) = crate::health::validate(&self.spec.gates.health_checks)
            .and_then(|()| crate::analysis::validate(&self.spec.gates.analysis))
        {
            self.refuse(Reason::InvalidSpec, error);
            return ControlFlow::Break(());
        }
        for kind in [HookKind::Pre, HookKind::Post, HookKind::EtcdCheck] {
            if let Some(Err(error)) =
                crate::hooks::hook(self.spec, kind).map(|h| crate::hooks::template(h, kind))
            {
                self.refuse(Reason::InvalidSpec, error);
                return ControlFlow::Break(());
            }
        }
        let control_plane = self.observed.gates.control_plane.as_ref();
        match plan(
            target,
            &self.spec.nodes,
            &self.observed.nodes,
            control_plane.and_then(|c| c.as_ref().ok()),
        ) {
            Ok(plan) => {
                self.withdraw_approval_for_joined_nodes(&plan);
                self.status.plan_hash = Some(plan.hash());
                self.plan = Some(plan.clone());
                self.remember_approved_nodes();
                ControlFlow::Continue(plan)
            }
            Err(error) => {
                self.refuse(Reason::VersionPolicy, error.to_string());
                ControlFlow::Break(())
            }
        }
    }

    /// spec.approval Manual: a node that joined the plan mid-run (added to the cluster or
    /// to the selection) was not approved, so the run waits at the next node boundary for
    /// the new plan's approval. A node that leaves the plan (upgraded by hand, skipped,
    /// removed) only narrows what was approved and needs none.
    fn withdraw_approval_for_joined_nodes(&mut self, plan: &Plan) {
        if self.spec.approval != Approval::Manual
            || self.status.approved_plan_hash.is_none()
            || !self.run_in_progress()
        {
            return;
        }
        let known: std::collections::HashSet<&str> = self
            .status
            .approved_nodes
            .iter()
            .map(String::as_str)
            .chain(self.status.nodes.iter().map(|n| n.name.as_str()))
            .collect();
        let joined: Vec<&str> = plan
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| !known.contains(name))
            .collect();
        if joined.is_empty() {
            return;
        }
        let message = format!(
            "{} joined the plan after it was approved; no further node starts until the new \
             plan is approved",
            joined.join(", ")
        );
        self.status.approved_plan_hash = None;
        self.event(true, Reason::AwaitingApproval, message);
    }

    /// With an approval in force on a run in progress, the approved nodes still to start:
    /// what [`Self::withdraw_approval_for_joined_nodes`] compares the next plan with.
    fn remember_approved_nodes(&mut self) {
        let approved = self.spec.approval == Approval::Manual
            && self.status.approved_plan_hash.is_some()
            && self.run_in_progress();
        self.status.approved_nodes = match (&self.plan, approved) {
            (Some(plan), true) => {
                let started: std::collections::HashSet<&str> =
                    self.status.nodes.iter().map(|n| n.name.as_str()).collect();
                plan.steps
                    .iter()
                    .filter(|s| !started.contains(s.name.as_str()))
                    .map(|s| s.name.clone())
                    .collect()
            }
            _ => Vec::new(),
        };
    }

    /// `spec.paused` starts no node.
    pub(super) fn stop_while_paused(&mut self) -> ControlFlow<()> {
        if !self.spec.paused {
            return ControlFlow::Continue(());
        }
        self.requeue = None;
        self.note(
            Reason::Paused,
            "spec.paused is true: no node is started until it is false",
        );
        STOP
    }

    /// A new run starts (after its approval, with `approval: Manual`); a new target takes
    /// over the run in flight here, at a node boundary.
    pub(super) fn start_or_retarget_the_run(&mut self, plan: &Plan) -> ControlFlow<()> {
        let target = plan.target;
        let new_run = self.status.started_at.is_none() || !self.run_in_progress();
        let retargeted = self.status.target_version.as_deref() != Some(&target.to_string());
        let manual = self.spec.approval == Approval::Manual;
        // Withdrawn when a node joined the plan mid-run.
        let approval_withdrawn = manual && !new_run && self.status.approved_plan_hash.is_none();
        if (new_run || retargeted || approval_withdrawn) && !plan.is_complete() {
            let approved = self.annotation(APPROVE_ANNOTATION).map(str::trim);
            if manual && approved != Some(plan.hash().as_str()) {
                self.await_approval(plan, new_run);
                return STOP;
            }
            self.status.approved_plan_hash = manual.then(|| plan.hash());
        }
        if new_run {
            self.start_run(plan);
        } else if retargeted {
            self.event(
                false,
                Reason::TargetChanged,
                format!(
                    "target changed from {} to {target} at a node boundary; the plan was \
                     recomputed from the nodes' versions",
                    self.status.target_version.as_deref().unwrap_or("none")
                ),
            );
            self.status.target_version = Some(target.to_string());
            self.status.upgrade_kind = Some(plan.kind);
            // A check passed for the old target says nothing about the new one, and the
            // nodes it upgraded are in the new plan again.
            self.status.prepare.clear();
            self.status.prepared_count = 0;
            self.status.upgraded_without_record = 0;
        }
        self.remember_approved_nodes();
        ControlFlow::Continue(())
    }
}
