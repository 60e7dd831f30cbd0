//! The kubelets: Pods start and finish, node-upgrade Pods take their node down and bring
//! it back at the target, timers fire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{
    LOG_ANNOTATION, OUTCOME_ANNOTATION, State, Timer, deleting, name, namespace, phase,
    set_node_ready, text, uid,
};
use crate::store::{Key, Store, node_ready};

/// `(NODE_NAME, TARGET_VERSION)` of a node-upgrade Pod, from whichever container has them
/// (an injected sidecar may come first).
pub(super) fn upgrade_env(pod: &Value) -> Option<(String, String)> {
    node_job_env(pod)
        .filter(|(mode, ..)| mode == "upgrade")
        .map(|(_, node, version)| (node, version))
}

/// `(NODE_NAME, snapshot)` of an etcd check (false) or snapshot (true) Pod.
fn etcd_env(pod: &Value) -> Option<(String, bool)> {
    node_job_env(pod)
        .filter(|(mode, ..)| mode.starts_with("etcd-"))
        .map(|(mode, node, _)| (node, mode == "etcd-snapshot"))
}

/// The value of `key` in the environment of the Pod's first container that sets it (the
/// node Job's; an injected sidecar may come first).
pub(crate) fn job_env(pod: &Value, key: &str) -> Option<String> {
    pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == key)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    })
}

/// What the node step reports for an etcd Pod: the control-plane Nodes' members, or a
/// snapshot of `node`'s copied to the Pod's destination.
fn etcd_report(store: &Store, pod: &Value, node: &str, snapshot: bool) -> String {
    if snapshot {
        let location = job_env(pod, "SNAPSHOT_LOCATION").unwrap_or_default();
        return crate::node_step::snapshot_report(node, &location);
    }
    let members: Vec<(String, String)> = store
        .type_by_id("nodes")
        .map(|nodes| {
            let all = crate::selector::Selector::default();
            store.list(&nodes, None, &all, &all)
        })
        .into_iter()
        .flatten()
        .filter(|n| n["metadata"]["labels"][crate::seed::CONTROL_PLANE_LABEL].is_string())
        .map(|n| {
            (
                text(&n, &["metadata", "name"]).to_owned(),
                n["status"]["addresses"][0]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    crate::node_step::etcd_report(&members)
}

/// Whether a node's upgrade Pod runs `kubeadm upgrade apply` (FIRST_CONTROL_PLANE).
fn runs_kubeadm_apply(pod: &Value) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .is_some_and(|containers| {
            containers.iter().any(|c| {
                c["env"].as_array().is_some_and(|env| {
                    env.iter()
                        .any(|e| e["name"] == "FIRST_CONTROL_PLANE" && e["value"] == "true")
                })
            })
        })
}

/// What `kubeadm upgrade apply` records in kube-system/kubeadm-config.
pub(crate) fn record_kubeadm_version(store: &mut Store, version: &str) {
    let Some(config_maps) = store.type_by_id("configmaps") else {
        return;
    };
    let Ok(mut config_map) = store.get(&config_maps, "kube-system", "kubeadm-config") else {
        return;
    };
    let version = if version.starts_with('v') {
        version.to_owned()
    } else {
        format!("v{version}")
    };
    config_map["data"]["ClusterConfiguration"] =
        json!(crate::seed::cluster_configuration(&version));
    let _ = store.write_own(config_map, false);
}

/// `(NODE_NAME, TARGET_VERSION)` of a node's prepare Pod.
fn prepare_env(pod: &Value) -> Option<(String, String)> {
    node_job_env(pod)
        .filter(|(mode, ..)| mode == "prepare")
        .map(|(_, node, version)| (node, version))
}

/// `(MODE, NODE_NAME, TARGET_VERSION)` of a node Job's Pod (MODE "upgrade" when unset).
fn node_job_env(pod: &Value) -> Option<(String, String, String)> {
    pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
        let env = c["env"].as_array()?;
        let value = |key: &str| {
            env.iter()
                .find(|e| e["name"] == key)
                .and_then(|e| e["value"].as_str())
                .map(str::to_owned)
        };
        Some((
            value("MODE").unwrap_or_else(|| "upgrade".to_owned()),
            value("NODE_NAME")?,
            value("TARGET_VERSION")?,
        ))
    })
}

/// A stable, distinct address per Pod, derived from its uid.
pub(super) fn pod_ip(pod: &Value) -> String {
    let serial =
        u64::from_str_radix(uid(pod).rsplit('-').next().unwrap_or_default(), 16).unwrap_or(0);
    format!("10.244.{}.{}", (serial / 250) % 250, serial % 250 + 1)
}

