//! Analysis checks against a real Prometheus (Debian's, scraping every second): a soak
//! that goes wrong, promotion from one cluster to another, and `upchain check`.

use std::sync::{Arc, Mutex};

use crate::harness::{Prometheus, Target};

use super::*;

fn error_ratio(value: f64) -> String {
    format!(
        "# TYPE checkout_error_ratio gauge\ncheckout_error_ratio{{service=\"checkout\"}} {value}\n"
    )
}

/// Waits until Prometheus returns a sample for `query`.
async fn until_prometheus_has(prometheus: &Prometheus, query: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body: serde_json::Value = http
            .get(format!("{}/api/v1/query", prometheus.url))
            .query(&[("query", query)])
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        if body["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never had {query}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Pods on each node, by node name.
fn pods_by_node(cluster: &Cluster) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut pods = std::collections::BTreeMap::<String, Vec<String>>::new();
    for pod in cluster.sim.objects("pods") {
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            pods.entry(node.to_owned()).or_default().push(
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    pods
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_analysis_after_a_batch_stops_the_run_with_its_samples_and_drains_nothing_else() {
    let cluster = cluster_with(1, 3, Duration::from_secs(2)).await;
    let metrics = Arc::new(Mutex::new(error_ratio(0.001)));
    let exporter = crate::harness::exporter(metrics.clone());
    let prometheus = Prometheus::start(&[Target {
        address: &exporter,
        path: "/metrics",
        cluster: "a",
    }]);
    until_prometheus_has(&prometheus, "checkout_error_ratio").await;
    let pods_before = pods_by_node(&cluster);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "3s", "gates": {"analysis": [{
            "name": "checkout-errors", "url": prometheus.url, "query": "checkout_error_ratio",
            "threshold": {"operator": "LessThan", "value": 0.01}, "when": ["AfterBatch"],
            "interval": "1s", "consecutivePasses": 2}]}}),
    )
    .await;
    // The control-plane node soaks with a healthy checkout; the first worker does not.
    wait_for(&cluster, "the first worker started", |s| {
        s.nodes.iter().any(|n| n.name.starts_with("worker-"))
    })
    .await;
    *metrics.lock().expect("metrics") = error_ratio(0.2);
    let failed = wait_for_phase(&cluster, Phase::Failed, Duration::from_secs(60)).await;
    let status = failed.status.expect("status");
    let ready = ready(&status);
    assert_eq!(ready.reason, "AnalysisFailed", "{}", ready.message);
    for words in [
        "analysis checkout-errors failed 1 time(s) (tolerates 0) at AfterBatch",
        "not < 0.01",
        "service=\"checkout\"",
        "} 0.2",
        "upchain.dev/retry",
    ] {
        assert!(ready.message.contains(words), "{words}: {}", ready.message);
    }
    let upgraded: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        upgraded.len(),
        2,
        "the control plane and one worker: {upgraded:?}"
    );
    let worker = &status.nodes[1];
    assert_eq!(worker.step, upchain_api::NodeStep::Soaking);
    // The batch is in service, and nothing else was cordoned, drained or upgraded.
    assert_nothing_cordoned(&cluster);
    let pods_after = pods_by_node(&cluster);
    for node in cluster.sim.objects("nodes") {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        if upgraded.contains(&name) {
            continue;
        }
        assert_eq!(kubelet(&node), "v1.34.2", "{name} was upgraded");
        let still_there = pods_after.get(name).cloned().unwrap_or_default();
        for pod in pods_before.get(name).into_iter().flatten() {
            assert!(still_there.contains(pod), "{pod} was evicted from {name}");
        }
    }
    let record = &status.analysis[0];
    assert_eq!(record.verdict, upchain_api::AnalysisVerdict::Failed);
    assert!(
        record
            .last_value
            .as_deref()
            .is_some_and(|v| v.ends_with(" 0.2")),
        "{record:?}"
    );
}

