//! The control-plane gate: on every control-plane node the API server, controller manager,
//! scheduler and (stacked) etcd static Pods are Running and Ready, those of nodes already
//! upgraded at the target, and every API server's `/readyz` (its etcd check included)
//! passes at its own advertise address, not only the one the Service picks. Checked before
//! the run and at every node boundary: a control-plane node whose components did not come
//! back never lets the next one start. etcd's members are judged through the node step
//! (crate::etcd), never by counting Pods; a control-plane node without its etcd mirror Pod,
//! where kubeadm-config says etcd is stacked, is a finding here.
//!
//! It also says which version `kubeadm upgrade apply` last brought the cluster to:
//! kube-system/kubeadm-config's ClusterConfiguration.kubernetesVersion, cross-checked with
//! the API servers' image tags, so that a kubelet moved by hand does not pass for it.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use upchain_api::{CONTROL_PLANE_LABEL, NodeRecord, NodeStep};

use super::{Source, Verdict, unreachable, verdict};
use crate::gates::postflight::{StaticPod, image_tag};
use crate::observe::ObservedNode;
use crate::version::KubeVersion;

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
    /// kube-system/kubeadm-config's ClusterConfiguration.kubernetesVersion, or why it
    /// could not be read.
    pub kubeadm_version: Source<KubeVersion>,
    /// kubeadm-config's ClusterConfiguration has `etcd.external`: no member runs on the
    /// control-plane nodes.
    pub etcd_external: bool,
    /// Each control-plane node's API server asked for `/readyz` at its advertise address.
    pub api_servers: Vec<ApiServerReadyz>,
}

/// One API server's `/readyz`, asked at its own address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServerReadyz {
    /// Its node.
    pub node: String,
    /// The address asked (`host:port`).
    pub endpoint: String,
    /// Passed, or what it answered.
    pub answer: Source<()>,
}

/// Where a kube-apiserver mirror Pod says its API server listens.
pub const ADVERTISE_ANNOTATION: &str =
    "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint";

/// True when kubeadm-config's ClusterConfiguration puts etcd outside the cluster.
pub fn kubeadm_config_etcd_external(config_map: Option<&ConfigMap>) -> bool {
    config_map
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("ClusterConfiguration"))
        .and_then(|text| serde_yaml::from_str::<serde_yaml::Value>(text).ok())
        .is_some_and(|doc| doc.get("etcd").and_then(|e| e.get("external")).is_some())
}

/// Where kubeadm keeps the cluster's configuration.
pub const KUBEADM_CONFIG: &str = "kube-system/kubeadm-config";

