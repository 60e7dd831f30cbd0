//! The real `upchain run` binary against the simulated cluster: what the cluster looks
//! like afterwards, not which calls were made. The simulator runs in the test so that
//! tests can inject node and Job faults and read its record of where each Pod ran.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use upchain_api::{K8sUpgrade, Phase};
use upchain_sim::{Sim, SimConfig};

mod analysis;
mod chain;
mod drain;
mod gates;
mod operations;

/// One `upchain run` process; its log goes to a file in the test's directory.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// The operator's /metrics, scraped over HTTP at the address it logged.
    fn metrics(&self) -> String {
        let addr = self.metrics_address();
        let mut stream = std::net::TcpStream::connect(&addr).expect("metrics server");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    /// The `host:port` the operator serves /metrics on, as it logged it.
    fn metrics_address(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = log
                .lines()
                .find_map(|l| l.split("metrics on http://").nth(1))
                .and_then(|rest| rest.split('/').next())
            {
                return addr.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no metrics address in {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    /// Chart values of the installation policy the operator runs under (`--set ...`).
    policy: Vec<String>,
}

impl Cluster {
    /// Starts `upchain run` as a single replica, without leader election.
    fn start_controller(&mut self) {
        self.operator = Some(self.spawn_operator("single", &["--leader-election", "false"]));
    }

    /// Restarts the operator under the policy the chart renders with `values`.
    fn install_with(&mut self, values: &[&str]) {
        self.operator = None;
        self.policy = values.iter().map(|v| (*v).to_owned()).collect();
        self.start_controller();
    }

    /// A kubeconfig for the simulated cluster, written once into the test's directory.
    fn kubeconfig(&self) -> PathBuf {
        let kubeconfig = self.dir.path().join("kubeconfig");
        if !kubeconfig.exists() {
            self.sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        }
        kubeconfig
    }

    fn spawn_operator(&self, identity: &str, args: &[&str]) -> Operator {
        let kubeconfig = self.kubeconfig();
        let log = self
            .dir
            .path()
            .join(format!("{identity}-{}.log", fastrand::u32(..)));
        let policy: Vec<&str> = self.policy.iter().map(String::as_str).collect();
        let child = crate::harness::upchain_run(
            &kubeconfig,
            &log,
            args,
            &[("POD_NAME", identity)],
            &policy,
        );
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
    let (sim, client) = crate::harness::simulated(SimConfig {
        control_planes,
        workers,
        behaviour: crate::harness::timing(
            upgrade_time,
            Duration::from_millis(300),
            Duration::from_millis(100),
        ),
        ..SimConfig::default()
    })
    .await;
    let mut cluster = Cluster {
        sim,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        operator: None,
        policy: Vec::new(),
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

/// The Ready condition of a status.
fn ready(
    status: &upchain_api::K8sUpgradeStatus,
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready")
}

async fn current_status(cluster: &Cluster) -> upchain_api::K8sUpgradeStatus {
    let api: Api<K8sUpgrade> = Api::all(cluster.client.clone());
    let upgrade = api.get("to-1-35").await.expect("get");
    upgrade.status.expect("status")
}

/// A spec without `snapshot` waives it, so that the scenarios not about the snapshot do
/// not wait for one.
async fn apply_upgrade(client: &Client, mut spec: serde_json::Value) {
    if spec.get("snapshot").is_none() && spec.get("snapshotWaiver").is_none() {
        spec["snapshotWaiver"] = json!({"reason": "the scenario is not about the snapshot"});
    }
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

/// Invariant 1, from the simulator's record: no upgrade Pod ever ran on the node it upgrades;
/// and by default a worker's ran on a control-plane node, where the SSH key already is.
fn assert_no_job_ran_on_its_node(cluster: &Cluster) {
    for placement in cluster.sim.placements() {
        assert_ne!(
            Some(&placement.node),
            placement.upgrades_node.as_ref(),
            "an upgrade Pod ran on the node it upgrades"
        );
        if placement
            .upgrades_node
            .as_ref()
            .is_some_and(|n| n.starts_with("worker-"))
        {
            assert!(
                placement.node.starts_with("cp-"),
                "{placement:?}: a worker's Job ran off the control plane"
            );
        }
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

fn hook(outcome: &str) -> serde_json::Value {
    json!({"namespace": "upchain-system", "timeout": "1m", "template": {"spec": {"backoffLimit": 0,
        "template": {"metadata": {"annotations": {"sim.upchain.dev/outcome": outcome}},
            "spec": {"restartPolicy": "Never",
                // The runner namespace enforces Pod Security restricted.
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "hook", "image": "registry.example.org/hook:1",
                    "securityContext": {"allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}}}]}}}}})
}
