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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::controllers::{OUTCOME_ANNOTATION, Placement, could_schedule};
use crate::seed;

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
        seed_kubeadm(&client, &names[..config.control_planes], &config.version).await?;
        let record = Arc::new(Mutex::new(Record::default()));
        let (nodes, node_watch) = watched::<Node>(&client, cordon_recorder(record.clone())).await;
        let (pods, pod_watch) = watched::<Pod>(&client, |_| {}).await;
        let mut kubelets = Kubelets {
            nodes,
            pods,
            client,
            config,
            names,
            record: record.clone(),
            upgrades: BTreeMap::new(),
            finished_upgrades: BTreeSet::new(),
            load: BTreeMap::new(),
        };
        let leases = tokio::spawn(renew_leases(
            kubelets.client.clone(),
            kubelets.names.clone(),
        ));
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = kubelets.pass().await {
                    tracing::debug!(%error, "node player pass");
                }
                tokio::time::sleep(kubelets.config.tick).await;
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
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{component}-{node}"), "namespace": "kube-system",
                    "labels": {"component": component, "tier": "control-plane"},
                    "annotations": {"kubernetes.io/config.mirror": "0", "kubernetes.io/config.source": "file"},
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

/// A Pod by (namespace, name).
type PodSlot = (String, String);

/// An upgrade Pod's node, its target and where it is.
#[derive(Clone, Debug)]
struct Upgrade {
    node: String,
    version: String,
    stage: UpgradeStage,
}

/// Where an upgrade Pod's node is in its upgrade.
#[derive(Clone, Copy, Debug)]
enum UpgradeStage {
    /// The script runs; the node is still Ready.
    Running { until: Timestamp },
    /// The kubelet restarts; the node is NotReady.
    Restarting { until: Timestamp },
}

struct Kubelets {
    /// Every Node and Pod, as the watches last saw them: a pass may act on a change it
    /// made itself a moment ago, which the API's answers (404, 409) make harmless.
    nodes: Store<Node>,
    pods: Store<Pod>,
    client: Client,
    config: PlayerConfig,
    names: Vec<String>,
    record: Arc<Mutex<Record>>,
    /// Upgrade Pods in progress.
    upgrades: BTreeMap<PodSlot, Upgrade>,
    /// Job Pods played to their end.
    finished_upgrades: BTreeSet<PodSlot>,
    /// Pods on each node, counted at the start of a pass.
    load: BTreeMap<String, usize>,
}

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

