//! Chaos: the operator killed at random instants and replaced, leaders failing over, and
//! an API server that fails, conflicts, lags and drops watches. After every run the
//! simulator's record must show the invariants held at every cordon, and the cluster must
//! have converged. Sizes fit CI; `docs/reliability.md` gives the full-size command.
//!
//! UPCHAIN_CHAOS_SEED replays a run; UPCHAIN_CHAOS_RUNS and UPCHAIN_CHAOS_WORKERS scale it.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use upchain_api::{K8sUpgrade, Phase};
use upchain_operator::controller::{self, LeaseSettings, Settings};
use upchain_operator::metrics::Metrics;
use upchain_sim::server::Verb;
use upchain_sim::{Sim, SimConfig};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of this run, printed so a failure can be replayed.
fn seed(offset: u64) -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        setting(
            "UPCHAIN_CHAOS_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs()),
        )
    });
    let seed = base.wrapping_add(offset);
    eprintln!("chaos seed {seed} (replay: UPCHAIN_CHAOS_SEED={base})");
    seed
}

struct Cluster {
    sim: Sim,
    client: Client,
}

async fn cluster(control_planes: usize, workers: usize, workloads: bool) -> Cluster {
    let (sim, client) = crate::harness::simulated(SimConfig {
        control_planes,
        workers,
        workloads,
        behaviour: crate::harness::timing(
            Duration::from_millis(100),
            Duration::from_millis(100),
            Duration::from_millis(20),
        ),
        ..SimConfig::default()
    })
    .await;
    Cluster { sim, client }
}

async fn apply(client: &Client, max_unavailable: u64) {
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "chaos"},
        "spec": {"targetVersion": "1.35.2", "soak": "0s",
                 "snapshotWaiver": {"reason": "chaos is about the nodes"},
                 "nodes": {"maxUnavailable": max_unavailable}}});
    // The API server may be failing on purpose: retry the test's own write.
    for _ in 0..50 {
        let applied = Api::<K8sUpgrade>::all(client.clone())
            .patch(
                "chaos",
                &PatchParams::apply("test").force(),
                &Patch::Apply(&object),
            )
            .await;
        if applied.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the K8sUpgrade could not be applied");
}

async fn phase(client: &Client) -> Option<Phase> {
    Api::<K8sUpgrade>::all(client.clone())
        .get("chaos")
        .await
        .ok()
        .and_then(|u| u.status)
        .and_then(|s| s.phase)
}

/// Every invariant the simulator's record can show, and convergence.
fn check(cluster: &Cluster, max_unavailable: usize, what: &str) {
    // 1: no upgrade Pod ran on the node it upgrades; and no node upgraded twice.
    let upgraded: Vec<String> = cluster
        .sim
        .placements()
        .into_iter()
        .filter_map(|p| {
            let upgrades = p.upgrades_node?;
            assert_ne!(
                p.node, upgrades,
                "{what}: an upgrade Pod ran on its own node"
            );
            Some(upgrades)
        })
        .collect();
    let mut distinct = upgraded.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        upgraded.len(),
        "{what}: a node that had succeeded got a second Job: {upgraded:?}"
    );
    let cordons = cluster.sim.cordons();
    assert!(!cordons.is_empty(), "{what}: nothing was cordoned");
    let mut worker_seen = false;
    for moment in &cordons {
        let cordoned_cp = moment
            .nodes
            .iter()
            .filter(|n| n.control_plane && n.unschedulable)
            .count();
        let cordoned_workers = moment
            .nodes
            .iter()
            .filter(|n| !n.control_plane && n.unschedulable)
            .count();
        let this = moment.nodes.iter().find(|n| n.name == moment.node).unwrap();
        // 2: control-plane nodes one at a time and all before any worker; at most
        // maxUnavailable workers cordoned at once.
        assert!(
            cordoned_cp <= 1,
            "{what}: two control-plane nodes cordoned: {moment:?}"
        );
        assert!(
            cordoned_cp == 0 || cordoned_workers == 0,
            "{what}: a worker and a control-plane node cordoned together: {moment:?}"
        );
        assert!(
            cordoned_workers <= max_unavailable,
            "{what}: more than {max_unavailable} workers cordoned: {moment:?}"
        );
        worker_seen |= !this.control_plane;
        assert!(
            !(worker_seen && this.control_plane),
            "{what}: a control-plane node cordoned after a worker: {moment:?}"
        );
        // 3: never past a node that is not Ready: the only nodes down are those being
        // worked on (cordoned), never one left behind.
        for node in &moment.nodes {
            assert!(
                node.ready || node.unschedulable,
                "{what}: {} was cordoned while {} was down and released: {moment:?}",
                moment.node,
                node.name
            );
        }
    }
    for node in cluster.sim.objects("nodes") {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"], "v1.35.2",
            "{what}: {name} not upgraded"
        );
        assert_ne!(
            node["spec"]["unschedulable"], true,
            "{what}: {name} left cordoned"
        );
    }
}

