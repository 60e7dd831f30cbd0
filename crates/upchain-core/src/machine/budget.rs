//! The status's size budget. Every status write carries the whole status, and a batch of
//! `maxUnavailable` nodes keeps a record each: past [`STATUS_BUDGET`], what has a home
//! elsewhere leaves the status, so its size follows the batch, not the cluster or the
//! Pods on a node.

use upchain_api::{K8sUpgradeStatus, NodeRecord, NodeStep};

/// Bytes of serialized status the machine sheds detail to stay under.
pub const STATUS_BUDGET: usize = 16 * 1024;
/// Node names a message or `status.currentNode` lists before it counts the rest.
const NAMES_SHOWN: usize = 3;

/// `names` as a message shows a batch: all of them, or the first [`NAMES_SHOWN`] and a
/// count of the others.
pub(super) fn name_the_batch<S: AsRef<str>>(names: &[S], separator: &str) -> String {
    // Counting one name would take longer than naming it.
    let shown = if names.len() <= NAMES_SHOWN + 1 {
        names.len()
    } else {
        NAMES_SHOWN
    };
    let listed = names[..shown]
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(separator);
    match names.len() - shown {
        0 => listed,
        more => format!("{listed} and {more} more"),
    }
}

/// Drops the oldest Done record, counting it in `upgradedWithoutRecord` when it is of this
/// run's target (a record of an earlier target is history, not this run's progress).
/// Returns the record, or None when no record is Done.
pub(super) fn fold_oldest_done(status: &mut K8sUpgradeStatus) -> Option<NodeRecord> {
    let index = status.nodes.iter().position(|n| n.step == NodeStep::Done)?;
    let record = status.nodes.remove(index);
    if status.target_version.as_ref() == Some(&record.target_version) {
        status.upgraded_without_record += 1;
    }
    Some(record)
}

/// Sheds, until `status` fits [`STATUS_BUDGET`] or nothing is left to shed, in this
/// order: the Done records, oldest first (counted in `upgradedWithoutRecord`); the Pod
/// names of the records in flight (their DrainPreview Event lists them) and the results of
/// Jobs that succeeded (`job` names the Job, which keeps its Pod and log until its TTL,
/// and the JobSucceeded Event says it succeeded); the head of the plan (`pendingNodes`
/// still counts it); the messages of the records in flight. A failed record and the step
/// of a node in flight are never shed: they are what the run decides and explains itself
/// by.
pub(super) fn fit_the_budget(status: &mut K8sUpgradeStatus) {
    let mut size = json_len(&*status);
    while size > STATUS_BUDGET {
        let Some(record) = fold_oldest_done(status) else {
            break;
        };
        // The record and the comma that separated it.
        size = size.saturating_sub(json_len(&record) + 1);
    }
    for record in &mut status.nodes {
        if size <= STATUS_BUDGET {
            break;
        }
        shed(&mut size, record, shed_detail);
    }
    while size > STATUS_BUDGET {
        let Some(planned) = status.plan.pop() else {
            break;
        };
        size = size.saturating_sub(json_len(&planned) + 1);
    }
    // Last, what a record in flight says in words: its step, its times and the
    // conditions' message say where the batch is.
    for record in status.nodes.iter_mut().filter(|n| n.step.is_active()) {
        if size <= STATUS_BUDGET {
            break;
        }
        shed(&mut size, record, |r| r.message = None);
    }
}

/// Applies `shedding` to `record`, taking what it saved off `size`.
fn shed(size: &mut usize, record: &mut NodeRecord, shedding: impl FnOnce(&mut NodeRecord)) {
    let before = json_len(&*record);
    shedding(record);
    *size = size.saturating_sub(before.saturating_sub(json_len(&*record)));
}

/// What a record in flight can lose and still say where its node is.
fn shed_detail(record: &mut NodeRecord) {
    if let Some(preview) = &mut record.drain_preview {
        preview.evict.clear();
    }
    record.waiting_for_pods.clear();
    if record.job_result.as_ref().is_some_and(|r| r.succeeded) {
        record.job_result = None;
    }
}

