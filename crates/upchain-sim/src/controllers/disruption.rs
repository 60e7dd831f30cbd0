//! The disruption controller: PodDisruptionBudgets' status.

use super::*;

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
            .filter(|p| !deleting(p) && !terminal(p))
            .filter(|p| label_selector_matches(&pdb["spec"]["selector"], &labels_of(p)))
            .collect();
        let expected = covered.len();
        let healthy = covered.iter().filter(|p| pod_ready(p)).count();
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
