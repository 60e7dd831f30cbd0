//! Checks at node boundaries: alerts, health checks, the maintenance window.

use super::*;

pub(super) fn firing(name: &str) -> crate::gates::Alert {
    crate::gates::Alert {
        name: name.into(),
        state: "firing".into(),
        labels: String::new(),
    }
}

pub(super) fn with_prometheus(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    upgrade.spec.gates.prometheus = Some(
        serde_json::from_value(serde_json::json!({"url": "http://prometheus:9090"})).expect("gate"),
    );
    upgrade
}

#[test]
pub(super) fn a_firing_alert_blocks_before_anything_is_touched_and_the_block_clears_by_itself() {
    let mut world = World::new(small_cluster());
    world.gates.alerts = Some(Ok(vec![firing("KubeNodeNotReady"), firing("Watchdog")]));
    let mut run = Run::new(with_prometheus(quick("1.35.2")), world);
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Blocked));
    assert!(mutating(&decision.actions).is_empty());
    assert_eq!(decision.status.blocked_reasons.len(), 1);
    assert!(decision.status.blocked_reasons[0].starts_with("alert KubeNodeNotReady is firing"));
    // Rechecking while the cause stays says nothing new.
    run.world.tick(60);
    let again = run.decide_once();
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    // An unreachable Prometheus is a reason too, not a pass.
    run.world.gates.alerts = Some(Err("connection refused".into()));
    let unreachable = run.decide_once();
    assert!(
        unreachable.status.blocked_reasons[0].contains("could not be read (connection refused)")
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
pub(super) fn alerts_between_nodes_are_waited_out_then_block() {
    let mut run = Run::new(
        with_prometheus(quick("1.35.2")),
        World::new(small_cluster()),
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    while run
        .status_or_default()
        .nodes
        .first()
        .is_none_or(|n| n.step != NodeStep::Soaking)
    {
        run.decide_once();
        run.world.tick(10);
    }
    // Alerts start firing while the first node soaks: the next one waits.
    run.world.gates.alerts = Some(Ok(vec![firing("HighErrorRate")]));
    run.world.tick(60);
    // The node finishes soaking within a decision that read the alerts (they are read
    // whenever the next batch may start, soaking included): the wait begins at once.
    let finished = run.decide_once();
    assert_eq!(finished.status.nodes[0].step, NodeStep::Done);
    assert_eq!(finished.status.nodes.len(), 1, "no node started unchecked");
    assert!(finished.status.alerts_waiting_since.is_some());
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    assert_eq!(
        waiting.status.nodes.len(),
        1,
        "no next node while alerts fire"
    );
    assert!(waiting.status.alerts_waiting_since.is_some());
    assert_ne!(waiting.status.phase, Some(Phase::Blocked));
    // Past gates.prometheus.maxWait (30m by default) the run is Blocked.
    run.world.tick(31 * 60);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty());
    run.world.gates.alerts = Some(Ok(Vec::new()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
pub(super) fn no_node_starts_outside_the_window_and_status_says_when_it_opens() {
    let mut upgrade = quick("1.35.2");
    // at(0) is 2027-01-15T08:00:00Z, a Friday.
    upgrade.spec.window = Some(
        serde_json::from_value(
            serde_json::json!({"start": "22:00", "duration": "4h", "timeZone": "UTC"}),
        )
        .expect("window"),
    );
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    assert_eq!(
        waiting
            .status
            .next_window_at
            .as_ref()
            .map(|t| t.0.to_string()),
        Some("2027-01-15T22:00:00Z".to_owned())
    );
    assert_eq!(
        waiting.requeue,
        Some(std::time::Duration::from_secs(14 * 3600))
    );
    run.world.tick(14 * 3600);
    run.prepare();
    let open = run.decide_once();
    assert!(!open.status.nodes.is_empty(), "the first node starts");
    assert!(open.status.next_window_at.is_none());
}

#[test]
pub(super) fn no_node_starts_in_a_blackout_and_the_condition_names_it() {
    let mut upgrade = quick("1.35.2");
    // at(0) is 2027-01-15T08:00:00Z; the window is always open but for the blackout.
    upgrade.spec.window = Some(
        serde_json::from_value(serde_json::json!({"blackouts": [
            {"start": "2027-01-14", "end": "2027-01-15", "reason": "release freeze"}]}))
        .expect("window"),
    );
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    let ready = conditions::get(&waiting.status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "InBlackout");
    assert!(
        ready.message.contains("release freeze"),
        "{}",
        ready.message
    );
    assert_eq!(
        waiting.requeue,
        Some(std::time::Duration::from_secs(16 * 3600))
    );
    run.world.tick(16 * 3600);
    run.prepare();
    assert!(
        !run.decide_once().status.nodes.is_empty(),
        "starts after it"
    );
}

pub(super) fn ceph_check(upgrade: &mut K8sUpgrade, timeout: &str) {
    upgrade.spec.gates.health_checks = vec![
        serde_json::from_value(
            serde_json::json!({"name": "ceph", "apiVersion": "ceph.rook.io/v1",
            "kind": "CephCluster", "namespace": "rook-ceph",
            "expression": "self.status.ceph.health == 'HEALTH_OK'", "timeout": timeout}),
        )
        .expect("check"),
    ];
}

pub(super) fn ceph_health(world: &mut World, health: &str) {
    world.gates.health_checks = Some(
        [(
            "ceph".to_owned(),
            Ok(vec![
                serde_json::json!({"metadata": {"name": "rook-ceph", "namespace": "rook-ceph"},
                "status": {"ceph": {"health": health}}}),
            ]),
        )]
        .into(),
    );
}

#[test]
pub(super) fn a_failing_health_check_blocks_before_the_run_and_a_passing_one_lets_it_through() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "0s");
    let mut world = World::new(small_cluster());
    ceph_health(&mut world, "HEALTH_WARN");
    let mut run = Run::new(upgrade, world);
    assert_eq!(run.until(5, &[Phase::Blocked]), Phase::Blocked);
    assert_eq!(
        run.status().blocked_reasons,
        ["health check ceph: CephCluster rook-ceph/rook-ceph: \
          `self.status.ceph.health == 'HEALTH_OK'` is false"]
    );
    assert!(
        run.status()
            .gates
            .iter()
            .any(|g| g.name == "healthCheck/ceph" && !g.passed)
    );
    ceph_health(&mut run.world, "HEALTH_OK");
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
pub(super) fn between_nodes_a_failing_health_check_is_waited_for_then_blocks() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "10m");
    let mut world = World::new(small_cluster());
    ceph_health(&mut world, "HEALTH_OK");
    let mut run = Run::new(upgrade, world);
    // The control plane is done; Ceph is recovering when the next node would start.
    run.until(200, &[Phase::Workers]);
    ceph_health(&mut run.world, "HEALTH_WARN");
    let mut waited = false;
    for _ in 0..100 {
        let decision = run.decide_once();
        let ready = conditions::get(&decision.status.conditions, types::READY).expect("Ready");
        if ready.reason == Reason::WaitingForHealthChecks.as_str() {
            waited = true;
            assert!(
                ready.message.contains("healthCheck/ceph"),
                "{}",
                ready.message
            );
        }
        if decision.status.phase == Some(Phase::Blocked) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 60)) as i64);
    }
    assert!(waited, "the check was waited for first");
    assert_eq!(run.status().phase, Some(Phase::Blocked));
    let active = run
        .status()
        .nodes
        .iter()
        .filter(|n| n.step.is_active())
        .count();
    assert_eq!(active, 0, "no node started while the check failed");
    ceph_health(&mut run.world, "HEALTH_OK");
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
pub(super) fn a_malformed_health_check_expression_is_refused_and_nothing_is_touched() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "0s");
    upgrade.spec.gates.health_checks[0].expression = "self.status.ceph.health ==".to_owned();
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let refused = run.decide_once();
    assert!(mutating(&refused.actions).is_empty());
    assert_eq!(refused.status.phase, Some(Phase::Failed));
    let ready = conditions::get(&refused.status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("healthChecks[0] (ceph)"),
        "{}",
        ready.message
    );
}
