//! The Nodes, watched and cached as the decisions read them: an `ObservedNode` each.
//!
//! Not a reflector's `Store<Node>`: even pruned, a `Node` is a kilobyte of empty fields and
//! maps (at 5,000 nodes most of the operator's memory), each decision converted every one
//! of them again, and a relist built a second store beside the first until it completed.
//! Here a relist updates the one map in place and then drops the Nodes it did not see.
//!
//! The watch decodes a [`WatchedNode`], not a `Node`: a Node is kilobytes of JSON (its
//! images, managed fields, capacity), and at 5,000 nodes posting status every 10 s,
//! decoding each whole was most of the operator's allocations, 500 times a second.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use tracing::warn;
use upchain_core::ObservedNode;

use crate::metrics::Metrics;

/// A Node as the watch decodes it: what [`ObservedNode::from_node`] reads, and the
/// metadata the watch itself needs. Every other field is skipped unread.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct WatchedNode {
    #[serde(deserialize_with = "watched_metadata")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<WatchedSpec>,
    #[serde(default)]
    status: Option<WatchedStatus>,
}

#[derive(Clone, Debug, Deserialize)]
struct WatchedSpec {
    #[serde(default)]
    unschedulable: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedStatus {
    #[serde(default)]
    conditions: Vec<WatchedCondition>,
    #[serde(default)]
    addresses: Vec<NodeAddress>,
    #[serde(default)]
    node_info: Option<WatchedInfo>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default)]
    last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedInfo {
    #[serde(default)]
    kubelet_version: String,
    #[serde(default)]
    container_runtime_version: String,
}

/// The metadata a watched Node keeps: its name, resource version (the watch resumes from
/// it), labels and annotations; not its managed fields.
fn watched_metadata<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Metadata {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
    }
    let metadata = Metadata::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: metadata.name,
        resource_version: metadata.resource_version,
        labels: metadata.labels,
        annotations: metadata.annotations,
        ..ObjectMeta::default()
    })
}

