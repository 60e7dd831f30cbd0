//! What the operator observed in the cluster, reduced to what decisions need.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube_core::{Selector, SelectorExt};
use upchain_api::PREPARED_ANNOTATION;

/// Drops every entry of `map` (an object's labels or annotations) but `key`, and the map
/// itself when that leaves it empty: a cached object keeps the one entry a decision reads.
fn keep_only(map: &mut Option<BTreeMap<String, String>>, key: &str) {
    *map = map
        .take()
        .map(|mut entries| {
            entries.retain(|k, _| k == key);
            entries
        })
        .filter(|kept| !kept.is_empty());
}

/// The annotation the kubelet puts on a static Pod's mirror in the API server.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A node as the plan and the phase machine see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNode {
    /// The node's name.
    pub name: String,
    /// Its labels (roles are read from these).
    pub labels: BTreeMap<String, String>,
    /// `status.nodeInfo.kubeletVersion` as reported, such as `v1.34.2`.
    pub kubelet_version: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Conditions among MemoryPressure, DiskPressure and PIDPressure that are True.
    pub pressure: Vec<String>,
    /// The node's InternalIP, which the upgrade Job connects to.
    pub internal_ip: Option<String>,
    /// When the Ready condition last changed (Unix seconds), for the quiet period.
    pub ready_since: Option<i64>,
    /// `status.nodeInfo.containerRuntimeVersion`, such as `containerd://1.7.22`.
    pub container_runtime: String,
    /// The `upchain.dev/prepared` annotation: the run whose prepare check it passed.
    pub prepared: Option<String>,
}

impl ObservedNode {
    /// Reduces a Node object to what upchain decides on.
    pub fn from_node(node: &Node) -> Self {
        let status = node.status.as_ref();
        let conditions = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let condition_true = |type_: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            kubelet_version: status
                .and_then(|s| s.node_info.as_ref())
                .map(|info| info.kubelet_version.clone())
                .unwrap_or_default(),
            ready: condition_true("Ready"),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            pressure: ["MemoryPressure", "DiskPressure", "PIDPressure"]
                .into_iter()
                .filter(|p| condition_true(p))
                .map(str::to_owned)
                .collect(),
            internal_ip: status
                .and_then(|s| s.addresses.as_deref())
                .unwrap_or_default()
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone()),
            ready_since: conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.as_second()),
            container_runtime: status
                .and_then(|s| s.node_info.as_ref())
                .map(|info| info.container_runtime_version.clone())
                .unwrap_or_default(),
            prepared: node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PREPARED_ANNOTATION))
                .cloned(),
        }
    }
}

/// How an upgrade Job ended, judged by its Complete and Failed conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Neither Complete nor Failed yet.
    Running,
    /// The Complete condition is True.
    Succeeded,
    /// The Failed condition is True, with its reason (such as BackoffLimitExceeded or
    /// DeadlineExceeded) and message.
    Failed {
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
}

/// An upgrade Job owned by this K8sUpgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedJob {
    /// The Job's name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// What its Pod left: read once the Job has finished, while its node is Upgrading.
    pub evidence: Option<crate::evidence::JobEvidence>,
    /// The termination message of the Pod that decided how it ended: the etcd check's
    /// findings, the snapshot's report.
    pub report: Option<String>,
}

impl ObservedJob {
    /// " (exit N: meaning)" when its Pod's exit code was read, else "".
    pub fn exit_described(&self) -> String {
        self.evidence
            .as_ref()
            .and_then(|e| e.exit_code)
            .map(|code| format!(" ({})", crate::exit_codes::describe(code)))
            .unwrap_or_default()
    }

