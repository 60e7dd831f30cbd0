//! What makes the store behave like a cluster: workload, DaemonSet, Job and PDB
//! controllers, a scheduler, and a kubelet per node that also "runs" node-upgrade Jobs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::selector::{label_selector_matches, labels_of, requirement_matches};
use crate::server::Shared;
use crate::store::{Key, Store, node_ready};

/// How simulated nodes behave when an upgrade Job runs on their behalf.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// From the Job's Pod starting to its node restarting its kubelet.
    pub upgrade_time: Duration,
    /// How long the node is NotReady while its kubelet restarts.
    pub restart_time: Duration,
    /// From a Pod being bound to a node to it running.
    pub pod_start_time: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            upgrade_time: Duration::from_secs(2),
            restart_time: Duration::from_secs(2),
            pod_start_time: Duration::from_secs(1),
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
    /// Another Job's Pod (such as an etcd snapshot) runs to its end.
    Finish {
        namespace: String,
        pod: String,
        succeeded: bool,
    },
}

/// Pod annotation that decides how a Job Pod other than an upgrade Pod ends: `fail`
/// (exits 1) or `hang` (never ends); by default it succeeds after the upgrade time.
pub const OUTCOME_ANNOTATION: &str = "sim.upchain.dev/outcome";

/// The controllers' state and the behaviour faults tests set.
#[derive(Debug)]
pub struct State {
    /// Timing of node upgrades.
    pub behaviour: Behaviour,
    /// Nodes that never come back Ready after an upgrade.
    pub never_return: BTreeSet<String>,
    /// Upgrade Jobs for a node that fail, with how many failures are left.
    pub failing_jobs: BTreeMap<String, u32>,
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
    /// Jobs to look at again at a time (a deadline or a TTL), by (namespace, name).
    job_rechecks: BTreeMap<(String, String), Timestamp>,
}

