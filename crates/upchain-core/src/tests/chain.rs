//! The chain end to end: order, refusals, failures, pauses, the lock, retargets, deletion.

use super::*;

#[test]
pub(super) fn full_chain_upgrades_every_node_in_order() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    for node in &run.world.nodes {
        assert_eq!(node.kubelet_version, "v1.35.2");
        assert!(!node.unschedulable, "{} left cordoned", node.name);
    }
    let status = run.status();
    let order: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, ["cp-0", "w-1", "w-3"]);
    assert!(status.nodes[0].first_control_plane);
    assert_eq!(status.progress.as_deref(), Some("3/3"));
    assert_eq!(status.history.len(), 1);
    assert!(conditions::is_true(&status.conditions, types::READY));
    assert_eq!(status.observed_generation, Some(1));
    // Settled: deciding again changes nothing and does nothing.
    let settled = run.decide_once();
    assert!(settled.actions.is_empty());
    assert_eq!(settled.requeue, None);
}

#[test]
pub(super) fn nothing_is_mutated_before_the_gates_pass() {
    let mut nodes = small_cluster();
    nodes[1].ready = false;
    let mut run = Run::new(quick("1.35.2"), World::new(nodes));
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Blocked));
    assert!(mutating(&decision.actions).is_empty());
    assert!(decision.status.blocked_reasons[0].contains("w-1 is not Ready"));
    assert!(conditions::is_true(
        &decision.status.conditions,
        types::BLOCKED
    ));
    assert_eq!(decision.requeue, Some(std::time::Duration::from_secs(60)));
    // The cause goes away; the block clears by itself.
    run.world.node_mut("w-1").ready = true;
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
pub(super) fn refusals_change_nothing_and_say_why() {
    for (target, reason, words) in [
        ("1.35", "InvalidSpec", "such as 1.35.2"),
        ("1.34.0", "VersionPolicy", "never downgrades"),
        ("1.36.0", "VersionPolicy", "upgrade to 1.35.x first"),
    ] {
        let mut run = Run::new(quick(target), World::new(small_cluster()));
        let decision = run.decide_once();
        assert_eq!(decision.status.phase, Some(Phase::Failed), "{target}");
        assert!(mutating(&decision.actions).is_empty());
        let ready = conditions::get(&decision.status.conditions, types::READY).expect("ready");
        assert_eq!(ready.reason, reason);
        assert!(ready.message.contains(words), "{}", ready.message);
        assert!(
            decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Event(e) if e.warning))
        );
        // Said once: the next reconcile does not repeat the Event.
        assert!(run.decide_once().actions.is_empty());
        // A corrected spec proceeds.
        run.upgrade.spec.target_version = "1.35.2".into();
        run.upgrade.metadata.generation = Some(2);
        assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    }
}

#[test]
pub(super) fn a_failing_job_is_retried_then_fails_the_run_until_the_retry_annotation() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".into(), 2);
    let mut run = Run::new(quick("1.35.2"), world);
    assert_eq!(run.until(200, &[Phase::Failed]), Phase::Failed);
    let record = run
        .status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("w-1");
    assert_eq!(
        (record.attempts, record.failures, record.step),
        (2, 2, NodeStep::Failed)
    );
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("BackoffLimitExceeded")
    );
    assert!(
        run.world.node_mut("w-1").unschedulable,
        "a failed node stays cordoned"
    );
    assert!(holds_lock(run.status()));
    // w-3 was never touched.
    assert_eq!(run.world.version("w-3"), KubeVersion::new(1, 34, 1));
    assert!(!run.world.node_mut("w-3").unschedulable);
    let ready = conditions::get(&run.status().conditions, types::READY).expect("ready");
    assert!(ready.message.contains(RETRY_ANNOTATION));

    run.upgrade.metadata.annotations = Some([(RETRY_ANNOTATION.to_owned(), "1".to_owned())].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    let record = run
        .status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("w-1");
    assert_eq!(record.attempts, 3);
}

fn w1(run: &Run) -> upchain_api::NodeRecord {
    run.status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .cloned()
        .expect("w-1")
}

