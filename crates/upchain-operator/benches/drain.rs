//! Drain benchmark: how long the real `upchain run` takes to drain a worker holding the 20
//! Pods of a Deployment behind a `maxUnavailable: 1` PodDisruptionBudget, when each
//! replacement Pod takes a second to start. The budget allows one eviction at a time, so
//! the drain can go no faster than the replacements; the question is how much slower.
//!
//!     cargo bench -p upchain-operator --bench drain             # 20 Pods, 1 s start-up
//!     cargo bench -p upchain-operator --bench drain -- 40 2     # 40 Pods, 2 s start-up
//!
//! Prints one Markdown row per drained worker (docs/benchmarks.md explains the columns).

// A benchmark binary: failing loudly is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use upchain_sim::controllers::Behaviour;
use upchain_sim::server::Verb;
use upchain_sim::{Sim, SimConfig};

mod support;
use support::Operator;

fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let replicas = numbers.first().copied().unwrap_or(20);
    let start_up = Duration::from_secs(numbers.get(1).copied().unwrap_or(1));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "| Pods | budget | Pod start-up | node | drain | evictions tried / done (run) | reconciles (run) | operator CPU (run) | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    runtime.block_on(run(replicas, start_up));
}

async fn set_unschedulable(nodes: &Api<Node>, node: &str, unschedulable: bool) {
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": unschedulable}})),
        )
        .await
        .unwrap();
}

async fn run(replicas: u64, start_up: Duration) {
    let sim = Sim::start(SimConfig {
        control_planes: 1,
        workers: 2,
        workloads: false,
        behaviour: Behaviour {
            upgrade_time: Duration::ZERO,
            restart_time: Duration::ZERO,
            pod_start_time: start_up,
            pod_stop_time: Duration::ZERO,
            ..Behaviour::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let client = upchain_operator::install::simulated_cluster_client(&sim.url())
        .await
        .unwrap();

    // Every replica on worker-1 to begin with: worker-2 is cordoned while they start.
    let nodes: Api<Node> = Api::all(client.clone());
    set_unschedulable(&nodes, "worker-2", true).await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap(),
        )
        .await
        .unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "bench"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "bench")
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "bench"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), "bench")
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready as u64 == replicas {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_unschedulable(&nodes, "worker-2", false).await;

    let operator = Operator::start(&kubeconfig, &dir.path().join("operator.log")).await;
    let before = sim.requests();
    let reconciles_before = operator.counter("upchain_reconciles_total");
    let cpu_before = operator.cpu_seconds();
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "drain"},
        "spec": {"targetVersion": "1.35.2", "soak": "0s",
                 "snapshotWaiver": {"reason": "the benchmark measures the drain"}}});
    let applied = jiff::Timestamp::now();
    let _ = support::upgrade(&client, "drain", &object, Duration::from_secs(900)).await;
    let reconciles = operator.counter("upchain_reconciles_total") - reconciles_before;
    let cpu = operator.cpu_seconds() - cpu_before;
    let rss = operator.peak_rss();
    let after = sim.requests();
    // The operator creates no Pods: each POST on pods is an eviction (the simulator counts
    // a subresource under its resource).
    let key = (Verb::Create, "pods".to_owned());
    let tried = after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0);
    let evicted = sim
        .placements()
        .iter()
        .filter(|p| p.labels.get("app").is_some_and(|a| a == "web"))
        .count() as u64
        - replicas;
    // A worker's drain: from its cordon to its upgrade Pod being placed.
    let placements = sim.placements();
    for moment in sim.cordons() {
        // The run's own cordons, not the set-up's.
        if !moment.node.starts_with("worker") || moment.at < applied {
            continue;
        }
        let Some(job) = placements
            .iter()
            .find(|p| p.upgrades_node.as_deref() == Some(&moment.node) && p.at >= moment.at)
        else {
            continue;
        };
        let drain = job.at.duration_since(moment.at).as_secs_f64();
        println!(
            "| {replicas} | maxUnavailable 1 | {:.0} s | {} | {drain:.1} s | {} / {evicted} | {reconciles:.0} | {:.0} ms | {rss} |",
            start_up.as_secs_f64(),
            moment.node,
            tried,
            cpu * 1000.0,
        );
    }
}
