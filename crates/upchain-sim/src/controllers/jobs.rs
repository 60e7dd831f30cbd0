//! The Job controller: a Pod per attempt, Complete and Failed conditions, deadlines and
//! TTLs.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::workloads::pod_from_template;
use super::{State, controlled_pods, deleting, name, namespace, phase, terminal, text, uid};
use crate::store::{Key, Store};

pub(super) fn after(since: &str, seconds: i64) -> Option<Timestamp> {
    since
        .parse::<Timestamp>()
        .ok()?
        .checked_add(SignedDuration::from_secs(seconds))
        .ok()
}

pub(super) fn jobs(store: &mut Store, state: &mut State, changed: &BTreeSet<Key>, now: Timestamp) {
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
        // The Job's podFailurePolicy, as the real controller applies it: the first rule a
        // failed Pod matches fails the Job at once, ignores the failure, or counts it.
        let mut failed = 0;
        let mut fail_job = None;
        for pod in owned.iter().filter(|p| phase(p) == "Failed") {
            match failure_rule(&job["spec"]["podFailurePolicy"], pod) {
                Some((index, "FailJob")) => {
                    fail_job.get_or_insert((index, name(pod).to_owned()));
                    failed += 1;
                }
                Some((_, "Ignore")) => {}
                _ => failed += 1,
            }
        }
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
        } else if let Some((index, pod)) = fail_job {
            for pod in &active {
                let _ = store.delete_own(pod);
            }
            finish(
                &mut status,
                "Failed",
                "PodFailurePolicy",
                &format!(
                    "Pod {}/{pod} failed matching FailJob rule at index {index}",
                    namespace(&job)
                ),
            );
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

/// The index and action of the first podFailurePolicy rule a failed Pod matches.
fn failure_rule<'a>(policy: &'a Value, pod: &Value) -> Option<(usize, &'a str)> {
    let rules = policy["rules"].as_array()?;
    rules.iter().enumerate().find_map(|(index, rule)| {
        let matched = if let Some(codes) = rule.get("onExitCodes") {
            let values: Vec<i64> = codes["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let container = codes["containerName"].as_str();
            pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| container.is_none_or(|n| c["name"] == n))
                .filter_map(|c| c["state"]["terminated"]["exitCode"].as_i64())
                .filter(|code| *code != 0)
                .any(|code| match codes["operator"].as_str() {
                    Some("In") => values.contains(&code),
                    Some("NotIn") => !values.contains(&code),
                    _ => false,
                })
        } else if let Some(conditions) = rule["onPodConditions"].as_array() {
            conditions.iter().any(|wanted| {
                pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == wanted["type"]
                            && c["status"] == wanted["status"].as_str().unwrap_or("True")
                    })
            })
        } else {
            false
        };
        matched.then(|| (index, rule["action"].as_str().unwrap_or("Count")))
    })
}
