//! Builders that keep tests one line each.

use std::collections::BTreeMap;

use upchain_api::{CONTROL_PLANE_LABEL, K8sUpgrade, K8sUpgradeSpec, NodesSpec};

use crate::observe::ObservedNode;

/// The default node selection.
pub fn nodes_spec() -> NodesSpec {
    NodesSpec::default()
}

/// A K8sUpgrade named `test` with defaults and the given target.
/// Its minor upgrades waive the etcd snapshot, which the snapshot's own tests configure.
pub fn upgrade(target: &str) -> K8sUpgrade {
    let spec: K8sUpgradeSpec = serde_json::from_value(serde_json::json!({
        "targetVersion": target,
        "snapshotWaiver": {"reason": "a model cluster has no etcd"},
    }))
    .expect("spec");
    // As the operator acts on it: within the installation's policy.
    let spec = crate::policy::InstallPolicy::default().settle(&spec).spec;
    let mut upgrade = K8sUpgrade::new("test", spec);
    upgrade.metadata.uid = Some("uid-1".to_owned());
    upgrade.metadata.generation = Some(1);
    upgrade
}

/// A hook's Job template around `container`, as Pod Security `restricted` admits it.
pub fn hook_template(container: serde_json::Value) -> serde_json::Value {
    let mut container = container;
    container["securityContext"] = serde_json::json!({
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    serde_json::json!({"spec": {"template": {"spec": {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container]}}}})
}

/// The runner as the default installation settles an unset one.
pub fn runner() -> upchain_api::RunnerSpec {
    upgrade("1.35.2").spec.runner
}

/// Builds an [`ObservedNode`].
#[derive(Debug, Clone)]
pub struct NodeFixture(ObservedNode);

impl NodeFixture {
    fn new(name: &str, labels: BTreeMap<String, String>) -> Self {
        Self(ObservedNode {
            name: name.to_owned(),
            labels,
            kubelet_version: "v1.34.2".to_owned(),
            ready: true,
            unschedulable: false,
            pressure: Vec::new(),
            internal_ip: Some(format!("10.0.0.{}", name.len())),
            ready_since: Some(0),
            container_runtime: "containerd://1.7.22".to_owned(),
            prepared: None,
        })
    }

    /// A Ready control-plane node.
    pub fn control_plane(name: &str) -> Self {
        Self::new(
            name,
            [(CONTROL_PLANE_LABEL.to_owned(), String::new())].into(),
        )
    }

    /// A Ready worker node.
    pub fn worker(name: &str) -> Self {
        Self::new(name, BTreeMap::new())
    }

    /// Sets the kubelet version.
    pub fn kubelet(mut self, version: &str) -> Self {
        self.0.kubelet_version = version.to_owned();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Removes the InternalIP.
    pub fn no_ip(mut self) -> Self {
        self.0.internal_ip = None;
        self
    }

    /// Marks the node NotReady.
    pub fn not_ready(mut self) -> Self {
        self.0.ready = false;
        self
    }

    /// Cordons the node.
    pub fn cordoned(mut self) -> Self {
        self.0.unschedulable = true;
        self
    }

    /// The node.
    pub fn build(self) -> ObservedNode {
        self.0
    }
}

/// A running Pod owned by a controller, without labels.
pub fn pod(namespace: &str, name: &str) -> crate::observe::ObservedPod {
    crate::observe::ObservedPod {
        namespace: namespace.into(),
        name: name.into(),
        daemonset: false,
        mirror: false,
        finished: false,
        terminating: false,
        unmanaged: false,
        empty_dir: false,
        ready: true,
        labels: BTreeMap::new(),
    }
}
