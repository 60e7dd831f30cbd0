//! The control plane between nodes: static Pods, etcd members, /readyz.

use super::*;

fn three_control_planes() -> Vec<ObservedNode> {
    let mut nodes: Vec<ObservedNode> = (0..3)
        .map(|i| {
            NodeFixture::control_plane(&format!("cp-{i}"))
                .kubelet("v1.34.2")
                .build()
        })
        .collect();
    nodes.push(NodeFixture::worker("w-1").kubelet("v1.34.2").build());
    nodes
}

fn cordons(decision: &Decision) -> Vec<String> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Cordon { node } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

#[test]
pub(super) fn an_api_server_crash_looping_after_its_upgrade_stops_the_next_control_plane_node() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(600).into();
    let mut run = Run::new(upgrade, World::new(three_control_planes()));
    let mut cordoned = Vec::new();
    let mut broke = false;
    for _ in 0..300 {
        let decision = run.decide_once();
        cordoned.extend(cordons(&decision));
        let upgrading = decision
            .status
            .nodes
            .iter()
            .any(|n| n.name == "cp-0" && n.step == NodeStep::Upgrading);
        if upgrading && !broke {
            // kubeadm moved the API server, and it does not come back.
            run.world
                .crash_looping
                .insert(("cp-0".to_owned(), "kube-apiserver".to_owned()));
            broke = true;
        }
        if decision.status.phase == Some(Phase::Failed) {
            break;
        }
        run.wait_as_asked(&decision, 60);
    }
    assert!(broke, "cp-0 was upgraded");
    assert_eq!(run.status().phase, Some(Phase::Failed));
    assert_eq!(cordoned, ["cp-0"], "no other node was cordoned");
    let record = &run.status().nodes[0];
    let message = record.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("kube-apiserver on cp-0 is not Running and Ready (7 restart(s))"),
        "{message}"
    );
    assert!(
        run.world
            .nodes
            .iter()
            .any(|n| n.name == "cp-0" && n.unschedulable),
        "cp-0 stays cordoned"
    );
}

#[test]
pub(super) fn an_unhealthy_etcd_member_blocks_before_anything_is_touched() {
    let mut world = World::new(three_control_planes());
    world
        .crash_looping
        .insert(("cp-2".to_owned(), "etcd".to_owned()));
    let mut run = Run::new(quick("1.35.2"), world);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty(), "nothing touched");
    let reasons = blocked.status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("etcd on cp-2 is not Running and Ready")
            && reasons.contains("etcd has 2 healthy member(s) for 3 control-plane node(s)"),
        "{reasons}"
    );
    // The member recovers: the block clears by itself.
    run.world.crash_looping.clear();
    assert_eq!(run.until(300, &[Phase::Succeeded]), Phase::Succeeded);
}
