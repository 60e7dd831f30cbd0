//! Analysis checks (spec.gates.analysis): a PromQL query's samples judged against a
//! threshold or a CEL expression, and a check's measurements counted into its verdict.
//! Pure: the operator asks Prometheus, this judges what it answered.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_cel::KubeCelExt;
use kube_cel::cel::{self, Context, Program, Value};
use serde::Serialize;
use upchain_api::{
    AnalysisCheck, AnalysisRecord, AnalysisStage, AnalysisVerdict, EmptyResult, RETRY_ANNOTATION,
};

use crate::gates::{Source, Verdict};

/// Samples a measurement names before it counts the rest.
const NAMED_SAMPLES: usize = 5;

/// One sample of an instant query: its labels, and its value as Prometheus wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The series' labels (`__name__` included when the query keeps it).
    pub labels: BTreeMap<String, String>,
    /// The value: a decimal, or `NaN`, `+Inf`, `-Inf`.
    pub value: String,
}

impl Sample {
    /// The value as a number; one that does not parse is NaN, which meets no threshold.
    pub fn number(&self) -> f64 {
        self.value.trim().parse().unwrap_or(f64::NAN)
    }
}

/// What each check's query returned, by check name, or why it could not be read.
pub type AnalysisInputs = BTreeMap<String, Source<Vec<Sample>>>;

/// One measurement: whether it passed, and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Measurement {
    /// The samples meet the condition.
    Pass(String),
    /// They do not, or the query failed.
    Fail(String),
    /// Neither: an empty result with `onEmpty: Wait`.
    Inconclusive(String),
}

/// The name a check's verdict carries in `upchain check`.
pub fn gate_name(check: &AnalysisCheck) -> String {
    format!("analysis/{}", check.name)
}

/// The checks measured at a node boundary, each at its stage: before the run's first node
/// a check's `BeforeRun` (else its `BeforeBatch`), afterwards its `BeforeBatch`.
pub fn at_the_boundary(
    checks: &[AnalysisCheck],
    before_the_first_node: bool,
) -> Vec<(&AnalysisCheck, AnalysisStage)> {
    checks
        .iter()
        .filter_map(|check| {
            let stage = if before_the_first_node && check.when.contains(&AnalysisStage::BeforeRun) {
                AnalysisStage::BeforeRun
            } else if check.when.contains(&AnalysisStage::BeforeBatch) {
                AnalysisStage::BeforeBatch
            } else {
                return None;
            };
            Some((check, stage))
        })
        .collect()
}

/// The checks measured while a batch soaks.
pub fn while_soaking(checks: &[AnalysisCheck]) -> impl Iterator<Item = &AnalysisCheck> {
    checks
        .iter()
        .filter(|c| c.when.contains(&AnalysisStage::AfterBatch))
}

fn compile(index: usize, check: &AnalysisCheck) -> Result<Option<Program>, String> {
    match (&check.threshold, &check.expression) {
        (Some(_), None) => Ok(None),
        (None, Some(expression)) => crate::health::compile_bounded(
            &format!("spec.gates.analysis[{index}] ({})", check.name),
            expression,
        )
        .map(Some),
        _ => Err(format!(
            "spec.gates.analysis[{index}] ({}): give exactly one of threshold and expression",
            check.name
        )),
    }
}

/// Refuses a spec whose check has no condition, two, or an expression that does not parse.
pub fn validate(checks: &[AnalysisCheck]) -> Result<(), String> {
    checks
        .iter()
        .enumerate()
        .try_for_each(|(index, check)| compile(index, check).map(drop))
}

/// The samples in a few words: `{code="500"} 0.031, {code="503"} 0.2 and 3 more`.
pub fn describe(samples: &[&Sample]) -> String {
    let mut named: Vec<String> = samples
        .iter()
        .take(NAMED_SAMPLES)
        .map(|sample| {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(name, value)| format!("{name}={value:?}"))
                .collect();
            if labels.is_empty() {
                sample.value.clone()
            } else {
                format!("{{{}}} {}", labels.join(","), sample.value)
            }
        })
        .collect();
    if samples.len() > NAMED_SAMPLES {
        named.push(format!("and {} more", samples.len() - NAMED_SAMPLES));
    }
    named.join(", ")
}