/// The kubernetesVersion kubeadm recorded in its ConfigMap (`None`: not found).
pub fn kubeadm_config_version(config_map: Option<&ConfigMap>) -> Source<KubeVersion> {
    let missing = |what: &str| {
        format!(
            "{KUBEADM_CONFIG} {what}: upchain upgrades clusters made by kubeadm, whose \
             `kubeadm upgrade apply` needs it; check that this is a kubeadm cluster"
        )
    };
    let config_map = config_map.ok_or_else(|| missing("does not exist"))?;
    let text = config_map
        .data
        .as_ref()
        .and_then(|data| data.get("ClusterConfiguration"))
        .ok_or_else(|| missing("has no ClusterConfiguration"))?;
    let document: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| format!("{KUBEADM_CONFIG}'s ClusterConfiguration is not YAML: {e}"))?;
    let version = document
        .get("kubernetesVersion")
        .and_then(serde_yaml::Value::as_str)
        .ok_or_else(|| missing("has no ClusterConfiguration.kubernetesVersion"))?;
    KubeVersion::parse_reported(version).map_err(|e| {
        format!("{KUBEADM_CONFIG} records kubernetesVersion `{version}`, not a version: {e}")
    })
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

    /// The version `node`'s kube-apiserver static Pod runs, by its image tag.
    pub fn api_server_version(&self, node: &str) -> Option<KubeVersion> {
        let pod = self.pod(node, "kube-apiserver")?;
        KubeVersion::parse_reported(image_tag(&pod.image)?).ok()
    }

    /// The version `kubeadm upgrade apply` last brought the cluster to: what kubeadm-config
    /// records, but no newer than the newest API server runs (an apply that stopped
    /// before its API server moved has not happened). `None` when either is unknown.
    pub fn kubeadm_applied(&self) -> Option<KubeVersion> {
        let recorded = *self.kubeadm_version.as_ref().ok()?;
        let newest_api_server = self
            .static_pods
            .iter()
            .filter(|p| p.component == "kube-apiserver")
            .filter_map(|p| self.api_server_version(&p.node))
            .max()?;
        Some(recorded.min(newest_api_server))
    }

    /// Why the node that ran `kubeadm upgrade apply` to `target` is not done with it:
    /// kubeadm-config must record the target (or a later one) once apply finished.
    pub fn apply_not_at(&self, node: &str, target: KubeVersion) -> Option<String> {
        match &self.kubeadm_version {
            Ok(recorded) if *recorded >= target => None,
            Ok(recorded) => Some(format!(
                "{KUBEADM_CONFIG} still records kubernetesVersion {recorded}, not {target}: \
                 `kubeadm upgrade apply` on {node} did not finish; read its Job's log"
            )),
            Err(error) => Some(error.clone()),
        }
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
/// upgraded, whose components must then run the version their record pinned. With
/// `workers_next` (the next batch is workers, to `target`), the skew rule holds too: no
/// worker's kubelet, those about to start at the target included, may be newer than the
/// oldest kube-apiserver. (A control-plane node's kubelet leads the other API servers
/// while they wait for their turn, as kubeadm's own procedure has it.)
pub fn control_plane_gate(
    nodes: &[ObservedNode],
    observed: &Source<ControlPlaneObservation>,
    records: &[NodeRecord],
    workers_next: Option<KubeVersion>,
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
    let upgraded_records = || {
        records
            .iter()
            .filter(|r| matches!(r.step, NodeStep::Soaking | NodeStep::Done))
            .filter_map(|r| Some((r, KubeVersion::parse_target(&r.target_version).ok()?)))
    };
    let upgraded: HashMap<&str, KubeVersion> = upgraded_records()
        .map(|(r, target)| (r.name.as_str(), target))
        .collect();
    let stacked = !observed.etcd_external;
    let mut reasons = Vec::new();
    match &observed.kubeadm_version {
        Err(error) => reasons.push(error.clone()),
        Ok(_) => reasons.extend(
            upgraded_records()
                .filter(|(r, _)| r.first_control_plane)
                .filter_map(|(r, target)| observed.apply_not_at(&r.name, target)),
        ),
    }
    for node in &control_planes {
        if let Some(pinned) = upgraded.get(node) {
            reasons.extend(observed.node_not_at(node, *pinned));
        } else {
            for component in COMPONENTS {
                match observed.pod(node, component) {
                    None => reasons.push(format!(
                        "{component} on {node} has no static Pod (kube-system, tier control-plane)"
                    )),
                    Some(pod) if !pod.running => reasons.push(not_ready(pod)),
                    Some(_) => {}
                }
            }
        }
        match observed.pod(node, "etcd") {
            None if stacked => reasons.push(format!(
                "etcd on {node} has no mirror Pod, but {KUBEADM_CONFIG} says etcd is stacked \
                 (no etcd.external): its member is gone or its kubelet does not report it; \
                 see the node's kubelet and /etc/kubernetes/manifests/etcd.yaml there"
            )),
            Some(pod) if !pod.running && !upgraded.contains_key(node) => {
                reasons.push(not_ready(pod));
            }
            _ => {}
        }
    }
    if let Err(answer) = &observed.readyz {
        reasons.push(format!(
            "the API server's /readyz fails ({answer}); find which check fails with kubectl get \
             --raw '/readyz?verbose'"
        ));
    }
    for node in &control_planes {
        match observed.api_servers.iter().find(|a| a.node == *node) {
            Some(ApiServerReadyz {
                endpoint,
                answer: Err(answer),
                ..
            }) => reasons.push(format!(
                "the API server on {node} fails /readyz at {endpoint} ({answer}): the Service \
                 may still answer from another; see that API server's log"
            )),
            Some(_) => {}
            None if observed.pod(node, "kube-apiserver").is_some() => reasons.push(format!(
                "the API server on {node} could not be asked for /readyz: its mirror Pod has \
                 no {ADVERTISE_ANNOTATION} annotation and its Node no InternalIP"
            )),
            None => {}
        }
    }
    if let Some(target) = workers_next {
        reasons.extend(skew(nodes, observed, target));
    }
    verdict(
        "control-plane",
        format!(
            "{} control-plane node(s): static Pods Running and Ready, every API server's \
             /readyz{}",
            control_planes.len(),
            if stacked {
                ", etcd's mirror Pods (its members are checked through the node step)"
            } else {
                " (etcd is external)"
            }
        ),
        reasons,
    )
}

/// The skew rule before workers move to `target`: every kube-apiserver at least as new
/// as every worker's kubelet will be.
fn skew(
    nodes: &[ObservedNode],
    observed: &ControlPlaneObservation,
    target: KubeVersion,
) -> Option<String> {
    let (oldest_node, oldest) = observed
        .static_pods
        .iter()
        .filter(|p| p.component == "kube-apiserver")
        .filter_map(|p| Some((p.node.as_str(), observed.api_server_version(&p.node)?)))
        .min_by_key(|(_, version)| *version)?;
    let newest_worker = nodes
        .iter()
        .filter(|n| !n.labels.contains_key(CONTROL_PLANE_LABEL))
        .filter_map(|n| KubeVersion::parse_reported(&n.kubelet_version).ok())
        .chain([target])
        .max()?;
    (newest_worker > oldest).then(|| {
        format!(
            "the kube-apiserver on {oldest_node} runs {oldest}, older than the workers' \
             kubelets at {newest_worker} would be: no kubelet may be newer than an API server; \
             upgrade {oldest_node}'s control plane first (kubeadm upgrade node)"
        )
    })
}
