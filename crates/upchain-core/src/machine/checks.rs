//! The checks at a node boundary: gate verdicts, health checks, and the Pods a drain
//! would lose.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{GateRecord, Phase};

use super::{Machine, STOP};
use crate::drain::drain_progress;
use crate::gates;
use crate::plan::Plan;
use crate::reason::Reason;
use crate::window::{WindowState, window_state};

impl<'a> Machine<'a> {
    /// Why a node of the next batch may not be drained yet: Pods whose eviction would
    /// lose what nothing brings back, unless the spec allows it (the drain's options).
    pub(super) fn held_in_next_batch(&self, plan: &Plan) -> Vec<String> {
        plan.next_batch()
            .filter_map(|step| Some((step, self.observed.pods.get(&step.name)?)))
            .flat_map(|(step, pods)| {
                drain_progress(
                    pods,
                    self.observed.operator_pod.as_ref(),
                    &self.observed.budgets,
                    &self.spec.drain,
                )
                .held_reasons(&step.name)
            })
            .collect()
    }

    /// True when every configured check that reads a source outside the API (alerts,
    /// health checks) had its source read for this decision.
    pub(super) fn gate_sources_read(&self) -> bool {
        let gates = &self.observed.gates;
        (self.spec.gates.prometheus.is_none() || gates.alerts.is_some())
            && (self.spec.gates.health_checks.is_empty() || gates.health_checks.is_some())
            && self.analysis_read(self.before_the_first_node())
    }

