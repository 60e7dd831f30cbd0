//! The prepare checks: one Job per node before any node is cordoned.

use super::*;

fn touched(decision: &Decision) -> bool {
    decision.actions.iter().any(|a| {
        matches!(
            a,
            Action::Cordon { .. } | Action::Evict { .. } | Action::DeletePods { .. }
        )
    })
}

#[test]
pub(super) fn a_node_that_fails_its_prepare_check_blocks_before_any_cordon_and_is_rechecked() {
    let mut world = World::new(small_cluster());
    world.unprepared.insert("w-3".to_owned());
    let mut run = Run::new(quick("1.35.2"), world);
    let preparing = run.decide_once();
    assert_eq!(preparing.status.phase, Some(Phase::Preflight));
    assert_eq!(preparing.status.prepare.len(), 3, "cp-0, w-1 and w-3");
    assert!(!touched(&preparing));
    run.world.tick(1);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(!touched(&blocked) && blocked.status.nodes.is_empty());
    let reasons = blocked.status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("node w-3")
            && reasons.contains("exit 11: a target package is not in the configured repository")
            && reasons.contains("not found in the configured repository")
            && reasons.contains("no node was drained"),
        "{reasons}"
    );
    assert!(
        blocked.actions.iter().any(|a| matches!(a,
        Action::Event(e) if e.reason == Reason::PrepareFailed && e.node.as_deref() == Some("w-3")))
    );
    assert_eq!(blocked.status.prepared_count, 2);
    let marked: Vec<&str> = run
        .world
        .nodes
        .iter()
        .filter(|n| n.prepared.is_some())
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(marked, ["cp-0", "w-1"], "a pass is kept on the node");
    // The mirror gets the packages: the recheck passes and the first node starts.
    run.world.unprepared.clear();
    run.world.tick(300);
    let retried = run.decide_once();
    assert!(
        retried
            .status
            .prepare
            .iter()
            .any(|r| r.node == "w-3" && r.attempt == 2),
        "{:?}",
        retried.status.prepare
    );
    run.world.tick(1);
    let started = run.decide_once();
    assert!(touched(&started), "the first node is cordoned");
    assert!(started.actions.iter().any(|a| matches!(a,
        Action::Event(e) if e.reason == Reason::NodesPrepared)));
    run.until(200, &[Phase::Succeeded]);
    assert!(run.status().prepare.is_empty() && run.status().prepared_count == 0);
}

#[test]
pub(super) fn a_pass_marked_for_another_run_is_checked_again() {
    let mut world = World::new(small_cluster());
    world.node_mut("w-1").prepared = Some("another/v1.35.2/0".to_owned());
    // w-3 fails its check, so the run waits with the others' passes marked.
    world.unprepared.insert("w-3".to_owned());
    let mut run = Run::new(quick("1.35.2"), world);
    let preparing = run.decide_once();
    let checked: Vec<&str> = preparing
        .status
        .prepare
        .iter()
        .map(|r| r.node.as_str())
        .collect();
    assert!(checked.contains(&"w-1"), "{checked:?}");
    run.world.tick(1);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    let mark = run.world.node_mut("w-1").prepared.clone();
    assert!(
        mark.as_deref().is_some_and(|m| m.starts_with(&format!(
            "{}/v1.35.2/",
            run.upgrade.metadata.name.as_deref().unwrap_or_default()
        ))),
        "{mark:?}"
    );
}

#[test]
pub(super) fn at_most_the_concurrency_of_prepare_checks_run_and_all_pass_before_any_cordon() {
    let mut nodes = vec![
        NodeFixture::control_plane("cp-0")
            .kubelet("v1.34.2")
            .build(),
    ];
    nodes.extend((1..=11).map(|i| {
        NodeFixture::worker(&format!("w-{i:02}"))
            .kubelet("v1.34.2")
            .build()
    }));
    let mut upgrade = quick("1.35.2");
    upgrade.spec.runner.prepare_concurrency = 3;
    let mut run = Run::new(upgrade, World::new(nodes));
    let mut most = 0;
    loop {
        let decision = run.decide_once();
        let running = run
            .world
            .prepare_jobs
            .values()
            .filter(|(_, s)| *s == JobState::Running)
            .count();
        most = most.max(running);
        if touched(&decision) {
            assert_eq!(
                run.world.prepare_jobs.len(),
                12,
                "every node was checked first"
            );
            break;
        }
        assert!(run.decisions < 20, "the checks end");
        run.world.tick(1);
    }
    assert_eq!(most, 3);
}

#[test]
pub(super) fn a_new_target_before_the_first_node_is_checked_again() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.decide_once();
    run.world.tick(1);
    run.upgrade.spec.target_version = "1.35.3".to_owned();
    let retargeted = run.decide_once();
    assert!(
        retargeted.status.nodes.is_empty(),
        "no node started on the old checks"
    );
    assert!(
        !retargeted.status.prepare.is_empty()
            && retargeted
                .status
                .prepare
                .iter()
                .all(|r| r.job.contains("v1-35-3")),
        "{:?}",
        retargeted.status.prepare
    );
}