#[test]
pub(super) fn lost_ssh_sessions_re_attach_without_spending_an_attempt() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".into(), 2);
    world.failing_exit.insert("w-1".into(), 255);
    let mut upgrade = quick("1.35.2");
    upgrade.spec.runner.attempts = 2;
    let mut run = Run::new(upgrade, world);
    let mut reattach_jobs = 0;
    while run.status_or_default().phase != Some(Phase::Succeeded) {
        let decision = run.decide_once();
        for action in &decision.actions {
            if let Action::CreateJob(job) = action
                && env_of(job, "NODE_NAME").as_deref() == Some("w-1")
                && env_of(job, "REATTACH").as_deref() == Some("true")
            {
                reattach_jobs += 1;
            }
        }
        run.wait_as_asked(&decision, 30);
        assert!(run.world.clock < 100_000, "{:?}", run.status().phase);
    }
    let record = w1(&run);
    assert_eq!(
        (record.attempts, record.failures, record.reattaches),
        (3, 0, 2)
    );
    assert_eq!(
        reattach_jobs, 2,
        "each Job after a lost session only re-attaches"
    );
}

#[test]
pub(super) fn a_held_package_lock_is_tried_again_after_a_pause_without_spending_an_attempt() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".into(), 1);
    world.failing_exit.insert("w-1".into(), 12);
    let mut upgrade = quick("1.35.2");
    upgrade.spec.runner.attempts = 1;
    let mut run = Run::new(upgrade, world);
    let mut failed_at = None;
    let mut next_job_at = None;
    while run.status_or_default().phase != Some(Phase::Succeeded) {
        let decision = run.decide_once();
        let record = run.status().nodes.iter().find(|n| n.name == "w-1").cloned();
        if failed_at.is_none() && record.as_ref().is_some_and(|r| r.paused_retries == 1) {
            failed_at = Some(run.world.clock);
        }
        let creates_w1 = decision.actions.iter().any(|a| {
            matches!(a, Action::CreateJob(job) if env_of(job, "NODE_NAME").as_deref() == Some("w-1"))
        });
        if failed_at.is_some() && next_job_at.is_none() && creates_w1 {
            next_job_at = Some(run.world.clock);
        }
        run.wait_as_asked(&decision, 30);
        assert!(run.world.clock < 100_000, "{:?}", run.status().phase);
    }
    let (failed_at, next_job_at) = (failed_at.expect("failed"), next_job_at.expect("retried"));
    assert!(
        next_job_at - failed_at >= 60,
        "{failed_at} -> {next_job_at}"
    );
    let record = w1(&run);
    assert_eq!((record.failures, record.paused_retries), (0, 1));
}

#[test]
pub(super) fn an_exit_only_a_person_can_fix_fails_the_node_at_once() {
    for code in [10, 11, 24, 25] {
        let mut world = World::new(small_cluster());
        world.failing.insert("w-1".into(), 1);
        world.failing_exit.insert("w-1".into(), code);
        let mut run = Run::new(quick("1.35.2"), world);
        assert_eq!(
            run.until(200, &[Phase::Failed]),
            Phase::Failed,
            "exit {code}"
        );
        let record = w1(&run);
        assert_eq!(
            (record.attempts, record.step),
            (1, NodeStep::Failed),
            "exit {code}"
        );
        let message = record.message.unwrap_or_default();
        assert!(message.contains("retrying cannot help"), "{message}");
        assert!(run.world.node_mut("w-1").unschedulable);
    }
}

#[test]
pub(super) fn a_node_that_never_returns_stalls_then_fails_and_nothing_else_is_drained() {
    let mut world = World::new(small_cluster());
    world.never_return.insert("w-1".into());
    let mut upgrade = quick("1.35.2");
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(60 * 60).into();
    upgrade.spec.stall_timeout = std::time::Duration::from_secs(30 * 60).into();
    let mut run = Run::new(upgrade, world);
    let mut saw_stalled = false;
    for _ in 0..400 {
        let decision = run.decide_once();
        saw_stalled |= conditions::is_true(&decision.status.conditions, types::STALLED);
        if decision.status.phase == Some(Phase::Failed) {
            break;
        }
        run.wait_as_asked(&decision, 600);
    }
    assert!(saw_stalled, "Stalled was never reported");
    assert_eq!(run.status().phase, Some(Phase::Failed));
    assert!(!run.world.node_mut("w-3").unschedulable);
    assert_eq!(run.world.version("w-3"), KubeVersion::new(1, 34, 1));
}