    /// The health checks' verdicts, recorded; a failing check is waited for up to its
    /// timeout (Some: how long until the next one is due, and which fail), then its
    /// reasons join `reasons` and block.
    pub(super) fn health_checks(
        &mut self,
        checks: Vec<(gates::Verdict, Duration)>,
        reasons: &mut Vec<String>,
    ) -> Option<(Duration, Vec<String>)> {
        if checks.is_empty() {
            return None;
        }
        let mut overdue = Vec::new();
        let mut pending = Vec::new();
        let since = self
            .status
            .health_checks_failing_since
            .clone()
            .unwrap_or(Time(self.now));
        let waited = self.elapsed(&since);
        let blocked = self.status.phase == Some(Phase::Blocked) || !reasons.is_empty();
        for (verdict, timeout) in &checks {
            if !verdict.passed() {
                if blocked || waited >= *timeout {
                    overdue.extend(verdict.reasons.iter().cloned());
                } else {
                    pending.push((
                        *timeout - waited,
                        verdict.gate.clone(),
                        verdict.reasons.clone(),
                    ));
                }
            }
        }
        let verdicts: Vec<gates::Verdict> = checks.into_iter().map(|(v, _)| v).collect();
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

    /// Every check's verdict now: all of them before the run's first node, the node gate
    /// and the health checks between nodes.
    pub(super) fn evaluate(&self, first: bool, plan: &Plan) -> gates::Evaluation {
        gates::evaluate(
            self.spec,
            &self.observed.nodes,
            &self.observed.gates,
            plan,
            &self.status.nodes,
            self.now.as_second(),
            first,
        )
    }

    /// Replaces the records of these checks in status.gates with their verdicts.
    pub(super) fn record_gates(&mut self, verdicts: &[gates::Verdict]) {
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

    /// True before the run's first node: every gate applies then; between nodes, the node
    /// gate and (waited out for a while first) the alert gate.
    pub(super) fn before_the_first_node(&self) -> bool {
        self.status.nodes.is_empty() && self.status.upgraded_without_record == 0
    }

    /// A node finished within this decision and the next one's checks were not read for
    /// it: look again at once, with them.
    pub(super) fn read_the_checks_first(&mut self) -> ControlFlow<()> {
        if self.gate_sources_read() {
            return ControlFlow::Continue(());
        }
        self.requeue_within(Duration::ZERO);
        self.note(
            Reason::ReadingChecks,
            "reading the checks before the next node",
        );
        STOP
    }

    /// The gates: every reason blocks; failing health checks and (between nodes) firing
    /// alerts are waited out for a while first.
    pub(super) fn check_gates(&mut self, first: bool, plan: &Plan) -> ControlFlow<()> {
        let evaluation = self.evaluate(first, plan);
        self.record_gates(&evaluation.gates);
        let mut reasons = gates::reasons(&evaluation.gates);
        let analysing = self.analyse_before_the_batch(first, &mut reasons);
        if let Some((waiting, failing)) = self.health_checks(evaluation.health_checks, &mut reasons)
        {
            self.requeue_within(self.recheck_interval().min(waiting));
            self.note(
                Reason::WaitingForHealthChecks,
                format!(
                    "the next node waits for {} to pass (the run is Blocked once a check's \
                     timeout has passed)",
                    failing.join(", ")
                ),
            );
            return STOP;
        }
        if !analysing.is_empty() && reasons.is_empty() {
            self.note(
                Reason::WaitingForAnalysis,
                format!(
                    "the next {} waits for analysis: {}",
                    if first { "run" } else { "batch" },
                    analysing.join("; ")
                ),
            );
            return STOP;
        }
        if !first {
            self.wait_out_alerts(&mut reasons)?;
        }
        if !reasons.is_empty() {
            self.block(reasons);
            return STOP;
        }
        self.status.alerts_waiting_since = None;
        ControlFlow::Continue(())
    }

    /// Between nodes, firing alerts alone are waited for up to `maxWait` before they
    /// block; with other reasons, or already blocked, they block at once.
    fn wait_out_alerts(&mut self, reasons: &mut Vec<String>) -> ControlFlow<()> {
        let Some(alerts) = gates::alerts(&self.spec.gates, &self.observed.gates) else {
            return ControlFlow::Continue(());
        };
        self.record_gates(std::slice::from_ref(&alerts));
        if alerts.passed() {
            self.status.alerts_waiting_since = None;
            return ControlFlow::Continue(());
        }
        if reasons.is_empty() && self.status.phase != Some(Phase::Blocked) {
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
                self.note(
                    Reason::WaitingForAlerts,
                    format!(
                        "the next node waits for firing alerts to clear (blocked after {}): {}",
                        gates::human(i64::try_from(max_wait.as_secs()).unwrap_or(i64::MAX)),
                        alerts.reasons.join("; ")
                    ),
                );
                return STOP;
            }
        }
        reasons.extend(alerts.reasons);
        ControlFlow::Continue(())
    }

    /// Outside the maintenance window, or in a blackout, no node starts.
    pub(super) fn wait_for_the_window(&mut self) -> ControlFlow<()> {
        let Some(window) = &self.spec.window else {
            return ControlFlow::Continue(());
        };
        match window_state(window, self.now) {
            Ok(WindowState::Open { .. }) => {
                self.status.next_window_at = None;
                ControlFlow::Continue(())
            }
            Ok(WindowState::Closed { opens_at, blackout }) => {
                self.unblock();
                self.status.next_window_at = Some(Time(opens_at));
                let wait =
                    Duration::try_from(opens_at.duration_since(self.now)).unwrap_or_default();
                self.requeue_within(wait);
                match blackout {
                    Some(blackout) => self.note(
                        Reason::InBlackout,
                        format!("in the {blackout}; the next node starts at {opens_at}"),
                    ),
                    None => self.note(
                        Reason::OutsideWindow,
                        format!(
                            "outside the maintenance window; the next node starts when it opens \
                             at {opens_at}"
                        ),
                    ),
                }
                STOP
            }
            Err(error) => {
                self.refuse(Reason::InvalidSpec, error);
                STOP
            }
        }
    }

    /// A Pod of the next batch whose eviction would lose what nothing brings back blocks
    /// the run before its node is cordoned.
    pub(super) fn hold_pods_the_drain_would_lose(&mut self, plan: &Plan) -> ControlFlow<()> {
        let held = self.held_in_next_batch(plan);
        if held.is_empty() {
            return ControlFlow::Continue(());
        }
        self.block(held);
        STOP
    }
}