impl State {
    /// Fresh state.
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            never_return: BTreeSet::new(),
            failing_jobs: BTreeMap::new(),
            extra_log_lines: BTreeMap::new(),
            sidecar: None,
            placements: Vec::new(),
            rejoins: Vec::new(),
            timers: Vec::new(),
            starting: BTreeMap::new(),
            job_rechecks: BTreeMap::new(),
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

/// One pass of every controller. Each looks only at what changed since the last pass
/// (and at what it asked to look at again later), so a pass costs what changed, not the
/// size of the cluster.
pub fn reconcile(store: &mut Store, state: &mut State) {
    let now = store.clock().now();
    fire_timers(store, state, now);
    let changed = store.take_changed();
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

fn pod_from_template(
    owner: &Value,
    template: &Value,
    pod_name: Option<String>,
    extra_labels: &[(&str, &str)],
) -> Value {
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["namespace"] = json!(namespace(owner));
    match pod_name {
        Some(pod_name) => metadata["name"] = json!(pod_name),
        None => metadata["generateName"] = json!(format!("{}-", name(owner))),
    }
    for (k, v) in extra_labels {
        metadata["labels"][*k] = json!(v);
    }
    metadata["ownerReferences"] = json!([owner_reference(owner)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"].clone(), "status": {"phase": "Pending"}})
}

fn workloads(store: &mut Store, changed: &BTreeSet<Key>) {
    for kind in ["deployments.apps", "statefulsets.apps"] {
        for workload in changed_of(store, changed, kind) {
            if deleting(&workload) {
                continue;
            }
            let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
            let owned: Vec<Value> = controlled_pods(store, &workload)
                .filter(|p| !deleting(p) && !terminal(p))
                .cloned()
                .collect();
            let stateful = kind.starts_with("statefulsets");
            if owned.len() < replicas {
                let taken: BTreeSet<&str> = owned.iter().map(name).collect();
                let mut ordinal = 0;
                for _ in owned.len()..replicas {
                    let pod_name = stateful.then(|| {
                        loop {
                            let candidate = format!("{}-{ordinal}", name(&workload));
                            ordinal += 1;
                            if !taken.contains(candidate.as_str()) {
                                break candidate;
                            }
                        }
                    });
                    let pod =
                        pod_from_template(&workload, &workload["spec"]["template"], pod_name, &[]);
                    let _ = store.create_own("v1", "Pod", pod);
                }
            } else {
                for extra in owned.iter().skip(replicas) {
                    let _ = store.delete_own(extra);
                }
            }
            let ready = owned.iter().filter(|p| phase(p) == "Running").count();
            let mut next = workload.clone();
            let generation = workload["metadata"]["generation"].clone();
            next["status"] = json!({
                "observedGeneration": generation, "replicas": owned.len(), "updatedReplicas": owned.len(),
                "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": owned.len(),
                "conditions": [
                    {"type": "Available", "status": if ready >= replicas { "True" } else { "False" },
                     "reason": if ready >= replicas { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            });
            let _ = store.write_own(next, true);
        }
    }
}

fn tolerates(tolerations: &Value, key: &str, value: &str, effect: &str) -> bool {
    tolerations.as_array().into_iter().flatten().any(|t| {
        let t_key = t["key"].as_str().unwrap_or_default();
        let t_effect = t["effect"].as_str().unwrap_or_default();
        let key_ok = match t["operator"].as_str().unwrap_or("Equal") {
            "Exists" => t_key.is_empty() || t_key == key,
            _ => t_key == key && t["value"].as_str().unwrap_or_default() == value,
        };
        key_ok && (t_effect.is_empty() || t_effect == effect)
    })
}

fn taints_tolerated(node: &Value, tolerations: &Value) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|taint| {
            let effect = taint["effect"].as_str().unwrap_or_default();
            effect == "PreferNoSchedule"
                || tolerates(
                    tolerations,
                    text(taint, &["key"]),
                    text(taint, &["value"]),
                    effect,
                )
        })
}

fn daemonsets(store: &mut Store, changed: &BTreeSet<Key>) {
    // A node's taints, or its coming and going, concern every DaemonSet.
    let daemonsets = if changed.iter().any(|(kind, _)| kind == "nodes") {
        store.iter("daemonsets.apps").cloned().collect()
    } else {
        changed_of(store, changed, "daemonsets.apps")
    };
    for ds in daemonsets {
        if deleting(&ds) {
            continue;
        }
        let tolerations = &ds["spec"]["template"]["spec"]["tolerations"];
        let eligible: Vec<String> = store
            .iter("nodes")
            .filter(|n| taints_tolerated(n, tolerations))
            .map(|n| name(n).to_owned())
            .collect();
        let owned: Vec<&Value> = controlled_pods(store, &ds)
            .filter(|p| !deleting(p))
            .collect();
        let covered: BTreeSet<&str> = owned
            .iter()
            .map(|p| text(p, &["spec", "nodeName"]))
            .collect();
        let missing: Vec<String> = eligible
            .iter()
            .filter(|n| !covered.contains(n.as_str()))
            .cloned()
            .collect();
        let orphaned: Vec<Value> = owned
            .iter()
            .filter(|p| store.node(text(p, &["spec", "nodeName"])).is_none())
            .map(|p| (*p).clone())
            .collect();
        let scheduled = owned.len();
        let ready = owned.iter().filter(|p| phase(p) == "Running").count();
        for node in missing {
            let mut pod = pod_from_template(&ds, &ds["spec"]["template"], None, &[]);
            pod["spec"]["nodeName"] = json!(node);
            let _ = store.create_own("v1", "Pod", pod);
        }
        for pod in &orphaned {
            let _ = store.delete_own(pod);
        }
        let mut next = ds.clone();
        next["status"] = json!({
            "observedGeneration": ds["metadata"]["generation"], "desiredNumberScheduled": eligible.len(),
            "currentNumberScheduled": scheduled, "updatedNumberScheduled": scheduled,
            "numberReady": ready, "numberAvailable": ready, "numberMisscheduled": 0,
        });
        let _ = store.write_own(next, true);
    }
}

fn after(since: &str, seconds: i64) -> Option<Timestamp> {
    since
        .parse::<Timestamp>()
        .ok()?
        .checked_add(SignedDuration::from_secs(seconds))
        .ok()
}

fn jobs(store: &mut Store, state: &mut State, changed: &BTreeSet<Key>, now: Timestamp) {
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    let mut due: BTreeSet<Key> = BTreeSet::new();
    state.job_rechecks.retain(|slot, at| {
        let keep = *at > now;
        if !keep {
            due.insert(("jobs.batch".to_owned(), slot.clone()));
        }
        keep
    });
    due.extend(
        changed
            .iter()
            .filter(|(kind, _)| kind == "jobs.batch")
            .cloned(),
    );
    let jobs: Vec<Value> = due
        .iter()
        .filter_map(|key| store.object_at(key))
        .cloned()
        .collect();
    for job in jobs {
        if deleting(&job) {
            continue;
        }
        let slot = (namespace(&job).to_owned(), name(&job).to_owned());
        let finished_at = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .map(|c| text(c, &["lastTransitionTime"]).to_owned());
        if let Some(finished_at) = finished_at {
            let ttl = job["spec"]["ttlSecondsAfterFinished"].as_i64();
            match ttl.and_then(|ttl| after(&finished_at, ttl)) {
                Some(expiry) if expiry <= now => {
                    let _ = store.delete_own(&job);
                }
                Some(expiry) => {
                    state.job_rechecks.insert(slot, expiry);
                }
                None => {}
            }
            continue;
        }
        let owned: Vec<Value> = controlled_pods(store, &job).cloned().collect();
        let active: Vec<&Value> = owned
            .iter()
            .filter(|p| !terminal(p) && !deleting(p))
            .collect();
        let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count();
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count();
        let backoff_limit = job["spec"]["backoffLimit"].as_u64().unwrap_or(6) as usize;
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        if status["startTime"].is_null() {
            status["startTime"] = json!(stamp);
        }
        let deadline = job["spec"]["activeDeadlineSeconds"]
            .as_i64()
            .and_then(|ads| after(text(&status, &["startTime"]), ads));
        let deadline_passed = deadline.is_some_and(|deadline| deadline <= now);
        if let Some(deadline) = deadline.filter(|_| !deadline_passed) {
            state.job_rechecks.insert(slot, deadline);
        }
        let finish = |status: &mut Value, type_: &str, reason: &str, message: &str| {
            let target = if type_ == "Complete" {
                "SuccessCriteriaMet"
            } else {
                "FailureTarget"
            };
            status["conditions"] = json!([
                {"type": target, "status": "True", "reason": reason, "message": message, "lastTransitionTime": stamp, "lastProbeTime": stamp},
                {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": stamp, "lastProbeTime": stamp},
            ]);
        };
        if succeeded >= 1 {
            finish(
                &mut status,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            status["completionTime"] = json!(stamp);
        } else if deadline_passed {
            for pod in &active {
                let _ = store.delete_own(pod);
            }
            finish(
                &mut status,
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            );
        } else if failed > backoff_limit {
            finish(
                &mut status,
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
        } else if active.is_empty() {
            let job_name = name(&job).to_owned();
            let controller_uid = uid(&job).to_owned();
            let mut pod = pod_from_template(
                &job,
                &job["spec"]["template"],
                None,
                &[
                    ("batch.kubernetes.io/job-name", &job_name),
                    ("job-name", &job_name),
                    ("batch.kubernetes.io/controller-uid", &controller_uid),
                ],
            );
            if let (Some(sidecar), Some(containers)) =
                (&state.sidecar, pod["spec"]["containers"].as_array_mut())
            {
                containers.insert(0, json!({"name": sidecar, "image": "sidecar"}));
            }
            let _ = store.create_own("v1", "Pod", pod);
        }
        let finished = !status["conditions"].is_null();
        status["active"] = json!(if finished { 0 } else { active.len() });
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        let mut next = job.clone();
        next["status"] = status;
        let _ = store.write_own(next, true);
    }
}

fn affinity_allows(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let affinity_ok = match terms.as_array() {
        None => true,
        Some(terms) => terms.iter().any(|term| {
            term["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| requirement_matches(r, label(r["key"].as_str().unwrap_or_default())))
                && term["matchFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|r| {
                        r["key"] == "metadata.name" && requirement_matches(r, Some(name(node)))
                    })
        }),
    };
    selector_ok && affinity_ok
}

/// What the scheduler reads of a node, read once per pass rather than once per Pod.
struct NodeFacts<'a> {
    node: &'a Value,
    ready: bool,
    unschedulable: bool,
    tainted: bool,
}

impl<'a> NodeFacts<'a> {
    fn of(node: &'a Value) -> Self {
        Self {
            node,
            ready: node_ready(node),
            unschedulable: node["spec"]["unschedulable"].as_bool() == Some(true),
            tainted: node["spec"]["taints"]
                .as_array()
                .is_some_and(|t| !t.is_empty()),
        }
    }
}

fn node_feasible(pod: &Value, facts: &NodeFacts) -> bool {
    let tolerations = &pod["spec"]["tolerations"];
    (facts.ready
        || tolerates(
            tolerations,
            "node.kubernetes.io/not-ready",
            "",
            "NoSchedule",
        ))
        && (!facts.unschedulable
            || tolerates(
                tolerations,
                "node.kubernetes.io/unschedulable",
                "",
                "NoSchedule",
            ))
        && (!facts.tainted || taints_tolerated(facts.node, tolerations))
        && affinity_allows(pod, facts.node)
}

/// What decides where a Pod may go: Pods alike in these share one feasibility check.
fn placement_constraints(pod: &Value) -> String {
    let spec = &pod["spec"];
    format!(
        "{}|{}|{}",
        spec["tolerations"], spec["nodeSelector"], spec["affinity"]
    )
}

/// Binds each unbound Pod to the feasible node with the fewest Pods (ties by name). Where
/// a Pod may go depends only on the Pod and the nodes, so a Pod that could not be placed
/// is tried again when a node changes, as the real scheduler's unschedulable queue does.
fn schedule(store: &mut Store, state: &mut State, changed: &BTreeSet<Key>, now: Timestamp) {
    let recent = store.changed_so_far();
    let any_node_changed = changed.iter().chain(recent).any(|key| key.0 == "nodes");
    let pending: Vec<Value> = store
        .pods_on("")
        .filter(|p| !deleting(p) && !terminal(p))
        .filter(|p| {
            let key = (
                "pods".to_owned(),
                (namespace(p).to_owned(), name(p).to_owned()),
            );
            any_node_changed || changed.contains(&key) || recent.contains(&key)
        })
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for pod in pending {
        let constraints = placement_constraints(&pod);
        match groups.iter_mut().find(|(c, _)| *c == constraints) {
            Some((_, pods)) => pods.push(pod),
            None => groups.push((constraints, vec![pod])),
        }
    }
    // Which nodes each group may use is read while the nodes are borrowed; their loads are
    // read afterwards, group by group, so each group sees the placements before it.
    let names: Vec<String> = store.iter("nodes").map(|n| name(n).to_owned()).collect();
    let feasible: Vec<Vec<usize>> = {
        let nodes: Vec<NodeFacts> = store.iter("nodes").map(NodeFacts::of).collect();
        groups
            .iter()
            .map(|(_, pods)| {
                (0..nodes.len())
                    .filter(|&i| node_feasible(&pods[0], &nodes[i]))
                    .collect()
            })
            .collect()
    };
    for ((_, pods), feasible) in groups.into_iter().zip(feasible) {
        let mut candidates: BinaryHeap<Reverse<(usize, String)>> = feasible
            .into_iter()
            .map(|i| Reverse((store.pod_count_on(&names[i]), names[i].clone())))
            .collect();
        for pod in pods {
            let mut next = pod.clone();
            let Some(Reverse((load, node_name))) = candidates.pop() else {
                next["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": format!("0/{} nodes are available: no node is Ready, schedulable, tolerated and allowed by the Pod's node selector and affinity", names.len())}]);
                let _ = store.write_own(next, true);
                continue;
            };
            next["spec"]["nodeName"] = json!(node_name);
            if store.write_own(next, false).is_ok() {
                state.placements.push(Placement {
                    namespace: namespace(&pod).to_owned(),
                    pod: name(&pod).to_owned(),
                    node: node_name.clone(),
                    labels: labels_of(&pod),
                    upgrades_node: upgrade_env(&pod).map(|(node, _)| node),
                    at: now,
                });
            }
            candidates.push(Reverse((load + 1, node_name)));
        }
    }
}

/// `(NODE_NAME, TARGET_VERSION)` of a node-upgrade Pod, from whichever container has them
/// (an injected sidecar may come first).
fn upgrade_env(pod: &Value) -> Option<(String, String)> {
    pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
        let env = c["env"].as_array()?;
        let value = |key: &str| {
            env.iter()
                .find(|e| e["name"] == key)
                .and_then(|e| e["value"].as_str())
                .map(str::to_owned)
        };
        Some((value("NODE_NAME")?, value("TARGET_VERSION")?))
    })
}

/// A stable, distinct address per Pod, derived from its uid.
fn pod_ip(pod: &Value) -> String {
    let serial =
        u64::from_str_radix(uid(pod).rsplit('-').next().unwrap_or_default(), 16).unwrap_or(0);
    format!("10.244.{}.{}", (serial / 250) % 250, serial % 250 + 1)
}

fn pod_status(
    pod: &Value,
    phase: &str,
    exit_code: Option<i64>,
    node: &Value,
    stamp: &str,
) -> Value {
    let ready = phase == "Running";
    let state = match exit_code {
        None => json!({"running": {"startedAt": stamp}}),
        Some(code) => {
            json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": pod["status"]["startTime"].as_str().unwrap_or(stamp), "finishedAt": stamp}})
        }
    };
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c["name"], "image": c["image"], "ready": ready, "started": ready, "restartCount": 0, "state": state}))
        .collect();
    let host_ip = node["status"]["addresses"][0]["address"].clone();
    json!({
        "phase": phase, "hostIP": host_ip, "podIP": pod_ip(pod),
        "startTime": pod["status"]["startTime"].as_str().unwrap_or(stamp),
        "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
        ],
        "containerStatuses": containers,
    })
}