impl Resource for WatchedNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl WatchedNode {
    /// The node as the decisions see it, through the one conversion a full Node takes.
    fn observed(self) -> ObservedNode {
        let status = self.status.map(|status| NodeStatus {
            conditions: Some(
                status
                    .conditions
                    .into_iter()
                    .map(|c| NodeCondition {
                        type_: c.type_,
                        status: c.status,
                        last_transition_time: c.last_transition_time,
                        ..NodeCondition::default()
                    })
                    .collect(),
            ),
            addresses: Some(status.addresses),
            node_info: status.node_info.map(|info| NodeSystemInfo {
                kubelet_version: info.kubelet_version,
                container_runtime_version: info.container_runtime_version,
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        });
        ObservedNode::from_node(&Node {
            metadata: self.metadata,
            spec: self.spec.map(|spec| NodeSpec {
                unschedulable: spec.unschedulable,
                ..NodeSpec::default()
            }),
            status,
        })
    }
}

/// The nodes, each with the listing it was last seen in.
#[derive(Default)]
struct Nodes {
    /// What every decision reads, shared: a change is written in place unless a decision
    /// still holds the last copy (then that copy is left to it, and this one goes on).
    nodes: Arc<Vec<ObservedNode>>,
    /// Each node's place in `nodes`, and its last listing.
    by_name: HashMap<String, (usize, u64)>,
    /// Counts the watch's listings; a node not seen in the latest one is gone.
    listing: u64,
}

/// The cached Nodes.
pub(super) struct NodeCache {
    nodes: Arc<Mutex<Nodes>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl NodeCache {
    /// Starts the watch. Returns the cache and a stream that yields once per change of a
    /// node that the decisions read (not a heartbeat), after the cache holds it.
    pub(super) fn watch(
        api: Api<WatchedNode>,
        metrics: Arc<Metrics>,
    ) -> (Self, impl Stream<Item = ()> + Send + 'static) {
        let nodes = Arc::new(Mutex::new(Nodes::default()));
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        let cache = nodes.clone();
        // Small pages: a page of full Nodes (kilobytes each, mostly images) is the watch's
        // peak memory.
        let changes = watcher(api, watcher::Config::default().page_size(100))
            .default_backoff()
            .filter_map(move |event| {
                let ok = event.is_ok();
                let changed = match event {
                    Ok(event) => remember(&cache, &listed_tx, event),
                    Err(error) => {
                        // The watcher retries on its own (with backoff); a failing Node
                        // watch is still worth a line, as a stale cache holds a run back.
                        warn!(%error, "watching Nodes failed; retrying");
                        false
                    }
                };
                metrics
                    .health
                    .watched("Node", ok, std::time::Instant::now());
                std::future::ready(changed.then_some(()))
            });
        (Self { nodes, listed }, changes)
    }

    /// Every cached node, shared: copying 5,000 nodes for each decision was most of what a
    /// reconcile allocated.
    pub(super) fn nodes(&self) -> Arc<Vec<ObservedNode>> {
        lock(&self.nodes).nodes.clone()
    }

    /// Waits until the first listing is complete.
    pub(super) async fn wait_until_ready(&self) {
        self.until_listed().await;
    }

    /// Completes when the first listing is; holds no borrow of the cache.
    pub(super) fn until_listed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut listed = self.listed.clone();
        async move {
            // An Err means the watch ended: the process is shutting down.
            let _ = listed.wait_for(|listed| *listed).await;
        }
    }
}

fn lock(nodes: &Mutex<Nodes>) -> std::sync::MutexGuard<'_, Nodes> {
    nodes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `event` to the cache; true when a node the decisions read changed, came or went.
fn remember(
    nodes: &Mutex<Nodes>,
    listed: &tokio::sync::watch::Sender<bool>,
    event: watcher::Event<WatchedNode>,
) -> bool {
    let mut nodes = lock(nodes);
    match event {
        watcher::Event::Init => {
            nodes.listing += 1;
            false
        }
        watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
            nodes.upsert(node.observed())
        }
        watcher::Event::InitDone => {
            let listing = nodes.listing;
            let gone = nodes.keep(|_, seen| seen == listing);
            listed.send_replace(true);
            gone
        }
        watcher::Event::Delete(node) => {
            let name = node.name_any();
            nodes.keep(|node, _| node.name != name)
        }
    }
}

impl Nodes {
    /// Records `node` as seen in this listing; true when it is new or changed.
    fn upsert(&mut self, node: ObservedNode) -> bool {
        let listing = self.listing;
        match self.by_name.get_mut(&node.name) {
            Some((place, seen)) => {
                *seen = listing;
                let place = *place;
                if self.nodes[place] == node {
                    return false;
                }
                Arc::make_mut(&mut self.nodes)[place] = node;
            }
            None => {
                let nodes = Arc::make_mut(&mut self.nodes);
                self.by_name
                    .insert(node.name.clone(), (nodes.len(), listing));
                nodes.push(node);
            }
        }
        true
    }