    /// A Job judged by its Complete and Failed conditions, not by Pod counters.
    pub fn from_job(job: &Job) -> Self {
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let holds = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
        };
        let state = if holds("Complete").is_some() {
            JobState::Succeeded
        } else if let Some(failed) = holds("Failed") {
            JobState::Failed {
                reason: failed.reason.clone().unwrap_or_default(),
                message: failed.message.clone().unwrap_or_default(),
            }
        } else {
            JobState::Running
        };
        Self {
            name: job.metadata.name.clone().unwrap_or_default(),
            state,
            evidence: None,
            report: None,
        }
    }

    /// A Job judged as [`ObservedJob::from_job`] does, except that a Job of one
    /// completion whose Pod has Succeeded (every container exited 0) has succeeded: the
    /// Job controller batches Pod updates and marks it Complete up to a second later, a
    /// second each node, prepare check and hook would wait for nothing. A Pod's failure
    /// is still judged by the Job, which may retry it.
    pub fn from_job_and_pods<'p>(
        job: &Job,
        pods: impl IntoIterator<Item = &'p crate::evidence::JobPod>,
    ) -> Self {
        let mut observed = Self::from_job(job);
        let one_completion = job
            .spec
            .as_ref()
            .is_none_or(|s| s.completions.unwrap_or(1) == 1);
        let pods: Vec<&crate::evidence::JobPod> = pods.into_iter().collect();
        let pod_succeeded = pods.iter().any(|pod| pod.succeeded);
        if observed.state == JobState::Running && one_completion && pod_succeeded {
            observed.state = JobState::Succeeded;
        }
        observed.report = pods
            .iter()
            .max_by_key(|p| p.created)
            .and_then(|p| p.runner_end.as_ref())
            .and_then(|end| end.message.clone());
        observed
    }
}

/// A Pod by namespace and name, shown as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name` of each Pod, as status and messages show them.
pub fn pod_names(pods: &[PodRef]) -> Vec<String> {
    pods.iter().map(ToString::to_string).collect()
}

/// A Pod on a node being drained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owned by a DaemonSet (it would come straight back, so it is not evicted).
    pub daemonset: bool,
    /// A static (mirror) Pod, which the Eviction API cannot remove.
    pub mirror: bool,
    /// Succeeded or Failed: holds no workload.
    pub finished: bool,
    /// Already being deleted.
    pub terminating: bool,
    /// No controller owns it: nothing recreates it once it is evicted.
    pub unmanaged: bool,
    /// It mounts an emptyDir volume, whose data an eviction deletes.
    pub empty_dir: bool,
    /// Its Ready condition is True: a budget counts it as healthy.
    pub ready: bool,
    /// Its labels, which PodDisruptionBudgets select on.
    pub labels: BTreeMap<String, String>,
}

/// A PodDisruptionBudget, reduced to what the drain preview reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedBudget {
    /// Namespace (a budget covers Pods of its own namespace only).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which Pods it covers; None covers none (a null selector, or one that cannot be read).
    pub selector: Option<Selector>,
    /// `status.disruptionsAllowed`: 0 refuses every eviction of a Pod it covers.
    pub disruptions_allowed: i32,
    /// `status.expectedPods`: 1 for a budget over a single replica, which an eviction can
    /// never satisfy.
    pub expected_pods: i32,
}

impl ObservedBudget {
    /// Reduces a PodDisruptionBudget; an empty selector covers every Pod of its namespace.
    pub fn from_budget(budget: &PodDisruptionBudget) -> Self {
        Self {
            namespace: budget.metadata.namespace.clone().unwrap_or_default(),
            name: budget.metadata.name.clone().unwrap_or_default(),
            selector: budget
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .and_then(|s| Selector::try_from(s).ok()),
            disruptions_allowed: budget.status.as_ref().map_or(0, |s| s.disruptions_allowed),
            expected_pods: budget.status.as_ref().map_or(0, |s| s.expected_pods),
        }
    }

    /// True when it covers `pod`.
    pub fn covers(&self, pod: &ObservedPod) -> bool {
        self.namespace == pod.namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl ObservedPod {
    /// Drops from a Pod everything [`ObservedPod::from_pod`] does not read: a drained
    /// node's cache then holds its Pods' names, owners, labels, readiness and emptyDir
    /// volumes, not their containers (a node Job's Pod carries its whole script).
    pub fn prune(pod: &mut Pod) {
        let metadata = &mut pod.metadata;
        metadata.managed_fields = None;
        keep_only(&mut metadata.annotations, MIRROR_ANNOTATION);
        if let Some(spec) = pod.spec.as_mut() {
            let volumes = spec.volumes.take().map(|volumes| {
                volumes
                    .into_iter()
                    .filter(|v| v.empty_dir.is_some())
                    .collect::<Vec<_>>()
            });
            *spec = PodSpec {
                volumes: volumes.filter(|kept| !kept.is_empty()),
                node_name: spec.node_name.take(),
                ..PodSpec::default()
            };
        }
        if let Some(status) = pod.status.as_mut() {
            let conditions = status.conditions.take().map(|conditions| {
                conditions
                    .into_iter()
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        ..PodCondition::default()
                    })
                    .collect()
            });
            *status = PodStatus {
                phase: status.phase.take(),
                conditions,
                ..PodStatus::default()
            };
        }
    }

