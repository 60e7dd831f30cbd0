//! The postflight: every node at the target, the control plane at its image, Pods ready.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{HookKind, Phase, RunRecord};

use super::one_off::HookProgress;
use super::{HISTORY_LIMIT, Machine, STOP, WAIT_POLL};
use crate::gates;
use crate::plan::Plan;
use crate::reason::Reason;
use crate::version::KubeVersion;

impl<'a> Machine<'a> {
    pub(super) fn postflight(&mut self) {
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
                Reason::Postflight,
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
                Reason::Postflight,
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
                Reason::PostflightWaiting,
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
            Reason::Succeeded,
            format!("every selected node runs {target}"),
        );
        self.note(
            Reason::Succeeded,
            "every selected node runs the target version",
        );
    }

    /// Once every node is at the target, the run ends with its postflight.
    pub(super) fn postflight_once_complete(&mut self, plan: &Plan) -> ControlFlow<()> {
        if !plan.is_complete() {
            return ControlFlow::Continue(());
        }
        self.postflight();
        STOP
    }
}