fn finish_pod(store: &mut Store, namespace: &str, pod: &str, succeeded: bool, stamp: &str) {
    let Some(pods) = store.type_by_id("pods") else {
        return;
    };
    let Ok(object) = store.get(&pods, namespace, pod) else {
        return;
    };
    let node = store
        .type_by_id("nodes")
        .and_then(|nodes| {
            store
                .get(&nodes, "", text(&object, &["spec", "nodeName"]))
                .ok()
        })
        .unwrap_or(Value::Null);
    let mut next = object.clone();
    let phase = if succeeded { "Succeeded" } else { "Failed" };
    next["status"] = pod_status(
        &object,
        phase,
        Some(if succeeded { 0 } else { 1 }),
        &node,
        stamp,
    );
    let _ = store.write_own(next, true);
}

/// What `kubeadm upgrade` does to a control-plane node's static Pods (etcd keeps its own
/// version).
fn upgrade_static_pods(store: &mut Store, node: &str, version: &str) {
    let on_node: Vec<Value> = store.pods_on(node).cloned().collect();
    for mut pod in on_node {
        let component = pod["metadata"]["labels"]["component"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let is_static = pod["metadata"]["labels"]["tier"] == "control-plane";
        if !is_static || pod["spec"]["nodeName"] != node || component == "etcd" {
            continue;
        }
        pod["spec"]["containers"][0]["image"] =
            json!(format!("registry.k8s.io/{component}:{version}"));
        let _ = store.write_own(pod, false);
    }
}

fn update_node(store: &mut Store, node: &str, change: impl FnOnce(&mut Value)) {
    let Some(nodes) = store.type_by_id("nodes") else {
        return;
    };
    let Ok(mut object) = store.get(&nodes, "", node) else {
        return;
    };
    change(&mut object);
    let _ = store.write_own(object, true);
}

fn kubelets(store: &mut Store, state: &mut State, changed: &BTreeSet<Key>, now: Timestamp) {
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    // Pods that changed, Pods already starting, and every Pod on a node that changed (it
    // may have become Ready).
    let mut candidates: BTreeSet<(String, String)> = state.starting.keys().cloned().collect();
    for (kind, slot) in changed {
        match kind.as_str() {
            "pods" => {
                candidates.insert(slot.clone());
            }
            "nodes" => candidates.extend(
                store
                    .pods_on(&slot.1)
                    .map(|p| (namespace(p).to_owned(), name(p).to_owned())),
            ),
            _ => {}
        }
    }
    let pods: Vec<Value> = candidates
        .iter()
        .filter_map(|slot| store.object_at(&("pods".to_owned(), slot.clone())))
        .cloned()
        .collect();
    let nodes: BTreeMap<String, Value> = pods
        .iter()
        .map(|p| text(p, &["spec", "nodeName"]))
        .filter(|n| !n.is_empty())
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .filter_map(|n| store.node(n).map(|node| (n.to_owned(), node.clone())))
        .collect();
    // Pods deleted while starting are forgotten.
    let present: BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| (namespace(p).to_owned(), name(p).to_owned()))
        .collect();
    state.starting.retain(|slot, _| present.contains(slot));
    for pod in pods {
        let node_name = text(&pod, &["spec", "nodeName"]);
        let Some(node) = nodes.get(node_name) else {
            continue;
        };
        if deleting(&pod) || !matches!(phase(&pod), "" | "Pending") || !node_ready(node) {
            continue;
        }
        let slot = (namespace(&pod).to_owned(), name(&pod).to_owned());
        let start_at = *state.starting.entry(slot.clone()).or_insert_with(|| {
            now.saturating_add(
                SignedDuration::try_from(state.behaviour.pod_start_time).unwrap_or_default(),
            )
            .unwrap_or(now)
        });
        if start_at > now {
            continue;
        }
        state.starting.remove(&slot);
        let mut next = pod.clone();
        next["status"] = pod_status(&pod, "Running", None, node, &stamp);
        if store.write_own(next, true).is_err() {
            continue;
        }
        let job_pod = pod["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|owners| owners.iter().any(|o| o["kind"] == "Job"));
        let outcome = pod["metadata"]["annotations"][OUTCOME_ANNOTATION].as_str();
        let timer = match upgrade_env(&pod) {
            Some((target_node, version)) => Some(Timer::Restart {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                node: target_node,
                version,
            }),
            None if job_pod && outcome != Some("hang") => Some(Timer::Finish {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                succeeded: outcome != Some("fail"),
            }),
            None => None,
        };
        if let Some(timer) = timer {
            let at = now
                .saturating_add(
                    SignedDuration::try_from(state.behaviour.upgrade_time).unwrap_or_default(),
                )
                .unwrap_or(now);
            state.timers.push((at, timer));
        }
    }
}

fn fire_timers(store: &mut Store, state: &mut State, now: Timestamp) {
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.timers)
        .into_iter()
        .partition(|(at, _)| *at <= now);
    state.timers = later;
    for (_, timer) in due {
        match timer {
            Timer::Restart {
                namespace,
                pod,
                node,
                version,
            } => {
                let extra = state
                    .extra_log_lines
                    .get(&node)
                    .cloned()
                    .unwrap_or_default();
                let mut log = format!(
                    "[upgrade-node] {node}: upgrading to {version}\n[upgrade-node] {node}: \
                     installing kubeadm {version}\n"
                );
                for line in extra {
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(left) = state.failing_jobs.get_mut(&node).filter(|left| **left > 0) {
                    *left -= 1;
                    log.push_str(&format!(
                        "E: Version '{version}-1.1' for 'kubeadm' was not found\n"
                    ));
                    store.append_log(&namespace, &pod, &log);
                    finish_pod(store, &namespace, &pod, false, &stamp);
                    continue;
                }
                log.push_str(&format!(
                    "[upgrade-node] {node}: kubeadm upgrade done; restarting the kubelet\n"
                ));
                store.append_log(&namespace, &pod, &log);
                update_node(store, &node, |n| set_node_ready(n, false, &stamp));
                let at = now
                    .saturating_add(
                        SignedDuration::try_from(state.behaviour.restart_time).unwrap_or_default(),
                    )
                    .unwrap_or(now);
                state.timers.push((
                    at,
                    Timer::Rejoin {
                        namespace,
                        pod,
                        node,
                        version,
                    },
                ));
            }
            Timer::Rejoin {
                namespace,
                pod,
                node,
                version,
            } => {
                let returns = !state.never_return.contains(&node);
                let kubelet = if version.starts_with('v') {
                    version
                } else {
                    format!("v{version}")
                };
                update_node(store, &node, |n| {
                    n["status"]["nodeInfo"]["kubeletVersion"] = json!(kubelet);
                    if returns {
                        set_node_ready(n, true, &stamp);
                    }
                });
                upgrade_static_pods(store, &node, &kubelet);
                if returns {
                    state.rejoins.push((node.clone(), now));
                }
                store.append_log(
                    &namespace,
                    &pod,
                    &format!("[upgrade-node] {node}: kubelet {kubelet} restarted; done\n"),
                );
                finish_pod(store, &namespace, &pod, true, &stamp);
            }
            Timer::Finish {
                namespace,
                pod,
                succeeded,
            } => finish_pod(store, &namespace, &pod, succeeded, &stamp),
        }
    }
}

fn int_or_percent(value: &Value, total: usize, round_up: bool) -> Option<usize> {
    if let Some(n) = value.as_u64() {
        return Some(n as usize);
    }
    let percent: usize = value.as_str()?.strip_suffix('%')?.parse().ok()?;
    let scaled = total * percent;
    Some(if round_up {
        scaled.div_ceil(100)
    } else {
        scaled / 100
    })
}

/// Recomputes the budgets of every namespace where a Pod or a budget changed.
fn disruption_budgets(store: &mut Store, changed: &BTreeSet<Key>, now: Timestamp) {
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    let namespaces: BTreeSet<&str> = changed
        .iter()
        .filter(|(kind, _)| kind == "pods" || kind == "poddisruptionbudgets.policy")
        .map(|(_, (ns, _))| ns.as_str())
        .collect();
    let pdbs: Vec<Value> = namespaces
        .into_iter()
        .flat_map(|ns| store.iter_in("poddisruptionbudgets.policy", ns))
        .cloned()
        .collect();
    for pdb in pdbs {
        let covered: Vec<&Value> = store
            .iter_in("pods", namespace(&pdb))
            .filter(|p| !deleting(p) && !terminal(p))
            .filter(|p| label_selector_matches(&pdb["spec"]["selector"], &labels_of(p)))
            .collect();
        let expected = covered.len();
        let healthy = covered.iter().filter(|p| phase(p) == "Running").count();
        let spec = &pdb["spec"];
        let desired = if !spec["minAvailable"].is_null() {
            int_or_percent(&spec["minAvailable"], expected, true).unwrap_or(expected)
        } else {
            expected.saturating_sub(
                int_or_percent(&spec["maxUnavailable"], expected, true).unwrap_or(0),
            )
        };
        let allowed = healthy.saturating_sub(desired);
        let condition_status = if allowed > 0 { "True" } else { "False" };
        // As the API server requires of every condition: the time it last changed.
        let previous = &pdb["status"]["conditions"][0];
        let changed_at = if previous["status"] == condition_status {
            previous["lastTransitionTime"].as_str().unwrap_or(&stamp)
        } else {
            &stamp
        };
        let mut next = pdb.clone();
        next["status"] = json!({
            "observedGeneration": pdb["metadata"]["generation"], "expectedPods": expected,
            "currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed,
            "conditions": [{"type": "DisruptionAllowed", "status": condition_status,
                "reason": if allowed > 0 { "SufficientPods" } else { "InsufficientPods" },
                "message": "", "lastTransitionTime": changed_at,
                "observedGeneration": pdb["metadata"]["generation"]}],
        });
        let _ = store.write_own(next, true);
    }
}

/// Whether a node's taints and `spec.unschedulable` let `pod` be scheduled there: exposed
/// for tests that check placements against the nodes' state.
pub fn could_schedule(pod: &Value, node: &Value) -> bool {
    taints_tolerated(node, &pod["spec"]["tolerations"]) && affinity_allows(pod, node)
}

#[cfg(test)]
mod tests {
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
