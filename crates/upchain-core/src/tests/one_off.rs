//! One-off Jobs: the etcd snapshot and the hooks.

use super::*;

pub(super) fn with_snapshot(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    upgrade.spec.snapshot = Some(
        serde_json::from_value(serde_json::json!({
            "persistentVolumeClaim": "upchain-etcd-snapshots", "timeout": "10m"}))
        .expect("snapshot"),
    );
    upgrade
}

#[test]
pub(super) fn the_snapshot_is_taken_and_verified_before_the_first_node() {
    let mut world = World::new(small_cluster());
    world.etcd_external = false;
    let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
    // etcd is checked first, through a control-plane node's member.
    let check = run.decide_once();
    let created: Vec<&Action> = mutating(&check.actions);
    assert!(
        matches!(created.as_slice(), [Action::CreateJob(job)] if env_of(job, "MODE").as_deref() == Some("etcd-check")),
        "only the etcd check Job: {created:?}"
    );
    run.world.tick(5);
    let first = run.decide_once();
    assert_eq!(first.status.phase, Some(Phase::Snapshot));
    assert!(first.status.etcd.as_ref().is_some_and(|e| e.passed));
    let created: Vec<&Action> = mutating(&first.actions);
    let [Action::CreateJob(job)] = created.as_slice() else {
        panic!("only the snapshot Job: {created:?}");
    };
    // In the runner namespace, through the node step, the destination mounted.
    assert_eq!(job.metadata.namespace.as_deref(), Some("upchain-system"));
    assert_eq!(env_of(job, "MODE").as_deref(), Some("etcd-snapshot"));
    assert_eq!(
        env_of(job, "SNAPSHOT_LOCATION").as_deref(),
        Some("pvc/upchain-system/upchain-etcd-snapshots")
    );
    assert!(crate::job::excluded_nodes(job).contains(&env_of(job, "NODE_NAME").expect("node")));
    run.world.tick(5);
    let taken = run.decide_once();
    let record = taken.status.snapshot.clone().expect("record");
    assert!(record.verified);
    assert!(conditions::is_true(
        &taken.status.conditions,
        types::SNAPSHOT_TAKEN
    ));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    assert_eq!(run.world.snapshot_jobs.len(), 1, "one snapshot per run");
}

#[test]
pub(super) fn a_failed_or_hung_snapshot_blocks_and_is_retried() {
    for outcome in [
        Some(JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "etcdctl exited 1".into(),
        }),
        None,
    ] {
        let mut world = World::new(small_cluster());
        world.snapshot_outcome = outcome.clone();
        let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
        run.decide_once();
        run.world.tick(11 * 60);
        let blocked = run.decide_once();
        assert_eq!(blocked.status.phase, Some(Phase::Blocked), "{outcome:?}");
        let reason = &blocked.status.blocked_reasons[0];
        assert!(
            reason.contains(if outcome.is_some() {
                "failed (BackoffLimitExceeded: etcdctl exited 1)"
            } else {
                "did not finish within 10m"
            }),
            "{reason}"
        );
        assert!(
            run.world.nodes.iter().all(|n| !n.unschedulable),
            "no node touched"
        );
        // A hung Job is stopped before the next attempt could run beside it.
        let first = blocked
            .status
            .snapshot
            .as_ref()
            .expect("record")
            .job
            .clone();
        let deleted = blocked.actions.iter().any(|a| {
            matches!(a, Action::DeleteJob { namespace, name }
                if namespace == "upchain-system" && *name == first)
        });
        assert_eq!(
            deleted,
            outcome.is_none(),
            "{outcome:?}: {:?}",
            blocked.actions
        );
        // The cause is fixed; the next attempt runs after the recheck interval.
        run.world.snapshot_outcome = Some(JobState::Succeeded);
        assert_eq!(
            run.until(200, &[Phase::Succeeded, Phase::Failed]),
            Phase::Succeeded
        );
        assert_eq!(
            run.status().snapshot.as_ref().map(|s| s.attempt),
            Some(2),
            "{outcome:?} {:?}",
            run.world.snapshot_jobs
        );
    }
}