#[test]
pub(super) fn paused_finishes_the_node_in_progress_and_starts_nothing_new() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.until(50, &[Phase::ControlPlane]);
    run.upgrade.spec.paused = true;
    for _ in 0..50 {
        run.decide_once();
        run.world.tick(60);
    }
    let status = run.status();
    assert_eq!(status.nodes.len(), 1, "only cp-0 was started");
    assert_eq!(status.nodes[0].step, NodeStep::Done);
    assert!(!conditions::is_true(&status.conditions, types::PROGRESSING));
    run.upgrade.spec.paused = false;
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
pub(super) fn a_second_upgrade_waits_for_the_one_running() {
    let mut world = World::new(small_cluster());
    world.others.push(OtherUpgrade {
        name: "first".into(),
        holds_lock: true,
        waiting: false,
        created: 1,
    });
    let mut run = Run::new(quick("1.35.2"), world);
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Pending));
    assert!(mutating(&decision.actions).is_empty());
    let progressing =
        conditions::get(&decision.status.conditions, types::PROGRESSING).expect("set");
    assert_eq!(progressing.reason, "WaitingForUpgrade");
    assert!(progressing.message.contains("first"));
    run.world.others.clear();
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
pub(super) fn a_new_target_mid_run_applies_at_the_next_node_boundary() {
    let mut nodes = small_cluster();
    nodes[2].kubelet_version = "v1.34.2".into();
    let mut run = Run::new(quick("1.35.1"), World::new(nodes));
    assert_eq!(run.until(50, &[Phase::ControlPlane]), Phase::ControlPlane);
    run.upgrade.spec.target_version = "1.35.2".into();
    assert_eq!(
        run.until(300, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    let status = run.status();
    // cp-0 finished its run to 1.35.1, then went again to 1.35.2.
    assert!(
        run.world
            .jobs
            .values()
            .any(|(n, t, _)| n == "cp-0" && t == "1.35.1"),
        "{:?}",
        run.world.jobs
    );
    assert!(
        run.world
            .nodes
            .iter()
            .all(|n| n.kubelet_version == "v1.35.2")
    );
    assert_eq!(status.target_version.as_deref(), Some("v1.35.2"));
}

#[test]
pub(super) fn a_long_run_keeps_the_last_done_records_and_counts_the_rest() {
    let workers = 260;
    let mut nodes = vec![NodeFixture::control_plane("cp-0").build()];
    nodes.extend((0..workers).map(|i| NodeFixture::worker(&format!("w-{i:03}")).build()));
    let mut upgrade = quick("1.35.2");
    upgrade.spec.nodes.max_unavailable = 20;
    let mut run = Run::new(upgrade, World::new(nodes));
    assert_eq!(
        run.until(2000, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    let status = run.status();
    let done = status
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Done)
        .count();
    assert_eq!(done, crate::machine::DONE_RECORDS_KEPT);
    let counted = usize::try_from(status.upgraded_without_record).expect("positive");
    assert_eq!(counted, workers + 1 - done);
    // The last worker keeps its record.
    assert_eq!(status.nodes.last().map(|n| n.name.as_str()), Some("w-259"));
    let total = workers + 1;
    assert_eq!(
        status.progress.as_deref(),
        Some(format!("{total}/{total}").as_str())
    );
    let gauges = crate::gauges::gauges(status);
    assert_eq!(gauges.nodes["Done"], i64::try_from(total).expect("small"));
    let size = serde_json::to_vec(status).expect("serializes").len();
    assert!(size < 20_000, "status of {size} bytes for {total} nodes");
    // The worst case does not depend on the cluster's size: the kept Done records and a
    // full batch in flight, each with a full drain preview and log tail, and the plan's
    // head. It stays well below etcd's 1.5 MiB.
    let mut worst = status.nodes.last().expect("a record").clone();
    let long = "x".repeat(crate::evidence::LOG_LINE_CHARS);
    worst.job_result.as_mut().expect("result").log_tail = vec![long; crate::evidence::LOG_LINES];
    worst.drain_preview = Some(upchain_api::DrainPreview {
        evict_count: 100,
        evict: vec!["n".repeat(2 * 63 + 1); crate::drain::PREVIEW_NAMES],
        blocked_by: Vec::new(),
    });
    let record = serde_json::to_vec(&worst).expect("serializes").len();
    let worst_status = record * (crate::machine::DONE_RECORDS_KEPT + 100);
    assert!(worst_status < 1_000_000, "{record} bytes per record");
}

#[test]
pub(super) fn finalizer_waits_for_a_running_job_then_uncordons() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.until(20, &[Phase::ControlPlane]);
    while run.status().nodes[0].step != NodeStep::Upgrading {
        run.decide_once();
    }
    let observed = run.world.observe(&run.upgrade);
    let waiting = finalize(&run.upgrade, &observed);
    assert_eq!(waiting.waiting_for_jobs.len(), 1);
    assert!(
        !waiting
            .actions
            .iter()
            .any(|a| matches!(a, Action::Uncordon { .. })),
        "no uncordon while the Job runs"
    );
    // Only the finished prepare check's Job goes meanwhile.
    let _ = run.world.apply(&waiting.actions);
    run.world.tick(10);
    let observed = run.world.observe(&run.upgrade);
    let release = finalize(&run.upgrade, &observed);
    assert!(release.can_let_go());
    let job = run.status().nodes[0].job.clone().expect("job");
    assert_eq!(
        release.actions,
        [
            Action::Uncordon {
                node: "cp-0".into()
            },
            Action::DeleteJob {
                namespace: "upchain-system".into(),
                name: job
            }
        ]
    );
    let _ = run.world.apply(&release.actions);
    let observed = run.world.observe(&run.upgrade);
    assert_eq!(finalize(&run.upgrade, &observed), Default::default());
}

#[test]
pub(super) fn a_node_job_started_under_the_untagged_name_is_followed_not_doubled() {
    // An upchain from before Job names carried the uid tag started this node's Job; the
    // new one takes over mid-run.
    let world = World::new(small_cluster());
    let mut run = Run::new(quick("1.35.2"), world);
    for _ in 0..20 {
        run.decide_once();
        if run
            .status_or_default()
            .nodes
            .iter()
            .any(|n| n.step == NodeStep::Upgrading)
        {
            break;
        }
        run.world.tick(1);
    }
    let status = run.upgrade.status.as_mut().expect("status");
    let record = status
        .nodes
        .iter_mut()
        .find(|n| n.step == NodeStep::Upgrading)
        .expect("a node upgrading");
    let tagged = record.job.clone().expect("job");
    let untagged = crate::job::untagged_job_name(
        "test",
        &record.name,
        crate::KubeVersion::new(1, 35, 2),
        record.attempts,
    );
    record.job = Some(untagged.clone());
    let job = run.world.jobs.remove(&tagged).expect("running job");
    run.world.jobs.insert(untagged.clone(), job);
    let next = run.decide_once();
    assert!(
        !next
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateJob(_))),
        "a second Job for the node: {:?}",
        next.actions
    );
    assert!(
        next.status
            .nodes
            .iter()
            .any(|n| n.job.as_ref() == Some(&untagged))
    );
}