    /// Reduces a Pod to what the drain decides on.
    pub fn from_pod(pod: &Pod) -> Self {
        let metadata = &pod.metadata;
        let owners = metadata.owner_references.as_deref().unwrap_or_default();
        let controller = owners.iter().find(|o| o.controller == Some(true));
        Self {
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
            daemonset: controller.is_some_and(|o| o.kind == "DaemonSet"),
            mirror: metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
            finished: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed"),
            terminating: metadata.deletion_timestamp.is_some(),
            unmanaged: controller.is_none(),
            empty_dir: pod
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|v| v.empty_dir.is_some()),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            labels: metadata.labels.clone().unwrap_or_default(),
        }
    }

    /// Which Pod this is.
    pub fn reference(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Another K8sUpgrade in the cluster, for the one-upgrade-at-a-time lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherUpgrade {
    /// Its name.
    pub name: String,
    /// True when its status says a run is under way (or failed half-way), which holds
    /// the cluster until it ends.
    pub holds_lock: bool,
    /// True when it waits to start (Pending and not paused): the older of two waiting
    /// K8sUpgrades starts first.
    pub waiting: bool,
    /// Its creation time in seconds since the epoch; the older one goes first when two
    /// start at once.
    pub created: i64,
}

/// Everything one reconcile observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every node in the cluster, shared with the operator's cache: a decision reads them
    /// where the cache holds them rather than copying thousands of nodes each time.
    pub nodes: std::sync::Arc<Vec<ObservedNode>>,
    /// The upgrade Jobs this K8sUpgrade owns.
    pub jobs: Vec<ObservedJob>,
    /// The Pods on each node being drained, by node name. A node missing here has not
    /// been looked at yet, which is not the same as a node with no Pods.
    pub pods: BTreeMap<String, Vec<ObservedPod>>,
    /// The other K8sUpgrade objects.
    pub others: Vec<OtherUpgrade>,
    /// The PodDisruptionBudgets, read while a node drains.
    pub budgets: Vec<ObservedBudget>,
    /// The operator's own Pod, evicted last when its node is drained.
    pub operator_pod: Option<PodRef>,
    /// What the gates look at; gathered only when [`crate::needs`] asks for it.
    pub gates: crate::gates::GateInputs,
    /// The hook Jobs named in status.hooks that are not finished, when they exist.
    pub hook_jobs: Vec<ObservedJob>,
    /// What the postflight looks at; gathered in the Postflight phase.
    pub postflight: Option<crate::gates::PostflightInputs>,
    /// When each node [`crate::Needs::heartbeats_of`] names last renewed its Lease in
    /// kube-node-lease (Unix seconds), or why it could not be read. The kubelet renews it
    /// every 10 s; the Ready condition's own heartbeat moves only every few minutes.
    pub heartbeats: BTreeMap<String, Result<i64, String>>,
}

impl Observed {
    /// Every node by name, for lookups in a loop over many.
    pub fn nodes_by_name(&self) -> HashMap<&str, &ObservedNode> {
        self.nodes.iter().map(|n| (n.name.as_str(), n)).collect()
    }