/// The check cluster B carries: cluster A's run at the same target has been Succeeded for
/// at least `age` seconds (docs/fleet.md).
fn promotion_check(prometheus: &str, age: u64) -> serde_json::Value {
    json!({"name": "staging-soaked", "url": prometheus, "when": ["BeforeRun"],
        "query": "time() - k8s_upgrade_last_progress_timestamp{cluster=\"a\"} \
            and on(upgrade) k8s_upgrade_phase{cluster=\"a\", phase=\"Succeeded\"} == 1 \
            and on(upgrade) k8s_upgrade_info{cluster=\"a\", target_version=\"v1.35.2\"}",
        "threshold": {"operator": "GreaterThanOrEqual", "value": age},
        "interval": "1s", "onEmpty": "Wait"})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_starts_only_once_the_other_clusters_success_at_the_target_has_aged() {
    const AGE: u64 = 8;
    let a = cluster_with(1, 2, Duration::from_millis(500)).await;
    let b = cluster_with(1, 2, Duration::from_millis(300)).await;
    let address = |c: &Cluster| c.operator.as_ref().expect("operator").metrics_address();
    let (a_metrics, b_metrics) = tokio::task::block_in_place(|| (address(&a), address(&b)));
    let prometheus = Prometheus::start(&[
        Target {
            address: &a_metrics,
            path: "/metrics",
            cluster: "a",
        },
        Target {
            address: &b_metrics,
            path: "/metrics",
            cluster: "b",
        },
    ]);
    until_prometheus_has(&prometheus, "upchain_leader{cluster=\"a\"}").await;
    // The same target is committed to both clusters at once; B's stage waits on A's.
    apply_upgrade(
        &b.client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "gates": {"analysis": [promotion_check(&prometheus.url, AGE)]}}),
    )
    .await;
    apply_upgrade(&a.client, json!({"targetVersion": "1.35.2", "soak": "0s"})).await;
    wait_for(&b, "B waiting for A", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "WaitingForAnalysis")
    })
    .await;
    // While A runs, and until its success has aged, B touches nothing.
    let api: Api<K8sUpgrade> = Api::all(a.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let a_succeeded_at = loop {
        let status = api
            .get("to-1-35")
            .await
            .expect("A")
            .status
            .unwrap_or_default();
        let b_status = current_status(&b).await;
        assert!(b_status.nodes.is_empty(), "B started before A succeeded");
        if status.phase == Some(Phase::Succeeded) {
            break status.last_progress_at.expect("A's last progress").0;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never succeeded: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_nothing_cordoned(&b);
    let b_done = wait_for_phase(&b, Phase::Succeeded, Duration::from_secs(90)).await;
    let b_status = b_done.status.expect("status");
    let b_first_node = b_status
        .nodes
        .iter()
        .map(|n| n.started_at.0)
        .min()
        .expect("B upgraded its nodes");
    let waited = b_first_node.duration_since(a_succeeded_at).as_secs();
    assert!(
        waited >= i64::try_from(AGE).expect("small"),
        "B started {waited}s after A's success, before it had aged {AGE}s"
    );
    let record = &b_status.analysis[0];
    assert_eq!(record.verdict, upchain_api::AnalysisVerdict::Passed);
    assert_every_node_upgraded(&b);
}

#[tokio::test(flavor = "multi_thread")]
async fn upchain_check_shows_each_analysis_verdict() {
    let mut cluster = cluster(1, 1).await;
    cluster.kill_controller();
    let metrics = Arc::new(Mutex::new(error_ratio(0.2)));
    let exporter = crate::harness::exporter(metrics);
    let prometheus = Prometheus::start(&[Target {
        address: &exporter,
        path: "/metrics",
        cluster: "a",
    }]);
    until_prometheus_has(&prometheus, "checkout_error_ratio").await;
    let kubeconfig = cluster.kubeconfig();
    let spec = cluster.dir.path().join("upgrade.yaml");
    let upgrade = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "x"},
        "spec": {"targetVersion": "1.35.2",
            "snapshotWaiver": {"reason": "the scenario is not about the snapshot"},
            "gates": {"analysis": [
                {"name": "checkout-errors", "url": prometheus.url, "query": "checkout_error_ratio",
                 "threshold": {"operator": "LessThan", "value": 0.01}, "when": ["AfterBatch"]},
                {"name": "checkout-up", "url": prometheus.url,
                 "query": "count(checkout_error_ratio)",
                 "expression": "samples.all(s, s.value >= 1.0)", "when": ["BeforeBatch"],
                 "consecutivePasses": 3}]}}});
    std::fs::write(&spec, serde_json::to_string(&upgrade).expect("json")).expect("spec");
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args(["check", "--target", "1.35.2", "--spec"])
            .arg(&spec)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("upchain check runs")
    });
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("BLOCK analysis/checkout-errors 1 of 1 sample(s) not < 0.01"),
        "{text}"
    );
    assert!(
        text.contains("(AfterBatch; needs 1 pass(es) in a row, 1m apart)"),
        "{text}"
    );
    assert!(
        text.contains("PASS  analysis/checkout-up 1 (BeforeBatch; needs 3 pass(es) in a row"),
        "{text}"
    );
    assert_nothing_cordoned(&cluster);
}