#[test]
pub(super) fn a_node_whose_job_succeeds_but_stays_at_its_old_version_is_never_uncordoned() {
    let mut world = World::new(small_cluster());
    world.stays_old.insert("w-1".to_owned());
    let mut run = Run::new(quick("1.35.2"), world);
    let mut uncordoned = Vec::new();
    for _ in 0..200 {
        let decision = run.decide_once();
        uncordoned.extend(decision.actions.iter().filter_map(|a| match a {
            Action::Uncordon { node } => Some(node.clone()),
            _ => None,
        }));
        if decision.status.phase == Some(Phase::Failed) {
            break;
        }
        let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
        run.world.tick(i64::try_from(wait).expect("small"));
    }
    assert_eq!(run.status().phase, Some(Phase::Failed));
    assert!(!uncordoned.contains(&"w-1".to_owned()), "{uncordoned:?}");
    let w1 = run
        .world
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("w-1");
    assert!(w1.unschedulable, "left cordoned for inspection");
    let record = run
        .status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("record");
    assert_eq!(record.step, NodeStep::Failed);
    let message = record.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("kubelet reports v1.34.2") && message.contains("not uncordoned"),
        "{message}"
    );
}

/// Stalled counts from the last progress, not from the run's start, and clears when
/// progress resumes.
#[test]
pub(super) fn stalled_means_no_progress_for_the_timeout_and_clears_when_progress_resumes() {
    let stalled = |status: &K8sUpgradeStatus| {
        conditions::get(&status.conditions, types::STALLED).is_some_and(|c| c.status == "True")
    };
    let mut world = World::new(small_cluster());
    world.never_return.insert("w-1".to_owned());
    let mut upgrade = quick("1.35.2");
    upgrade.spec.stall_timeout = std::time::Duration::from_secs(10 * 60).into();
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(3600).into();
    // cp-0 soaks 9 minutes: by the time w-1 stops, the run is older than the timeout.
    upgrade.spec.soak = std::time::Duration::from_secs(9 * 60).into();
    let mut run = Run::new(upgrade, World::clone(&world));
    let started = run.world.clock;
    while !run
        .status_or_default()
        .nodes
        .iter()
        .any(|n| n.name == "w-1" && n.step == NodeStep::Rejoining)
    {
        assert!(run.decisions < 200, "w-1 never reached Rejoining");
        let decision = run.decide_once();
        run.wait_as_asked(&decision, 60);
    }
    run.world.tick(3 * 60);
    let quiet_for_three_minutes = run.decide_once();
    assert!(
        run.world.clock - started > 10 * 60,
        "the run is older than the timeout"
    );
    assert!(
        !stalled(&quiet_for_three_minutes.status),
        "3 minutes without progress"
    );
    run.world.tick(8 * 60);
    let quiet_for_eleven_minutes = run.decide_once();
    assert!(
        stalled(&quiet_for_eleven_minutes.status),
        "11 minutes without progress"
    );
    // w-1 comes back: it is verified and uncordoned, progress resumes, Stalled clears.
    run.world.node_mut("w-1").ready = true;
    run.world.tick(1);
    run.decide_once();
    run.world.tick(1);
    let resumed = run.decide_once();
    assert!(!stalled(&resumed.status), "{:?}", resumed.status.conditions);
}

