//! The workload controllers: Deployments and StatefulSets keep their replicas,
//! DaemonSets put a Pod on every node whose taints they tolerate.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{
    changed_of, controlled_pods, deleting, name, namespace, owner_reference, phase, terminal, text,
};
use crate::store::{Key, Store};

pub(super) fn pod_from_template(
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

pub(super) fn workloads(store: &mut Store, changed: &BTreeSet<Key>) {
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

pub(super) fn tolerates(tolerations: &Value, key: &str, value: &str, effect: &str) -> bool {
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

pub(super) fn taints_tolerated(node: &Value, tolerations: &Value) -> bool {
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

/// A DaemonSet's Pods tolerate what the DaemonSet controller adds to every one of them:
/// cordoned, not-ready and unreachable nodes.
fn daemon_tolerations(own: &Value) -> Value {
    let mut tolerations = own.as_array().cloned().unwrap_or_default();
    for (key, effect) in [
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    ] {
        tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
    }
    Value::Array(tolerations)
}

pub(super) fn daemonsets(store: &mut Store, changed: &BTreeSet<Key>) {
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
        let tolerations = daemon_tolerations(&ds["spec"]["template"]["spec"]["tolerations"]);
        let eligible: Vec<String> = store
            .iter("nodes")
            .filter(|n| taints_tolerated(n, &tolerations))
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
            pod["spec"]["tolerations"] = tolerations.clone();
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
