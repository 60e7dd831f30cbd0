//! Drains: evictions, timeouts, Pods a drain may not lose, previews, step records.

use super::*;

#[test]
pub(super) fn drain_evicts_pods_and_waits_for_them() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.prepare();
    // The next batch's Pods were read with the decision that starts it: it records the
    // drain preview and cordons at once.
    let first = run.decide_once();
    assert!(first.actions.contains(&Action::Cordon {
        node: "cp-0".into()
    }));
    assert!(first.status.nodes[0].drain_preview.is_some());
    let second = run.decide_once();
    let evicted = second.actions.iter().find_map(|a| match a {
        Action::Evict { node, pods, .. } if node == "cp-0" => Some(pods.clone()),
        _ => None,
    });
    // The model applied the eviction straight away, so the node is empty and the Job comes next.
    assert!(
        evicted.is_some()
            || second
                .actions
                .iter()
                .any(|a| matches!(a, Action::CreateJob(_)))
    );
}

#[test]
pub(super) fn drain_timeout_fails_with_the_pods_named() {
    let mut world = World::new(small_cluster());
    let mut stuck = pod("db", "postgres-0");
    stuck.terminating = true; // held by a PDB in effect: never leaves
    world.pods.get_mut("cp-0").expect("cp-0").push(stuck);
    let mut run = Run::new(quick("1.35.2"), world);
    assert_eq!(run.until(400, &[Phase::Failed]), Phase::Failed);
    let record = &run.status().nodes[0];
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("db/postgres-0")
    );
}

