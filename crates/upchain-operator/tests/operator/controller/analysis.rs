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

/// Waits until Prometheus's samples for `query` satisfy `enough`, and returns them.
async fn until_prometheus_answers(
    prometheus: &Prometheus,
    query: &str,
    enough: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
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
        let samples = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if enough(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never answered {query} as expected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Prometheus returns a sample for `query`.
async fn until_prometheus_has(prometheus: &Prometheus, query: &str) {
    until_prometheus_answers(prometheus, query, |samples| !samples.is_empty()).await;
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
        labels: &[("cluster", "a")],
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

/// The K8sUpgrade Argo CD or Flux applies to a cluster of deploy/gitops/fleet.
fn fleet_upgrade(cluster: &str) -> serde_json::Value {
    let dir = format!(
        "{}/../../deploy/gitops/fleet/clusters/{cluster}",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new("kubectl")
        .args(["kustomize", &dir])
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::from_slice(&output.stdout).expect("one K8sUpgrade")
}

#[test]
fn the_fleet_layout_renders_one_admitted_upgrade_per_cluster_and_promotes_at_the_stage_target() {
    let crd = serde_json::to_value(upchain_api::crd()).expect("crd");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for (cluster, promoted) in [
        ("staging-eu-1", false),
        ("prod-eu-1", true),
        ("prod-us-1", true),
    ] {
        let upgrade = fleet_upgrade(cluster);
        let admitted = upchain_sim::admission::admit(schema, &upgrade, None)
            .unwrap_or_else(|e| panic!("{cluster}: {e:?}"));
        let typed: K8sUpgrade = serde_json::from_value(admitted).expect("typed");
        upchain_core::analysis::validate(&typed.spec.gates.analysis).expect("valid checks");
        let promotion = typed
            .spec
            .gates
            .analysis
            .iter()
            .find(|c| c.name == "staging-soaked");
        assert_eq!(promotion.is_some(), promoted, "{cluster}");
        if let Some(check) = promotion {
            assert!(
                check
                    .query
                    .contains(&format!("target_version=\"{}\"", typed.spec.target_version)),
                "{cluster}: the query asks for another target than the stage's: {}",
                check.query
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_starts_only_once_the_other_clusters_success_at_the_target_has_aged() {
    // The fleet's own promotion check, with 8 s for its 48 hours and a measurement a second.
    const AGE: i64 = 8;
    let production = tokio::task::block_in_place(|| fleet_upgrade("prod-eu-1"));
    let target = production["spec"]["targetVersion"].clone();
    let mut promotion = production["spec"]["gates"]["analysis"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "staging-soaked"))
        .expect("the promotion check")
        .clone();
    let query = promotion["query"].as_str().expect("query").to_owned();
    assert!(query.contains(">= 172800)"), "{query}");
    promotion["query"] = json!(query.replace(">= 172800)", &format!(">= {AGE})")));
    promotion["interval"] = json!("1s");

    let a = cluster_with(1, 2, Duration::from_millis(500)).await;
    let b = cluster_with(1, 2, Duration::from_millis(300)).await;
    let address = |c: &Cluster| c.operator.as_ref().expect("operator").metrics_address();
    let (a_metrics, b_metrics) = tokio::task::block_in_place(|| (address(&a), address(&b)));
    let prometheus = Prometheus::start(&[
        Target {
            address: &a_metrics,
            path: "/metrics",
            labels: &[("cluster", "staging-eu-1"), ("stage", "staging")],
        },
        Target {
            address: &b_metrics,
            path: "/metrics",
            labels: &[("cluster", "prod-eu-1"), ("stage", "production")],
        },
    ]);
    promotion["url"] = json!(prometheus.url);
    until_prometheus_has(&prometheus, "upchain_leader{stage=\"staging\"}").await;
    // The same target is committed to both stages at once; production waits on staging.
    apply_upgrade(
        &b.client,
        json!({"targetVersion": target, "soak": "0s", "gates": {"analysis": [promotion]}}),
    )
    .await;
    apply_upgrade(&a.client, json!({"targetVersion": target, "soak": "0s"})).await;
    wait_for(&b, "production waiting for staging", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "WaitingForAnalysis")
    })
    .await;
    // While staging runs, and until its success has aged, production touches nothing.
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
        assert!(
            b_status.nodes.is_empty(),
            "production started before staging succeeded"
        );
        if status.phase == Some(Phase::Succeeded) {
            break status.last_progress_at.expect("A's last progress").0;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "staging never succeeded: {status:?}"
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
        .expect("production upgraded its nodes");
    let waited = b_first_node.duration_since(a_succeeded_at).as_secs();
    assert!(
        waited >= AGE,
        "production started {waited}s after staging's success, before it had aged {AGE}s"
    );
    assert_eq!(
        b_status.analysis[0].verdict,
        upchain_api::AnalysisVerdict::Passed
    );
    assert_every_node_upgraded(&b);

    // The dashboard's fleet panel shows both clusters at the target, Succeeded.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/upchain-dashboard.json"
        ))
        .expect("dashboard"),
    )
    .expect("json");
    let fleet = dashboard["panels"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["title"] == "Fleet: what each cluster runs")
        })
        .expect("the fleet panel");
    let rows = until_prometheus_answers(
        &prometheus,
        fleet["targets"][0]["expr"].as_str().expect("expr"),
        |rows| rows.len() == 2 && rows.iter().all(|r| r["metric"]["phase"] == "Succeeded"),
    )
    .await;
    for row in rows {
        assert_eq!(row["metric"]["target_version"], target, "{row}");
        assert_eq!(row["metric"]["from_version"], "v1.34.2", "{row}");
    }
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
        labels: &[("cluster", "a")],
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
