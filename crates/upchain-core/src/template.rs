//! Job templates that come from the user (hooks, the snapshot CronJob), checked the way the
//! API server checks a Job when it is created: a template it would refuse is named with
//! its reason when the spec is read, before anything runs, instead of being retried at
//! create time until a timeout.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobTemplateSpec;

/// Longest label value, and longest name part of a label key.
const LABEL_CHARS: usize = 63;

/// Why the API server would refuse a Job made from `template`; `field` names the template
/// in the spec (such as `spec.hooks.pre.template`) for the message.
pub fn job_template_error(template: &JobTemplateSpec, field: &str) -> Option<String> {
    let job = template.spec.as_ref();
    let pod = job.and_then(|s| s.template.spec.as_ref());
    if pod.is_none_or(|p| p.containers.is_empty()) {
        return Some(format!(
            "{field} has no containers: set spec.template.spec.containers"
        ));
    }
    let labels = [
        (
            template.metadata.as_ref().and_then(|m| m.labels.as_ref()),
            "metadata.labels",
        ),
        (
            job.and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
            "spec.template.metadata.labels",
        ),
    ];
    for (labels, path) in labels {
        if let Some(error) = labels.and_then(label_error) {
            return Some(format!("{field}.{path}: {error}"));
        }
    }
    let restart_policy = pod.and_then(|p| p.restart_policy.as_deref());
    match restart_policy {
        Some("Never") => None,
        Some("OnFailure") if job.is_some_and(|j| j.pod_failure_policy.is_some()) => Some(format!(
            "{field}.spec.template.spec.restartPolicy is OnFailure, but a Job with a \
             podFailurePolicy takes only Never: set restartPolicy: Never"
        )),
        Some("OnFailure") => None,
        other => Some(format!(
            "{field}.spec.template.spec.restartPolicy is {}, but a Job's Pods must not \
             restart forever: set restartPolicy: Never (or OnFailure)",
            other.map_or_else(|| "unset (Always)".to_owned(), |p| format!("{p:?}"))
        )),
    }
}

/// The first label whose key or value a Kubernetes label cannot hold.
fn label_error(labels: &BTreeMap<String, String>) -> Option<String> {
    let valid = |s: &str| {
        s.len() <= LABEL_CHARS
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    labels.iter().find_map(|(key, value)| {
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.is_empty() || !valid(name) {
            Some(format!(
                "label key {key:?} is not a valid label name (at most 63 letters, digits, \
                 '-', '_' or '.', starting and ending with a letter or digit)"
            ))
        } else if !valid(value) {
            Some(format!(
                "label {key}={value:?} is not a valid label value (at most 63 letters, \
                 digits, '-', '_' or '.', starting and ending with a letter or digit)"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(value: serde_json::Value) -> JobTemplateSpec {
        serde_json::from_value(value).expect("template")
    }

    fn with_pod(pod: serde_json::Value) -> JobTemplateSpec {
        template(serde_json::json!({"spec": {"template": {"spec": pod}}}))
    }

    #[test]
    fn a_template_the_api_server_takes_passes() {
        let ok = with_pod(serde_json::json!({"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}));
        assert_eq!(job_template_error(&ok, "t"), None);
        let on_failure = with_pod(serde_json::json!({"restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox"}]}));
        assert_eq!(job_template_error(&on_failure, "t"), None);
    }

    #[test]
    fn each_refusal_names_the_field_and_the_fix() {
        let cases = [
            (
                with_pod(serde_json::json!({"containers": []})),
                "t has no containers",
            ),
            (
                with_pod(serde_json::json!({"containers": [{"name": "c", "image": "i"}]})),
                "t.spec.template.spec.restartPolicy is unset (Always)",
            ),
            (
                with_pod(
                    serde_json::json!({"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}),
                ),
                "set restartPolicy: Never",
            ),
            (
                template(
                    serde_json::json!({"metadata": {"labels": {"team": "x".repeat(64)}},
                    "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
                ),
                "t.metadata.labels: label team=",
            ),
            (
                template(
                    serde_json::json!({"spec": {"template": {"metadata": {"labels": {"a b": "x"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
                ),
                "t.spec.template.metadata.labels: label key \"a b\"",
            ),
            (
                template(
                    serde_json::json!({"spec": {"podFailurePolicy": {"rules": []},
                    "template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}),
                ),
                "takes only Never",
            ),
        ];
        for (template, expected) in cases {
            let error = job_template_error(&template, "t").expect("refused");
            assert!(
                error.contains(expected),
                "{error} should contain {expected}"
            );
        }
    }
}