#[test]
pub(super) fn a_snapshot_that_is_short_unread_or_left_on_the_node_blocks_and_a_good_one_is_recorded()
 {
    let good =
        crate::snapshot::good_report("cp-1", "pvc/upchain-system/upchain-etcd-snapshots/etcd.db");
    let reports = [
        (
            good.replace(r#""sizeBytes":2109440"#, r#""sizeBytes":20"#),
            "the snapshot is 20 bytes, below spec.snapshot.minSizeBytes (1024)",
        ),
        (
            good.replace(
                r#""revision":48213,"totalKey":1290,"totalSize":2109440}}"#,
                r#""revision":48000,"totalKey":1290}}"#,
            ),
            "the test restore gave back revision 48000",
        ),
        (
            good.replace("pvc/upchain-system/upchain-etcd-snapshots/etcd.db", ""),
            "where the snapshot was copied off the node",
        ),
        (
            "Snapshot saved at /var/lib/etcd-backup/snapshot.db".to_owned(),
            "it reported no `upchain-snapshot {...}` line",
        ),
    ];
    for (log, expected) in reports {
        let mut world = World::new(small_cluster());
        world.snapshot_report = Some(log.clone());
        let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
        let blocked = run.until(20, &[Phase::Blocked]);
        assert_eq!(blocked, Phase::Blocked, "{log}");
        let status = run.status();
        let reason = &status.blocked_reasons[0];
        assert!(
            reason.contains("succeeded, but its snapshot is unverified"),
            "{reason}"
        );
        assert!(reason.contains(expected), "{reason}");
        assert!(!status.snapshot.as_ref().expect("record").verified);
        assert!(
            run.world.nodes.iter().all(|n| !n.unschedulable),
            "no node touched"
        );
        assert!(!conditions::is_true(
            &status.conditions,
            types::SNAPSHOT_TAKEN
        ));
        // The backup is fixed: the next attempt, after the recheck interval, passes.
        run.world.snapshot_report = None;
        assert_eq!(
            run.until(200, &[Phase::Succeeded, Phase::Failed]),
            Phase::Succeeded
        );
        let record = run.status().snapshot.clone().expect("record");
        assert!(record.verified && record.attempt == 2, "{record:?}");
        assert_eq!(record.size_bytes, Some(2_109_440));
        assert_eq!(record.revision, Some(48213));
        assert_eq!(record.total_keys, Some(1290));
        assert_eq!(record.hash.as_deref(), Some("dc949639"));
        assert_eq!(
            record.location.as_deref(),
            Some("pvc/upchain-system/upchain-etcd-snapshots/etcd.db")
        );
        assert!(
            record
                .restore_check
                .as_deref()
                .is_some_and(|r| r.contains("revision 48213"))
        );
        assert!(record.sha256.is_some());
    }
}

#[test]
pub(super) fn a_minor_upgrade_needs_a_snapshot_or_a_waiver_with_its_reason() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.snapshot_waiver = None;
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty());
    assert!(
        blocked.status.blocked_reasons[0]
            .starts_with("a minor upgrade (to v1.35.2) needs a verified etcd snapshot first"),
        "{:?}",
        blocked.status.blocked_reasons
    );
    // A patch upgrade does not.
    let patch = quick("1.34.3");
    let mut nodes = small_cluster();
    nodes.retain(|n| n.name != "w-2");
    let mut patch_run = Run::new(
        {
            let mut u = patch;
            u.spec.snapshot_waiver = None;
            u
        },
        World::new(nodes),
    );
    assert_eq!(
        patch_run.until(200, &[Phase::Succeeded, Phase::Blocked]),
        Phase::Succeeded
    );
    // Waived, with a reason: recorded, warned about once, the condition False.
    run.upgrade.spec.snapshot_waiver = Some(upchain_api::SnapshotWaiver {
        reason: "etcd is external, backed up hourly".into(),
    });
    let waived = run.decide_once();
    assert_eq!(
        waived.status.snapshot_waived.as_deref(),
        Some("etcd is external, backed up hourly")
    );
    let warnings = waived
        .actions
        .iter()
        .filter(
            |a| matches!(a, Action::Event(e) if e.reason == Reason::SnapshotWaived && e.warning),
        )
        .count();
    assert_eq!(warnings, 1);
    let condition =
        conditions::get(&waived.status.conditions, types::SNAPSHOT_TAKEN).expect("condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "SnapshotWaived")
    );
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

pub(super) fn with_hooks(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    let hook = serde_json::json!({"namespace": "upchain-system", "timeout": "10m",
        "template": crate::testing::hook_template(
            serde_json::json!({"name": "hook", "image": "registry.example.org/hook:1"}))});
    upgrade.spec.hooks = Some(
        serde_json::from_value(serde_json::json!({"pre": hook, "post": hook})).expect("hooks"),
    );
    upgrade
}

