//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with a
//! CRD's additionalPrinterColumns for custom resources and kubectl's usual columns for
//! nodes, Pods, Jobs and Deployments.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::registry::ResourceType;

/// `5s`, `3m`, `7h`, `12d`, as kubectl prints ages.
pub fn age(created: &str, now: Timestamp) -> String {
    let Ok(created) = created.parse::<Timestamp>() else {
        return "<unknown>".to_owned();
    };
    let seconds = now.duration_since(created).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn column(name: &str, type_: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

/// Follows a simple JSONPath such as `.status.phase` or `.spec.targetVersion`.
fn json_path<'a>(object: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.')
        .split('.')
        .filter(|k| !k.is_empty())
        .fold(object, |v, k| &v[k])
}

fn cell(value: &Value) -> Value {
    match value {
        Value::Null => json!("<none>"),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => value.clone(),
        other => json!(other.to_string()),
    }
}

fn condition(object: &Value, type_: &str) -> Option<bool> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| c["status"] == "True")
}

/// Computes one row's cells from an object.
type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

/// The columns and the cells of each object for a type.
fn layout(rt: &ResourceType, crd: Option<&Value>, now: Timestamp) -> (Vec<Value>, Cells) {
    let created = move |o: &Value| {
        json!(age(
            o["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default(),
            now
        ))
    };
    let name = |o: &Value| o["metadata"]["name"].clone();
    if let Some(crd) = crd {
        let printer: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == rt.version.as_str())
            .and_then(|v| v["additionalPrinterColumns"].as_array().cloned())
            .unwrap_or_default();
        if !printer.is_empty() {
            let mut columns = vec![column("Name", "string", 0)];
            columns.extend(printer.iter().map(|c| {
                column(
                    c["name"].as_str().unwrap_or_default(),
                    "string",
                    c["priority"].as_i64().unwrap_or(0),
                )
            }));
            return (
                columns,
                Box::new(move |o| {
                    let mut cells = vec![name(o)];
                    cells.extend(printer.iter().map(|c| {
                        let value = json_path(o, c["jsonPath"].as_str().unwrap_or_default());
                        if c["type"] == "date" {
                            json!(
                                value
                                    .as_str()
                                    .map_or_else(|| "<none>".to_owned(), |t| age(t, now))
                            )
                        } else {
                            cell(value)
                        }
                    }));
                    cells
                }),
            );
        }
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "nodes") => (
            ["Name", "Status", "Roles", "Age", "Version"]
                .iter()
                .map(|c| column(c, "string", 0))
                .collect(),
            Box::new(move |o| {
                let mut status = if condition(o, "Ready") == Some(true) {
                    "Ready"
                } else {
                    "NotReady"
                }
                .to_owned();
                if o["spec"]["unschedulable"] == true {
                    status.push_str(",SchedulingDisabled");
                }
                let roles: Vec<&str> = o["metadata"]["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                    .collect();
                let roles = if roles.is_empty() {
                    "<none>".to_owned()
                } else {
                    roles.join(",")
                };
                vec![
                    name(o),
                    json!(status),
                    json!(roles),
                    created(o),
                    cell(&o["status"]["nodeInfo"]["kubeletVersion"]),
                ]
            }),
        ),
        ("", "pods") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "string", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
            ],
            Box::new(move |o| {
                let containers = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = o["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["ready"] == true)
                    .count();
                let phase = if o["metadata"]["deletionTimestamp"].is_string() {
                    json!("Terminating")
                } else {
                    cell(&o["status"]["phase"])
                };
                vec![
                    name(o),
                    json!(format!("{ready}/{containers}")),
                    phase,
                    json!(0),
                    created(o),
                    cell(&o["status"]["podIP"]),
                    cell(&o["spec"]["nodeName"]),
                ]
            }),
        ),
        ("batch", "jobs") => (
            ["Name", "Status", "Completions", "Age"]
                .iter()
                .map(|c| column(c, "string", 0))
                .collect(),
            Box::new(move |o| {
                let status = match (condition(o, "Complete"), condition(o, "Failed")) {
                    (Some(true), _) => "Complete",
                    (_, Some(true)) => "Failed",
                    _ => "Running",
                };
                let succeeded = o["status"]["succeeded"].as_i64().unwrap_or(0);
                vec![
                    name(o),
                    json!(status),
                    json!(format!("{succeeded}/1")),
                    created(o),
                ]
            }),
        ),
        ("apps", "deployments") => (
            ["Name", "Ready", "Up-to-date", "Available", "Age"]
                .iter()
                .map(|c| column(c, "string", 0))
                .collect(),
            Box::new(move |o| {
                let ready = o["status"]["readyReplicas"].as_i64().unwrap_or(0);
                let wanted = o["spec"]["replicas"].as_i64().unwrap_or(1);
                vec![
                    name(o),
                    json!(format!("{ready}/{wanted}")),
                    cell(&o["status"]["updatedReplicas"]),
                    cell(&o["status"]["availableReplicas"]),
                    created(o),
                ]
            }),
        ),
        _ => (
            vec![column("Name", "string", 0), column("Age", "string", 0)],
            Box::new(move |o| vec![name(o), created(o)]),
        ),
    }
}

/// The Table for `objects` of type `rt`; `crd` is the type's CRD, for custom resources.
pub fn table(
    rt: &ResourceType,
    crd: Option<&Value>,
    objects: &[Value],
    resource_version: u64,
    now: Timestamp,
) -> Value {
    let (columns, cells) = layout(rt, crd, now);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let metadata = o["metadata"].clone();
            json!({"cells": cells(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()},
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-01-03T00:00:00Z".parse().expect("time");
        assert_eq!(age("2026-01-02T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-02T23:00:00Z", now), "60m");
        assert_eq!(age("2026-01-02T00:00:00Z", now), "24h");
        assert_eq!(age("2025-12-01T00:00:00Z", now), "33d");
    }

    #[test]
    fn custom_resources_use_printer_columns() {
        let crd = serde_json::to_value(upchain_api::crd()).expect("crd");
        let rt = crate::registry::from_crd(&crd).remove(0);
        let object = json!({"metadata": {"name": "u", "creationTimestamp": "2026-01-02T23:59:00Z"},
            "spec": {"targetVersion": "1.35.2"}, "status": {"phase": "Workers", "progress": "3/7", "currentNode": "w-4"}});
        let now: Timestamp = "2026-01-03T00:00:00Z".parse().expect("time");
        let table = table(&rt, Some(&crd), &[object], 7, now);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["Name", "Target", "Phase", "Progress", "Node", "Age"]
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["u", "1.35.2", "Workers", "3/7", "w-4", "60s"])
        );
    }
}