    /// The Job with this name.
    pub fn job(&self, name: &str) -> Option<&ObservedJob> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node shaped like a real kubeadm worker's: images, managed fields, annotations,
    /// capacity and condition messages.
    fn full_node() -> Node {
        let images: Vec<serde_json::Value> = (0..36)
            .map(|i| {
                serde_json::json!({
                    "names": [format!("registry.k8s.io/some/image-{i}@sha256:{:064x}", i),
                              format!("registry.k8s.io/some/image-{i}:v1.{i}.0")],
                    "sizeBytes": 12_345_678 + i,
                })
            })
            .collect();
        let condition = |type_: &str, status: &str| {
            serde_json::json!({"type": type_, "status": status,
                "lastHeartbeatTime": "2026-11-23T07:00:00Z",
                "lastTransitionTime": "2026-11-20T07:00:00Z",
                "reason": format!("Kubelet{type_}"),
                "message": "kubelet is posting ready status, or has sufficient memory available"})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "worker-7",
                "labels": {"kubernetes.io/hostname": "worker-7", "kubernetes.io/os": "linux"},
                "annotations": {
                    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "upchain.dev/prepared": "fleet/v1.35.2/1796000000",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:images": {}, "f:nodeInfo": {}}}}]
            },
            "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"],
                     "unschedulable": true,
                     "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110"},
                "conditions": [condition("MemoryPressure", "False"), condition("DiskPressure", "True"),
                               condition("PIDPressure", "False"), condition("Ready", "True")],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.7"},
                              {"type": "Hostname", "address": "worker-7"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                    "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12",
                    "containerRuntimeVersion": "containerd://1.7.22", "kubeletVersion": "v1.34.2",
                    "kubeProxyVersion": "v1.34.2", "operatingSystem": "linux", "architecture": "amd64"},
                "images": images,
            }
        }))
        .expect("a valid Node")
    }

    #[test]
    fn a_node_is_observed_by_what_upchain_decides_on() {
        let node = full_node();
        let observed = ObservedNode::from_node(&node);
        assert!(observed.unschedulable && observed.ready);
        assert_eq!(observed.pressure, ["DiskPressure"]);
        assert_eq!(observed.internal_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            observed.prepared.as_deref(),
            Some("fleet/v1.35.2/1796000000")
        );
    }

    fn job(completions: i32, condition: Option<&str>) -> Job {
        let conditions: Vec<serde_json::Value> = condition
            .map(|type_| serde_json::json!({"type": type_, "status": "True"}))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {"completions": completions, "template": {}},
            "status": {"conditions": conditions},
        }))
        .expect("a valid Job")
    }

    fn pod(phase: &str) -> crate::evidence::JobPod {
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "j-1"}, "status": {"phase": phase}}),
        )
        .expect("a valid Pod");
        crate::evidence::JobPod::from_pod(&pod)
    }

    #[test]
    fn a_job_whose_one_pod_succeeded_has_succeeded_before_the_job_controller_says_so() {
        let state = |job: &Job, pods: &[crate::evidence::JobPod]| {
            ObservedJob::from_job_and_pods(job, pods).state
        };
        assert_eq!(
            state(&job(1, None), &[pod("Succeeded")]),
            JobState::Succeeded
        );
        assert_eq!(state(&job(1, None), &[pod("Running")]), JobState::Running);
        // A failed Pod may be retried: only the Job's Failed condition ends it.
        assert_eq!(state(&job(1, None), &[pod("Failed")]), JobState::Running);
        // More than one completion is the Job's to count.
        assert_eq!(state(&job(2, None), &[pod("Succeeded")]), JobState::Running);
        // The Job's own verdict stands.
        assert!(matches!(
            state(&job(1, Some("Failed")), &[pod("Succeeded")]),
            JobState::Failed { .. }
        ));
        assert_eq!(state(&job(1, Some("Complete")), &[]), JobState::Succeeded);
    }

    #[test]
    fn a_pruned_pod_is_observed_as_the_whole_one() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "apps",
                "labels": {"app": "web"},
                "annotations": {"kubernetes.io/config.mirror": "x", "checksum/config": "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "worker-1",
                "containers": [{"name": "web", "image": "web:1", "command": ["sh", "-c", "x".repeat(4096)]}],
                "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "config", "configMap": {"name": "c"}}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "message": "ready"}],
                "containerStatuses": [{"name": "web", "image": "web:1", "imageID": "i",
                    "ready": true, "restartCount": 0}]}
        }))
        .expect("a valid Pod");
        let mut pruned = pod.clone();
        ObservedPod::prune(&mut pruned);
        assert_eq!(ObservedPod::from_pod(&pruned), ObservedPod::from_pod(&pod));
        let observed = ObservedPod::from_pod(&pod);
        assert!(observed.mirror && observed.empty_dir && observed.ready && !observed.unmanaged);
        let size = |p: &Pod| serde_json::to_vec(p).expect("serializes").len();
        assert!(
            size(&pruned) * 5 < size(&pod),
            "{} of {}",
            size(&pruned),
            size(&pod)
        );
    }
}
