//! The node player: kubelets and a scheduler for ANY API server, through a client. A real
//! kube-apiserver with its controller manager has neither, so tests that run upchain
//! against one use this to register Nodes as kubelets do, keep their Leases, bind and run
//! Pods, finish terminating ones, and "run" the node upgrade Jobs by moving their node to
//! the target version. It records where every Pod ran, for the invariant checks.
//!
//! It reuses the simulator's seed (the Node objects) and scheduling rules (node
//! selectors, required affinity, taints, cordons), and talks to the API server only
//! through its public API: status through the status subresource, binding through
//! `pods/binding`, as a kubelet and the scheduler do.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::controllers::Placement;
use crate::seed;

mod kubelets;
use kubelets::Kubelets;

/// Errors the player meets talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum PlayerError {
    /// An object the player made is not what the API expects.
    #[error("{0}")]
    Object(String),
    /// A request failed.
    #[error("{what}: {source}")]
    Api {
        /// What the player was doing.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> PlayerError {
    let what = what.into();
    move |source| PlayerError::Api { what, source }
}

/// The cluster the player plays.
#[derive(Clone, Debug)]
pub struct PlayerConfig {
    /// Control-plane nodes (named cp-1...).
    pub control_planes: usize,
    /// Workers (named worker-1...).
    pub workers: usize,
    /// The kubelets' starting version, such as `v1.34.2`.
    pub version: String,
    /// How long an upgrade Pod runs before its node restarts its kubelet.
    pub upgrade_time: Duration,
    /// How long the node is NotReady while its kubelet restarts.
    pub restart_time: Duration,
    /// How often the player looks at the cluster.
    pub tick: Duration,
    /// Terminating Pods end after their grace period, as on a real node; false ends them
    /// at once, for speed.
    pub honour_grace_period: bool,
    /// Nodes whose upgrade Pods fail (exit 15, kubeadm failed), leaving the node as it was.
    pub failing_nodes: BTreeSet<String>,
    /// Where the API server answers (`host:port`): the API servers' mirror Pods say so,
    /// as kubeadm's do, and upchain asks each one for `/readyz` there.
    pub api_server: Option<String>,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        Self {
            control_planes: 1,
            workers: 2,
            version: "v1.34.2".to_owned(),
            upgrade_time: Duration::from_millis(500),
            restart_time: Duration::from_millis(500),
            tick: Duration::from_millis(100),
            honour_grace_period: false,
            failing_nodes: BTreeSet::new(),
            api_server: None,
        }
    }
}

/// What the player saw and did, shared with the test.
#[derive(Debug, Default)]
pub struct Record {
    /// Every binding, in order.
    pub placements: Vec<Placement>,
    /// Nodes that came back Ready at a new version, and when, in order.
    pub rejoins: Vec<(String, Timestamp)>,
    /// Nodes the player saw become unschedulable, and when, in order.
    pub cordons: Vec<(String, Timestamp)>,
}

/// A running node player; stops when dropped.
#[derive(Debug)]
pub struct NodePlayer {
    record: Arc<Mutex<Record>>,
    /// The passes, the Lease renewals and the two watches feeding the passes.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodePlayer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A cache of every `K` in the cluster, kept by a watch as kubelets and schedulers keep
/// theirs (a list every pass would cost a 1,000-node cluster more than the operator).
async fn watched<K>(
    client: &Client,
    mut observe: impl FnMut(&K) + Send + 'static,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects();
    let task = tokio::spawn(stream.for_each(move |object| {
        if let Ok(object) = object {
            observe(&object);
        }
        std::future::ready(())
    }));
    let _ = reader.wait_until_ready().await;
    (reader, task)
}

impl NodePlayer {
    /// Registers the nodes `config` describes and starts playing their kubelets and the
    /// scheduler.
    pub async fn start(client: Client, config: PlayerConfig) -> Result<Self, PlayerError> {
        let names = seed::node_names(config.control_planes, config.workers);
        let nodes: Api<Node> = Api::all(client.clone());
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        for (index, name) in names.iter().enumerate() {
            let object = seed::node(
                name,
                index,
                index < config.control_planes,
                &config.version,
                &now,
            );
            let node: Node = serde_json::from_value(object.clone())
                .map_err(|e| PlayerError::Object(format!("node {name}: {e}")))?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .map_err(api_error(format!("registering node {name}")))?;
            // Status is the kubelet's to write, through its subresource.
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": object["status"]})),
                )
                .await
                .map_err(api_error(format!("posting node {name}'s status")))?;
        }
        seed_kubeadm(
            &client,
            &names[..config.control_planes],
            &config.version,
            config.api_server.as_deref(),
        )
        .await?;
        let record = Arc::new(Mutex::new(Record::default()));
        let (nodes, node_watch) = watched::<Node>(&client, cordon_recorder(record.clone())).await;
        let (pods, pod_watch) = watched::<Pod>(&client, |_| {}).await;
        let leases = tokio::spawn(renew_leases(client.clone(), names.clone()));
        let mut kubelets = Kubelets::new(client, config, names, record.clone(), (nodes, pods));
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = kubelets.pass().await {
                    tracing::debug!(%error, "node player pass");
                }
                tokio::time::sleep(kubelets.tick()).await;
            }
        });
        Ok(Self {
            record,
            tasks: vec![task, leases, node_watch, pod_watch],
        })
    }

    /// Where every Pod was bound, in order.
    pub fn placements(&self) -> Vec<Placement> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .placements
            .clone()
    }

    /// Nodes that came back Ready at a new version, and when, in order.
    pub fn rejoins(&self) -> Vec<(String, Timestamp)> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rejoins
            .clone()
    }

    /// Nodes seen becoming unschedulable, and when (as the node watch delivered it), in
    /// order.
    pub fn cordons(&self) -> Vec<(String, Timestamp)> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cordons
            .clone()
    }
}

