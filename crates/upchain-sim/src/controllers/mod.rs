//! What makes the store behave like a cluster: workload, DaemonSet, Job and PDB
//! controllers, a scheduler, and a kubelet per node that also "runs" node-upgrade Jobs.

mod disruption;
mod jobs;
mod kubelet;
mod scheduler;
mod workloads;

use disruption::disruption_budgets;
use jobs::jobs;
pub use kubelet::set_unready;
use kubelet::{fire_timers, heartbeats, kubelets};
pub(crate) use kubelet::{job_env, pod_status, put_report, record_kubeadm_version};
pub use scheduler::could_schedule;
use scheduler::schedule;
use workloads::{daemonsets, workloads};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::server::Shared;
use crate::store::{Key, Store};

/// How simulated nodes behave when an upgrade Job runs on their behalf.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// From the Job's Pod starting to its node restarting its kubelet.
    pub upgrade_time: Duration,
    /// How long the node is NotReady while its kubelet restarts.
    pub restart_time: Duration,
    /// From a Pod being bound to a node to it running.
    pub pod_start_time: Duration,
    /// From a Pod's deletion to its containers having stopped (capped by its grace
    /// period), as processes that honour SIGTERM take.
    pub pod_stop_time: Duration,
    /// How often each Ready node's kubelet posts its status (the conditions'
    /// lastHeartbeatTime moves, nothing else), spread over the interval as real kubelets
    /// are; zero: never.
    pub heartbeat: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            upgrade_time: Duration::from_secs(2),
            restart_time: Duration::from_secs(2),
            pod_start_time: Duration::from_secs(1),
            pod_stop_time: Duration::from_secs(1),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// Where a Pod was scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub pod: String,
    /// The node it was placed on.
    pub node: String,
    /// The Pod's labels.
    pub labels: BTreeMap<String, String>,
    /// For a node-upgrade Pod: the node it upgrades (its NODE_NAME).
    pub upgrades_node: Option<String>,
    /// When.
    pub at: Timestamp,
}

#[derive(Clone, Debug)]
enum Timer {
    /// The upgrade Pod reaches its kubelet restart (or fails, when told to).
    Restart {
        namespace: String,
        pod: String,
        node: String,
        version: String,
    },
    /// The node comes back at the new version and the upgrade Pod succeeds.
    Rejoin {
        namespace: String,
        pod: String,
        node: String,
        version: String,
    },
    /// A prepare Pod (MODE=prepare) ends: its node is ready, or a package is missing.
    Prepare {
        namespace: String,
        pod: String,
        node: String,
        version: String,
    },
    /// An etcd check or snapshot Pod ends with its report.
    Etcd {
        namespace: String,
        pod: String,
        node: String,
        snapshot: bool,
    },
    /// Another Job's Pod (a hook) runs to its end.
    Finish {
        namespace: String,
        pod: String,
        succeeded: bool,
    },
}

/// Pod annotation that decides how a Job Pod other than an upgrade Pod ends: `fail`
/// (exits 1) or `hang` (never ends); by default it succeeds after the upgrade time.
pub const OUTCOME_ANNOTATION: &str = "sim.upchain.dev/outcome";

/// Pod annotation whose text a Job Pod other than an upgrade Pod prints before it ends,
/// such as an etcd backup's report line.
pub const LOG_ANNOTATION: &str = "sim.upchain.dev/log";