/// A sample as the expression sees it.
#[derive(Serialize)]
struct CelSample<'a> {
    labels: &'a BTreeMap<String, String>,
    value: f64,
}

/// One measurement of `check` (the `index`th) from what its query returned. A query that
/// failed is a failing measurement: an unreachable Prometheus is not a healthy cluster.
pub fn measure(index: usize, check: &AnalysisCheck, result: &Source<Vec<Sample>>) -> Measurement {
    let samples = match result {
        Ok(samples) => samples,
        Err(error) => return Measurement::Fail(format!("the query failed: {error}")),
    };
    if samples.is_empty() {
        let seen = "the query returned no sample".to_owned();
        return match check.on_empty {
            EmptyResult::Fail => Measurement::Fail(seen),
            EmptyResult::Pass => Measurement::Pass(seen),
            EmptyResult::Wait => Measurement::Inconclusive(seen),
        };
    }
    let all: Vec<&Sample> = samples.iter().collect();
    let program = match compile(index, check) {
        Ok(program) => program,
        Err(error) => return Measurement::Fail(error),
    };
    if let (Some(threshold), None) = (&check.threshold, &program) {
        let failing: Vec<&Sample> = samples
            .iter()
            .filter(|s| !threshold.operator.holds(s.number(), threshold.value))
            .collect();
        return if failing.is_empty() {
            Measurement::Pass(describe(&all))
        } else {
            Measurement::Fail(format!(
                "{} of {} sample(s) not {} {}: {}",
                failing.len(),
                samples.len(),
                threshold.operator.symbol(),
                threshold.value,
                describe(&failing)
            ))
        };
    }
    let Some(program) = program else {
        return Measurement::Fail("no condition".to_owned());
    };
    let cel_samples: Vec<CelSample> = samples
        .iter()
        .map(|s| CelSample {
            labels: &s.labels,
            value: s.number(),
        })
        .collect();
    let value = match cel::to_value(&cel_samples) {
        Ok(value) => value,
        Err(error) => return Measurement::Fail(format!("could not be read as CEL ({error})")),
    };
    let mut context = Context::default().with_all();
    context.add_variable_from_value("samples", value);
    let expression = check.expression.as_deref().unwrap_or_default();
    match program.execute(&context) {
        Ok(Value::Bool(true)) => Measurement::Pass(describe(&all)),
        Ok(Value::Bool(false)) => {
            Measurement::Fail(format!("`{expression}` is false for {}", describe(&all)))
        }
        Ok(other) => Measurement::Fail(format!("`{expression}` returned {other:?}, not a bool")),
        Err(error) => Measurement::Fail(format!("`{expression}` failed: {error}")),
    }
}

/// A fresh record of `check` at `stage`: nothing measured yet.
pub fn fresh(check: &AnalysisCheck, stage: AnalysisStage) -> AnalysisRecord {
    AnalysisRecord {
        name: check.name.clone(),
        stage,
        verdict: AnalysisVerdict::Measuring,
        passes: 0,
        failures: 0,
        last_value: None,
        last_measured_at: None,
        message: None,
    }
}

/// How long until `check` is due again at `now`; zero when it is due.
pub fn due_in(record: &AnalysisRecord, check: &AnalysisCheck, now: &Time) -> Duration {
    let interval = Duration::from(check.interval);
    let Some(last) = &record.last_measured_at else {
        return Duration::ZERO;
    };
    let since = Duration::try_from(now.0.duration_since(last.0)).unwrap_or_default();
    interval.saturating_sub(since)
}