/// What `kubeadm init` and `join` leave: kube-system/kubeadm-config at `version`, and on
/// each control-plane node the kubelet's mirror Pods of etcd, the API server, controller
/// manager and scheduler (the kubelet writes them; bound to their node, owned by it).
async fn seed_kubeadm(
    client: &Client,
    control_planes: &[String],
    version: &str,
    api_server: Option<&str>,
) -> Result<(), PlayerError> {
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "kube-system");
    let config_map = serde_json::from_value(json!({
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": seed::cluster_configuration(version)}}))
    .map_err(|e| PlayerError::Object(format!("kubeadm-config: {e}")))?;
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .map_err(api_error("creating kube-system/kubeadm-config"))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    for node in control_planes {
        let uid = nodes
            .get(node)
            .await
            .map_err(api_error(format!("reading node {node}")))?
            .uid()
            .unwrap_or_default();
        for component in STATIC_COMPONENTS {
            let image = if component == "etcd" {
                "registry.k8s.io/etcd:3.5.21-0".to_owned()
            } else {
                format!("registry.k8s.io/{component}:{version}")
            };
            let mut annotations =
                json!({"kubernetes.io/config.mirror": "0", "kubernetes.io/config.source": "file"});
            if let Some(endpoint) = api_server.filter(|_| component == "kube-apiserver") {
                annotations[seed::ADVERTISE_ANNOTATION] = json!(endpoint);
            }
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{component}-{node}"), "namespace": "kube-system",
                    "labels": {"component": component, "tier": "control-plane"},
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": true}]},
                "spec": {"nodeName": node, "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
                    "containers": [{"name": component, "image": image}]}}))
            .map_err(|e| PlayerError::Object(format!("{component} on {node}: {e}")))?;
            pods.create(&PostParams::default(), &pod)
                .await
                .map_err(api_error(format!(
                    "creating the {component} mirror Pod on {node}"
                )))?;
        }
    }
    Ok(())
}

/// kubeadm's static Pods on a control-plane node.
const STATIC_COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// How often a kubelet renews its node's Lease.
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// Renewals in flight at once: each kubelet renews its own, so they overlap.
const LEASE_RENEWALS_AT_ONCE: usize = 16;

/// Renews every node's Lease in `kube-node-lease` every [`LEASE_RENEWAL`], as each node's
/// kubelet does, beside the passes so that a large cluster's renewals never hold them up.
async fn renew_leases(client: Client, names: Vec<String>) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let now = Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        futures_util::stream::iter(names.iter().cloned())
            .map(|name| {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
                let leases = leases.clone();
                async move {
                    let renewed = leases
                        .patch(&name, &PatchParams::apply("node-player").force(), &Patch::Apply(&lease))
                        .await;
                    if let Err(error) = renewed {
                        tracing::debug!(%error, node = %name, "renewing a node's Lease");
                    }
                }
            })
            .buffer_unordered(LEASE_RENEWALS_AT_ONCE)
            .collect::<()>()
            .await;
        tokio::time::sleep(LEASE_RENEWAL).await;
    }
}

/// Records each node's moving to unschedulable, once per cordon.
fn cordon_recorder(record: Arc<Mutex<Record>>) -> impl FnMut(&Node) + Send + 'static {
    let mut cordoned = BTreeSet::new();
    move |node: &Node| {
        let name = node.name_any();
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !unschedulable {
            cordoned.remove(&name);
        } else if cordoned.insert(name.clone()) {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cordons
                .push((name, Timestamp::now()));
        }
    }
}
