//! Analysis checks at their moments: before the run, before each batch, while a batch soaks.

use upchain_api::{AnalysisCheck, AnalysisVerdict, RETRY_ANNOTATION};

use super::checks::with_prometheus;
use super::*;
use crate::analysis::Sample;

fn analysed(target: &str, check: serde_json::Value) -> K8sUpgrade {
    let mut upgrade = with_prometheus(quick(target));
    let check: AnalysisCheck = serde_json::from_value(check).expect("check");
    upgrade.spec.gates.analysis = vec![check];
    upgrade
}

/// The model Prometheus answers the check's query with one sample per value.
fn answer(world: &mut World, check: &str, values: &[&str]) {
    let samples = values
        .iter()
        .map(|value| Sample {
            labels: [("service".to_owned(), "checkout".to_owned())].into(),
            value: (*value).to_owned(),
        })
        .collect();
    world
        .gates
        .analysis
        .get_or_insert_with(Default::default)
        .insert(check.to_owned(), Ok(samples));
}

fn error_rate(when: &str) -> serde_json::Value {
    serde_json::json!({"name": "error-rate", "query": "sum(rate(errors[5m]))",
        "threshold": {"operator": "LessThan", "value": 0.01}, "when": [when], "interval": "30s",
        "consecutivePasses": 2})
}

/// A person sets the retry annotation.
fn retry(run: &mut Run) {
    run.upgrade
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RETRY_ANNOTATION.to_owned(), "1".to_owned());
}

fn started_nodes(run: &Run) -> Vec<String> {
    run.status_or_default()
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect()
}

