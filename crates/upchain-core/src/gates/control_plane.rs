//! The control-plane gate: on every control-plane node the API server, controller manager,
//! scheduler and (stacked) etcd static Pods are Running and Ready, those of nodes already
//! upgraded at the target, stacked etcd has a healthy member per control-plane node, and
//! the API server's `/readyz` (its etcd check included) passes. Checked before the run and
//! at every node boundary: a control-plane node whose components did not come back never
//! lets the next one start.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use upchain_api::{CONTROL_PLANE_LABEL, NodeStep};

use super::*;
use crate::gates::postflight::{StaticPod, image_tag};

/// The components kubeadm runs as static Pods on every control-plane node, besides etcd.
pub const COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The control plane as the operator read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneObservation {
    /// The static Pods in kube-system labelled tier=control-plane, etcd included.
    pub static_pods: Vec<StaticPod>,
    /// The API server's `/readyz`: passed, or what it answered.
    pub readyz: Source<()>,
}

impl ControlPlaneObservation {
    /// Adds a Pod when it is one of the control plane's static Pods.
    pub fn add(&mut self, pod: &Pod) {
        if let Some(static_pod) = StaticPod::from_pod(pod)
            && (static_pod.component == "etcd"
                || COMPONENTS.contains(&static_pod.component.as_str()))
        {
            self.static_pods.push(static_pod);
        }
    }

    /// The named component's static Pod on `node`.
    pub fn pod(&self, node: &str, component: &str) -> Option<&StaticPod> {
        self.static_pods
            .iter()
            .find(|p| p.node == node && p.component == component)
    }

    /// What keeps `node`'s own components from counting as upgraded to `target`: each
    /// missing, not Ready, or at another image tag. Empty when they are all there.
    pub fn node_not_at(&self, node: &str, target: KubeVersion) -> Vec<String> {
        let tag = target.to_string();
        let mut problems = Vec::new();
        for component in COMPONENTS {
            match self.pod(node, component) {
                None => problems.push(format!("{component} on {node} has no static Pod")),
                Some(pod) if !pod.running => problems.push(not_ready(pod)),
                Some(pod) if image_tag(&pod.image) != Some(tag.as_str()) => problems.push(format!(
                    "{component} on {node} runs {}, not {tag}",
                    pod.image
                )),
                Some(_) => {}
            }
        }
        if let Some(etcd) = self.pod(node, "etcd")
            && !etcd.running
        {
            problems.push(not_ready(etcd));
        }
        problems
    }
}

fn not_ready(pod: &StaticPod) -> String {
    format!(
        "{} on {} is not Running and Ready ({} restart(s)); see kubectl -n kube-system \
         describe pod {}-{}",
        pod.component, pod.node, pod.restarts, pod.component, pod.node
    )
}

/// The control-plane gate over the control-plane nodes; `records` say which are already
/// upgraded, whose components must then run the version their record pinned.
pub fn control_plane_gate(
    nodes: &[ObservedNode],
    observed: &Source<ControlPlaneObservation>,
    records: &[NodeRecord],
) -> Verdict {
    let observed = match observed {
        Ok(observed) => observed,
        Err(error) => return unreachable("control-plane", "the control plane's Pods", error),
    };
    let control_planes: Vec<&str> = nodes
        .iter()
        .filter(|n| n.labels.contains_key(CONTROL_PLANE_LABEL))
        .map(|n| n.name.as_str())
        .collect();
    let upgraded: HashMap<&str, KubeVersion> = records
        .iter()
        .filter(|r| matches!(r.step, NodeStep::Soaking | NodeStep::Done))
        .filter_map(|r| {
            Some((
                r.name.as_str(),
                KubeVersion::parse_target(&r.target_version).ok()?,
            ))
        })
        .collect();
    let stacked = observed.static_pods.iter().any(|p| p.component == "etcd");
    let mut reasons = Vec::new();
    for node in &control_planes {
        if let Some(pinned) = upgraded.get(node) {
            reasons.extend(observed.node_not_at(node, *pinned));
            continue;
        }
        let etcd = stacked.then_some("etcd");
        for component in COMPONENTS.into_iter().chain(etcd) {
            match observed.pod(node, component) {
                None => reasons.push(format!(
                    "{component} on {node} has no static Pod (kube-system, tier control-plane)"
                )),
                Some(pod) if !pod.running => reasons.push(not_ready(pod)),
                Some(_) => {}
            }
        }
    }
    let healthy_members = control_planes
        .iter()
        .filter(|node| observed.pod(node, "etcd").is_some_and(|p| p.running))
        .count();
    if stacked && healthy_members < control_planes.len() {
        reasons.push(format!(
            "etcd has {healthy_members} healthy member(s) for {} control-plane node(s): taking \
             another member down for its upgrade risks quorum; bring the member back first",
            control_planes.len()
        ));
    }
    if let Err(answer) = &observed.readyz {
        reasons.push(format!(
            "the API server's /readyz fails ({answer}); find which check fails with kubectl get \
             --raw '/readyz?verbose'"
        ));
    }
    let members = if stacked {
        format!(
            ", {healthy_members}/{} etcd members healthy",
            control_planes.len()
        )
    } else {
        String::new()
    };
    verdict(
        "control-plane",
        format!(
            "{} control-plane node(s): static Pods Running and Ready{members}, /readyz",
            control_planes.len()
        ),
        reasons,
    )
}
