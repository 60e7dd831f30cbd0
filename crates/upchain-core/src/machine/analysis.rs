//! The analysis checks at their moments: measured when due, before a batch (a failure
//! blocks, as a gate does) and while a batch soaks (a failure stops the run with the
//! batch in service).

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{AnalysisCheck, AnalysisRecord, AnalysisStage, AnalysisVerdict, Phase};

use super::{Machine, STOP};
use crate::analysis;
use crate::reason::Reason;

impl<'a> Machine<'a> {
    /// Measures `check` at `stage` when it is due and its query was read; returns when it
    /// is due next. A record of another stage starts over. A check that passes says so in
    /// an Event; one that fails is told by what it stops (the Blocked Event before a batch,
    /// AnalysisFailed in a soak), so a failure is not announced twice.
    fn measure(&mut self, index: usize, check: &AnalysisCheck, stage: AnalysisStage) -> Duration {
        let now = Time(self.now);
        let position = match self
            .status
            .analysis
            .iter()
            .position(|r| r.name == check.name)
        {
            Some(position) if self.status.analysis[position].stage == stage => position,
            Some(position) => {
                self.status.analysis[position] = analysis::fresh(check, stage);
                position
            }
            None => {
                self.status.analysis.push(analysis::fresh(check, stage));
                self.status.analysis.len() - 1
            }
        };
        let interval = Duration::from(check.interval);
        let record = &self.status.analysis[position];
        if !analysis::due_in(record, check, &now).is_zero() {
            return analysis::due_in(record, check, &now);
        }
        let Some(result) = self
            .observed
            .gates
            .analysis
            .as_ref()
            .and_then(|inputs| inputs.get(&check.name))
        else {
            // Not read for this decision (it reached the soak within it): read it next.
            return Duration::ZERO;
        };
        let before = record.verdict;
        let record = &mut self.status.analysis[position];
        if before == AnalysisVerdict::Failed
            && record.failures > check.tolerated_failures
            && stage != AnalysisStage::AfterBatch
        {
            // A gate that failed is measured afresh while the run is Blocked.
            record.passes = 0;
            record.failures = 0;
        }
        analysis::count(record, check, analysis::measure(index, check, result), now);
        if record.verdict == AnalysisVerdict::Passed && before != AnalysisVerdict::Passed {
            let message = format!(
                "analysis {} passed {} time(s) in a row at {}: {}",
                check.name,
                record.passes,
                stage.as_str(),
                record.last_value.as_deref().unwrap_or_default()
            );
            self.event(false, Reason::AnalysisPassed, message);
        }
        interval
    }

    /// Before a batch (the run's first, or a later one): measures the checks due, adds why
    /// each failed one blocks to `reasons`, and returns the checks still measuring, whose
    /// next measurement the decision is requeued for.
    pub(super) fn analyse_before_the_batch(
        &mut self,
        first: bool,
        reasons: &mut Vec<String>,
    ) -> Vec<String> {
        let spec = self.spec;
        let checks = analysis::at_the_boundary(&spec.gates.analysis, first);
        let mut measuring = Vec::new();
        for (check, stage) in checks {
            let index = self.check_index(check);
            let due = self.measure(index, check, stage);
            let Some(record) = self.record_of(check) else {
                continue;
            };
            match record.verdict {
                AnalysisVerdict::Passed => {}
                AnalysisVerdict::Failed => {
                    reasons.push(analysis::failure_reason(record, check));
                    self.requeue_within(due);
                }
                AnalysisVerdict::Measuring => {
                    measuring.push(format!(
                        "{} ({})",
                        check.name,
                        record.message.as_deref().unwrap_or("not measured yet")
                    ));
                    self.requeue_within(due);
                }
            }
        }
        measuring
    }

    /// While every node in flight soaks: measures the `AfterBatch` checks due.
    pub(super) fn analyse_the_soak(&mut self) {
        let spec = self.spec;
        for check in analysis::while_soaking(&spec.gates.analysis) {
            let index = self.check_index(check);
            let due = self.measure(index, check, AnalysisStage::AfterBatch);
            if self
                .record_of(check)
                .is_some_and(|r| r.verdict != AnalysisVerdict::Failed)
            {
                self.requeue_within(due);
            }
        }
    }

    /// True when every `AfterBatch` check has its passes in a row for this batch.
    pub(super) fn soak_analysis_passed(&self) -> bool {
        analysis::while_soaking(&self.spec.gates.analysis).all(|check| {
            self.record_of(check).is_some_and(|r| {
                r.stage == AnalysisStage::AfterBatch && r.verdict == AnalysisVerdict::Passed
            })
        })
    }

    /// The `AfterBatch` checks still measuring, for a soaked node's message.
    pub(super) fn soak_analysis_pending(&self) -> Vec<String> {
        analysis::while_soaking(&self.spec.gates.analysis)
            .filter(|check| {
                !self.record_of(check).is_some_and(|r| {
                    r.stage == AnalysisStage::AfterBatch && r.verdict == AnalysisVerdict::Passed
                })
            })
            .map(|check| check.name.clone())
            .collect()
    }

    /// An `AfterBatch` check that failed stops the run: Failed, the batch left in service
    /// (it soaks uncordoned), no other node started, until the retry annotation measures
    /// the soak again or the check is removed from the spec.
    pub(super) fn stop_on_a_failed_soak(&mut self) -> ControlFlow<()> {
        let reasons: Vec<String> = analysis::while_soaking(&self.spec.gates.analysis)
            .filter_map(|check| {
                let record = self.record_of(check)?;
                (record.stage == AnalysisStage::AfterBatch
                    && record.verdict == AnalysisVerdict::Failed)
                    .then(|| analysis::failure_reason(record, check))
            })
            .collect();
        if reasons.is_empty() {
            return ControlFlow::Continue(());
        }
        let message = reasons.join("; ");
        if self.status.phase != Some(Phase::Failed) {
            self.event(true, Reason::AnalysisFailed, message.clone());
        }
        self.set_phase(Phase::Failed);
        self.note(Reason::AnalysisFailed, message);
        STOP
    }

    /// The soak's failed checks measure afresh after the retry annotation changed.
    pub(super) fn retry_failed_soak_analysis(&mut self) -> bool {
        let before = self.status.analysis.len();
        self.status.analysis.retain(|r| {
            !(r.stage == AnalysisStage::AfterBatch && r.verdict == AnalysisVerdict::Failed)
        });
        self.status.analysis.len() != before
    }

    /// The check's record, if it has one.
    fn record_of(&self, check: &AnalysisCheck) -> Option<&AnalysisRecord> {
        self.status.analysis.iter().find(|r| r.name == check.name)
    }

    fn check_index(&self, check: &AnalysisCheck) -> usize {
        self.spec
            .gates
            .analysis
            .iter()
            .position(|c| c.name == check.name)
            .unwrap_or_default()
    }

    /// True when every analysis check measured at this boundary had its query read.
    pub(super) fn analysis_read(&self, first: bool) -> bool {
        let read = self.observed.gates.analysis.as_ref();
        analysis::at_the_boundary(&self.spec.gates.analysis, first)
            .iter()
            .all(|(check, _)| read.is_some_and(|r| r.contains_key(&check.name)))
    }

    /// A new batch starts: the checks before it are spent, and its soak measures afresh.
    pub(super) fn spend_the_analysis_of_the_boundary(&mut self) {
        self.status
            .analysis
            .retain(|r| r.stage == AnalysisStage::BeforeRun);
    }
}
