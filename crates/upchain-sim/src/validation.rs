//! What a real kube-apiserver refuses in the built-in kinds upchain writes, worded as it
//! words it. A store without these rules accepts writes that fail on a real cluster, and a
//! test against it passes for the wrong reason.

use serde_json::Value;

use crate::registry::ResourceType;
use crate::store::ApiError;

/// Longest Event note events.k8s.io/v1 accepts, in bytes.
const EVENT_NOTE_BYTES: usize = 1024;
/// Longest label value, and longest name part of a label key.
const LABEL_VALUE_CHARS: usize = 63;

/// The validation errors of a create (`old` None) or an update of a built-in object.
pub fn builtin_errors(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("events.k8s.io", "Event") => {
            let note = object["note"].as_str().unwrap_or_default();
            if note.len() > EVENT_NOTE_BYTES {
                errors.push(format!(
                    "message: Invalid value: \"\": can have at most {EVENT_NOTE_BYTES} characters"
                ));
            }
        }
        ("batch", "Job") => job_errors(object, old, &mut errors),
        _ => {}
    }
    errors
}

/// A Job's Pod template: labels, restartPolicy (a Pod defaults it to Always, which a Job
/// refuses), podFailurePolicy's rule, and immutability once created.
fn job_errors(job: &Value, old: Option<&Value>, errors: &mut Vec<String>) {
    label_errors(&job["metadata"]["labels"], "metadata.labels", errors);
    let template = &job["spec"]["template"];
    label_errors(
        &template["metadata"]["labels"],
        "spec.template.metadata.labels",
        errors,
    );
    let restart_policy = template["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or_default();
    if restart_policy.is_empty() {
        errors.push(
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"".to_owned(),
        );
    } else if !matches!(restart_policy, "Never" | "OnFailure") {
        errors.push(format!(
            "spec.template.spec.restartPolicy: Unsupported value: \"{restart_policy}\": supported values: \"OnFailure\", \"Never\""
        ));
    } else if !job["spec"]["podFailurePolicy"].is_null() && restart_policy != "Never" {
        errors.push(format!(
            "spec.template.spec.restartPolicy: Invalid value: \"{restart_policy}\": only \"Never\" is supported when podFailurePolicy is specified"
        ));
    }
    if let Some(old) = old
        && old["spec"]["template"] != *template
    {
        errors.push("spec.template: Invalid value: field is immutable".to_owned());
    }
}

fn label_errors(labels: &Value, path: &str, errors: &mut Vec<String>) {
    let valid = |s: &str| {
        s.len() <= LABEL_VALUE_CHARS
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    for (key, value) in labels.as_object().into_iter().flatten() {
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.is_empty() || !valid(name) {
            errors.push(format!(
                "{path}: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must be no more than 63 characters"
            ));
        }
        let value = value.as_str().unwrap_or_default();
        if !valid(value) {
            errors.push(format!(
                "{path}: Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must be no more than 63 characters"
            ));
        }
    }
}

/// The refusal of a write that fails `builtin_errors`.
pub fn refusal(rt: &ResourceType, name: &str, errors: &[String]) -> ApiError {
    ApiError::Invalid(format!(
        "{}.{} \"{name}\" is invalid: {}",
        rt.kind,
        rt.group,
        errors.join(", ")
    ))
}
