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

/// Most a ConfigMap's or Secret's data may hold, in bytes.
const DATA_BYTES: usize = 1024 * 1024;

/// Most an object's annotations may hold, keys and values together, in bytes.
const ANNOTATION_BYTES: usize = 256 * 1024;

/// Whether a list of `rt` may select on `field`, as the API server allows.
pub fn field_selectable(rt: &ResourceType, field: &str) -> bool {
    let kind_fields: &[&str] = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("batch", "Job") => &["status.successful"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    };
    matches!(field, "metadata.name" | "metadata.namespace") || kind_fields.contains(&field)
}

/// A DNS subdomain (RFC 1123), as most object names must be.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The validation errors of a create (`old` None) or an update of a built-in object.
pub fn builtin_errors(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !name.is_empty() && !dns_subdomain(name) {
        errors.push(format!(
            "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    metadata_errors(object, old, &mut errors);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "ConfigMap" | "Secret") => {
            let size: usize = ["data", "binaryData", "stringData"]
                .iter()
                .flat_map(|field| object[*field].as_object().into_iter().flatten())
                .map(|(key, value)| key.len() + value.as_str().map_or(0, str::len))
                .sum();
            if size > DATA_BYTES {
                errors.push(format!(
                    "[]: Too long: may not be more than {DATA_BYTES} bytes"
                ));
            }
        }
        ("coordination.k8s.io", "Lease")
            if object["spec"]["leaseDurationSeconds"]
                .as_i64()
                .is_some_and(|d| d <= 0) =>
        {
            errors.push(
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0".to_owned(),
            );
        }
        ("batch", "CronJob") => {
            let schedule = object["spec"]["schedule"].as_str().unwrap_or_default();
            if !cron_schedule(schedule) {
                errors.push(format!(
                    "spec.schedule: Invalid value: \"{schedule}\": unparseable schedule"
                ));
            }
        }
        ("", "Node") => {
            for taint in object["spec"]["taints"].as_array().into_iter().flatten() {
                let effect = taint["effect"].as_str().unwrap_or_default();
                if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                    errors.push(format!(
                        "spec.taints[0].effect: Unsupported value: \"{effect}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
                    ));
                }
            }
            let cidrs = object["spec"]["podCIDRs"].as_array().into_iter().flatten();
            for (index, cidr) in cidrs.enumerate() {
                let cidr = cidr.as_str().unwrap_or_default();
                if !ipv4_cidr(cidr) {
                    errors.push(format!(
                        "spec.podCIDRs[{index}]: Invalid value: \"{cidr}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
                    ));
                }
            }
        }
        ("events.k8s.io", "Event") => {
            let note = object["note"].as_str().unwrap_or_default();
            if note.len() > EVENT_NOTE_BYTES {
                errors.push(format!(
                    "message: Invalid value: \"\": can have at most {EVENT_NOTE_BYTES} characters"
                ));
            }
        }
        ("batch", "Job") => {
            job_errors(object, old, &mut errors);
            node_field_errors(
                &object["spec"]["template"]["spec"],
                "spec.template.spec",
                &mut errors,
            );
        }
        ("", "Pod") => node_field_errors(&object["spec"], "spec", &mut errors),
        _ => {}
    }
    errors
}

/// What every object's metadata must hold: valid labels, annotations within their size,
/// and no finalizer added once the object is being deleted.
fn metadata_errors(object: &Value, old: Option<&Value>, errors: &mut Vec<String>) {
    let metadata = &object["metadata"];
    label_errors(&metadata["labels"], "metadata.labels", errors);
    let annotation_bytes: usize = metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| key.len() + value.as_str().map_or(0, str::len))
        .sum();
    if annotation_bytes > ANNOTATION_BYTES {
        errors.push(format!(
            "metadata.annotations: Too long: may not be more than {ANNOTATION_BYTES} bytes"
        ));
    }
    let Some(old) = old.filter(|old| !old["metadata"]["deletionTimestamp"].is_null()) else {
        return;
    };
    let before = old["metadata"]["finalizers"].as_array();
    let added: Vec<&str> = metadata["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| !before.is_some_and(|before| before.contains(f)))
        .filter_map(Value::as_str)
        .collect();
    if !added.is_empty() {
        errors.push(format!(
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
        ));
    }
}

/// An IPv4 CIDR such as 10.9.8.0/24 (what the simulator's nodes use; IPv6 is not checked).
fn ipv4_cidr(cidr: &str) -> bool {
    if cidr.contains(':') {
        return true;
    }
    let Some((address, bits)) = cidr.split_once('/') else {
        return false;
    };
    address.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
}

/// A Pod spec's required node affinity on node fields (`matchFields`): In and NotIn take
/// exactly one value there.
fn node_field_errors(pod_spec: &Value, path: &str, errors: &mut Vec<String>) {
    let terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array();
    for (t, term) in terms.into_iter().flatten().enumerate() {
        for (r, requirement) in term["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let single = requirement["values"]
                .as_array()
                .is_some_and(|v| v.len() == 1);
            if matches!(requirement["operator"].as_str(), Some("In" | "NotIn")) && !single {
                errors.push(format!(
                    "{path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{t}].matchFields[{r}].values: Required value: must be only one value when `operator` is 'In' or 'NotIn' for node field selector"
                ));
            }
        }
    }
}

/// A cron schedule as the CronJob controller parses it: five fields, or a macro.
fn cron_schedule(schedule: &str) -> bool {
    let macros = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if macros.contains(&schedule) || schedule.starts_with("@every ") {
        return true;
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        })
}

/// A Job's Pod template: labels, restartPolicy (a Pod defaults it to Always, which a Job
/// refuses), podFailurePolicy's rule, and immutability once created.
fn job_errors(job: &Value, old: Option<&Value>, errors: &mut Vec<String>) {
    let template = &job["spec"]["template"];
    label_errors(
        &template["metadata"]["labels"],
        "spec.template.metadata.labels",
        errors,
    );
    if template["spec"]["containers"]
        .as_array()
        .is_none_or(|c| c.is_empty())
    {
        errors.push("spec.template.spec.containers: Required value".to_owned());
    }
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
