//! What people work with: approval, Alertmanager silences, notifications.

use super::*;
use crate::tests::checks::{firing, with_prometheus};

/// A Manual run on the small cluster whose first plan was approved.
fn approved_manual_run() -> Run {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.approval = upchain_api::Approval::Manual;
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    run.decide_once();
    let hash = run.status().plan_hash.clone().expect("hash");
    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash)].into());
    run
}

#[test]
pub(super) fn a_node_that_joins_a_manual_run_waits_for_a_new_approval() {
    let mut run = approved_manual_run();
    run.until(200, &[Phase::Workers]);
    // A worker joins the cluster mid-run, at the old version.
    run.world
        .nodes
        .push(NodeFixture::worker("w-9").kubelet("v1.34.2").build());
    let mut cordoned = Vec::new();
    for _ in 0..60 {
        let decision = run.decide_once();
        cordoned.extend(decision.actions.iter().filter_map(|a| match a {
            Action::Cordon { node } => Some(node.clone()),
            _ => None,
        }));
        run.wait_as_asked(&decision, 600);
    }
    let status = run.status().clone();
    assert!(!cordoned.contains(&"w-9".to_owned()), "{cordoned:?}");
    assert!(status.approved_plan_hash.is_none());
    let ready = conditions::get(&status.conditions, types::READY).expect("Ready");
    let new_hash = status.plan_hash.clone().expect("hash");
    assert_eq!(ready.reason, "AwaitingApproval");
    assert!(ready.message.contains(&new_hash), "{}", ready.message);
    // The nodes in progress when w-9 joined finished; nothing else started.
    assert!(
        status.nodes.iter().all(|n| n.step == NodeStep::Done),
        "{:?}",
        status.nodes
    );
    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), new_hash)].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    assert_eq!(run.world.version("w-9"), KubeVersion::new(1, 35, 2));
}

#[test]
pub(super) fn a_manual_run_shows_its_plan_and_waits_for_the_plans_hash() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.approval = upchain_api::Approval::Manual;
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    for _ in 0..3 {
        let waiting = run.decide_once();
        assert!(
            mutating(&waiting.actions).is_empty(),
            "nothing before approval"
        );
        run.world.tick(60);
    }
    let status = run.status().clone();
    assert_eq!(status.phase, Some(Phase::Pending));
    assert!(status.started_at.is_none(), "no run starts before approval");
    let names: Vec<&str> = status.plan.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cp-0", "w-1", "w-3"]);
    assert!(status.gates.iter().any(|g| g.name == "nodes" && g.passed));
    let hash = status.plan_hash.clone().expect("hash");
    let ready = conditions::get(&status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "AwaitingApproval");
    assert!(
        ready
            .message
            .contains(&format!("upchain.dev/approve={hash}"))
    );

    // An approval of another plan does not start it, and says why.
    run.upgrade.metadata.annotations = Some(
        [(
            upchain_api::APPROVE_ANNOTATION.to_owned(),
            "0123456789abcdef".to_owned(),
        )]
        .into(),
    );
    let stale = run.decide_once();
    assert!(mutating(&stale.actions).is_empty());
    let ready = conditions::get(&stale.status.conditions, types::READY).expect("Ready");
    assert!(
        ready.message.contains("earlier plan's hash"),
        "{}",
        ready.message
    );

    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash.clone())].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    assert_eq!(
        run.status().approved_plan_hash.as_deref(),
        Some(hash.as_str())
    );
}

#[test]
pub(super) fn a_new_target_needs_a_new_approval() {
    let mut run = approved_manual_run();
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);

    run.upgrade.spec.target_version = "1.35.3".to_owned();
    for _ in 0..3 {
        let waiting = run.decide_once();
        assert!(mutating(&waiting.actions).is_empty());
        run.world.tick(60);
    }
    assert_eq!(run.status().phase, Some(Phase::Pending));
    let hash = run.status().plan_hash.clone().expect("hash");
    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash)].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    assert_eq!(run.status().target_version.as_deref(), Some("v1.35.3"));
}

pub(super) fn with_silences(mut upgrade: K8sUpgrade, extend_by: &str, cap: &str) -> K8sUpgrade {
    upgrade.spec.gates.silences = Some(
        serde_json::from_value(
            serde_json::json!({"alertmanagerUrl": "http://alertmanager:9093",
            "extendBy": extend_by, "maxDuration": cap}),
        )
        .expect("silences"),
    );
    upgrade
}

