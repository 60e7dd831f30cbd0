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
pub(super) fn etcd_is_checked_through_a_member_before_the_run_each_control_plane_node_and_the_first_worker()
 {
    let mut world = World::new(three_control_planes());
    world.etcd_external = false;
    let mut run = Run::new(quick("1.35.2"), world);
    let end = run.until(400, &[Phase::Succeeded]);
    assert_eq!(end, Phase::Succeeded, "{:?}", run.status().blocked_reasons);
    // One check before each control-plane node (the first also before the run) and one
    // before the first worker, each through a control-plane node's member.
    let asked: Vec<&str> = run
        .world
        .etcd_jobs
        .values()
        .map(|(asked, _)| asked.as_str())
        .collect();
    assert_eq!(asked.len(), 4, "{:?}", run.world.etcd_jobs);
    assert!(
        asked.iter().all(|node| node.starts_with("cp-")),
        "{asked:?}"
    );
    let record = run.status().etcd.clone().expect("record");
    assert!(record.passed && record.before == "w-1", "{record:?}");
}

#[test]
pub(super) fn an_unhealthy_etcd_blocks_naming_the_member_and_nothing_is_touched() {
    let mut world = World::new(three_control_planes());
    world.etcd_external = false;
    // A member added with `member add` and never started.
    let members: Vec<(&str, &str)> = vec![
        ("cp-0", "10.0.0.1"),
        ("cp-1", "10.0.0.2"),
        ("cp-2", "10.0.0.3"),
    ];
    world.etcd_report = Some(format!(
        "{}\nupchain-etcd member c25d1bfb7c59b8d2|unstarted||https://10.0.0.9:2380||false",
        crate::etcd::healthy_report(&members)
    ));
    let mut run = Run::new(quick("1.35.2"), world);
    run.decide_once();
    run.world.tick(5);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty(), "nothing touched");
    let reasons = blocked.status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("etcd has 4 members, 3 control-plane nodes")
            && reasons.contains(
                "c25d1bfb7c59b8d2 (peer https://10.0.0.9:2380) was added but never started"
            ),
        "{reasons}"
    );
    assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
    let record = blocked.status.etcd.clone().expect("record");
    assert!(!record.passed && record.completed_at.is_some());
    // The member is removed: the next check, after the recheck interval, passes.
    run.world.etcd_report = None;
    assert_eq!(run.until(400, &[Phase::Succeeded]), Phase::Succeeded);
}

/// The node Jobs started, as (node, whether it runs `kubeadm upgrade apply`).
fn jobs_started(decision: &Decision) -> Vec<(String, bool)> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(job) => {
                let env = job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                    .env
                    .as_ref()?;
                let value = |key: &str| {
                    env.iter()
                        .find(|e| e.name == key)
                        .and_then(|e| e.value.clone())
                };
                if value("MODE").as_deref() == Some("prepare") {
                    return None;
                }
                Some((value("NODE_NAME")?, value("FIRST_CONTROL_PLANE")? == "true"))
            }
            _ => None,
        })
        .collect()
}

#[test]
pub(super) fn a_kubelet_moved_by_hand_still_gets_kubeadm_upgrade_apply() {
    // cp-0's kubelet was upgraded by hand; its static Pods and kubeadm-config were not.
    let mut world = World::new(three_control_planes());
    world.node_mut("cp-0").kubelet_version = "v1.35.2".into();
    world
        .static_versions
        .insert("cp-0".into(), "v1.34.2".into());
    let mut run = Run::new(quick("1.35.2"), world);
    let mut jobs = Vec::new();
    for _ in 0..300 {
        let decision = run.decide_once();
        jobs.extend(jobs_started(&decision));
        if decision.status.phase.is_some_and(Phase::is_finished) {
            break;
        }
        run.wait_as_asked(&decision, 60);
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    assert_eq!(
        jobs,
        [
            ("cp-0".to_owned(), true),
            ("cp-1".to_owned(), false),
            ("cp-2".to_owned(), false),
            ("w-1".to_owned(), false),
        ],
        "cp-0 runs kubeadm upgrade apply, every other node kubeadm upgrade node"
    );
    assert_eq!(run.world.kubeadm_version, "v1.35.2");
}

#[test]
pub(super) fn an_apply_that_leaves_kubeadm_config_behind_stops_before_the_next_node() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(600).into();
    let mut world = World::new(three_control_planes());
    world.kubeadm_config_stale = true;
    let mut run = Run::new(upgrade, world);
    let mut cordoned = Vec::new();
    for _ in 0..300 {
        let decision = run.decide_once();
        cordoned.extend(cordons(&decision));
        if decision.status.phase.is_some_and(Phase::is_finished) {
            break;
        }
        run.wait_as_asked(&decision, 60);
    }
    assert_eq!(run.status().phase, Some(Phase::Failed));
    assert_eq!(cordoned, ["cp-0"], "no other node was cordoned");
    let message = run.status().nodes[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(
            "kube-system/kubeadm-config still records kubernetesVersion v1.34.2, not v1.35.2: \
             `kubeadm upgrade apply` on cp-0 did not finish"
        ),
        "{message}"
    );
}