async fn until_succeeded(client: &Client, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    while phase(client).await != Some(Phase::Succeeded) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never Succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The controller's settings for the simulated cluster `sim`.
fn settings(sim: &Sim) -> Settings {
    Settings {
        api_server: Some(
            upchain_operator::install::simulated_cluster_config(&sim.url()).expect("the sim's URL"),
        ),
        ..Settings::default()
    }
}

fn spawn_controller(cluster: &Cluster) -> tokio::task::JoinHandle<()> {
    tokio::spawn(controller::run(
        cluster.client.clone(),
        settings(&cluster.sim),
        Arc::new(Metrics::default()),
        std::future::pending(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_random_instants_the_operator_still_converges_safely() {
    let runs = setting("UPCHAIN_CHAOS_RUNS", 5);
    let workers = setting("UPCHAIN_CHAOS_WORKERS", 19) as usize;
    let mut kills = 0;
    for run in 0..runs {
        let mut rng = fastrand::Rng::with_seed(seed(run));
        let max_unavailable = rng.u64(1..=3);
        let cluster = cluster(3, workers, run == 0).await;
        let what = format!("run {run} (maxUnavailable {max_unavailable})");
        apply(&cluster.client, max_unavailable).await;
        let mut operator = spawn_controller(&cluster);
        // Killed without warning at random instants, again and again, until it finishes.
        while phase(&cluster.client).await != Some(Phase::Succeeded) {
            tokio::time::sleep(Duration::from_millis(rng.u64(50..700))).await;
            operator.abort();
            let _ = (&mut operator).await;
            kills += 1;
            operator = spawn_controller(&cluster);
            assert!(kills < 10_000, "{what}: no convergence");
        }
        until_succeeded(&cluster.client, Duration::from_secs(60), &what).await;
        operator.abort();
        check(&cluster, max_unavailable as usize, &what);
    }
    eprintln!("{kills} kills over {runs} runs");
    assert!(
        kills >= 10 * runs,
        "only {kills} kills: the runs were too short to test much"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leaders_fail_over_again_and_again_and_the_run_converges() {
    let mut rng = fastrand::Rng::with_seed(seed(1000));
    let cluster = cluster(3, setting("UPCHAIN_CHAOS_WORKERS", 19) as usize, false).await;
    apply(&cluster.client, 2).await;
    let replica = |n: usize| {
        tokio::spawn(controller::run_with_leader_election(
            cluster.client.clone(),
            settings(&cluster.sim),
            Arc::new(Metrics::default()),
            LeaseSettings {
                name: "upchain-leader".into(),
                namespace: "upchain-system".into(),
                identity: format!("replica-{n}"),
                duration_seconds: 2,
                grace_seconds: 1,
            },
            std::future::pending(),
        ))
    };
    let mut replicas = vec![replica(0), replica(1)];
    let mut next = 2;
    let mut failovers = 0;
    while phase(&cluster.client).await != Some(Phase::Succeeded) {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        // One replica dies without releasing the Lease; a new one joins.
        let victim = rng.usize(0..replicas.len());
        replicas.remove(victim).abort();
        replicas.push(replica(next));
        next += 1;
        failovers += 1;
        assert!(failovers < 500, "no convergence");
    }
    for task in replicas {
        task.abort();
    }
    eprintln!("{failovers} replica deaths");
    check(&cluster, 2, "failover");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_that_fails_conflicts_lags_and_drops_watches_does_not_stop_it() {
    let cluster = cluster(1, 6, true).await;
    {
        let mut faults = cluster.sim.faults();
        *faults = upchain_sim::server::Faults::none(seed(2000));
        for verb in [
            Verb::Get,
            Verb::List,
            Verb::Create,
            Verb::Update,
            Verb::Patch,
            Verb::Delete,
        ] {
            faults.error_rate.insert(verb, 0.05);
            faults.latency.insert(verb, Duration::from_millis(20));
        }
        faults.conflict_rate = 0.05;
        faults.drop_watches_after = Some(Duration::from_secs(3));
    }
    apply(&cluster.client, 2).await;
    let operator = spawn_controller(&cluster);
    until_succeeded(&cluster.client, Duration::from_secs(240), "faults").await;
    operator.abort();
    *cluster.sim.faults() = upchain_sim::server::Faults::none(0);
    check(&cluster, 2, "faults");
}