/// Decides until `phase`, checking at every instant that no silence reaches further than
/// `extend_by` ahead (what an operator killed then would leave) nor past its node's cap.
pub(super) fn run_checking_silences(run: &mut Run, phase: Phase, extend_by: i64, cap: i64) {
    for _ in 0..2000 {
        let decision = run.decide_once();
        let now = run.world.clock;
        for silence in run.world.silences.values() {
            assert!(silence.ends_at <= now + extend_by, "{silence:?} at {now}");
            let record = run
                .status()
                .nodes
                .iter()
                .find(|n| n.name == silence.node)
                .expect("a silenced node has a record");
            let started = record.started_at.0.as_second() - at(0).as_second();
            assert!(silence.ends_at <= started + cap, "{silence:?} past its cap");
            assert!(silence.created >= started);
        }
        if decision.status.phase == Some(phase) {
            return;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 120)) as i64);
    }
    panic!("never reached {phase:?}");
}

#[test]
pub(super) fn each_node_in_progress_is_silenced_and_its_silence_ends_when_it_is_done() {
    let mut run = Run::new(
        with_silences(quick("1.35.2"), "5m", "30m"),
        World::new(small_cluster()),
    );
    run_checking_silences(&mut run, Phase::Succeeded, 300, 1800);
    let status = run.status().clone();
    assert!(status.silences.is_empty(), "{:?}", status.silences);
    let silenced: BTreeSet<&str> = run
        .world
        .silences
        .values()
        .map(|s| s.node.as_str())
        .collect();
    assert_eq!(silenced, BTreeSet::from(["cp-0", "w-1", "w-3"]));
    for silence in run.world.silences.values() {
        let record = status
            .nodes
            .iter()
            .find(|n| n.name == silence.node)
            .expect("record");
        let finished = record.finished_at.as_ref().expect("done").0.as_second() - at(0).as_second();
        assert!(
            silence.ends_at <= finished,
            "{silence:?} outlived its node, done at {finished}"
        );
    }
}

#[test]
pub(super) fn a_silence_is_extended_in_steps_and_never_past_its_cap() {
    let mut world = World::new(small_cluster());
    world.never_return.insert("cp-0".to_owned());
    let mut run = Run::new(with_silences(quick("1.35.2"), "5m", "20m"), world);
    // cp-0 never comes back: it fails after rejoinTimeout (30m), long past the 20m cap.
    run_checking_silences(&mut run, Phase::Failed, 300, 1200);
    let silence = run
        .world
        .silences
        .values()
        .find(|s| s.node == "cp-0")
        .expect("silenced");
    assert!(silence.extensions >= 4, "{silence:?}");
    let started = run.status().nodes[0].started_at.0.as_second() - at(0).as_second();
    assert_eq!(
        silence.ends_at,
        started + 1200,
        "it ran to its cap and stopped"
    );
    assert!(
        run.status().silences.is_empty(),
        "a failed node is not silenced"
    );
}

#[test]
pub(super) fn notifications_go_once_per_transition() {
    let mut upgrade = with_prometheus(quick("1.35.2"));
    upgrade.spec.notify = Some(
        serde_json::from_value(serde_json::json!({"webhookSecret": {"namespace": "upchain-system", "name": "slack", "key": "url"}}))
            .expect("notify"),
    );
    let mut world = World::new(small_cluster());
    world.gates.alerts = Some(Ok(vec![firing("KubeNodeNotReady")]));
    let mut run = Run::new(upgrade, world);
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.extend(
            run.decide_once()
                .actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Notify(n) => Some(n),
                    _ => None,
                }),
        );
        run.world.tick(60);
    }
    run.world.gates.alerts = Some(Ok(Vec::new()));
    for _ in 0..200 {
        let decision = run.decide_once();
        sent.extend(decision.actions.into_iter().filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        }));
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    let kinds: Vec<&str> = sent.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(kinds, ["started", "blocked", "succeeded"]);
    assert!(sent[1].text.contains("KubeNodeNotReady"));
    assert!(sent.iter().all(|n| n.text.starts_with("K8sUpgrade test ")));
}