    /// Keeps the nodes for which `keep(node, its last listing)` holds; true when one went.
    fn keep(&mut self, keep: impl Fn(&ObservedNode, u64) -> bool) -> bool {
        let seen = |node: &ObservedNode| self.by_name.get(&node.name).map_or(0, |(_, seen)| *seen);
        if self.nodes.iter().all(|n| keep(n, seen(n))) {
            return false;
        }
        let nodes: Vec<ObservedNode> = self
            .nodes
            .iter()
            .filter(|n| keep(n, seen(n)))
            .cloned()
            .collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(place, node)| (node.name.clone(), (place, seen(node))))
            .collect();
        self.by_name = by_name;
        self.nodes = Arc::new(nodes);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn node(name: &str, kubelet: &str, heartbeat: &str) -> WatchedNode {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                "kernelVersion": "6.1.0", "osImage": "Debian", "containerRuntimeVersion":
                "containerd://1.7.22", "kubeletVersion": kubelet, "kubeProxyVersion": kubelet,
                "operatingSystem": "linux", "architecture": "amd64"},
                "conditions": [{"type": "Ready", "status": "True",
                    "lastHeartbeatTime": heartbeat}]}}))
        .expect("node")
    }

    #[test]
    fn a_watched_node_is_observed_as_the_whole_node_is() {
        let full = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w-7", "resourceVersion": "42", "uid": "u",
                "labels": {"kubernetes.io/hostname": "w-7", "node-role.kubernetes.io/worker": ""},
                "annotations": {"upchain.dev/prepared": "fleet/v1.35.2/1796000000",
                    "node.alpha.kubernetes.io/ttl": "0"},
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:images": {}}}}]},
            "spec": {"unschedulable": true, "podCIDR": "10.244.7.0/24",
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "Hostname", "address": "w-7"},
                    {"type": "InternalIP", "address": "10.0.0.7"}],
                "capacity": {"cpu": "8", "memory": "32Gi"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status",
                     "lastHeartbeatTime": "2026-12-01T00:00:00Z",
                     "lastTransitionTime": "2026-11-30T00:00:00Z"},
                    {"type": "DiskPressure", "status": "True"}],
                "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}],
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                    "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12",
                    "containerRuntimeVersion": "containerd://1.7.22",
                    "kubeletVersion": "v1.34.2", "kubeProxyVersion": "v1.34.2",
                    "operatingSystem": "linux", "architecture": "amd64"}}});
        let whole: Node = serde_json::from_value(full.clone()).expect("node");
        let watched: WatchedNode = serde_json::from_value(full).expect("watched node");
        assert_eq!(watched.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(watched.observed(), ObservedNode::from_node(&whole));
    }

    #[test]
    fn heartbeats_change_nothing_and_a_relist_drops_the_nodes_it_did_not_see() {
        let (listed, ready) = tokio::sync::watch::channel(false);
        let cache = NodeCache {
            nodes: Arc::new(Mutex::new(Nodes::default())),
            listed: ready,
        };
        let apply = |event| remember(&cache.nodes, &listed, event);
        let at = |name: &str, kubelet: &str, second: u32| {
            node(name, kubelet, &format!("2026-12-01T00:00:{second:02}Z"))
        };
        assert!(!apply(watcher::Event::Init));
        assert!(apply(watcher::Event::InitApply(at("a", "v1.34.2", 0))));
        assert!(apply(watcher::Event::InitApply(at("b", "v1.34.2", 0))));
        assert!(apply(watcher::Event::InitApply(at("c", "v1.34.2", 0))));
        assert!(!*cache.listed.borrow());
        assert!(!apply(watcher::Event::InitDone));
        assert!(*cache.listed.borrow());
        // A heartbeat moves nothing the decisions read.
        assert!(!apply(watcher::Event::Apply(at("a", "v1.34.2", 10))));
        // A decision holding the nodes keeps what it read while the cache moves on.
        let held = cache.nodes();
        assert!(apply(watcher::Event::Apply(at("a", "v1.35.2", 20))));
        assert_eq!(held[0].kubelet_version, "v1.34.2");
        assert_eq!(cache.nodes()[0].kubelet_version, "v1.35.2");
        assert!(apply(watcher::Event::Delete(at("c", "v1.34.2", 30))));
        // The watch fell behind: b went meanwhile, and the relist does not show it.
        assert!(!apply(watcher::Event::Init));
        assert!(!apply(watcher::Event::InitApply(at("a", "v1.35.2", 40))));
        assert!(apply(watcher::Event::InitDone));
        let names: Vec<String> = cache.nodes().iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["a"]);
        // And one that comes back is found again.
        assert!(apply(watcher::Event::Apply(at("b", "v1.35.2", 50))));
        assert!(!apply(watcher::Event::Apply(at("a", "v1.35.2", 51))));
        assert_eq!(cache.nodes().len(), 2);
    }
}