#[test]
pub(super) fn workers_wait_while_an_api_server_is_older_than_their_target() {
    // cp-1's kubelet was moved by hand and the node is skipped, so nothing moves its
    // API server.
    let mut upgrade = quick("1.35.2");
    upgrade.spec.nodes.skip = vec!["cp-1".to_owned()];
    let mut world = World::new(three_control_planes());
    world.node_mut("cp-1").kubelet_version = "v1.35.2".into();
    world
        .static_versions
        .insert("cp-1".into(), "v1.34.2".into());
    let mut run = Run::new(upgrade, world);
    let blocked = run.until(300, &[Phase::Blocked, Phase::Succeeded, Phase::Failed]);
    assert_eq!(blocked, Phase::Blocked);
    let reasons = run.status().blocked_reasons.join("\n");
    assert!(
        reasons.contains("the kube-apiserver on cp-1 runs v1.34.2, older than the workers'"),
        "{reasons}"
    );
    let done: Vec<&str> = run.status().nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        done,
        ["cp-0", "cp-2"],
        "the control plane went first, no worker"
    );
    assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
}

fn with_external_etcd_check(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    upgrade.spec.gates.external_etcd_check = Some(
        serde_json::from_value(serde_json::json!({"namespace": "upchain-system",
            "template": crate::testing::hook_template(serde_json::json!(
                {"name": "check", "image": "etcd-tools", "command": ["etcdctl", "endpoint", "health", "--cluster"]}))}))
        .expect("check"),
    );
    upgrade
}

/// The external etcd check Jobs created, by the node each came before.
fn etcd_checks(decision: &Decision) -> Vec<String> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(job) => job.metadata.name.clone(),
            _ => None,
        })
        .filter(|name| name.contains("-etcd-check-"))
        .collect()
}

#[test]
pub(super) fn an_external_etcd_check_runs_before_each_control_plane_node_and_the_first_worker() {
    let mut nodes = three_control_planes();
    nodes.push(NodeFixture::worker("w-2").kubelet("v1.34.2").build());
    let mut run = Run::new(with_external_etcd_check(quick("1.35.2")), World::new(nodes));
    let mut checks = Vec::new();
    let mut cordoned = Vec::new();
    let mut failed_once = false;
    let mut blocked = false;
    for _ in 0..400 {
        let decision = run.decide_once();
        checks.extend(etcd_checks(&decision));
        cordoned.extend(cordons(&decision));
        // etcd is unhealthy when cp-1 is next.
        let before_cp_1 = checks.iter().any(|c| c.contains("-cp-1-"));
        if before_cp_1 && !failed_once {
            run.world.hook_outcome = JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "endpoint https://10.0.0.9:2379 is unhealthy".into(),
            };
            failed_once = true;
        }
        if decision.status.phase == Some(Phase::Blocked) {
            let reason = decision.status.blocked_reasons.join("\n");
            assert!(
                reason.contains("the external etcd check Job upchain-system/test-etcd-check-cp-1-")
                    && reason.contains("cp-1 was not started"),
                "{reason}"
            );
            assert_eq!(
                cordoned,
                ["cp-0"],
                "nothing after cp-0 while etcd is unhealthy"
            );
            run.world.hook_outcome = JobState::Succeeded;
            blocked = true;
        }
        if decision.status.phase.is_some_and(Phase::is_finished) {
            break;
        }
        run.wait_as_asked(&decision, 60);
    }
    assert!(blocked, "the failed check blocked the run");
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    let before: Vec<&str> = ["cp-0", "cp-1", "cp-2", "w-1"]
        .into_iter()
        .filter(|node| checks.iter().any(|c| c.contains(&format!("-{node}-"))))
        .collect();
    assert_eq!(before, ["cp-0", "cp-1", "cp-2", "w-1"]);
    assert!(
        !checks.iter().any(|c| c.contains("-w-2-")),
        "only before the first worker: {checks:?}"
    );
}
