//! The real `upchain run` binary against the simulated cluster: what the cluster looks
//! like afterwards, not which calls were made. The simulator runs in the test so that
//! tests can inject node and Job faults and read its record of where each Pod ran.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use serde_json::json;
use upchain_api::{K8sUpgrade, Phase};
use upchain_sim::controllers::Behaviour;
use upchain_sim::{Sim, SimConfig};

/// One `upchain run` process; its log goes to a file in the test's directory.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// The operator's /metrics, scraped over HTTP at the address it logged.
    fn metrics(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = log
                .lines()
                .find_map(|l| l.split("metrics on http://").nth(1))
                .and_then(|rest| rest.split('/').next())
            {
                break addr.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no metrics address in {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stream = std::net::TcpStream::connect(&addr).expect("metrics server");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    fn leads(&self) -> bool {
        self.metrics().lines().any(|l| l == "upchain_leader 1")
    }
}

impl Drop for Operator {
    /// SIGKILL: the operator stops as a crash would, in the middle of whatever it was doing.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    sim: Sim,
    client: Client,
    dir: tempfile::TempDir,
    operator: Option<Operator>,
}

impl Cluster {
    /// Starts `upchain run` as a single replica, without leader election.
    fn start_controller(&mut self) {
        self.operator = Some(self.spawn_operator("single", &["--leader-election", "false"]));
    }

    fn spawn_operator(&self, identity: &str, args: &[&str]) -> Operator {
        let kubeconfig = self.dir.path().join("kubeconfig");
        if !kubeconfig.exists() {
            self.sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        }
        let log = self
            .dir
            .path()
            .join(format!("{identity}-{}.log", fastrand::u32(..)));
        let child = Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args([
                "--log",
                "upchain_operator=info",
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .env("POD_NAME", identity)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("upchain starts");
        Operator { child, log }
    }

    fn kill_controller(&mut self) {
        self.operator = None;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Leave the operator's log where a failing test can be diagnosed from.
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    eprintln!("--- {} ---\n{log}", entry.path().display());
                }
            }
        }
    }
}

async fn cluster(control_planes: usize, workers: usize) -> Cluster {
    cluster_with(control_planes, workers, Duration::from_millis(300)).await
}

async fn cluster_with(control_planes: usize, workers: usize, upgrade_time: Duration) -> Cluster {
    let sim = Sim::start(SimConfig {
        control_planes,
        workers,
        behaviour: Behaviour {
            upgrade_time,
            restart_time: Duration::from_millis(300),
            pod_start_time: Duration::from_millis(100),
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    assert!(
        sim.settled(Duration::from_secs(30)).await,
        "workloads never started"
    );
    let mut config = Config::new(sim.url().parse().unwrap());
    config.default_retry = false;
    let client = Client::try_from(config).unwrap();
    upchain_operator::install::crd_and_runner_prerequisites(&client)
        .await
        .expect("CRD, runner namespace, script and SSH Secret");
    let mut cluster = Cluster {
        sim,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        operator: None,
    };
    cluster.start_controller();
    cluster
}

/// Waits until the status satisfies `check` (bounded, on the real clock).
async fn wait_for(
    cluster: &Cluster,
    what: &str,
    check: impl Fn(&upchain_api::K8sUpgradeStatus) -> bool,
) {
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = api
            .get("to-1-35")
            .await
            .expect("get")
            .status
            .unwrap_or_default();
        if check(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn annotate(cluster: &Cluster, key: &str, value: &str) {
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    api.patch(
        "to-1-35",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .expect("annotated");
}

async fn current_status(cluster: &Cluster) -> upchain_api::K8sUpgradeStatus {
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let upgrade = api.get("to-1-35").await.expect("get");
    upgrade.status.expect("status")
}

async fn apply_upgrade(client: &Client, spec: serde_json::Value) {
    let api: Api<K8sUpgrade> = Api::all(client.clone());
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "metadata": {"name": "to-1-35"}, "spec": spec});
    api.patch(
        "to-1-35",
        &PatchParams::apply("test"),
        &Patch::Apply(&object),
    )
    .await
    .expect("upgrade applied");
}

/// Waits for a phase (bounded, on the real clock; the simulated steps take under a second).
async fn wait_for_phase(cluster: &Cluster, want: Phase, within: Duration) -> K8sUpgrade {
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let upgrade = api.get("to-1-35").await.expect("get");
        if upgrade.status.as_ref().and_then(|s| s.phase) == Some(want) {
            return upgrade;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached {want:?}: {:?}",
            upgrade.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant 1, from the simulator's record: no upgrade Pod ever ran on the node it upgrades.
fn assert_no_job_ran_on_its_node(cluster: &Cluster) {
    for placement in cluster.sim.placements() {
        assert_ne!(
            Some(&placement.node),
            placement.upgrades_node.as_ref(),
            "an upgrade Pod ran on the node it upgrades"
        );
    }
}

/// Every node runs v1.35.2 and none is left cordoned.
fn assert_every_node_upgraded(cluster: &Cluster) {
    for node in cluster.sim.objects("nodes") {
        assert_eq!(kubelet(&node), "v1.35.2", "{}", node["metadata"]["name"]);
        assert_ne!(
            node["spec"]["unschedulable"], true,
            "{} left cordoned",
            node["metadata"]["name"]
        );
    }
}

fn assert_nothing_cordoned(cluster: &Cluster) {
    for node in cluster.sim.objects("nodes") {
        assert_ne!(
            node["spec"]["unschedulable"], true,
            "{} is cordoned",
            node["metadata"]["name"]
        );
    }
}

fn kubelet(node: &serde_json::Value) -> &str {
    node["status"]["nodeInfo"]["kubeletVersion"]
        .as_str()
        .unwrap_or_default()
}

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

async fn deleting_mid_run(params: kube::api::DeleteParams) {
    let cluster = cluster_with(1, 2, Duration::from_secs(2)).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "cp-1 upgrading", |s| {
        s.current_step == Some(upchain_api::NodeStep::Upgrading)
    })
    .await;
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    api.delete("to-1-35", &params).await.expect("delete");
    // Held by the finalizer while the node's Job runs; the node stays cordoned meanwhile.
    let held = api.get("to-1-35").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.get_opt("to-1-35").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the finalizer never let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes = cluster.sim.objects("nodes");
    let cp = nodes
        .iter()
        .find(|n| n["metadata"]["name"] == "cp-1")
        .expect("cp-1");
    assert_eq!(
        kubelet(cp),
        "v1.35.2",
        "the running Job was allowed to finish"
    );
    assert!(
        nodes.iter().all(|n| n["spec"]["unschedulable"] != true),
        "a node was left cordoned"
    );
    assert!(
        nodes
            .iter()
            .filter(|n| n["metadata"]["name"] != "cp-1")
            .all(|n| kubelet(n) == "v1.34.2"),
        "nothing else was started"
    );
    assert!(
        cluster.sim.objects("jobs.batch").is_empty(),
        "the run's finished Jobs went with it"
    );
    assert_no_job_ran_on_its_node(&cluster);
}

async fn apply_named(client: &Client, name: &str, spec: serde_json::Value) {
    let api: Api<K8sUpgrade> = Api::all(client.clone());
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("test"), &Patch::Apply(&object))
        .await
        .expect("applied");
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
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    nodes
        .patch_status(
            "cp-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kubeletVersion": "v1.35.2"}}})),
        )
        .await
        .expect("cp-1 at the target");
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

/// The Secret `upchain-system/slack` whose key `url` is the simulator's webhook.
async fn create_webhook_secret(cluster: &Cluster) {
    let webhook: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "slack", "namespace": "upchain-system"},
        "stringData": {"url": cluster.sim.webhook_url()}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(cluster.client.clone(), "upchain-system")
        .create(&Default::default(), &webhook)
        .await
        .expect("webhook secret");
}

