//! The postflight: control-plane static Pods at the target image, Pods ready.

use k8s_openapi::api::core::v1::Pod;

use super::{Verdict, verdict};
use crate::version::KubeVersion;

/// The tag of an image reference (`repo/name:v1.2.3@sha256:...` -> `v1.2.3`).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let name = without_digest.rsplit('/').next().unwrap_or(without_digest);
    name.split_once(':').map(|(_, tag)| tag)
}

/// What the postflight looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostflightInputs {
    /// Control-plane static Pods (kube-apiserver, kube-controller-manager,
    /// kube-scheduler) on each control-plane node.
    pub static_pods: Vec<StaticPod>,
    /// Pods that should be running (not Succeeded or Failed) across the cluster.
    pub pods_expected: usize,
    /// Of those, how many are Ready.
    pub pods_ready: usize,
}

impl PostflightInputs {
    /// Adds one Pod to the counts: running Pods and their readiness, and the control
    /// plane's static Pods (kube-system, tier control-plane, by component).
    pub fn count(&mut self, pod: &Pod) {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if matches!(phase, "Succeeded" | "Failed") {
            return;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        self.pods_expected += 1;
        if ready {
            self.pods_ready += 1;
        }
        if let Some(static_pod) = StaticPod::from_pod(pod)
            && crate::gates::control_plane::COMPONENTS.contains(&static_pod.component.as_str())
        {
            self.static_pods.push(static_pod);
        }
    }
}

impl StaticPod {
    /// A control-plane static Pod (kube-system, tier control-plane), by its component.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let labels = pod.metadata.labels.as_ref()?;
        if labels.get("tier").map(String::as_str) != Some("control-plane")
            || pod.metadata.namespace.as_deref() != Some("kube-system")
        {
            return None;
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let spec = pod.spec.as_ref();
        Some(Self {
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            component: labels.get("component").cloned().unwrap_or_default(),
            image: spec
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            running: phase == "Running" && ready,
            restarts: status
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum()),
        })
    }
}

/// A control-plane static Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPod {
    /// Its node.
    pub node: String,
    /// Its component label, such as kube-apiserver.
    pub component: String,
    /// Its image.
    pub image: String,
    /// Running and Ready.
    pub running: bool,
    /// Its containers' restarts.
    pub restarts: i32,
}

/// The least share of Pods that must be Ready after the run.
pub const POD_READY_RATIO: f64 = 0.9;

/// The postflight: control-plane static Pods Running at the target image, at least 90%
/// of Pods Ready. (Every node at the target, and the alerts, are checked by the caller.)
pub fn postflight_gate(inputs: &PostflightInputs, target: KubeVersion) -> Verdict {
    let tag = target.to_string();
    let mut reasons = Vec::new();
    for pod in &inputs.static_pods {
        if !pod.running {
            reasons.push(format!(
                "{} on {} is not Running and Ready: check it (kubectl -n kube-system describe \
                 pod {}-{})",
                pod.component, pod.node, pod.component, pod.node
            ));
        } else if image_tag(&pod.image) != Some(tag.as_str()) {
            reasons.push(format!(
                "{} on {} runs {}, not {tag}: kubeadm did not move it; check the node's \
                 /etc/kubernetes/manifests",
                pod.component, pod.node, pod.image
            ));
        }
    }
    let ratio = if inputs.pods_expected == 0 {
        1.0
    } else {
        inputs.pods_ready as f64 / inputs.pods_expected as f64
    };
    if ratio < POD_READY_RATIO {
        reasons.push(format!(
            "only {} of {} Pods are Ready ({:.0}%, at least {:.0}% expected): look for Pods \
             that did not come back (kubectl get pods -A --field-selector \
             status.phase!=Running)",
            inputs.pods_ready,
            inputs.pods_expected,
            ratio * 100.0,
            POD_READY_RATIO * 100.0
        ));
    }
    verdict(
        "postflight",
        format!(
            "{} control-plane Pod(s) at {tag}, {}/{} Pods Ready",
            inputs.static_pods.len(),
            inputs.pods_ready,
            inputs.pods_expected
        ),
        reasons,
    )
}