pub(crate) fn pod_status(
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

pub(super) fn finish_pod(
    store: &mut Store,
    namespace: &str,
    pod: &str,
    succeeded: bool,
    stamp: &str,
) {
    finish_pod_with(store, namespace, pod, if succeeded { 0 } else { 1 }, stamp);
}

/// Puts `report` in a Pod status's node Job container's termination message, as the
/// runner writes /dev/termination-log.
pub(crate) fn put_report(status: &mut Value, report: &str) {
    if let Some(containers) = status["containerStatuses"].as_array_mut() {
        for container in containers.iter_mut().filter(|c| c["name"] == "upgrade") {
            container["state"]["terminated"]["message"] = json!(report);
        }
    }
}

/// Ends a Pod's container with `exit_code`.
pub(super) fn finish_pod_with(
    store: &mut Store,
    namespace: &str,
    pod: &str,
    exit_code: i64,
    stamp: &str,
) {
    finish_pod_reporting(store, namespace, pod, exit_code, None, stamp);
}

/// Ends a Pod's container with `exit_code` and, in the same status write as a kubelet
/// makes it, `report` as the node Job container's termination message.
fn finish_pod_reporting(
    store: &mut Store,
    namespace: &str,
    pod: &str,
    exit_code: i64,
    report: Option<&str>,
    stamp: &str,
) {
    let succeeded = exit_code == 0;
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
    next["status"] = pod_status(&object, phase, Some(exit_code), &node, stamp);
    if let Some(report) = report {
        put_report(&mut next["status"], report);
    }
    let _ = store.write_own(next, true);
}

/// What `kubeadm upgrade` does to a control-plane node's static Pods (etcd keeps its own
/// version); those in `crash_looping` come back crash-looping.
pub(super) fn upgrade_static_pods(
    store: &mut Store,
    node: &str,
    version: &str,
    crash_looping: &BTreeSet<(String, String)>,
) {
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
        let crashing = crash_looping.contains(&(node.to_owned(), component));
        let Ok(mut written) = store.write_own(pod, false) else {
            continue;
        };
        if crashing {
            set_unready(&mut written, 7);
            let _ = store.write_own(written, true);
        }
    }
}

/// A Running Pod whose container keeps restarting: not Ready, `restarts` restarts.
pub fn set_unready(pod: &mut Value, restarts: i64) {
    let status = &mut pod["status"];
    status["conditions"] = json!([
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
    ]);
    if let Some(containers) = status["containerStatuses"].as_array_mut() {
        for container in containers {
            container["ready"] = json!(false);
            container["restartCount"] = json!(restarts);
        }
    }
}

pub(super) fn update_node(store: &mut Store, node: &str, change: impl FnOnce(&mut Value)) {
    let Some(nodes) = store.type_by_id("nodes") else {
        return;
    };
    let Ok(mut object) = store.get(&nodes, "", node) else {
        return;
    };
    change(&mut object);
    let _ = store.write_own(object, true);
}

/// Each Ready node's kubelet posts its status every `behaviour.heartbeat`, the nodes
/// spread over the interval: a pass touches only the nodes due, not every node.
pub(super) fn heartbeats(store: &mut Store, state: &mut State, now: Timestamp) {
    let interval = state.behaviour.heartbeat;
    if interval.is_zero() {
        return;
    }
    let step = SignedDuration::try_from(interval).unwrap_or_default();
    let later = |by: SignedDuration| now.saturating_add(by).unwrap_or(now);
    let due = state.heartbeats.get_or_insert_with(|| {
        let names: Vec<String> = store.iter("nodes").map(|n| name(n).to_owned()).collect();
        let count = names.len().max(1) as f64;
        names
            .into_iter()
            .enumerate()
            .map(|(i, node)| (later(step.mul_f64(i as f64 / count)), node))
            .collect()
    });
    let mut posted = Vec::new();
    while due.front().is_some_and(|(at, _)| *at <= now) {
        if let Some((_, node)) = due.pop_front() {
            due.push_back((later(step), node.clone()));
            posted.push(node);
        }
    }
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    for node in posted {
        // A kubelet that is down (its node NotReady) posts nothing.
        if !store.node(&node).is_some_and(node_ready) {
            continue;
        }
        update_node(store, &node, |object| {
            for condition in object["status"]["conditions"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                condition["lastHeartbeatTime"] = json!(stamp);
            }
        });
        renew_lease(store, &node, now);
    }
}

/// The node's Lease in kube-node-lease, renewed as a real kubelet renews it.
fn renew_lease(store: &mut Store, node: &str, now: Timestamp) {
    let Some(leases) = store.type_by_id("leases.coordination.k8s.io") else {
        return;
    };
    let renewed = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    match store.get(&leases, NODE_LEASE_NAMESPACE, node) {
        Ok(mut lease) => {
            lease["spec"]["renewTime"] = json!(renewed);
            let _ = store.write_own(lease, false);
        }
        Err(_) => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renewed},
            });
            let _ = store.create_own("coordination.k8s.io/v1", "Lease", lease);
        }
    }
}

const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