/// Counts `measurement` into the record: a pass extends the passes in a row, a failure
/// ends them, an inconclusive one changes neither. The check has passed once it has its
/// passes in a row, failed once it has more failures than it tolerates; a check that
/// failed and is measured again (a gate rechecked while Blocked) stays failed until it
/// has its passes in a row again.
pub fn count(
    record: &mut AnalysisRecord,
    check: &AnalysisCheck,
    measurement: Measurement,
    now: Time,
) {
    let (seen, message) = match measurement {
        Measurement::Pass(seen) => {
            record.passes = record.passes.saturating_add(1);
            (seen, None)
        }
        Measurement::Fail(seen) => {
            record.passes = 0;
            record.failures = record.failures.saturating_add(1);
            (seen.clone(), Some(seen))
        }
        Measurement::Inconclusive(seen) => (seen.clone(), Some(seen)),
    };
    record.last_value = Some(seen);
    record.last_measured_at = Some(now);
    record.verdict = if record.failures > check.tolerated_failures {
        AnalysisVerdict::Failed
    } else if record.passes >= check.consecutive_passes {
        AnalysisVerdict::Passed
    } else if record.verdict == AnalysisVerdict::Failed {
        AnalysisVerdict::Failed
    } else {
        AnalysisVerdict::Measuring
    };
    let counts = format!(
        "{} of {} passes in a row, {} of {} tolerated failures; last: {}",
        record.passes,
        check.consecutive_passes,
        record.failures,
        check.tolerated_failures,
        message.as_deref().unwrap_or("passed")
    );
    record.message = match record.verdict {
        AnalysisVerdict::Failed if record.failures > check.tolerated_failures => {
            Some(failed_message(record, check, message.as_deref()))
        }
        AnalysisVerdict::Failed => Some(format!(
            "analysis {} failed and is measured again: {counts}",
            check.name
        )),
        AnalysisVerdict::Passed => None,
        AnalysisVerdict::Measuring => Some(counts),
    };
}

fn failed_message(record: &AnalysisRecord, check: &AnalysisCheck, last: Option<&str>) -> String {
    let last = last
        .or(record.last_value.as_deref())
        .unwrap_or("no measurement");
    format!(
        "analysis {} failed {} time(s) (tolerates {}) at {}: {last}",
        check.name,
        record.failures,
        check.tolerated_failures,
        record.stage.as_str()
    )
}

/// Why a failed check blocks a batch, or stops a soaking one, saying what to do.
pub fn failure_reason(record: &AnalysisRecord, check: &AnalysisCheck) -> String {
    let failed = record
        .message
        .clone()
        .unwrap_or_else(|| failed_message(record, check, None));
    match record.stage {
        AnalysisStage::AfterBatch => format!(
            "{failed}. The batch is upgraded and in service; no other node starts. Look into \
             what the check measures, then set a new value on the {RETRY_ANNOTATION} \
             annotation to measure the soak again, or remove the check from \
             spec.gates.analysis"
        ),
        AnalysisStage::BeforeRun | AnalysisStage::BeforeBatch => format!(
            "{failed}; it is measured again every {}, and lets the run through once it passes \
             {} time(s) in a row",
            crate::gates::human(
                i64::try_from(Duration::from(check.interval).as_secs()).unwrap_or(i64::MAX)
            ),
            check.consecutive_passes
        ),
    }
}

/// One measurement of every check, as `upchain check` shows it: what the query returned
/// now and whether that one measurement passes (the run needs `consecutivePasses` of them).
pub fn verdicts(checks: &[AnalysisCheck], inputs: &AnalysisInputs) -> Vec<Verdict> {
    checks
        .iter()
        .enumerate()
        .map(|(index, check)| {
            let stages: Vec<&str> = check.when.iter().map(|s| s.as_str()).collect();
            let measured = inputs.get(&check.name).map_or_else(
                || Measurement::Fail("the query was not run".to_owned()),
                |result| measure(index, check, result),
            );
            let (seen, reasons) = match measured {
                Measurement::Pass(seen) => (seen, Vec::new()),
                Measurement::Inconclusive(seen) => (
                    seen.clone(),
                    vec![format!(
                        "analysis {}: {seen}, which it waits out (onEmpty: Wait): a run would \
                         wait here",
                        check.name
                    )],
                ),
                Measurement::Fail(seen) => (
                    seen.clone(),
                    vec![format!("analysis {}: {seen}", check.name)],
                ),
            };
            Verdict {
                gate: gate_name(check),
                evidence: format!(
                    "{seen} ({}; needs {} pass(es) in a row, {} apart)",
                    stages.join(", "),
                    check.consecutive_passes,
                    crate::gates::human(
                        i64::try_from(Duration::from(check.interval).as_secs()).unwrap_or(i64::MAX)
                    )
                ),
                reasons,
            }
        })
        .collect()
}