#[test]
pub(super) fn a_node_that_leaves_ready_while_soaking_is_cordoned_again_and_fails_after_the_rejoin_timeout()
 {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    while w1_step(&run) != Some(NodeStep::Soaking) {
        let decision = run.decide_once();
        run.wait_as_asked(&decision, 5);
        assert!(run.world.clock < 100_000);
    }
    assert!(
        !run.world.node_mut("w-1").unschedulable,
        "uncordoned to soak"
    );
    run.world.node_mut("w-1").ready = false;
    let decision = run.decide_once();
    assert_eq!(
        w1_step(&run),
        Some(NodeStep::Rejoining),
        "{:?}",
        decision.actions
    );
    assert!(run.world.node_mut("w-1").unschedulable, "cordoned again");
    assert_eq!(run.until(200, &[Phase::Failed]), Phase::Failed);
    let record = w1(&run);
    assert_eq!(record.step, NodeStep::Failed);
    assert!(
        record
            .message
            .unwrap_or_default()
            .contains("did not come back Ready"),
    );
    assert!(run.world.node_mut("w-1").unschedulable, "left cordoned");
}

fn w1_step(run: &Run) -> Option<NodeStep> {
    run.status_or_default()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .map(|n| n.step)
}

#[test]
pub(super) fn a_node_whose_kubelet_went_silent_is_not_uncordoned_on_a_stale_ready() {
    let mut world = World::new(small_cluster());
    world.silent.insert("w-1".into());
    let mut upgrade = quick("1.35.2");
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(300).into();
    let mut run = Run::new(upgrade, world);
    while w1_step(&run) != Some(NodeStep::Rejoining) {
        let decision = run.decide_once();
        run.wait_as_asked(&decision, 5);
        assert!(run.world.clock < 100_000);
    }
    let decision = run.decide_once();
    assert!(run.world.node_mut("w-1").ready, "Ready still says True");
    assert!(
        run.world.node_mut("w-1").unschedulable,
        "{:?}",
        decision.actions
    );
    let message = w1(&run).message.unwrap_or_default();
    assert!(
        message.contains("waiting for a fresh heartbeat"),
        "{message}"
    );
    assert!(message.contains("kube-node-lease/w-1"), "{message}");
    // Its kubelet renews the Lease again: uncordoned, and the run goes on.
    run.world.silent.clear();
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}