/// Helm's release Secret for one revision, as Helm 3 labels it.
fn helm_release(revision: u32, status: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({
        "metadata": {"name": format!("sh.helm.release.v1.web.v{revision}"), "namespace": "default",
                     "labels": {"owner": "helm", "name": "web", "status": status, "version": revision.to_string()}},
        "type": "helm.sh/release.v1",
        "data": {"release": "H4sIAAAAAAAA"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gates_block_with_every_reason_touch_nothing_and_clear_by_themselves() {
    let cluster = cluster(1, 2).await;
    let client = &cluster.client;
    // Four causes at once: a firing alert, a pending Helm release, a removed API still in
    // use, and a node whose containerd is too old for 1.35.
    cluster.sim.surroundings().alerts = vec![
        ("KubeNodeNotReady".into(), "firing".into()),
        ("Watchdog".into(), "firing".into()),
    ];
    // Enough further alerts that the Blocked Event's text is over the 1,024 bytes a real
    // API server takes in an Event note.
    let noisy: Vec<String> = (0..8)
        .map(|i| format!("NodeFilesystemWillFillWithinFourHours{i}"))
        .collect();
    for name in &noisy {
        cluster
            .sim
            .surroundings()
            .alerts
            .push((name.clone(), "firing".into()));
    }
    cluster.sim.surroundings().deprecated_apis = vec![(
        "flowcontrol.apiserver.k8s.io".into(),
        "v1beta3".into(),
        "flowschemas".into(),
        "1.32".into(),
    )];
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    secrets
        .create(&Default::default(), &helm_release(1, "deployed"))
        .await
        .expect("release v1");
    secrets
        .create(&Default::default(), &helm_release(2, "pending-upgrade"))
        .await
        .expect("release v2");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let runtime = |version: &str| {
        Patch::Merge(
            json!({"status": {"nodeInfo": {"containerRuntimeVersion": format!("containerd://{version}")}}}),
        )
    };
    nodes
        .patch_status("worker-2", &PatchParams::default(), &runtime("1.6.28"))
        .await
        .expect("old containerd");
    create_webhook_secret(&cluster).await;
    apply_upgrade(client, json!({
        "targetVersion": "1.35.2", "soak": "0s",
        "gates": {"prometheus": {"url": cluster.sim.prometheus_url()}, "helm": true, "recheckInterval": "5s"},
        "notify": {"webhookSecret": {"namespace": "upchain-system", "name": "slack", "key": "url"}}
    })).await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let reasons = blocked.status.expect("status").blocked_reasons;
    let expected = [
        "alert KubeNodeNotReady is firing",
        "flowschemas flowcontrol.apiserver.k8s.io/v1beta3 is still requested and is removed in 1.32",
        "node worker-2 runs containerd 1.6.28, below 1.7.0",
        "Helm release default/web is pending-upgrade at revision 2",
    ];
    for words in expected {
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "missing {words:?} in {reasons:#?}"
        );
    }
    assert_eq!(reasons.len(), expected.len() + noisy.len(), "{reasons:#?}");
    // `kubectl describe` shows the Blocked Event, cut to what the API server takes; the
    // full list is in status.
    // The Event follows the status write that said Blocked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let blocked_event = loop {
        let found = cluster
            .sim
            .objects("events.events.k8s.io")
            .into_iter()
            .find(|e| e["reason"] == "Blocked" && e["regarding"]["name"] == "to-1-35");
        if let Some(event) = found {
            break event;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Blocked Event was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let note = blocked_event["note"].as_str().unwrap_or_default();
    assert!(note.len() <= 1024, "{note}");
    assert!(
        note.contains("alert KubeNodeNotReady is firing")
            && note.ends_with("in the K8sUpgrade's status]"),
        "{note}"
    );
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("k8s_upgrade_blocked{upgrade=\"to-1-35\"} 1"),
        "{exposition}"
    );
    assert_nothing_cordoned(&cluster);
    assert!(cluster.sim.objects("jobs.batch").is_empty(), "no Job");

    // Prometheus going down is a reason of its own, not a pass.
    cluster.sim.surroundings().alerts.clear();
    cluster.sim.surroundings().prometheus_down = true;
    wait_for(&cluster, "Prometheus unreachable", |s| {
        s.blocked_reasons
            .iter()
            .any(|r| r.contains("Prometheus alerts could not be read"))
    })
    .await;
    // Every cause goes; the run starts without anyone touching the object.
    cluster.sim.surroundings().prometheus_down = false;
    cluster.sim.surroundings().deprecated_apis.clear();
    secrets
        .delete("sh.helm.release.v1.web.v2", &Default::default())
        .await
        .expect("rolled back");
    nodes
        .patch_status("worker-2", &PatchParams::default(), &runtime("1.7.24"))
        .await
        .expect("containerd upgraded");
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);

    // One notification per transition, and the webhook's URL is nowhere to be seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let messages = loop {
        let messages = cluster.sim.surroundings().webhook_messages.clone();
        if messages.iter().any(|m| m.contains("succeeded")) || std::time::Instant::now() > deadline
        {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| {
            ["started", "blocked", "succeeded"]
                .into_iter()
                .find(|k| m.contains(&format!("to-1-35 {k}")))
                .unwrap_or("other")
        })
        .collect();
    // Started and succeeded once; blocked once per change of reasons (the causes are
    // removed one at a time, so a recheck may see some of them gone), never repeated.
    assert_eq!(kinds.first(), Some(&"started"), "{messages:#?}");
    assert_eq!(kinds.last(), Some(&"succeeded"), "{messages:#?}");
    assert_eq!(kinds.iter().filter(|k| **k == "started").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "succeeded").count(), 1);
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| *k == "blocked"),
        "{messages:#?}"
    );
    assert!(
        kinds.len() >= 4,
        "blocked, then blocked again with Prometheus down: {messages:#?}"
    );
    assert!(
        messages.windows(2).all(|pair| pair[0] != pair[1]),
        "a notification repeated: {messages:#?}"
    );
    let url = cluster.sim.webhook_url();
    let upgrade = serde_json::to_string(
        &Api::<K8sUpgrade>::all(client.clone())
            .get("to-1-35")
            .await
            .expect("get"),
    )
    .unwrap();
    assert!(!upgrade.contains(&url));
    let events = serde_json::to_string(&cluster.sim.objects("events.events.k8s.io")).unwrap();
    assert!(!events.contains(&url));
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("upchain_notifications_total{kind=\"succeeded\",result=\"sent\"} 1"),
        "{exposition}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upchain_check_explains_a_blocked_cluster_and_changes_nothing() {
    let mut cluster = cluster(1, 2).await;
    cluster.kill_controller();
    cluster.sim.surroundings().alerts = vec![("KubeNodeNotReady".into(), "firing".into())];
    let kubeconfig = cluster.dir.path().join("kubeconfig");
    cluster
        .sim
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig");
    let spec = cluster.dir.path().join("upgrade.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata:\n  name: x\nspec:\n  targetVersion: 1.35.2\n  gates:\n    prometheus:\n      url: {}\n",
            cluster.sim.prometheus_url()
        ),
    )
    .unwrap();
    let check = |target: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args(["check", "--target", target, "--spec"])
            .arg(&spec)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("upchain check runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = tokio::task::block_in_place(|| check("1.35.2"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("BLOCK alerts"), "{text}");
    assert!(text.contains("alert KubeNodeNotReady is firing"), "{text}");
    assert!(text.contains("PASS  nodes"), "{text}");
    cluster.sim.surroundings().alerts.clear();
    let (code, text) = tokio::task::block_in_place(|| check("1.35.2"));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = tokio::task::block_in_place(|| check("1.37.0"));
    assert_eq!(code, Some(2), "{text}");
    assert_nothing_cordoned(&cluster);
    assert!(cluster.sim.objects("jobs.batch").is_empty());
}

