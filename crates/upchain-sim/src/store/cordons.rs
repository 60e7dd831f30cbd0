//! Side effects of a commit: the cordon record the tests check invariants against, the
//! core v1 view of Events, and the types CRDs register.

use serde_json::Value;

use super::{ChangeType, Store, meta};
use crate::registry::ResourceType;

/// The cluster at the instant a node was cordoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CordonMoment {
    /// When, on the cluster's clock.
    pub at: jiff::Timestamp,
    /// The node that became unschedulable.
    pub node: String,
    /// Every node then that was cordoned or not Ready (the cordoned one included); the
    /// others were Ready and schedulable.
    pub nodes: Vec<NodeState>,
}

/// One node's state in a [`CordonMoment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Name.
    pub name: String,
    /// Carries the control-plane role label.
    pub control_plane: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// spec.unschedulable.
    pub unschedulable: bool,
    /// status.nodeInfo.kubeletVersion.
    pub kubelet: String,
}

/// The node's Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl NodeState {
    pub(super) fn of(node: &Value) -> Self {
        Self {
            name: meta(node, "name").to_owned(),
            control_plane: !node["metadata"]["labels"][crate::seed::CONTROL_PLANE_LABEL].is_null(),
            ready: node_ready(node),
            unschedulable: node["spec"]["unschedulable"] == true,
            kubelet: node["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

impl Store {
    /// One object, two API views: an events.k8s.io Event is also a core v1 Event.
    pub(super) fn mirror_event(&mut self, core: Value, kind: ChangeType) {
        let Some(events) = self.type_by_id("events") else {
            return;
        };
        let slot = (
            meta(&core, "namespace").to_owned(),
            meta(&core, "name").to_owned(),
        );
        let next = (kind != ChangeType::Deleted).then_some(core.clone());
        self.commit(&events, slot, next, kind, core);
    }

    /// The served types follow the CRDs.
    pub(super) fn register_crds(&mut self) {
        let crds: Vec<Value> = self
            .objects
            .get("customresourcedefinitions.apiextensions.k8s.io")
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        self.registry.set_custom(&crds);
    }

    /// A node just cordoned is recorded with every node out of service at that moment, for
    /// the tests' invariant checks. Only those: a record of every node at every cordon
    /// grows with the square of the cluster (25 million entries at 5,000 nodes).
    pub(super) fn record_cordon(
        &mut self,
        rt: &ResourceType,
        object: &Value,
        before: Option<&Value>,
    ) {
        let cordoned = rt.id() == "nodes"
            && object["spec"]["unschedulable"] == true
            && before.is_some_and(|b| b["spec"]["unschedulable"] != true);
        if !cordoned {
            return;
        }
        let nodes = self
            .iter("nodes")
            .filter(|n| n["spec"]["unschedulable"] == true || !node_ready(n))
            .map(NodeState::of)
            .collect();
        let at = self.clock.now();
        self.cordons.push(CordonMoment {
            at,
            node: meta(object, "name").to_owned(),
            nodes,
        });
    }
}
