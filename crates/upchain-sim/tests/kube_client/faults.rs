//! Injected faults: errors, latency, a node that never returns, a budget that never allows.

use crate::*;

#[tokio::test(flavor = "multi_thread")]
async fn injected_errors_and_latency() {
    let (sim, client) = start(bare()).await;
    let nodes: Api<Node> = Api::all(client.clone());
    sim.faults()
        .error_rate
        .insert(upchain_sim::server::Verb::List, 1.0);
    let err = nodes
        .list(&ListParams::default())
        .await
        .expect_err("injected");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 500),
        "{err}"
    );
    sim.faults().error_rate.clear();
    sim.faults()
        .latency
        .insert(upchain_sim::server::Verb::Get, Duration::from_millis(150));
    let started = std::time::Instant::now();
    nodes.get("cp-1").await.expect("get");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_a_node_that_never_returns_and_a_budget_that_never_allows() {
    let clock = Clock::virtual_at(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let config = SimConfig {
        clock: clock.clone(),
        ..SimConfig::default()
    };
    let (sim, client) = start(config).await;
    sim.behaviour().never_return.insert("worker-3".into());
    sim.store()
        .stubborn_pdbs
        .insert("kube-system/coredns".into());
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "up-3"}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": "worker-1"},
        "containers": [{"name": "upgrade", "image": "runner", "env": [
            {"name": "NODE_NAME", "value": "worker-3"}, {"name": "TARGET_VERSION", "value": "1.35.2"}]}]}}}}))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("job");
    // Each step on the virtual clock: the Pod starts, the node restarts and never returns.
    let nodes: Api<Node> = Api::all(client.clone());
    let worker_3 = || {
        let nodes = nodes.clone();
        async move {
            let status = nodes.get("worker-3").await.unwrap().status.unwrap();
            let ready = status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready, status.node_info.unwrap().kubelet_version)
        }
    };
    let upgrade_pod_running = || {
        let sim = &sim;
        async move {
            sim.objects("pods").iter().any(|p| {
                p["metadata"]["labels"]["job-name"] == "up-3" && p["status"]["phase"] == "Running"
            })
        }
    };
    eventually("upgrade Pod scheduled", || async {
        sim.placements()
            .iter()
            .any(|p| p.upgrades_node.as_deref() == Some("worker-3"))
    })
    .await;
    clock.advance(Duration::from_secs(1));
    eventually("upgrade Pod running", upgrade_pod_running).await;
    clock.advance(Duration::from_secs(2));
    eventually("worker-3 restarting", || async { !worker_3().await.0 }).await;
    clock.advance(Duration::from_secs(2));
    eventually("worker-3 reports the target", || async {
        worker_3().await.1 == "v1.35.2"
    })
    .await;
    clock.advance(Duration::from_secs(600));
    assert!(!worker_3().await.0, "worker-3 must stay down");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let coredns = pods
        .list(&ListParams::default().labels("app=coredns"))
        .await
        .expect("list");
    let name = coredns.items[0].metadata.name.clone().expect("name");
    let err = pods
        .evict(&name, &Default::default())
        .await
        .expect_err("never allowed");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 429),
        "{err}"
    );
}
