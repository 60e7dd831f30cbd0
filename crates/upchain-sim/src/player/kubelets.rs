//! The kubelets and the scheduler the player plays: each pass binds pending Pods, runs
//! bound ones, ends terminating ones and moves the upgrade Jobs' nodes along.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{PlayerConfig, PlayerError, Record, STATIC_COMPONENTS, api_error};
use crate::controllers::{OUTCOME_ANNOTATION, Placement, could_schedule};
use crate::seed;
use crate::store::node_ready;

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

pub(super) struct Kubelets {
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

impl Kubelets {
    /// Kubelets for `names`, seeing the cluster through the `nodes` and `pods` caches.
    pub(super) fn new(
        client: Client,
        config: PlayerConfig,
        names: Vec<String>,
        record: Arc<Mutex<Record>>,
        (nodes, pods): (Store<Node>, Store<Pod>),
    ) -> Self {
        Self {
            nodes,
            pods,
            client,
            config,
            names,
            record,
            upgrades: BTreeMap::new(),
            finished_upgrades: BTreeSet::new(),
            load: BTreeMap::new(),
        }
    }

    /// How long to wait between passes.
    pub(super) fn tick(&self) -> Duration {
        self.config.tick
    }

    /// One look at the cluster: scheduling, running, finishing, upgrades.
    pub(super) async fn pass(&mut self) -> Result<(), PlayerError> {
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
        let upgrades_node = crate::controllers::job_env(value, "NODE_NAME").filter(|_| {
            matches!(
                crate::controllers::job_env(value, "MODE").as_deref(),
                None | Some("upgrade")
            )
        });
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
            self.set_pod_status(&slot, value, "Running", None, node, None)
                .await?;
            return Ok(());
        }
        let job_pod = pod.owner_references().iter().any(|o| o.kind == "Job");
        if !job_pod || self.upgrades.contains_key(&slot) || self.finished_upgrades.contains(&slot) {
            return Ok(());
        }
        match (
            crate::controllers::job_env(value, "NODE_NAME"),
            crate::controllers::job_env(value, "TARGET_VERSION"),
            crate::controllers::job_env(value, "MODE"),
        ) {
            (Some(asked), _, Some(mode)) if mode.starts_with("etcd-") => {
                let report = self
                    .etcd_report(value, &asked, mode == "etcd-snapshot")
                    .await?;
                self.set_pod_status(&slot, value, "Succeeded", Some(0), node, Some(&report))
                    .await?;
                self.finished_upgrades.insert(slot);
            }
            (Some(target_node), Some(version), mode)
                if matches!(mode.as_deref(), None | Some("upgrade")) =>
            {
                if crate::controllers::job_env(value, "FIRST_CONTROL_PLANE").as_deref()
                    == Some("true")
                {
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
                    None,
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
        self.set_pod_status(slot, &value, phase, Some(exit_code), &node, None)
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

    /// Posts the Pod's status: `phase`, its containers ended with `exit_code` (running
    /// when None), and `report` as the node Job container's termination message.
    async fn set_pod_status(
        &self,
        slot: &(String, String),
        pod: &Value,
        phase: &str,
        exit_code: Option<i64>,
        node: &Value,
        report: Option<&str>,
    ) -> Result<(), PlayerError> {
        let stamp = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut status = crate::controllers::pod_status(pod, phase, exit_code, node, &stamp);
        if let Some(report) = report {
            crate::controllers::put_report(&mut status, report);
        }
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

    /// What the node step reports for an etcd Pod: the control-plane Nodes' members, or a
    /// snapshot of `asked`'s member copied to the Pod's destination.
    async fn etcd_report(
        &self,
        pod: &Value,
        asked: &str,
        snapshot: bool,
    ) -> Result<String, PlayerError> {
        if snapshot {
            let location =
                crate::controllers::job_env(pod, "SNAPSHOT_LOCATION").unwrap_or_default();
            return Ok(crate::node_step::snapshot_report(asked, &location));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let listed = nodes
            .list(&kube::api::ListParams::default().labels(seed::CONTROL_PLANE_LABEL))
            .await
            .map_err(api_error("listing the control-plane Nodes".to_owned()))?;
        let members: Vec<(String, String)> = listed
            .items
            .iter()
            .map(|n| {
                let address = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .and_then(|a| a.first())
                    .map(|a| a.address.clone())
                    .unwrap_or_default();
                (n.name_any(), address)
            })
            .collect();
        Ok(crate::node_step::etcd_report(&members))
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

fn later(after: Duration) -> Timestamp {
    let now = Timestamp::now();
    jiff::SignedDuration::try_from(after)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now)
}