/// The controllers' state and the behaviour faults tests set.
#[derive(Debug)]
pub struct State {
    /// Timing of node upgrades.
    pub behaviour: Behaviour,
    /// Nodes that never come back Ready after an upgrade.
    pub never_return: BTreeSet<String>,
    /// Upgrade Jobs for a node that fail, with how many failures are left.
    pub failing_jobs: BTreeMap<String, u32>,
    /// Nodes whose prepare Job finds no target packages (exit code 11), as when the
    /// node's repository or mirror lacks them.
    pub unprepared: BTreeSet<String>,
    /// What the etcd check reports instead of a healthy member per control-plane node.
    pub etcd_report: Option<String>,
    /// The snapshot destination refuses the upload: snapshot Jobs exit 23.
    pub snapshot_refused: bool,
    /// (node, component) control-plane static Pods that crash-loop once their node is
    /// upgraded.
    pub crash_looping_after_upgrade: BTreeSet<(String, String)>,
    /// `kubeadm upgrade apply` leaves kube-system/kubeadm-config at the old version, as
    /// when it stops before uploading its configuration.
    pub kubeadm_config_stale: bool,
    /// Lines a node's upgrade Pod prints before its last ones, such as a secret a careless
    /// script echoes.
    pub extra_log_lines: BTreeMap<String, Vec<String>>,
    /// A container injected first into every Job Pod, as a service mesh's admission
    /// webhook does (such as `istio-proxy`): the Pod's log then needs a container name.
    pub sidecar: Option<String>,
    /// Every scheduling decision, in order.
    pub placements: Vec<Placement>,
    /// When each upgraded node came back Ready at its new version.
    pub rejoins: Vec<(String, Timestamp)>,
    timers: Vec<(Timestamp, Timer)>,
    /// Pods bound to a Ready node, by (namespace, name), and when their containers will
    /// be running.
    starting: BTreeMap<(String, String), Timestamp>,
    /// Pods terminating on a Ready node, by (namespace, name), and when their containers
    /// will have stopped.
    stopping: BTreeMap<(String, String), Timestamp>,
    /// Jobs to look at again at a time (a deadline or a TTL), by (namespace, name).
    job_rechecks: BTreeMap<(String, String), Timestamp>,
    /// When each node's kubelet posts its status next, soonest first; filled on the first
    /// pass.
    heartbeats: Option<std::collections::VecDeque<(Timestamp, String)>>,
}

impl State {
    /// Fresh state.
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            never_return: BTreeSet::new(),
            failing_jobs: BTreeMap::new(),
            unprepared: BTreeSet::new(),
            etcd_report: None,
            snapshot_refused: false,
            crash_looping_after_upgrade: BTreeSet::new(),
            kubeadm_config_stale: false,
            extra_log_lines: BTreeMap::new(),
            sidecar: None,
            placements: Vec::new(),
            rejoins: Vec::new(),
            timers: Vec::new(),
            starting: BTreeMap::new(),
            stopping: BTreeMap::new(),
            job_rechecks: BTreeMap::new(),
            heartbeats: None,
        }
    }
}

/// Runs the controllers until `stop` turns true: a pass after every burst of changes,
/// every clock move, and at least every 50 ms.
pub async fn run(
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = shared.store().subscribe();
    let mut ticks = clock.subscribe();
    loop {
        {
            let mut store = shared.store();
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            reconcile(&mut store, &mut state);
        }
        // Our own writes wake us once more; the pass after them finds nothing to do.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = changes.recv() => {}
            _ = async {
                match ticks.as_mut() {
                    Some(ticks) => { let _ = ticks.changed().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        while changes.try_recv().is_ok() {}
    }
}

fn text<'a>(object: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(object, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

fn name(object: &Value) -> &str {
    text(object, &["metadata", "name"])
}

fn namespace(object: &Value) -> &str {
    text(object, &["metadata", "namespace"])
}

fn uid(object: &Value) -> &str {
    text(object, &["metadata", "uid"])
}

fn deleting(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

fn phase(pod: &Value) -> &str {
    text(pod, &["status", "phase"])
}

fn terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The Pods `owner` controls, borrowed (a DaemonSet has one on every node).
fn controlled_pods<'a>(store: &'a Store, owner: &'a Value) -> impl Iterator<Item = &'a Value> {
    store
        .dependents_of(uid(owner))
        .filter(|p| p["kind"] == "Pod" && controlled_by(p, owner))
}

/// `object` names `owner` as its controller.
fn controlled_by(object: &Value, owner: &Value) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["uid"].as_str() == Some(uid(owner)) && r["controller"] == true)
}

/// The objects of one type among `changed`, as they are now (gone ones left out).
fn changed_of(store: &Store, changed: &BTreeSet<Key>, id: &str) -> Vec<Value> {
    changed
        .iter()
        .filter(|(kind, _)| kind == id)
        .filter_map(|key| store.object_at(key))
        .cloned()
        .collect()
}

fn owner_reference(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name(owner), "uid": uid(owner),
           "controller": true, "blockOwnerDeletion": true})
}