#[test]
pub(super) fn a_drain_on_timeout_force_deletes_the_pods_that_would_not_leave_and_goes_on() {
    let mut world = World::new(small_cluster());
    let mut stuck = pod("db", "postgres-0");
    stuck.terminating = true;
    world.pods.get_mut("cp-0").expect("cp-0").push(stuck);
    let mut upgrade = quick("1.35.2");
    upgrade.spec.drain.on_timeout = upchain_api::DrainTimeoutAction::Force;
    let mut run = Run::new(upgrade, world);
    let mut deleted = Vec::new();
    for _ in 0..400 {
        let decision = run.decide_once();
        deleted.extend(decision.actions.iter().filter_map(|a| match a {
            Action::DeletePods { node, pods } => {
                Some((node.clone(), crate::observe::pod_names(pods)))
            }
            _ => None,
        }));
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
        run.world.tick(i64::try_from(wait).expect("small"));
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    assert_eq!(
        deleted,
        [("cp-0".to_owned(), vec!["db/postgres-0".to_owned()])],
        "deleted once, after the timeout"
    );
}

#[test]
pub(super) fn pods_a_drain_would_lose_block_the_run_before_their_node_is_cordoned() {
    let mut world = World::new(small_cluster());
    let on_cp = world.pods.get_mut("cp-0").expect("cp-0");
    on_cp.push(ObservedPod {
        unmanaged: true,
        ..pod("default", "debug-shell")
    });
    on_cp.push(ObservedPod {
        empty_dir: true,
        ..pod("apps", "cache-0")
    });
    let mut run = Run::new(quick("1.35.2"), world);
    run.prepare();
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty(), "nothing touched");
    let reasons = blocked.status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("default/debug-shell")
            && reasons.contains("spec.drain.evictUnmanagedPods: true"),
        "{reasons}"
    );
    assert!(
        reasons.contains("apps/cache-0") && reasons.contains("spec.drain.deleteEmptyDirData: true"),
        "{reasons}"
    );
    // The SRE allows both; the next recheck starts the node.
    run.upgrade.spec.drain.evict_unmanaged_pods = true;
    run.upgrade.spec.drain.delete_empty_dir_data = true;
    assert_eq!(
        run.until(400, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
pub(super) fn a_single_replica_a_budget_holds_forever_is_deleted_when_the_spec_allows() {
    let mut world = World::new(small_cluster());
    world.pods.get_mut("cp-0").expect("cp-0").push(ObservedPod {
        labels: [("app".to_owned(), "anubis".to_owned())].into(),
        ..pod("apps", "anubis-0")
    });
    world.budgets.push(budget_allowing_nothing("anubis", 1));
    let mut upgrade = quick("1.35.2");
    upgrade.spec.drain.delete_pdb_blocked_single_replica_pods = true;
    let mut run = Run::new(upgrade, world);
    let mut events = Vec::new();
    for _ in 0..10 {
        let decision = run.decide_once();
        events.extend(decision.actions.iter().filter_map(|a| match a {
            Action::Event(e) if e.reason == Reason::DeletingBlockedPods => Some(e.message.clone()),
            _ => None,
        }));
        if !events.is_empty() {
            break;
        }
        run.world.tick(1);
    }
    assert!(events[0].contains("apps/anubis-0"), "{events:?}");
    assert_eq!(
        run.until(400, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded,
        "no drain timeout"
    );
}

#[test]
pub(super) fn the_drain_preview_comes_before_the_cordon_and_names_what_holds_the_drain() {
    let mut world = World::new(small_cluster());
    world
        .pods
        .get_mut("w-1")
        .expect("w-1")
        .iter_mut()
        .for_each(|p| {
            p.labels.insert("app".to_owned(), "web".to_owned());
        });
    world.budgets.push(budget_allowing_nothing("web", 2));
    let mut run = Run::new(quick("1.35.2"), world);
    let mut cordoned_with_preview = BTreeSet::new();
    let mut previews = Vec::new();
    for _ in 0..200 {
        let decision = run.decide_once();
        for action in &decision.actions {
            match action {
                Action::Cordon { node } => {
                    let record = decision.status.nodes.iter().find(|r| &r.name == node);
                    assert!(
                        record.is_some_and(|r| r.drain_preview.is_some()),
                        "{node} cordoned before its drain preview"
                    );
                    cordoned_with_preview.insert(node.clone());
                }
                Action::Event(e) if e.reason == Reason::DrainPreview => previews.push(e.clone()),
                _ => {}
            }
        }
        let w1 = decision.status.nodes.iter().find(|r| r.name == "w-1");
        if w1.is_some_and(|r| !r.waiting_for_budgets.is_empty()) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 60)) as i64);
    }
    let record = run
        .status()
        .nodes
        .iter()
        .find(|r| r.name == "w-1")
        .expect("w-1 started")
        .clone();
    let preview = record.drain_preview.expect("preview");
    assert_eq!(preview.evict, ["apps/web-w-1"]);
    assert_eq!(preview.blocked_by, ["apps/web"]);
    assert_eq!(record.waiting_for_pods, ["apps/web-w-1"]);
    assert_eq!(record.waiting_for_budgets, ["apps/web"]);
    assert!(
        record
            .message
            .as_deref()
            .is_some_and(|m| m.contains("apps/web"))
    );
    let w1_preview = previews
        .iter()
        .find(|e| e.node.as_deref() == Some("w-1"))
        .expect("an Event");
    assert!(w1_preview.warning && w1_preview.message.contains("allow no disruption"));
    assert!(cordoned_with_preview.contains("cp-0") && cordoned_with_preview.contains("w-1"));

    // The budget makes room: the drain goes on and the node's message clears.
    run.world.budgets[0].disruptions_allowed = 1;
    run.world.tick(5);
    let moving = run.decide_once();
    let record = moving
        .status
        .nodes
        .iter()
        .find(|r| r.name == "w-1")
        .expect("w-1");
    assert!(record.waiting_for_budgets.is_empty());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
pub(super) fn every_node_keeps_its_jobs_exit_code_times_and_redacted_log() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".to_owned(), 1);
    let mut run = Run::new(quick("1.35.2"), world);
    let mut failed_result = None;
    for _ in 0..300 {
        let decision = run.decide_once();
        if let Some(result) = decision
            .status
            .nodes
            .iter()
            .filter_map(|n| n.job_result.as_ref())
            .find(|r| !r.succeeded)
        {
            failed_result.get_or_insert(result.clone());
        }
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    let failed = failed_result.expect("the failed attempt was recorded");
    assert_eq!(failed.exit_code, Some(1));
    assert!(
        failed
            .log_tail
            .iter()
            .any(|l| l.contains("kubeadm not found"))
    );
    for record in &run.status().nodes {
        let result = record.job_result.as_ref().expect("a result per node");
        assert!(
            result.succeeded && result.exit_code == Some(0),
            "{result:?}"
        );
        assert_eq!(result.job, record.job.clone().expect("job"));
        assert!(result.started_at.is_some() && result.finished_at.is_some());
        assert_eq!(result.log_tail.last().map(String::as_str), Some("done"));
        assert!(
            result.log_tail.iter().all(|l| !l.contains("s3cret")),
            "{:?}",
            result.log_tail
        );
    }
}
