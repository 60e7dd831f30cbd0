//! Scale benchmark: the real `upchain run` upgrading simulated clusters of growing size
//! with 20 Pods per worker, full-size Node objects, zero soak and instant node scripts.
//!
//!     cargo bench -p upchain-operator --bench scale              # 100 and 1000 nodes
//!     cargo bench -p upchain-operator --bench scale -- 5000      # any sizes
//!     UPCHAIN_BENCH_PODS=0 cargo bench ...                        # nodes only
//!     cargo bench -p upchain-operator --bench scale -- --real     # a real API server
//!
//! `--real` runs the same upgrade against a real kube-apiserver and controller manager
//! (`../shared/k8s/control-plane`, or `UPCHAIN_CONTROL_PLANE`) whose kubelets the node
//! player plays, with no workloads; the request columns are the simulator's to count and
//! read "n/a" there.
//!
//! Prints one Markdown row per size (docs/benchmarks.md explains the columns).

// A benchmark binary: failing loudly is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::api::ListParams;
use serde_json::json;
use upchain_sim::control_plane::ControlPlane;
use upchain_sim::controllers::Behaviour;
use upchain_sim::player::{NodePlayer, PlayerConfig};
use upchain_sim::server::Verb;
use upchain_sim::{Sim, SimConfig};

mod support;
use support::Operator;