fn set_node_ready(node: &mut Value, ready: bool, now: &str) {
    if let Some(conditions) = node["status"]["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
            c["status"] = json!(if ready { "True" } else { "Unknown" });
            c["reason"] = json!(if ready {
                "KubeletReady"
            } else {
                "NodeStatusUnknown"
            });
            c["message"] = json!(if ready {
                "kubelet is posting ready status"
            } else {
                "Kubelet stopped posting node status."
            });
            c["lastTransitionTime"] = json!(now);
            c["lastHeartbeatTime"] = json!(now);
        }
    }
}

/// The taint the node lifecycle controller keeps on a cordoned node, and only there.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The node lifecycle controller's part in a cordon: `spec.unschedulable` brings the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint, and uncordoning takes it away.
fn cordon_taints(store: &mut Store, changed: &BTreeSet<Key>) {
    for mut node in changed_of(store, changed, "nodes") {
        let cordoned = node["spec"]["unschedulable"] == true;
        let mut taints = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let tainted = taints.iter().any(|t| t["key"] == UNSCHEDULABLE_TAINT);
        if cordoned == tainted {
            continue;
        }
        if cordoned {
            let stamp = store.clock().rfc3339();
            taints.push(
                json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": stamp}),
            );
        } else {
            taints.retain(|t| t["key"] != UNSCHEDULABLE_TAINT);
        }
        node["spec"]["taints"] = json!(taints);
        if taints.is_empty()
            && let Some(spec) = node["spec"].as_object_mut()
        {
            spec.remove("taints");
        }
        let _ = store.write_own(node, false);
    }
}

/// One pass of every controller. Each looks only at what changed since the last pass
/// (and at what it asked to look at again later), so a pass costs what changed, not the
/// size of the cluster.
pub fn reconcile(store: &mut Store, state: &mut State) {
    let now = store.clock().now();
    fire_timers(store, state, now);
    heartbeats(store, state, now);
    let changed = store.take_changed();
    cordon_taints(store, &changed);
    workloads(store, &changed);
    daemonsets(store, &changed);
    jobs(store, state, &changed, now);
    schedule(store, state, &changed, now);
    // The kubelets also see the Pods bound in this very pass, so a Pod's start time is
    // taken from the moment it was bound.
    let changed: BTreeSet<Key> = changed.union(store.changed_so_far()).cloned().collect();
    kubelets(store, state, &changed, now);
    disruption_budgets(store, &changed, now);
}

#[cfg(test)]
mod tests {
    use super::disruption::int_or_percent;
    use super::scheduler::affinity_allows;
    use super::*;

    #[test]
    fn required_affinity_on_names_and_taints() {
        let node = json!({"metadata": {"name": "cp-1", "labels": {"zone": "a"}},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}});
        let mut pod = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["w-1"]}]}]}}}}});
        assert!(affinity_allows(&pod, &node));
        assert!(
            !could_schedule(&pod, &node),
            "control-plane taint not tolerated"
        );
        pod["spec"]["tolerations"] = json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]);
        assert!(could_schedule(&pod, &node));
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["values"] = json!(["cp-1"]);
        assert!(!could_schedule(&pod, &node));
        pod["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(!affinity_allows(&pod, &node));
    }

    #[test]
    fn percentages_round_like_the_disruption_controller() {
        assert_eq!(int_or_percent(&json!("50%"), 3, true), Some(2));
        assert_eq!(int_or_percent(&json!(1), 3, true), Some(1));
        assert_eq!(int_or_percent(&json!("x"), 3, true), None);
    }
}
