//! The chain against the simulator: every node, failures and retries, kills, deletion,
//! the lock, retargets, leader failover, a node that never returns.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_every_node_through_drains_and_jobs() {
    let cluster = cluster(1, 3).await;
    // A finished Job left (within its TTL) by a deleted K8sUpgrade of the same name and
    // target, under the name its first node Job had: its Pod template is immutable.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(cluster.client.clone(), "upchain-system");
    let leftover = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "to-1-35-worker-1-v1-35-2-1",
            "labels": {"upchain.dev/upgrade": "to-1-35", "upchain.dev/node": "worker-1"},
            "annotations": {"upchain.dev/upgrade": "to-1-35", "upchain.dev/upgrade-uid": "an-old-uid"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "upgrade", "image": "runner:old"}]}}}});
    jobs.patch(
        "to-1-35-worker-1-v1-35-2-1",
        &PatchParams::apply("earlier-upchain"),
        &Patch::Apply(&leftover),
    )
    .await
    .expect("leftover Job");
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let upgrade = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    let status = upgrade.status.expect("status");
    assert_eq!(status.progress.as_deref(), Some("4/4"));
    // The seed's gauges, labelled by upgrade: the run is over, nothing in flight.
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    for series in [
        "k8s_upgrade_in_flight{upgrade=\"to-1-35\"} 0",
        "k8s_upgrade_blocked{upgrade=\"to-1-35\"} 0",
        "k8s_upgrade_stalled{upgrade=\"to-1-35\"} 0",
        "k8s_upgrade_phase{upgrade=\"to-1-35\",phase=\"Succeeded\"} 1",
        "k8s_upgrade_nodes{upgrade=\"to-1-35\",state=\"Done\"} 4",
        "k8s_upgrade_node_duration_seconds_count{role=\"worker\"} 3",
    ] {
        assert!(
            exposition.contains(series),
            "missing {series} in\n{exposition}"
        );
    }
    let order: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, ["cp-1", "worker-1", "worker-2", "worker-3"]);

    assert_every_node_upgraded(&cluster);
    // Invariant 1: no upgrade Pod ran on the node it upgrades.
    let upgrade_pods: Vec<_> = cluster
        .sim
        .placements()
        .into_iter()
        .filter(|p| p.upgrades_node.is_some())
        .collect();
    assert_eq!(upgrade_pods.len(), 4, "one Job Pod per node, none repeated");
    for placement in &upgrade_pods {
        assert_ne!(Some(&placement.node), placement.upgrades_node.as_ref());
    }
    // Workloads were moved off, not lost: every Deployment is whole again.
    for deployment in cluster.sim.objects("deployments.apps") {
        assert_eq!(
            deployment["status"]["readyReplicas"], deployment["spec"]["replicas"],
            "{}",
            deployment["metadata"]["name"]
        );
    }
    // Each transition was said once. Events follow the status write that carries the
    // transition, the run's own Succeeded last.
    let events = || cluster.sim.objects("events.events.k8s.io");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !events().iter().any(|e| e["reason"] == "Succeeded") {
        assert!(std::time::Instant::now() < deadline, "no Succeeded Event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reasons: Vec<String> = cluster
        .sim
        .objects("events.events.k8s.io")
        .iter()
        .filter(|e| e["reason"] == "NodeUpgraded")
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_is_retried_and_a_refused_spec_changes_nothing() {
    // Two workers: with one, its Pods would have nowhere to go and the PDBs would hold
    // the drain, as on a real cluster.
    let cluster = cluster(1, 2).await;
    cluster
        .sim
        .behaviour()
        .failing_jobs
        .insert("worker-1".into(), 1);
    // A careless script echoes a secret.
    cluster
        .sim
        .behaviour()
        .extra_log_lines
        .insert("worker-1".into(), vec!["SSH_PASSWORD=hunter2".into()]);
    // A service mesh injects a sidecar into every Job Pod: logs are read by container.
    cluster.sim.behaviour().sidecar = Some("istio-proxy".into());
    // A downgrade is refused before anything is touched.
    apply_upgrade(&cluster.client, json!({"targetVersion": "1.34.1"})).await;
    let refused = wait_for_phase(&cluster, Phase::Failed, Duration::from_secs(20)).await;
    let ready = refused
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "VersionPolicy");
    assert!(cluster.sim.objects("jobs.batch").is_empty());
    assert_nothing_cordoned(&cluster);
    // The corrected spec runs; worker-1's first Job fails and the second succeeds.
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let upgrade = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(60)).await;
    let worker = upgrade
        .status
        .expect("status")
        .nodes
        .into_iter()
        .find(|n| n.name == "worker-1")
        .expect("record");
    assert_eq!((worker.attempts, worker.failures), (2, 1));
    // The second Job's evidence outlives it, without the secret.
    let result = worker.job_result.expect("the Job's result");
    assert_eq!(Some(&result.job), worker.job.as_ref());
    assert!(
        result.succeeded && result.exit_code == Some(0),
        "{result:?}"
    );
    assert!(result.started_at.is_some() && result.finished_at.is_some());
    let log = result.log_tail.join("\n");
    assert!(log.contains("kubelet v1.35.2 restarted; done"), "{log}");
    assert!(
        log.contains("SSH_PASSWORD=[redacted]") && !log.contains("hunter2"),
        "{log}"
    );
    assert!(
        cluster
            .sim
            .objects("nodes")
            .iter()
            .all(|n| kubelet(n) == "v1.35.2")
    );
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_mid_run_resumes_without_repeating_a_node() {
    let mut cluster = cluster(1, 3).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    // Killed while a worker drains, and again while a worker's Job runs.
    for step in [
        upchain_api::NodeStep::Draining,
        upchain_api::NodeStep::Upgrading,
    ] {
        wait_for(&cluster, "a worker at that step", |s| {
            s.current_step == Some(step)
                && s.current_node
                    .as_deref()
                    .is_some_and(|n| n.starts_with("worker"))
        })
        .await;
        cluster.kill_controller();
        cluster.start_controller();
    }
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    // No step done twice where that is unsafe: one upgrade Pod per node.
    let upgrade_pods: Vec<_> = cluster
        .sim
        .placements()
        .into_iter()
        .filter_map(|p| p.upgrades_node)
        .collect();
    let mut distinct = upgrade_pods.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        upgrade_pods.len(),
        distinct.len(),
        "a node was upgraded twice: {upgrade_pods:?}"
    );
    assert_eq!(distinct.len(), 4);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_mid_run_lets_the_job_finish_then_uncordons() {
    deleting_mid_run(kube::api::DeleteParams::default()).await;
}

/// Foreground deletion (Argo CD's default when it prunes) makes the garbage collector
/// delete dependents first: a node Job must not be one of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreground_deletion_mid_run_does_not_cut_the_job_off() {
    deleting_mid_run(kube::api::DeleteParams::foreground()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_upgrade_waits_naming_the_running_one() {
    let cluster = cluster(1, 2).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "the first run under way", |s| {
        s.current_node.is_some()
    })
    .await;
    apply_named(
        &cluster.client,
        "second",
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = api
            .get("second")
            .await
            .expect("get")
            .status
            .unwrap_or_default();
        let waiting = status.conditions.iter().any(|c| {
            c.type_ == "Progressing"
                && c.reason == "WaitingForUpgrade"
                && c.message.contains("to-1-35")
        });
        if waiting {
            assert_eq!(status.phase, Some(Phase::Pending));
            assert!(
                status.nodes.is_empty(),
                "the waiting upgrade touched a node"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "second never reported waiting: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    // With the lock free and every node at the target, the second finds nothing to do. It
    // is woken when the first lets go, well before its 30 s recheck.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while api
        .get("second")
        .await
        .expect("get")
        .status
        .and_then(|s| s.phase)
        != Some(Phase::Succeeded)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster
            .sim
            .placements()
            .iter()
            .filter(|p| p.upgrades_node.is_some())
            .count(),
        3
    );
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_always_fails_stops_the_run_until_the_retry_annotation() {
    let cluster = cluster(1, 2).await;
    cluster
        .sim
        .behaviour()
        .failing_jobs
        .insert("worker-1".into(), 2);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let failed = wait_for_phase(&cluster, Phase::Failed, Duration::from_secs(90)).await;
    let ready = failed
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "NodeFailed");
    assert!(
        ready.message.contains("BackoffLimitExceeded")
            && ready.message.contains("upchain.dev/retry"),
        "{}",
        ready.message
    );
    let nodes = cluster.sim.objects("nodes");
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .cloned()
            .expect("node")
    };
    assert_eq!(
        node("worker-1")["spec"]["unschedulable"],
        true,
        "the failed node stays cordoned for inspection"
    );
    assert_eq!(
        kubelet(&node("worker-2")),
        "v1.34.2",
        "no other node was started"
    );
    assert_ne!(node("worker-2")["spec"]["unschedulable"], true);
    // The cause is fixed; a new retry value resumes the run.
    annotate(&cluster, "upchain.dev/retry", "1").await;
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_kubelet_moved_by_hand_still_gets_kubeadm_upgrade_apply() {
    let cluster = cluster(2, 2).await;
    // Only cp-1's kubelet was moved: its static Pods and kubeadm-config are at v1.34.2.
    kubelet_moved_by_hand(&cluster, "cp-1").await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    let status = done.status.expect("status");
    let applied: Vec<(&str, bool)> = status
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.first_control_plane))
        .collect();
    assert_eq!(
        applied,
        [
            ("cp-1", true),
            ("cp-2", false),
            ("worker-1", false),
            ("worker-2", false)
        ],
        "cp-1 ran kubeadm upgrade apply"
    );
    assert_eq!(cluster.sim.kubeadm_version().as_deref(), Some("v1.35.2"));
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_target_mid_run_applies_at_the_next_node_boundary() {
    let cluster = cluster(1, 2).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.1", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "cp-1 upgrading", |s| {
        s.current_step == Some(upchain_api::NodeStep::Upgrading)
    })
    .await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(120)).await;
    assert_eq!(
        done.status.expect("status").target_version.as_deref(),
        Some("v1.35.2")
    );
    assert!(
        cluster
            .sim
            .objects("nodes")
            .iter()
            .all(|n| kubelet(n) == "v1.35.2")
    );
    // cp-1 finished the Job it had started for 1.35.1, then went on to 1.35.2.
    let targets: Vec<String> = cluster
        .sim
        .objects("jobs.batch")
        .iter()
        .filter(|j| j["metadata"]["annotations"]["upchain.dev/node"] == "cp-1")
        .map(|j| {
            j["metadata"]["labels"]["upchain.dev/target-version"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        targets.contains(&"v1.35.1".to_owned()) && targets.contains(&"v1.35.2".to_owned()),
        "{targets:?}"
    );
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_leader_and_a_failover() {
    let mut cluster = cluster(1, 2).await;
    // The single replica of the fixture steps aside for two electing replicas.
    cluster.kill_controller();
    let election = [
        "--leader-election",
        "true",
        "--lease-namespace",
        "upchain-system",
        "--lease-seconds",
        "3",
    ];
    let mut replicas: Vec<Operator> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|identity| cluster.spawn_operator(identity, &election))
        .collect();
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "a worker in progress", |s| {
        s.current_node
            .as_deref()
            .is_some_and(|n| n.starts_with("worker"))
    })
    .await;
    let leaders: Vec<usize> = (0..replicas.len())
        .filter(|&i| replicas[i].leads())
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one replica acts");
    // The leader dies without releasing the Lease; the other takes it over once it expires
    // and finishes the run.
    drop(replicas.remove(leaders[0]));
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(replicas[0].leads(), "the survivor leads");
    assert_every_node_upgraded(&cluster);
    let upgrade_pods: Vec<_> = cluster
        .sim
        .placements()
        .into_iter()
        .filter_map(|p| p.upgrades_node)
        .collect();
    assert_eq!(
        upgrade_pods.len(),
        3,
        "no node was upgraded twice: {upgrade_pods:?}"
    );
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_returns_stalls_then_fails_and_nothing_else_is_drained() {
    let cluster = cluster(1, 2).await;
    cluster
        .sim
        .behaviour()
        .never_return
        .insert("worker-1".into());
    // The shortest timeouts the CRD accepts: stalled after 1m without progress, failed
    // once the node has not rejoined for 2m.
    create_webhook_secret(&cluster).await;
    apply_upgrade(&cluster.client, json!({"targetVersion": "1.35.2", "soak": "0s", "stallTimeout": "1m", "rejoinTimeout": "2m",
        "notify": {"webhookSecret": {"namespace": "upchain-system", "name": "slack", "key": "url"}}})).await;
    wait_for(&cluster, "worker-1 rejoining", |s| {
        s.current_node.as_deref() == Some("worker-1")
            && s.current_step == Some(upchain_api::NodeStep::Rejoining)
    })
    .await;
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(200);
    let mut saw_stalled = false;
    let failed = loop {
        let upgrade = api.get("to-1-35").await.expect("get");
        let status = upgrade.status.clone().unwrap_or_default();
        saw_stalled |= status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True");
        if status.phase == Some(Phase::Failed) {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(saw_stalled, "Stalled was never reported before Failed");
    let record = failed
        .nodes
        .iter()
        .find(|n| n.name == "worker-1")
        .expect("record");
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("did not come back Ready"),
        "{record:?}"
    );
    let nodes = cluster.sim.objects("nodes");
    let worker_2 = nodes
        .iter()
        .find(|n| n["metadata"]["name"] == "worker-2")
        .expect("worker-2");
    assert_eq!(kubelet(worker_2), "v1.34.2", "no other node was started");
    // Stalled and Failed were each notified once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let messages = cluster.sim.surroundings().webhook_messages.clone();
        let count = |kind: &str| {
            messages
                .iter()
                .filter(|m| m.contains(&format!("to-1-35 {kind}")))
                .count()
        };
        if count("failed") == 1 {
            assert_eq!(count("stalled"), 1, "{messages:#?}");
            assert_eq!(count("started"), 1, "{messages:#?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{messages:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(worker_2["spec"]["unschedulable"], true);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_already_at_the_target_is_left_alone_and_the_workers_follow() {
    let cluster = cluster(1, 2).await;
    // The control plane was upgraded by hand; only the workers are behind.
    kubelet_moved_by_hand(&cluster, "cp-1").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client.clone(), "kube-system");
    for component in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let image = format!("registry.k8s.io/{component}:v1.35.2");
        pods.patch(
            &format!("{component}-cp-1"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"containers": [{"name": component, "image": image}]}})),
        )
        .await
        .expect("static Pod at the target");
    }
    cluster.sim.set_kubeadm_version("v1.35.2");
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    let status = done.status.expect("status");
    let upgraded: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(upgraded, ["worker-1", "worker-2"], "cp-1 was not worked on");
    assert_eq!(status.progress.as_deref(), Some("2/2"));
    let upgrade_pods: Vec<String> = cluster
        .sim
        .placements()
        .into_iter()
        .filter_map(|p| p.upgrades_node)
        .collect();
    assert!(
        !upgrade_pods.iter().any(|n| n == "cp-1"),
        "no Job for the control plane: {upgrade_pods:?}"
    );
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

/// `node`'s kubelet reports v1.35.2, as after an upgrade by hand of its packages alone.
async fn kubelet_moved_by_hand(cluster: &Cluster, node: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kubeletVersion": "v1.35.2"}}})),
        )
        .await
        .expect("the kubelet at the target");
}
