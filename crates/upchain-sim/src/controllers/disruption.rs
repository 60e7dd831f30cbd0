//! The disruption controller: PodDisruptionBudgets' status.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{deleting, namespace, terminal};
use crate::selector::{label_selector_matches, labels_of};
use crate::store::{Key, Store, pod_ready};

pub(super) fn int_or_percent(value: &Value, total: usize, round_up: bool) -> Option<usize> {
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
pub(super) fn disruption_budgets(store: &mut Store, changed: &BTreeSet<Key>, now: Timestamp) {
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
            .filter(|p| !terminal(p))
            .filter(|p| label_selector_matches(&pdb["spec"]["selector"], &labels_of(p)))
            .collect();
        // As the real controller counts: a terminating Pod is not healthy but is still
        // expected, and a budget by maxUnavailable or a percentage expects what the Pods'
        // controllers ask for, however many Pods exist right now.
        let healthy = covered
            .iter()
            .filter(|p| !deleting(p) && pod_ready(p))
            .count();
        let spec = &pdb["spec"];
        let by_scale = spec["minAvailable"].is_null() || spec["minAvailable"].is_string();
        let expected = if by_scale {
            controllers_scale(store, namespace(&pdb), &covered).unwrap_or(covered.len())
        } else {
            covered.len()
        };
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

/// The replicas the Pods' controllers ask for, summed once per controller; None when a Pod
/// has no controller with a scale.
fn controllers_scale(store: &Store, namespace: &str, pods: &[&Value]) -> Option<usize> {
    let mut controllers = BTreeSet::new();
    for pod in pods {
        let owner = pod["metadata"]["ownerReferences"]
            .as_array()?
            .iter()
            .find(|o| o["controller"] == true)?;
        controllers.insert((
            owner["kind"].as_str()?.to_owned(),
            owner["name"].as_str()?.to_owned(),
        ));
    }
    let mut total = 0;
    for (kind, name) in controllers {
        let id = match kind.as_str() {
            "Deployment" => "deployments.apps",
            "StatefulSet" => "statefulsets.apps",
            "ReplicaSet" => "replicasets.apps",
            _ => return None,
        };
        let controller = store
            .iter_in(id, namespace)
            .find(|c| c["metadata"]["name"] == name)?;
        total += controller["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    }
    Some(total)
}