impl Kubelets {
    /// One look at the cluster: scheduling, running, finishing, upgrades.
    async fn pass(&mut self) -> Result<(), PlayerError> {
        let pods = self.pods.state();
        let unbound = |p: &Pod| p.spec.as_ref().is_none_or(|s| s.node_name.is_none());
        // Every node is looked at only when something waits to be scheduled.
        let nodes: Vec<Value> = if pods
            .iter()
            .any(|p| unbound(p) && p.metadata.deletion_timestamp.is_none())
        {
            self.nodes
                .state()
                .iter()
                .filter_map(|n| serde_json::to_value(n.as_ref()).ok())
                .collect()
        } else {
            Vec::new()
        };
        let ours: BTreeSet<String> = self.names.iter().cloned().collect();
        self.load.clear();
        for pod in &pods {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                *self.load.entry(node).or_default() += 1;
            }
        }
        for pod in pods.iter().map(AsRef::as_ref) {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let job_pod = pod.owner_references().iter().any(|o| o.kind == "Job");
            if pod.metadata.deletion_timestamp.is_none()
                && !unbound(pod)
                && (matches!(phase, Some("Succeeded" | "Failed"))
                    || (phase == Some("Running") && !job_pod))
            {
                continue;
            }
            let value = serde_json::to_value(pod).unwrap_or_default();
            let node_name = value["spec"]["nodeName"].as_str().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                if ours.contains(node_name) || node_name.is_empty() {
                    self.finish_terminating(pod).await?;
                }
                continue;
            }
            if node_name.is_empty() {
                self.schedule(pod, &value, &nodes).await?;
                continue;
            }
            if !ours.contains(node_name) {
                continue;
            }
            let node = self
                .nodes
                .get(&ObjectRef::new(node_name))
                .and_then(|n| serde_json::to_value(n.as_ref()).ok())
                .unwrap_or(Value::Null);
            self.run(pod, &value, &node).await?;
        }
        self.advance_upgrades().await
    }

    /// Binds a pending Pod to the least loaded feasible node, as the scheduler would.
    async fn schedule(
        &mut self,
        pod: &Pod,
        value: &Value,
        nodes: &[Value],
    ) -> Result<(), PlayerError> {
        let tolerations = &value["spec"]["tolerations"];
        let tolerates = |key: &str| {
            tolerations.as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["operator"] == "Exists" && (t["key"].is_null() || t["key"] == key))
            })
        };
        let feasible: Vec<&Value> = nodes
            .iter()
            .filter(|n| self.names.iter().any(|name| n["metadata"]["name"] == *name))
            .filter(|n| node_ready(n) || tolerates("node.kubernetes.io/not-ready"))
            .filter(|n| {
                n["spec"]["unschedulable"] != true || tolerates("node.kubernetes.io/unschedulable")
            })
            .filter(|n| could_schedule(value, n))
            .collect();
        // Least loaded first, as the default scheduler spreads.
        let load = |n: &Value| {
            let name = n["metadata"]["name"].as_str().unwrap_or_default();
            self.load.get(name).copied().unwrap_or(0)
        };
        let Some(node) = feasible.into_iter().min_by_key(|n| load(n)) else {
            return Ok(());
        };
        let node_name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = pod.namespace().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name_any()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node_name.clone()),
                ..ObjectReference::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let bound: Result<Value, _> = pods
            .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
            .await;
        // A Pod bound meanwhile (or gone) answers 409 or 404: the next pass sees it.
        if bound.is_err() {
            return Ok(());
        }
        *self.load.entry(node_name.clone()).or_default() += 1;
        let upgrades_node =
            env(value, "NODE_NAME").filter(|_| env(value, "MODE").as_deref() != Some("prepare"));
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .placements
            .push(Placement {
                namespace,
                pod: pod.name_any(),
                node: node_name,
                labels: pod.labels().clone(),
                upgrades_node,
                at: Timestamp::now(),
            });
        Ok(())
    }

    /// Starts a bound Pod on a Ready node, and plays the Job Pods to their end.
    async fn run(&mut self, pod: &Pod, value: &Value, node: &Value) -> Result<(), PlayerError> {
        let phase = value["status"]["phase"].as_str().unwrap_or("Pending");
        let slot = (pod.namespace().unwrap_or_default(), pod.name_any());
        if matches!(phase, "Succeeded" | "Failed") {
            return Ok(());
        }
        if phase == "Pending" {
            if !node_ready(node) {
                return Ok(());
            }
            self.set_pod_status(&slot, value, "Running", None, node)
                .await?;
            return Ok(());
        }
        let job_pod = pod.owner_references().iter().any(|o| o.kind == "Job");
        if !job_pod || self.upgrades.contains_key(&slot) || self.finished_upgrades.contains(&slot) {
            return Ok(());
        }
        match (
            env(value, "NODE_NAME"),
            env(value, "TARGET_VERSION"),
            env(value, "MODE"),
        ) {
            (Some(target_node), Some(version), mode) if mode.as_deref() != Some("prepare") => {
                if env(value, "FIRST_CONTROL_PLANE").as_deref() == Some("true") {
                    self.apply_kubeadm(&version).await?;
                }
                let until = later(self.config.upgrade_time);
                self.upgrades.insert(
                    slot,
                    Upgrade {
                        node: target_node,
                        version,
                        stage: UpgradeStage::Running { until },
                    },
                );
            }
            _ => {
                let outcome = pod
                    .annotations()
                    .get(OUTCOME_ANNOTATION)
                    .map(String::as_str);
                if outcome == Some("hang") {
                    return Ok(());
                }
                let code = if outcome == Some("fail") { 1 } else { 0 };
                self.set_pod_status(
                    &slot,
                    value,
                    if code == 0 { "Succeeded" } else { "Failed" },
                    Some(code),
                    node,
                )
                .await?;
                self.finished_upgrades.insert(slot);
            }
        }
        Ok(())
    }

    /// Moves each upgrade along: the script runs, the kubelet restarts (NotReady), and the
    /// node comes back Ready at the target; then the Pod succeeds.
    async fn advance_upgrades(&mut self) -> Result<(), PlayerError> {
        let now = Timestamp::now();
        let due: Vec<(PodSlot, Upgrade)> = self
            .upgrades
            .iter()
            .filter(|(_, upgrade)| match upgrade.stage {
                UpgradeStage::Running { until } | UpgradeStage::Restarting { until } => {
                    until <= now
                }
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let nodes: Api<Node> = Api::all(self.client.clone());
        for (
            slot,
            Upgrade {
                node,
                version,
                stage,
            },
        ) in due
        {
            if self.config.failing_nodes.contains(&node) {
                self.end_upgrade_pod(&slot, "Failed", 15).await?;
                self.upgrades.remove(&slot);
                self.finished_upgrades.insert(slot);
                continue;
            }
            match stage {
                UpgradeStage::Running { .. } => {
                    self.set_node_ready(&nodes, &node, false, None).await?;
                    let until = later(self.config.restart_time);
                    self.upgrades.insert(
                        slot,
                        Upgrade {
                            node,
                            version,
                            stage: UpgradeStage::Restarting { until },
                        },
                    );
                }
                UpgradeStage::Restarting { .. } => {
                    let kubelet = if version.starts_with('v') {
                        version.clone()
                    } else {
                        format!("v{version}")
                    };
                    self.set_node_ready(&nodes, &node, true, Some(&kubelet))
                        .await?;
                    self.upgrade_static_pods(&node, &kubelet).await?;
                    self.record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .rejoins
                        .push((node.clone(), Timestamp::now()));
                    self.end_upgrade_pod(&slot, "Succeeded", 0).await?;
                    self.upgrades.remove(&slot);
                    self.finished_upgrades.insert(slot);
                }
            }
        }
        Ok(())
    }

    /// Ends an upgrade Pod with `exit_code`.
    async fn end_upgrade_pod(
        &self,
        slot: &PodSlot,
        phase: &str,
        exit_code: i64,
    ) -> Result<(), PlayerError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &slot.0);
        let Ok(pod) = pods.get(&slot.1).await else {
            return Ok(()); // deleted meanwhile
        };
        let value = serde_json::to_value(&pod).unwrap_or_default();
        let node = Api::<Node>::all(self.client.clone())
            .get(value["spec"]["nodeName"].as_str().unwrap_or_default())
            .await
            .ok()
            .and_then(|n| serde_json::to_value(n).ok())
            .unwrap_or(Value::Null);
        self.set_pod_status(slot, &value, phase, Some(exit_code), &node)
            .await
    }

    /// `kubeadm upgrade apply`: kubeadm-config records the target.
    async fn apply_kubeadm(&self, version: &str) -> Result<(), PlayerError> {
        let version = if version.starts_with('v') {
            version.to_owned()
        } else {
            format!("v{version}")
        };
        let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), "kube-system");
        let patch =
            json!({"data": {"ClusterConfiguration": seed::cluster_configuration(&version)}});
        config_maps
            .patch(
                "kubeadm-config",
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(api_error("updating kube-system/kubeadm-config"))?;
        Ok(())
    }

    /// kubeadm rewrote the node's manifests: its mirror Pods run the new images (etcd
    /// keeps its own version).
    async fn upgrade_static_pods(&self, node: &str, version: &str) -> Result<(), PlayerError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "kube-system");
        for component in &STATIC_COMPONENTS[1..] {
            let name = format!("{component}-{node}");
            let image = format!("registry.k8s.io/{component}:{version}");
            let patch = json!({"spec": {"containers": [{"name": component, "image": image}]}});
            match pods
                .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => {}
                // A worker has none.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(api_error(format!("moving {name}"))(e)),
            }
        }
        Ok(())
    }

    /// Ready or NotReady, the transition time moving only on a change, as a kubelet
    /// reports it; `version` moves the kubelet's version.
    async fn set_node_ready(
        &self,
        nodes: &Api<Node>,
        name: &str,
        ready: bool,
        version: Option<&str>,
    ) -> Result<(), PlayerError> {
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (status, reason, message) = if ready {
            ("True", "KubeletReady", "kubelet is posting ready status")
        } else {
            (
                "False",
                "KubeletNotReady",
                "container runtime status check may not have completed yet",
            )
        };
        let mut patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "reason": reason, "message": message,
             "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
        if let Some(version) = version {
            patch["status"]["nodeInfo"] =
                json!({"kubeletVersion": version, "kubeProxyVersion": version});
        }
        // Conditions merge by type in a strategic merge patch.
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(api_error(format!("posting node {name}'s status")))?;
        Ok(())
    }

    async fn set_pod_status(
        &self,
        slot: &(String, String),
        pod: &Value,
        phase: &str,
        exit_code: Option<i64>,
        node: &Value,
    ) -> Result<(), PlayerError> {
        let stamp = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let status = crate::controllers::pod_status(pod, phase, exit_code, node, &stamp);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &slot.0);
        match pods
            .patch_status(
                &slot.1,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to report.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(api_error(format!(
                "posting Pod {}/{}'s status",
                slot.0, slot.1
            ))(e)),
        }
    }

    /// A terminating Pod ends after its grace period, as its kubelet would end it.
    async fn finish_terminating(&self, pod: &Pod) -> Result<(), PlayerError> {
        let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
            return Ok(());
        };
        if self.config.honour_grace_period && deleted.0 > Timestamp::now() {
            return Ok(());
        }
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match pods
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(api_error(format!("ending Pod {}", pod.name_any()))(e)),
        }
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

fn later(after: Duration) -> Timestamp {
    let now = Timestamp::now();
    jiff::SignedDuration::try_from(after)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now)
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// An environment variable of the Pod's first container that sets it.
fn env(pod: &Value, key: &str) -> Option<String> {
    pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == key)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    })
}
