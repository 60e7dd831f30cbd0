//! The scheduler: Ready, schedulable nodes, node selectors, required affinity and taints,
//! least loaded first.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::kubelet::upgrade_env;
use super::workloads::{taints_tolerated, tolerates};
use super::{Placement, State, deleting, name, namespace, terminal};
use crate::selector::{labels_of, requirement_matches};
use crate::store::{Key, Store, node_ready};

pub(super) fn affinity_allows(pod: &Value, node: &Value) -> bool {
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
pub(super) struct NodeFacts<'a> {
    node: &'a Value,
    ready: bool,
    unschedulable: bool,
    tainted: bool,
}

impl<'a> NodeFacts<'a> {
    pub(super) fn of(node: &'a Value) -> Self {
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

pub(super) fn node_feasible(pod: &Value, facts: &NodeFacts) -> bool {
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
pub(super) fn placement_constraints(pod: &Value) -> String {
    let spec = &pod["spec"];
    format!(
        "{}|{}|{}",
        spec["tolerations"], spec["nodeSelector"], spec["affinity"]
    )
}

/// Binds each unbound Pod to the feasible node with the fewest Pods (ties by name). Where
/// a Pod may go depends only on the Pod and the nodes, so a Pod that could not be placed
/// is tried again when a node changes, as the real scheduler's unschedulable queue does.
pub(super) fn schedule(
    store: &mut Store,
    state: &mut State,
    changed: &BTreeSet<Key>,
    now: Timestamp,
) {
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

/// Whether a node's taints and `spec.unschedulable` let `pod` be scheduled there: exposed
/// for tests that check placements against the nodes' state.
pub fn could_schedule(pod: &Value, node: &Value) -> bool {
    taints_tolerated(node, &pod["spec"]["tolerations"]) && affinity_allows(pod, node)
}