#[test]
fn a_failing_soak_stops_the_run_with_its_samples_and_the_batch_in_service() {
    let mut run = Run::new(
        analysed("1.35.2", error_rate("AfterBatch")),
        World::new(small_cluster()),
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    answer(&mut run.world, "error-rate", &["0.001"]);
    // The control-plane node soaks and passes; the first worker goes wrong in its soak.
    while run.status_or_default().nodes.len() < 2 {
        let decision = run.decide_once();
        run.wait_as_asked(&decision, 30);
    }
    answer(&mut run.world, "error-rate", &["0.2"]);
    assert_eq!(run.until(100, &[Phase::Failed]), Phase::Failed);
    let status = run.status().clone();
    let ready = conditions::get(&status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "AnalysisFailed");
    assert!(
        ready
            .message
            .contains(r#"1 of 1 sample(s) not < 0.01: {service="checkout"} 0.2"#),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains(RETRY_ANNOTATION),
        "{}",
        ready.message
    );
    let worker = status.nodes.last().expect("the worker");
    assert_eq!(worker.step, NodeStep::Soaking);
    assert!(
        !run.world.nodes.iter().any(|n| n.unschedulable),
        "the batch is in service"
    );
    // Nothing else starts, however long it stays so.
    let before = started_nodes(&run);
    for _ in 0..10 {
        run.world.tick(600);
        let decision = run.decide_once();
        assert!(mutating(&decision.actions).is_empty());
        assert_eq!(decision.status.phase, Some(Phase::Failed));
    }
    assert_eq!(started_nodes(&run), before);
    // Fixed, and retried: the soak is measured again and the run goes on.
    answer(&mut run.world, "error-rate", &["0.002"]);
    retry(&mut run);
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn a_batch_soaks_until_its_analysis_has_its_passes_in_a_row() {
    let mut upgrade = analysed("1.35.2", error_rate("AfterBatch"));
    upgrade.spec.soak = std::time::Duration::from_secs(1).into();
    upgrade.spec.gates.analysis[0].consecutive_passes = 3;
    upgrade.spec.gates.analysis[0].interval = std::time::Duration::from_secs(60).into();
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    run.world.gates.alerts = Some(Ok(Vec::new()));
    answer(&mut run.world, "error-rate", &["0.001"]);
    let mut soaking_since = None;
    loop {
        let decision = run.decide_once();
        let first = &run.status_or_default().nodes[..];
        if let Some(node) = first.first() {
            match node.step {
                NodeStep::Soaking => {
                    soaking_since.get_or_insert(run.world.clock);
                }
                NodeStep::Done => break,
                _ => {}
            }
        }
        run.wait_as_asked(&decision, 30);
    }
    let soaked = run.world.clock - soaking_since.expect("it soaked");
    assert!(
        soaked >= 120,
        "three passes a minute apart take two minutes: {soaked}s"
    );
    let record = &run.status().analysis;
    assert!(record.is_empty() || record[0].stage != upchain_api::AnalysisStage::BeforeRun);
}

#[test]
fn a_failing_check_before_a_batch_blocks_and_clears_after_its_passes_in_a_row() {
    let mut run = Run::new(
        analysed("1.35.2", error_rate("BeforeBatch")),
        World::new(small_cluster()),
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    answer(&mut run.world, "error-rate", &["0.5", "0.001"]);
    assert_eq!(run.until(10, &[Phase::Blocked]), Phase::Blocked);
    assert!(started_nodes(&run).is_empty(), "nothing touched");
    assert!(
        run.status().blocked_reasons[0].contains("analysis error-rate failed 1 time(s)"),
        "{:?}",
        run.status().blocked_reasons
    );
    answer(&mut run.world, "error-rate", &["0.001"]);
    // Two passes in a row, 30 s apart, before it lets the run through.
    run.world.tick(30);
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Blocked));
    assert_eq!(decision.status.analysis[0].passes, 1);
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn a_check_before_the_run_that_waits_for_a_sample_holds_the_run_without_a_stall() {
    let mut upgrade = analysed(
        "1.35.2",
        serde_json::json!({"name": "staging-soaked", "query": "staging_age",
            "threshold": {"operator": "GreaterThanOrEqual", "value": 3600},
            "when": ["BeforeRun"], "interval": "1m", "onEmpty": "Wait"}),
    );
    upgrade.spec.stall_timeout = std::time::Duration::from_secs(600).into();
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    run.world.gates.alerts = Some(Ok(Vec::new()));
    answer(&mut run.world, "staging-soaked", &[]);
    for _ in 0..40 {
        let decision = run.decide_once();
        assert!(mutating(&decision.actions).is_empty());
        run.wait_as_asked(&decision, 60);
    }
    let status = run.status();
    assert!(status.nodes.is_empty());
    let ready = conditions::get(&status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "WaitingForAnalysis");
    assert!(
        ready.message.contains("the query returned no sample"),
        "{}",
        ready.message
    );
    assert!(!conditions::is_true(&status.conditions, types::STALLED));
    // The other cluster's run has aged: a sample under the threshold still waits, one
    // over it lets the run start.
    answer(&mut run.world, "staging-soaked", &["1800"]);
    run.world.tick(60);
    assert_eq!(run.until(3, &[Phase::Blocked]), Phase::Blocked);
    answer(&mut run.world, "staging-soaked", &["4000"]);
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn a_malformed_analysis_expression_is_refused_and_nothing_is_touched() {
    let upgrade = analysed(
        "1.35.2",
        serde_json::json!({"name": "bad", "query": "up", "expression": "samples.all(s,",
            "when": ["BeforeRun"]}),
    );
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let refused = run.decide_once();
    assert!(mutating(&refused.actions).is_empty());
    let ready = conditions::get(&refused.status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("spec.gates.analysis[0] (bad)"),
        "{}",
        ready.message
    );
}

#[test]
fn measurements_count_passes_in_a_row_and_tolerated_failures() {
    let check: AnalysisCheck = serde_json::from_value(serde_json::json!({"name": "p99",
        "query": "q", "expression": "samples.all(s, s.value < 1.0)", "when": ["AfterBatch"],
        "consecutivePasses": 2, "toleratedFailures": 1}))
    .expect("check");
    let sample = |value: &str| {
        Ok(vec![Sample {
            labels: Default::default(),
            value: value.to_owned(),
        }])
    };
    let mut record = crate::analysis::fresh(&check, upchain_api::AnalysisStage::AfterBatch);
    let mut measure = |value: &str| {
        let measured = crate::analysis::measure(0, &check, &sample(value));
        crate::analysis::count(
            &mut record,
            &check,
            measured,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)),
        );
        record.verdict
    };
    assert_eq!(measure("0.5"), AnalysisVerdict::Measuring);
    assert_eq!(measure("NaN"), AnalysisVerdict::Measuring, "one tolerated");
    assert_eq!(
        measure("0.5"),
        AnalysisVerdict::Measuring,
        "passes start over"
    );
    assert_eq!(measure("0.4"), AnalysisVerdict::Passed);
    assert_eq!(measure("+Inf"), AnalysisVerdict::Failed, "a second failure");
}

proptest! {
    /// With a check measured while each batch soaks, going wrong while one node's batch
    /// soaks: the invariants and idempotence hold at every decision (a repeated decision
    /// counts no measurement twice); the run stops Failed with nothing cordoned and no
    /// node started after it, however long it waits; retried with a healthy measure, it
    /// converges.
    #[test]
    fn a_failing_soak_stops_the_run_and_nothing_else_starts(
        (nodes, max_unavailable, zero_soak) in super::invariants::arb_cluster(),
        wrong_at in 0usize..11,
        passes in 1i32..4,
        tolerated in 0i32..3,
    ) {
        let mut upgrade = analysed("1.35.1", error_rate("AfterBatch"));
        upgrade.spec.nodes.max_unavailable = max_unavailable;
        if zero_soak {
            upgrade.spec.soak = std::time::Duration::ZERO.into();
        }
        upgrade.spec.gates.analysis[0].consecutive_passes = passes;
        upgrade.spec.gates.analysis[0].tolerated_failures = tolerated;
        if crate::plan::plan(KubeVersion::new(1, 35, 1), &upgrade.spec.nodes, &nodes, None)
            .is_err()
        {
            return Ok(());
        }
        let wrong = nodes.get(wrong_at).map(|n| n.name.clone());
        let mut run = Run::new(upgrade, World::new(nodes));
        run.world.gates.alerts = Some(Ok(Vec::new()));
        let mut failed = None;
        for _ in 0..600 {
            let soaking_wrong = run.status_or_default().nodes.iter().any(|n| {
                Some(&n.name) == wrong.as_ref() && n.step == NodeStep::Soaking
            });
            let value = if soaking_wrong { "0.5" } else { "0.001" };
            answer(&mut run.world, "error-rate", &[value]);
            let decision = run.decide_once();
            match decision.status.phase {
                Some(Phase::Succeeded) => break,
                Some(Phase::Failed) => {
                    failed = Some(started_nodes(&run));
                    break;
                }
                _ => run.wait_as_asked(&decision, 600),
            }
        }
        if let Some(started) = failed {
            let ready = conditions::get(&run.status().conditions, types::READY).expect("Ready");
            prop_assert_eq!(&ready.reason, "AnalysisFailed");
            prop_assert!(ready.message.contains("0.5"), "{}", ready.message);
            for _ in 0..5 {
                run.world.tick(600);
                let decision = run.decide_once();
                prop_assert!(mutating(&decision.actions).is_empty());
                prop_assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
            }
            prop_assert_eq!(started_nodes(&run), started);
            answer(&mut run.world, "error-rate", &["0.001"]);
            retry(&mut run);
        }
        prop_assert_eq!(run.until(600, &[Phase::Succeeded, Phase::Failed]), Phase::Succeeded);
        prop_assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
    }
}