#[test]
pub(super) fn the_pre_hook_runs_before_the_first_node_and_the_post_hook_after_the_postflight() {
    let mut run = Run::new(with_hooks(quick("1.35.2")), World::new(small_cluster()));
    let mut order = Vec::new();
    for _ in 0..300 {
        let decision = run.decide_once();
        for action in &decision.actions {
            match action {
                Action::Event(e)
                    if e.reason.as_str().starts_with("Hook") || e.reason == Reason::NodeStarted =>
                {
                    order.push(e.reason);
                }
                _ => {}
            }
        }
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    assert_eq!(order.first(), Some(&Reason::HookStarted));
    assert_eq!(order.get(1), Some(&Reason::HookSucceeded));
    assert_eq!(order[2], Reason::NodeStarted);
    assert_eq!(
        &order[order.len() - 2..],
        [Reason::HookStarted, Reason::HookSucceeded]
    );
    let hooks = &run.status().hooks;
    assert_eq!(hooks.len(), 2);
    assert!(
        hooks
            .iter()
            .all(|h| h.succeeded && h.job.starts_with("upchain-system/test-"))
    );
}

#[test]
pub(super) fn a_failed_pre_hook_blocks_untouched_and_a_failed_post_hook_fails_the_run_until_a_retry()
 {
    let mut world = World::new(small_cluster());
    world.hook_outcome = JobState::Failed {
        reason: "BackoffLimitExceeded".into(),
        message: "exit 3".into(),
    };
    let mut run = Run::new(with_hooks(quick("1.35.2")), world);
    assert_eq!(run.until(20, &[Phase::Blocked]), Phase::Blocked);
    assert!(run.status().nodes.is_empty(), "no node touched");
    assert!(run.status().blocked_reasons[0].contains("pre-run hook Job upchain-system/"));
    assert!(run.status().blocked_reasons[0].contains("exit 3"));
    // The hook is fixed: the retried pre hook passes, the post hook fails.
    run.world.hook_outcome = JobState::Succeeded;
    for _ in 0..300 {
        let decision = run.decide_once();
        if decision
            .status
            .hooks
            .iter()
            .any(|h| h.kind == upchain_api::HookKind::Pre && h.succeeded)
        {
            break;
        }
        run.world.tick(30);
    }
    run.world.hook_outcome = JobState::Failed {
        reason: "DeadlineExceeded".into(),
        message: "too slow".into(),
    };
    assert_eq!(run.until(300, &[Phase::Failed]), Phase::Failed);
    let ready = conditions::get(&run.status().conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "HookFailed");
    assert!(ready.message.contains("post-run hook") && ready.message.contains("too slow"));
    // It stays Failed, starting nothing, until the retry annotation.
    for _ in 0..5 {
        let still = run.decide_once();
        assert_eq!(still.status.phase, Some(Phase::Failed));
        assert!(mutating(&still.actions).is_empty());
        run.world.tick(60);
    }
    run.world.hook_outcome = JobState::Succeeded;
    run.upgrade.metadata.annotations = Some([(RETRY_ANNOTATION.to_owned(), "1".to_owned())].into());
    assert_eq!(run.until(50, &[Phase::Succeeded]), Phase::Succeeded);
    let post = run
        .status()
        .hooks
        .iter()
        .find(|h| h.kind == upchain_api::HookKind::Post)
        .expect("post");
    assert_eq!(post.attempt, 2);
}

#[test]
pub(super) fn a_hook_template_the_api_server_would_refuse_fails_the_spec_before_anything() {
    for (template, expected) in [
        (
            serde_json::json!({"spec": {"template": {"spec": {"containers": []}}}}),
            "spec.hooks.pre.template has no containers",
        ),
        (
            serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            "spec.hooks.pre.template.spec.template.spec.restartPolicy is unset (Always)",
        ),
    ] {
        let mut upgrade = with_hooks(quick("1.35.2"));
        upgrade
            .spec
            .hooks
            .as_mut()
            .expect("hooks")
            .pre
            .as_mut()
            .expect("pre")
            .template = template;
        let mut run = Run::new(upgrade, World::new(small_cluster()));
        let refused = run.decide_once();
        assert_eq!(refused.status.phase, Some(Phase::Failed));
        assert!(mutating(&refused.actions).is_empty());
        let ready = conditions::get(&refused.status.conditions, types::READY).expect("Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(ready.message.contains(expected), "{}", ready.message);
    }
}