pub(super) fn kubelets(
    store: &mut Store,
    state: &mut State,
    changed: &BTreeSet<Key>,
    now: Timestamp,
) {
    let stamp = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).unwrap_or_default();
    // Pods that changed, Pods already starting, and every Pod on a node that changed (it
    // may have become Ready).
    let mut candidates: BTreeSet<(String, String)> = state
        .starting
        .keys()
        .chain(state.stopping.keys())
        .cloned()
        .collect();
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
    state.stopping.retain(|slot, _| present.contains(slot));
    for pod in pods {
        let node_name = text(&pod, &["spec", "nodeName"]);
        let node = nodes.get(node_name);
        if deleting(&pod) {
            stop(store, state, &pod, node, now);
            continue;
        }
        let Some(node) = node else {
            continue;
        };
        if !matches!(phase(&pod), "" | "Pending") || !node_ready(node) {
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
        let timer = match (upgrade_env(&pod), prepare_env(&pod)) {
            _ if etcd_env(&pod).is_some() => etcd_env(&pod).map(|(node, snapshot)| Timer::Etcd {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                node,
                snapshot,
            }),
            (Some((target_node, version)), _) => Some(Timer::Restart {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                node: target_node,
                version,
            }),
            (None, Some((target_node, version))) => Some(Timer::Prepare {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                node: target_node,
                version,
            }),
            _ if job_pod && outcome != Some("hang") => Some(Timer::Finish {
                namespace: namespace(&pod).to_owned(),
                pod: name(&pod).to_owned(),
                succeeded: outcome != Some("fail"),
            }),
            _ => None,
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

/// A terminating Pod's kubelet stops its containers, then deletes it for good. A Pod whose
/// node is gone goes at once (the Pod garbage collector's job); one on a node that is not
/// Ready waits for its kubelet to come back, as on a real cluster.
fn stop(store: &mut Store, state: &mut State, pod: &Value, node: Option<&Value>, now: Timestamp) {
    let graceful = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|grace| grace > 0);
    if !graceful {
        return;
    }
    let slot = (namespace(pod).to_owned(), name(pod).to_owned());
    if node.is_some_and(|node| !node_ready(node)) {
        state.stopping.remove(&slot);
        return;
    }
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_u64()
        .unwrap_or_default();
    let stopped_at = *state.stopping.entry(slot.clone()).or_insert_with(|| {
        let stop_time = state
            .behaviour
            .pod_stop_time
            .min(Duration::from_secs(grace));
        now.saturating_add(SignedDuration::try_from(stop_time).unwrap_or_default())
            .unwrap_or(now)
    });
    if node.is_none() || stopped_at <= now {
        state.stopping.remove(&slot);
        let _ = store.delete_pod(&slot.0, &slot.1, Some(0), Default::default());
    }
}

pub(super) fn fire_timers(store: &mut Store, state: &mut State, now: Timestamp) {
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
                let applies = store
                    .type_by_id("pods")
                    .and_then(|pods| store.get(&pods, &namespace, &pod).ok())
                    .is_some_and(|p| runs_kubeadm_apply(&p));
                if applies && !state.kubeadm_config_stale {
                    record_kubeadm_version(store, &version);
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
                upgrade_static_pods(store, &node, &kubelet, &state.crash_looping_after_upgrade);
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
            Timer::Prepare {
                namespace,
                pod,
                node,
                version,
            } => {
                let ready = !state.unprepared.contains(&node);
                let log = if ready {
                    format!("upchain[{node}]: ready for {version}\n")
                } else {
                    format!(
                        "upchain[{node}]: error: kubeadm kubelet kubectl {version} not found in \
                         the configured repository (managed, https://pkgs.k8s.io/core:/stable:); \
                         nothing was changed\n"
                    )
                };
                store.append_log(&namespace, &pod, &log);
                finish_pod_with(store, &namespace, &pod, if ready { 0 } else { 11 }, &stamp);
            }
            Timer::Etcd {
                namespace,
                pod,
                node,
                snapshot,
            } => {
                let Some(object) = store
                    .type_by_id("pods")
                    .and_then(|pods| store.get(&pods, &namespace, &pod).ok())
                else {
                    continue;
                };
                if snapshot && state.snapshot_refused {
                    let location = job_env(&object, "SNAPSHOT_LOCATION").unwrap_or_default();
                    store.append_log(
                        &namespace,
                        &pod,
                        &format!(
                            "upchain: the destination {location} refused the snapshot: cat: \
                             write error: No space left on device\n"
                        ),
                    );
                    finish_pod_with(store, &namespace, &pod, 23, &stamp);
                    continue;
                }
                let report = match (&state.etcd_report, snapshot) {
                    (Some(report), false) => report.clone(),
                    _ => etcd_report(store, &object, &node, snapshot),
                };
                store.append_log(&namespace, &pod, &format!("{report}\n"));
                finish_pod_reporting(store, &namespace, &pod, 0, Some(&report), &stamp);
            }
            Timer::Finish {
                namespace,
                pod,
                succeeded,
            } => {
                let printed = store
                    .type_by_id("pods")
                    .and_then(|pods| store.get(&pods, &namespace, &pod).ok())
                    .and_then(|p| {
                        p["metadata"]["annotations"][LOG_ANNOTATION]
                            .as_str()
                            .map(str::to_owned)
                    });
                if let Some(log) = printed {
                    store.append_log(&namespace, &pod, &format!("{log}\n"));
                }
                finish_pod(store, &namespace, &pod, succeeded, &stamp);
            }
        }
    }
}