/// Pods per worker: 20 unless UPCHAIN_BENCH_PODS says otherwise.
fn pods_per_node() -> usize {
    std::env::var("UPCHAIN_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// How often the simulated kubelets post status: 10 s unless UPCHAIN_BENCH_HEARTBEAT
/// gives other seconds (0: never).
fn heartbeat() -> Duration {
    Duration::from_secs(
        std::env::var("UPCHAIN_BENCH_HEARTBEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

fn main() {
    let real = std::env::args().any(|a| a == "--real");
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "| nodes | Pods | maxUnavailable | total | overhead per node p50 / p99 | reconcile p50 / p99 | reconciles per node | reads / writes per node | status writes per node, kB written per node, largest | operator CPU per node | Pod lists, Node lists | idle requests (60 s) | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for size in sizes {
        runtime.block_on(run(size, real));
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

/// A quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket).
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= total * q)
        .map_or(f64::NAN, |b| b.0)
}

fn lists(requests: &BTreeMap<(Verb, String), u64>, resource: &str) -> u64 {
    requests
        .get(&(Verb::List, resource.to_owned()))
        .copied()
        .unwrap_or(0)
}

fn delta(
    after: &BTreeMap<(Verb, String), u64>,
    before: &BTreeMap<(Verb, String), u64>,
) -> BTreeMap<(Verb, String), u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// A histogram bucket's upper bound in milliseconds; past the last one (the operator's
/// largest bucket is 8.192 s), "over" it.
fn bucket(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("≤{:.0} ms", seconds * 1000.0)
    } else {
        "over 8192 ms".to_owned()
    }
}

fn human(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

/// The cluster a run upgrades: the simulator, or a real control plane and the node player.
enum Cluster {
    Simulated(Sim),
    Real {
        // Dropped first: the player stops before its API server does.
        player: NodePlayer,
        _control_plane: ControlPlane,
    },
}

impl Cluster {
    async fn start(
        size: usize,
        real: bool,
        dir: &std::path::Path,
    ) -> (Self, Client, std::path::PathBuf) {
        let control_planes = 3;
        let workers = size - control_planes;
        let kubeconfig = dir.join("kubeconfig");
        if real {
            let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let control_plane = ControlPlane::start(&ControlPlane::script(&repo), true)
                .expect("a real control plane");
            std::fs::copy(control_plane.kubeconfig(), &kubeconfig).unwrap();
            let client = control_plane.client().await.unwrap();
            upchain_operator::install::crd_and_runner_prerequisites(&client)
                .await
                .unwrap();
            let player = NodePlayer::start(
                client.clone(),
                PlayerConfig {
                    control_planes,
                    workers,
                    upgrade_time: Duration::ZERO,
                    restart_time: Duration::ZERO,
                    ..PlayerConfig::default()
                },
            )
            .await
            .expect("the node player registers the nodes");
            let cluster = Cluster::Real {
                player,
                _control_plane: control_plane,
            };
            return (cluster, client, kubeconfig);
        }
        let sim = Sim::start(SimConfig {
            control_planes,
            workers,
            workloads: false,
            filler_pods_per_node: pods_per_node(),
            behaviour: Behaviour {
                upgrade_time: Duration::ZERO,
                restart_time: Duration::ZERO,
                pod_start_time: Duration::ZERO,
                pod_stop_time: Duration::ZERO,
                // As real kubelets post status: the operator must not wake for it.
                heartbeat: heartbeat(),
            },
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        assert!(
            sim.settled(Duration::from_secs(600)).await,
            "filler Pods never started"
        );
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let client = upchain_operator::install::simulated_cluster_client(&sim.url())
            .await
            .unwrap();
        (Cluster::Simulated(sim), client, kubeconfig)
    }

    /// Requests served so far, by verb and resource: only the simulator counts them.
    fn requests(&self) -> Option<BTreeMap<(Verb, String), u64>> {
        match self {
            Cluster::Simulated(sim) => Some(sim.requests()),
            Cluster::Real { .. } => None,
        }
    }

    /// Seconds from the last node of a batch coming back Ready to the next batch's first
    /// cordon, sorted.
    fn overheads(&self) -> Vec<f64> {
        let mut overheads: Vec<f64> = match self {
            Cluster::Simulated(sim) => {
                let rejoins = sim.rejoins();
                sim.cordons()
                    .iter()
                    .filter(|m| m.nodes.iter().filter(|n| n.unschedulable).count() == 1)
                    .filter_map(|m| {
                        let freed = rejoins.iter().map(|r| r.1).filter(|t| *t <= m.at).max()?;
                        Some(m.at.duration_since(freed).as_secs_f64())
                    })
                    .collect()
            }
            Cluster::Real { player, .. } => {
                let rejoins: Vec<Timestamp> = player.rejoins().into_iter().map(|r| r.1).collect();
                let cordons: Vec<Timestamp> = player.cordons().into_iter().map(|c| c.1).collect();
                // The first cordon after each rejoin starts the next batch.
                cordons
                    .iter()
                    .enumerate()
                    .filter_map(|(i, at)| {
                        let freed = rejoins.iter().filter(|t| *t <= at).max()?;
                        let first = i == 0 || cordons[i - 1] < *freed;
                        first.then(|| at.duration_since(*freed).as_secs_f64())
                    })
                    .collect()
            }
        };
        overheads.sort_by(f64::total_cmp);
        overheads
    }
}

async fn run(size: usize, real: bool) {
    let max_unavailable = (size / 100).max(1);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, kubeconfig) = Cluster::start(size, real, dir.path()).await;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let operator = Operator::start(&kubeconfig, &dir.path().join("operator.log")).await;
    // Let it fill its caches, then count only the run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "{size} nodes: operator RSS after filling its caches {}",
        operator.peak_rss()
    );
    let before = cluster.requests();
    let reconciles_before = operator.counter("upchain_reconciles_total");
    let cpu_before = operator.cpu_seconds();
    let started = Instant::now();
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "scale"},
        // The prepare checks run a batch's worth at a time, as a large cluster's would:
        // at the default 5, a 5,000-node preflight alone takes over half an hour.
        "spec": {"targetVersion": "1.35.2", "soak": "0s", "nodes": {"maxUnavailable": max_unavailable},
                 "runner": {"prepareConcurrency": max_unavailable.clamp(5, 100)},
                 "snapshotWaiver": {"reason": "the benchmark measures the nodes"}}});
    let writes = support::upgrade(&client, "scale", &object, Duration::from_secs(7200)).await;
    let total = started.elapsed();
    let cpu = operator.cpu_seconds() - cpu_before;
    let during = cluster
        .requests()
        .zip(before)
        .map(|(after, before)| delta(&after, &before));
    let reconciles = operator.counter("upchain_reconciles_total") - reconciles_before;
    // Idle: the run Succeeded and stays in the cluster while the kubelets post status
    // every 10 s; nothing should be asked of the API server. The last reconcile's tail
    // (its Events, and the one reconcile its own status write wakes) settles first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_before = cluster.requests();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // All of them, and how many of those renewed a watch (each ends after about 290 s).
    let idle_requests: Option<(u64, u64)> =
        cluster.requests().zip(idle_before).map(|(after, before)| {
            let during = delta(&after, &before);
            for ((verb, resource), n) in during.iter().filter(|(_, n)| **n > 0) {
                eprintln!("{size} nodes: idle request: {n} {verb:?} {resource}");
            }
            let watches = during
                .iter()
                .filter(|((verb, _), _)| *verb == Verb::Watch)
                .map(|(_, n)| n)
                .sum();
            (during.values().sum(), watches)
        });
    let overheads = cluster.overheads();
    let metrics = operator.scrape();
    let reconcile_p50 = histogram_quantile(&metrics, "upchain_reconcile_duration_seconds", 0.5);
    let reconcile_p99 = histogram_quantile(&metrics, "upchain_reconcile_duration_seconds", 0.99);
    let rss = operator.peak_rss();
    let per_node = |n: u64| n as f64 / size as f64;
    let counted = |during: &BTreeMap<(Verb, String), u64>, read: bool| -> u64 {
        during
            .iter()
            .filter(|((verb, _), _)| matches!(verb, Verb::Get | Verb::List | Verb::Watch) == read)
            .map(|(_, n)| n)
            .sum()
    };
    let not_counted = || "n/a".to_owned();
    let requests = during.as_ref().map_or_else(not_counted, |d| {
        format!(
            "{:.1} / {:.1}",
            per_node(counted(d, true)),
            per_node(counted(d, false))
        )
    });
    let lists = during.as_ref().map_or_else(not_counted, |d| {
        format!("{}, {}", lists(d, "pods"), lists(d, "nodes"))
    });
    let idle_requests = idle_requests.map_or_else(not_counted, |(all, watches)| {
        if watches == 0 {
            all.to_string()
        } else {
            format!("{all} ({watches} watches renewed)")
        }
    });
    println!(
        "| {size}{} | {pods} | {max_unavailable} | {} | {:.0} / {:.0} ms | {} / {} | {:.1} | {requests} | {:.1}, {:.1} kB, {:.1} kB | {:.1} ms | {lists} | {idle_requests} | {rss} |",
        if real { " (real)" } else { "" },
        human(total),
        quantile(&overheads, 0.5) * 1000.0,
        quantile(&overheads, 0.99) * 1000.0,
        bucket(reconcile_p50),
        bucket(reconcile_p99),
        reconciles / size as f64,
        per_node(writes.count),
        per_node(writes.bytes) / 1000.0,
        writes.largest as f64 / 1000.0,
        cpu * 1000.0 / size as f64,
    );
    drop(operator);
}