/// The length of `value` as JSON; 0 for what cannot be serialized (nothing in a status).
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A record of `step`, with a drain preview of 20 Pods and a Job that ended
    /// (`succeeded` or not) with a full log tail.
    fn record(name: &str, step: &str, succeeded: bool) -> serde_json::Value {
        let pods: Vec<String> = (0..20).map(|i| format!("apps/web-{name}-{i:04}")).collect();
        let log: Vec<String> = (0..crate::evidence::LOG_LINES)
            .map(|i| format!("{name}: line {i} {}", "x".repeat(150)))
            .collect();
        json!({"name": name, "role": "Worker", "kind": "Minor", "targetVersion": "v1.35.2",
            "versionBefore": "v1.34.2", "step": step, "stepStartedAt": "2026-11-30T00:00:00Z",
            "attempts": 1, "failures": u8::from(!succeeded), "job": format!("run-{name}-1"),
            "startedAt": "2026-11-30T00:00:00Z", "waitingForPods": pods,
            "message": format!("waiting for {name} to be Ready with kubelet v1.35.2 \
                (kubelet reports v1.34.2, Ready=true)"),
            "drainPreview": {"evictCount": 20, "evict": pods},
            "jobResult": {"job": format!("run-{name}-1"), "succeeded": succeeded,
                "exitCode": if succeeded { 0 } else { 1 }, "logTail": log}})
    }

    fn status(done: usize, in_flight: usize, failed: usize) -> K8sUpgradeStatus {
        let mut nodes = Vec::new();
        nodes.extend((0..done).map(|i| record(&format!("done-{i}"), "Done", true)));
        nodes.extend((0..failed).map(|i| record(&format!("failed-{i}"), "Failed", false)));
        nodes.extend((0..in_flight).map(|i| record(&format!("busy-{i}"), "Rejoining", true)));
        let plan: Vec<_> = (0..crate::machine::PLAN_SHOWN)
            .map(|i| {
                json!({"name": format!("next-{i}"), "role": "Worker",
                "version": "v1.34.2", "kind": "Minor", "batch": 2})
            })
            .collect();
        serde_json::from_value(json!({"targetVersion": "v1.35.2", "nodes": nodes,
            "plan": plan, "pendingNodes": 4000, "upgradedWithoutRecord": 100}))
        .expect("a status")
    }

    #[test]
    fn a_status_sheds_what_lives_elsewhere_until_it_fits() {
        for (done, in_flight) in [(10, 1), (10, 10), (10, 25)] {
            let mut status = status(done, in_flight, 1);
            let before = status.clone();
            fit_the_budget(&mut status);
            let size = json_len(&status);
            assert!(
                size <= STATUS_BUDGET,
                "{size} bytes with {in_flight} in flight"
            );
            // Nothing a decision reads is lost: every node in flight and the failed one keep
            // their record and step, and every Done node is still counted.
            for kept in before.nodes.iter().filter(|n| n.step != NodeStep::Done) {
                let now = status.nodes.iter().find(|n| n.name == kept.name);
                assert_eq!(now.map(|n| n.step), Some(kept.step), "{}", kept.name);
            }
            let done_now = status
                .nodes
                .iter()
                .filter(|n| n.step == NodeStep::Done)
                .count();
            let folded = usize::try_from(status.upgraded_without_record - 100).expect(">= 0");
            assert_eq!(done_now + folded, done);
            // A failure keeps its evidence.
            let failed = status.nodes.iter().find(|n| n.step == NodeStep::Failed);
            let result = failed
                .and_then(|n| n.job_result.as_ref())
                .expect("evidence");
            assert_eq!(result.log_tail.len(), crate::evidence::LOG_LINES);
            assert!(failed.is_some_and(|n| n.message.is_some()));
            // A preview keeps its count: it is not computed (and announced) twice.
            assert!(status.nodes.iter().all(|n| n.drain_preview.is_some()));
            assert_eq!(status.pending_nodes, Some(4000));
        }
    }

    #[test]
    fn a_status_within_the_budget_is_left_whole() {
        let mut small = status(2, 1, 0);
        small.nodes.iter_mut().for_each(shed_detail);
        let before = small.clone();
        fit_the_budget(&mut small);
        assert_eq!(small, before);
    }

    #[test]
    fn what_cannot_be_shed_stays() {
        // 60 nodes in flight do not fit; they all keep their record all the same.
        let mut status = status(10, 60, 0);
        fit_the_budget(&mut status);
        assert_eq!(status.nodes.len(), 60);
        assert!(status.plan.is_empty());
        assert!(status.nodes.iter().all(|n| n.message.is_none()));
    }

    #[test]
    fn a_batch_is_named_in_full_up_to_four_then_counted() {
        assert_eq!(name_the_batch(&["a"], ", "), "a");
        assert_eq!(name_the_batch(&["a", "b", "c", "d"], ","), "a,b,c,d");
        assert_eq!(
            name_the_batch(&["a", "b", "c", "d", "e"], ", "),
            "a, b, c and 2 more"
        );
    }
}