/// The cluster's etcd backup CronJob; `outcome` is how the simulator ends its Pods.
fn etcd_backup(outcome: &str) -> serde_json::Value {
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "etcd-backup", "namespace": "kube-system"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {upchain_sim::controllers::OUTCOME_ANNOTATION: outcome}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "backup", "image": "registry.k8s.io/etcd:3.5.21-0",
                     "command": ["etcdctl", "snapshot", "save", "/backup/snapshot.db"]}]}}}}}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_etcd_snapshot_is_verified_before_the_first_node_and_a_failed_one_blocks() {
    let cluster = cluster(1, 2).await;
    let cron_jobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(cluster.client.clone(), "kube-system");
    let apply_cron_job = |outcome: &'static str| {
        let cron_jobs = cron_jobs.clone();
        async move {
            cron_jobs
                .patch(
                    "etcd-backup",
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(etcd_backup(outcome)),
                )
                .await
                .expect("CronJob")
        }
    };
    apply_cron_job("fail").await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"recheckInterval": "5s"},
               "snapshot": {"namespace": "kube-system", "cronJob": "etcd-backup", "timeout": "1m"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let status = blocked.status.expect("status");
    assert!(
        status.blocked_reasons[0].contains("etcd snapshot Job kube-system/to-1-35-etcd-snapshot-")
            && status.blocked_reasons[0].contains("failed (BackoffLimitExceeded"),
        "{:?}",
        status.blocked_reasons
    );
    assert!(status.nodes.is_empty(), "no node was started");
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(exposition.contains("k8s_upgrade_snapshot_taken{upgrade=\"to-1-35\"} 0"));
    assert_nothing_cordoned(&cluster);

    // The backup is repaired; the next attempt succeeds and the run goes on by itself.
    apply_cron_job("succeed").await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    let status = done.status.expect("status");
    let snapshot = status.snapshot.expect("snapshot record");
    assert!(snapshot.verified && snapshot.attempt >= 2, "{snapshot:?}");
    let first_node = status.nodes.first().expect("a node").started_at.0;
    assert!(snapshot.completed_at.expect("completed").0 <= first_node);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "SnapshotTaken" && c.status == "True")
    );
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("k8s_upgrade_snapshot_taken{upgrade=\"to-1-35\"} 1"),
        "{exposition}"
    );
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_addon_workload_and_quiet_period_gates_block_and_clear() {
    let cluster = cluster(1, 2).await;
    let client = &cluster.client;
    // The addon matrix says the running CoreDNS (1.0) supports Kubernetes up to 1.34.
    let matrix = |max: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "addon-matrix", "namespace": "upchain-system"},
               "data": {"matrix.yaml": format!("addons:\n- name: coredns\n  kind: Deployment\n  namespace: kube-system\n  workload: coredns\n  supports:\n  - version: \"1.0\"\n    maxKubernetes: \"{max}\"\n")}})
    };
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "upchain-system");
    let apply = PatchParams::apply("test").force();
    config_maps
        .patch("addon-matrix", &apply, &Patch::Apply(matrix("1.34")))
        .await
        .expect("matrix");
    // A Deployment that cannot become Available: its Pods fit no node.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let stuck: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "stuck", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stuck"}}, "template": {
            "metadata": {"labels": {"app": "stuck"}},
            "spec": {"nodeSelector": {"disk": "nvme"}, "containers": [{"name": "app", "image": "registry.example.org/app:1.0"}]}}}
    }))
    .unwrap();
    deployments
        .create(&Default::default(), &stuck)
        .await
        .expect("deployment");
    // worker-1 rebooted just now.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    nodes
        .patch_status(
            "worker-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": now}]}})),
        )
        .await
        .expect("recent reboot");
    apply_upgrade(
        client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
               "gates": {"quietPeriod": "15s", "recheckInterval": "5s",
                         "compatibility": {"addonMatrix": {"namespace": "upchain-system", "name": "addon-matrix", "key": "matrix.yaml"}}}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let reasons = blocked.status.expect("status").blocked_reasons;
    for words in [
        "node worker-1 changed Ready",
        "addon coredns runs 1.0",
        "supports Kubernetes up to 1.34",
        "Deployment default/stuck is not Available",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "missing {words:?} in {reasons:#?}"
        );
    }
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(cluster.sim.objects("jobs.batch").is_empty());
    // The addon is declared fit, the broken Deployment goes, and the quiet period runs out.
    config_maps
        .patch("addon-matrix", &apply, &Patch::Apply(matrix("1.35")))
        .await
        .expect("matrix");
    deployments
        .delete("stuck", &Default::default())
        .await
        .expect("delete");
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_node_starts_outside_the_maintenance_window() {
    let cluster = cluster(1, 2).await;
    // A window that opened an hour ago and closed a minute later: the next one is tomorrow.
    let opened = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let start = opened.strftime("%H:%M").to_string();
    let window = |duration: &str| json!({"start": start, "duration": duration, "timeZone": "UTC"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "window": window("1m")}),
    )
    .await;
    wait_for(&cluster, "the run waiting for its window", |s| {
        s.next_window_at.is_some()
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Progressing" && c.reason == "OutsideWindow")
    })
    .await;
    let status = current_status(&cluster).await;
    let opens = status.next_window_at.expect("next window").0;
    let expected = opened + jiff::SignedDuration::from_hours(24);
    assert!(
        (opens.as_second() - expected.as_second()).abs() < 60,
        "{opens} vs {expected}"
    );
    assert!(
        status.nodes.is_empty(),
        "no node started outside the window"
    );
    assert_nothing_cordoned(&cluster);
    // The window is widened to include now: the run starts.
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "window": window("3h")}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(done.status.expect("status").next_window_at.is_none());
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_runner_namespace_blocks_with_what_to_create() {
    let cluster = cluster(1, 2).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "runner": {"namespace": "node-upgrades"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    assert_eq!(
        blocked.status.expect("status").blocked_reasons,
        ["namespace node-upgrades is missing: the node Jobs need it (see spec.runner); create it"]
    );
    assert!(cluster.sim.objects("jobs.batch").is_empty());
    assert_nothing_cordoned(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_plan_waits_for_its_hash_and_a_blackout_holds_it() {
    let cluster = cluster(1, 2).await;
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let blackout = json!({"timeZone": "UTC", "blackouts": [
        {"start": today, "end": today, "reason": "release day"}]});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "approval": "Manual", "window": blackout}),
    )
    .await;
    wait_for(&cluster, "the plan awaiting approval", |s| {
        s.plan_hash.is_some()
            && s.gates.iter().any(|g| g.name == "nodes" && g.passed)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "AwaitingApproval")
    })
    .await;
    let status = current_status(&cluster).await;
    assert_eq!(status.plan.len(), 3, "every node is in the plan");
    assert!(status.nodes.is_empty() && status.started_at.is_none());
    let hash = status.plan_hash.expect("hash");
    annotate(&cluster, "upchain.dev/approve", &hash).await;
    // Approved, but today is blacked out: still nothing starts.
    wait_for(&cluster, "the run held by the blackout", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.reason == "InBlackout" && c.message.contains("release day")
        })
    })
    .await;
    assert_nothing_cordoned(&cluster);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "approval": "Manual"}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_eq!(
        done.status.expect("status").approved_plan_hash.as_deref(),
        Some(hash.as_str())
    );
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_preview_names_the_budget_a_drain_waits_on() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let cluster = cluster(1, 2).await;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), "apps");
    let set_min_available = |n: i32| {
        let budgets = budgets.clone();
        async move {
            budgets
                .patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"minAvailable": n}})),
                )
                .await
                .expect("budget patched");
        }
    };
    // Every web replica must stay: the budget allows no disruption.
    set_min_available(3).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "a drain waiting on apps/web", |s| {
        s.nodes.iter().any(|n| {
            n.waiting_for_budgets == ["apps/web"]
                && n.drain_preview
                    .as_ref()
                    .is_some_and(|p| p.blocked_by == ["apps/web"] && p.evict_count > 0)
                && n.message.as_deref().is_some_and(|m| m.contains("apps/web"))
        })
    })
    .await;
    let status = current_status(&cluster).await;
    let control_plane = &status.nodes[0];
    let preview = control_plane
        .drain_preview
        .as_ref()
        .expect("every node gets a preview");
    assert!(preview.blocked_by.is_empty(), "{preview:?}");
    // Events follow the status write that carries their transition.
    let blocked_preview = || {
        cluster.sim.objects("events.events.k8s.io").iter().any(|e| {
            e["reason"] == "DrainPreview"
                && e["type"] == "Warning"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("apps/web allow no disruption"))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !blocked_preview() {
        assert!(
            std::time::Instant::now() < deadline,
            "no DrainPreview Event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_min_available(2).await;
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
}

/// A CephCluster custom resource, as Rook serves it, reporting `health`.
async fn ceph_cluster(client: &Client, health: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "cephclusters.ceph.rook.io"},
        "spec": {"group": "ceph.rook.io", "scope": "Namespaced",
            "names": {"kind": "CephCluster", "plural": "cephclusters", "singular": "cephcluster"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("CRD");
    crds.patch(
        "cephclusters.ceph.rook.io",
        &PatchParams::apply("test"),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applied");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ceph.rook.io", "v1", "CephCluster"),
        "cephclusters",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "rook-ceph", &resource);
    let object = json!({"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
        "metadata": {"name": "rook-ceph", "namespace": "rook-ceph"},
        "status": {"ceph": {"health": health}}});
    api.patch(
        "rook-ceph",
        &PatchParams::apply("test"),
        &Patch::Apply(&object),
    )
    .await
    .expect("CephCluster applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_cel_health_check_blocks_with_its_reason_and_a_passing_one_lets_the_run_through()
{
    let cluster = cluster(1, 2).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "rook-ceph"}})).unwrap(),
        )
        .await
        .expect("namespace");
    ceph_cluster(&cluster.client, "HEALTH_WARN").await;
    let check = json!({"name": "ceph", "apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
        "namespace": "rook-ceph", "objectName": "rook-ceph",
        "expression": "self.status.ceph.health == 'HEALTH_OK'", "timeout": "0s"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "gates": {"healthChecks": [check], "recheckInterval": "5s"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let status = blocked.status.expect("status");
    assert_eq!(
        status.blocked_reasons,
        ["health check ceph: CephCluster rook-ceph/rook-ceph: \
          `self.status.ceph.health == 'HEALTH_OK'` is false"]
    );
    assert!(status.nodes.is_empty());
    assert_nothing_cordoned(&cluster);
    ceph_cluster(&cluster.client, "HEALTH_OK").await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(
        done.status
            .expect("status")
            .gates
            .iter()
            .any(|g| g.name == "healthCheck/ceph" && g.passed)
    );
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_node_is_silenced_in_alertmanager_while_upgraded_even_across_an_operator_kill() {
    let mut cluster = cluster_with(1, 2, Duration::from_secs(2)).await;
    let silences = json!({"alertmanagerUrl": cluster.sim.alertmanager_url(),
        "extendBy": "1m", "maxDuration": "10m"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"silences": silences}}),
    )
    .await;
    wait_for(&cluster, "a node upgrading under a silence", |s| {
        s.current_step == Some(upchain_api::NodeStep::Upgrading) && !s.silences.is_empty()
    })
    .await;
    cluster.kill_controller();
    let killed_at = jiff::Timestamp::now();
    let record = current_status(&cluster).await.silences[0].clone();
    {
        let held = cluster.sim.surroundings().silences.clone();
        let silence = held
            .iter()
            .find(|s| s.id == record.id)
            .expect("in Alertmanager");
        assert!(!silence.expired);
        let matchers = silence.matchers.to_string();
        assert!(
            matchers.contains(&format!(r#""value":"{}""#, record.node)),
            "{matchers}"
        );
        assert!(matchers.contains("KubeNodeNotReady"), "{matchers}");
        // What a dead operator leaves ends by itself within extendBy.
        assert!(silence.ends_at <= killed_at + jiff::SignedDuration::from_secs(61));
    }
    cluster.start_controller();
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(done.status.expect("status").silences.is_empty());
    let held = cluster.sim.surroundings().silences.clone();
    let mut silenced: Vec<String> = Vec::new();
    for silence in &held {
        assert!(silence.expired, "{silence:?} was not expired");
        for end in &silence.extensions {
            assert!(*end <= silence.created_at + jiff::SignedDuration::from_secs(10 * 60));
        }
        let node = silence
            .matchers
            .as_array()
            .and_then(|m| m.last())
            .expect("node matcher");
        silenced.push(node["value"].as_str().unwrap_or_default().to_owned());
    }
    silenced.sort();
    silenced.dedup();
    assert_eq!(silenced, ["cp-1", "worker-1", "worker-2"]);
    let reasons: Vec<String> = cluster
        .sim
        .objects("events.events.k8s.io")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(reasons.iter().any(|r| r == "Silenced"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "SilenceExpired"), "{reasons:?}");
    assert_every_node_upgraded(&cluster);
}

fn hook(outcome: &str) -> serde_json::Value {
    json!({"namespace": "default", "timeout": "1m", "template": {"spec": {"backoffLimit": 0,
        "template": {"metadata": {"annotations": {"sim.upchain.dev/outcome": outcome}},
            "spec": {"restartPolicy": "Never",
                "containers": [{"name": "hook", "image": "registry.example.org/hook:1"}]}}}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_before_and_after_and_a_failed_post_hook_fails_the_run_until_retried() {
    let cluster = cluster(1, 2).await;
    let spec = |post: &str| {
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "hooks": {"pre": hook("succeed"), "post": hook(post)}})
    };
    apply_upgrade(&cluster.client, spec("fail")).await;
    let failed = wait_for_phase(&cluster, Phase::Failed, Duration::from_secs(90)).await;
    let status = failed.status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "HookFailed");
    assert!(
        ready.message.contains("post-run hook Job default/"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("upchain.dev/retry"),
        "{}",
        ready.message
    );
    let pre = status
        .hooks
        .iter()
        .find(|h| h.kind == upchain_api::HookKind::Pre)
        .expect("pre hook");
    assert!(pre.succeeded);
    // The pre hook ran before any node was cordoned.
    let first_cordon = cluster
        .sim
        .cordons()
        .first()
        .map(|c| c.at)
        .expect("a cordon");
    let pre_done = pre.completed_at.as_ref().expect("done").0;
    assert!(
        pre_done.as_second() <= first_cordon.as_second(),
        "{pre_done} vs {first_cordon}"
    );
    assert_every_node_upgraded(&cluster);
    // Fixed and retried: the post hook runs again, as attempt 2, and the run succeeds.
    apply_upgrade(&cluster.client, spec("succeed")).await;
    annotate(&cluster, "upchain.dev/retry", "1").await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(60)).await;
    let post = done
        .status
        .expect("status")
        .hooks
        .into_iter()
        .find(|h| h.kind == upchain_api::HookKind::Post)
        .expect("post hook");
    assert!(post.succeeded && post.attempt == 2, "{post:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_times_out_with_force_deletes_what_would_not_leave_and_retries_a_failed_delete()
 {
    let cluster = cluster(1, 2).await;
    // CoreDNS's budget never allows an eviction, and every delete fails for a while.
    cluster
        .sim
        .store()
        .stubborn_pdbs
        .insert("kube-system/coredns".into());
    cluster
        .sim
        .faults()
        .error_rate
        .insert(upchain_sim::server::Verb::Delete, 1.0);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "drain": {"timeout": "10s", "onTimeout": "Force"}}),
    )
    .await;
    // A failed delete is an error of the reconcile, counted and retried, not swallowed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = cluster.operator.as_ref().expect("operator").metrics();
        if metrics
            .lines()
            .any(|l| l.starts_with("upchain_reconcile_errors_total{") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed delete was counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.sim.faults().error_rate.clear();
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}
