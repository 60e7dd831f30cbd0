//! The Nodes, watched and cached as the decisions read them: an `ObservedNode` each.
//!
//! Not a reflector's `Store<Node>`: even pruned, a `Node` is a kilobyte of empty fields and
//! maps (at 5,000 nodes most of the operator's memory), each decision converted every one
//! of them again, and a relist built a second store beside the first until it completed.
//! Here a relist updates the one map in place and then drops the Nodes it did not see.

use futures_util::Stream;

use super::*;

/// Each node's view, and the listing it was last seen in.
#[derive(Default)]
struct Nodes {
    by_name: HashMap<String, (ObservedNode, u64)>,
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
        api: Api<Node>,
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

    /// Every cached node, by name.
    pub(super) fn nodes(&self) -> Vec<ObservedNode> {
        let mut nodes: Vec<ObservedNode> = lock(&self.nodes)
            .by_name
            .values()
            .map(|(node, _)| node.clone())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Waits until the first listing is complete.
    pub(super) async fn wait_until_ready(&self) {
        let mut listed = self.listed.clone();
        // An Err means the watch ended: the process is shutting down.
        let _ = listed.wait_for(|listed| *listed).await;
    }
}

fn lock(nodes: &Mutex<Nodes>) -> std::sync::MutexGuard<'_, Nodes> {
    nodes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `event` to the cache; true when a node the decisions read changed, came or went.
fn remember(
    nodes: &Mutex<Nodes>,
    listed: &tokio::sync::watch::Sender<bool>,
    event: watcher::Event<Node>,
) -> bool {
    let mut nodes = lock(nodes);
    match event {
        watcher::Event::Init => {
            nodes.listing += 1;
            false
        }
        watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
            let observed = ObservedNode::from_node(&node);
            let listing = nodes.listing;
            let before = nodes
                .by_name
                .insert(observed.name.clone(), (observed.clone(), listing));
            before.is_none_or(|(before, _)| before != observed)
        }
        watcher::Event::InitDone => {
            let listing = nodes.listing;
            let before = nodes.by_name.len();
            nodes.by_name.retain(|_, (_, seen)| *seen == listing);
            let gone = nodes.by_name.len() != before;
            listed.send_replace(true);
            gone
        }
        watcher::Event::Delete(node) => nodes.by_name.remove(&node.name_any()).is_some(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    fn node(name: &str, kubelet: &str, heartbeat: &str) -> Node {
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
    fn heartbeats_change_nothing_and_a_relist_drops_the_nodes_it_did_not_see() {
        let nodes = Mutex::new(Nodes::default());
        let (listed, ready) = tokio::sync::watch::channel(false);
        let apply = |event| remember(&nodes, &listed, event);
        assert!(!apply(watcher::Event::Init));
        assert!(apply(watcher::Event::InitApply(node(
            "a",
            "v1.34.2",
            "2026-12-01T00:00:00Z"
        ))));
        assert!(apply(watcher::Event::InitApply(node(
            "b",
            "v1.34.2",
            "2026-12-01T00:00:00Z"
        ))));
        assert!(!*ready.borrow());
        assert!(!apply(watcher::Event::InitDone));
        assert!(*ready.borrow());
        // A heartbeat moves nothing the decisions read.
        assert!(!apply(watcher::Event::Apply(node(
            "a",
            "v1.34.2",
            "2026-12-01T00:00:10Z"
        ))));
        assert!(apply(watcher::Event::Apply(node(
            "a",
            "v1.35.2",
            "2026-12-01T00:00:20Z"
        ))));
        // The watch fell behind: b went meanwhile, and the relist does not show it.
        assert!(!apply(watcher::Event::Init));
        assert!(!apply(watcher::Event::InitApply(node(
            "a",
            "v1.35.2",
            "2026-12-01T00:01:00Z"
        ))));
        assert!(apply(watcher::Event::InitDone));
        let cache = NodeCache {
            nodes: Arc::new(std::mem::take(&mut *lock(&nodes)).into()),
            listed: ready,
        };
        let cached = cache.nodes();
        assert_eq!(cached.len(), 1);
        assert_eq!(cached[0].kubelet_version, "v1.35.2");
    }
}
