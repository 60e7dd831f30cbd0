//! Patch formats: JSON merge patch (RFC 7386), strategic merge patch for the list fields
//! clients rely on, JSON patch (RFC 6902), and server-side apply with field ownership.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Why a patch cannot be applied; reported as 400 (bad patch) or 409 (apply conflict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch is malformed or does not apply.
    #[error("{0}")]
    Invalid(String),
    /// Server-side apply would take fields another manager owns.
    #[error("Apply failed with {} conflict(s): {}; re-apply with force to take them over", .0.len(), .0.join("; "))]
    Conflict(Vec<String>),
}

/// The merge key of the lists strategic merge patch merges element by element.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "volumeMounts" | "ports"
        | "ownerReferences" => Some(if field == "ownerReferences" {
            "uid"
        } else if field == "volumeMounts" {
            "mountPath"
        } else {
            "name"
        }),
        "conditions" => Some("type"),
        "taints" => Some("key"),
        "addresses" => Some("type"),
        _ => None,
    }
}

/// RFC 7386: objects merge recursively, null deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    merge(target, patch, false);
}

/// Strategic merge patch for the fields clients use: like a merge patch, but the known
/// keyed lists (containers, env, conditions, taints, ...) merge element by element, and an
/// element with `"$patch": "delete"` is removed.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    merge(target, patch, true);
}

fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if strategic && (key.starts_with("$setElementOrder/") || key.starts_with("$retainKeys")) {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let keyed = merge_key(key).filter(|_| strategic);
        match (keyed, value, target.get_mut(key)) {
            (Some(merge_key), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = &item[merge_key];
                    let position = existing.iter().position(|e| &e[merge_key] == id);
                    let delete = item["$patch"].as_str() == Some("delete");
                    match (position, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (Some(i), false) => merge(&mut existing[i], item, strategic),
                        (None, false) => existing.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            _ => merge(
                target.entry(key.clone()).or_insert(Value::Null),
                value,
                strategic,
            ),
        }
    }
}

fn pointer_parts(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| {
        PatchError::Invalid(format!("JSON patch path `{path}` must start with /"))
    })?;
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_and_key<'a>(
    doc: &'a mut Value,
    path: &str,
) -> Result<(&'a mut Value, String), PatchError> {
    let mut parts = pointer_parts(path)?;
    let last = parts
        .pop()
        .ok_or_else(|| PatchError::Invalid("JSON patch cannot target the root".into()))?;
    let mut parent = doc;
    for part in parts {
        parent = match parent {
            Value::Object(map) => map.get_mut(&part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Invalid(format!("JSON patch path `{path}` does not exist")))?;
    }
    Ok((parent, last))
}

/// RFC 6902 JSON patch: add, remove, replace, test, copy, move.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON patch is an array of operations".into()))?;
    for operation in operations {
        let op = operation["op"].as_str().unwrap_or_default();
        let path = operation["path"].as_str().unwrap_or_default();
        let from_value = |doc: &Value| {
            let from = operation["from"].as_str().unwrap_or_default();
            doc.pointer(from).cloned().ok_or_else(|| {
                PatchError::Invalid(format!("JSON patch from `{from}` does not exist"))
            })
        };
        match op {
            "add" | "replace" | "copy" | "move" => {
                let value = match op {
                    "copy" | "move" => from_value(doc)?,
                    _ => operation["value"].clone(),
                };
                if op == "move" {
                    remove(doc, operation["from"].as_str().unwrap_or_default())?;
                }
                if path.is_empty() {
                    *doc = value;
                    continue;
                }
                let (parent, key) = parent_and_key(doc, path)?;
                match parent {
                    Value::Object(map) => {
                        if op == "replace" && !map.contains_key(&key) {
                            return Err(PatchError::Invalid(format!(
                                "JSON patch replace: `{path}` does not exist"
                            )));
                        }
                        map.insert(key, value);
                    }
                    Value::Array(items) => {
                        let index = if key == "-" {
                            items.len()
                        } else {
                            key.parse().unwrap_or(usize::MAX)
                        };
                        match (op, index <= items.len()) {
                            ("replace", _) if index < items.len() => items[index] = value,
                            ("add" | "copy" | "move", true) => items.insert(index, value),
                            _ => {
                                return Err(PatchError::Invalid(format!(
                                    "JSON patch index out of range at `{path}`"
                                )));
                            }
                        }
                    }
                    _ => {
                        return Err(PatchError::Invalid(format!(
                            "JSON patch path `{path}` is not in an object or array"
                        )));
                    }
                }
            }
            "remove" => remove(doc, path)?,
            "test" => {
                if doc.pointer(path) != Some(&operation["value"]) {
                    return Err(PatchError::Invalid(format!(
                        "JSON patch test failed at `{path}`"
                    )));
                }
            }
            other => {
                return Err(PatchError::Invalid(format!(
                    "unknown JSON patch operation `{other}`"
                )));
            }
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<(), PatchError> {
    let (parent, key) = parent_and_key(doc, path)?;
    let removed = match parent {
        Value::Object(map) => map.remove(&key).is_some(),
        Value::Array(items) => match key.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    };
    if removed {
        Ok(())
    } else {
        Err(PatchError::Invalid(format!(
            "JSON patch remove: `{path}` does not exist"
        )))
    }
}

/// The leaf paths of a value (objects descend; arrays and scalars are leaves).
fn leaves(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(
                    v,
                    &format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// Which manager owns which leaf paths of one object, as server-side apply tracks it.
pub type Ownership = BTreeMap<String, BTreeSet<String>>;

/// Server-side apply of `applied` by `manager` onto `live`: the applied fields are set,
/// fields this manager applied before and no longer applies are removed unless another
/// manager owns them, and a field another manager owns with a different value is a
/// conflict unless `force`. Identity and bookkeeping metadata are not owned.
pub fn apply(
    live: &mut Value,
    applied: &Value,
    manager: &str,
    force: bool,
    ownership: &mut Ownership,
) -> Result<(), PatchError> {
    let mut fields = BTreeSet::new();
    leaves(applied, "", &mut fields);
    fields.retain(|f| {
        !matches!(
            f.as_str(),
            "/apiVersion"
                | "/kind"
                | "/metadata/name"
                | "/metadata/namespace"
                | "/metadata/resourceVersion"
        )
    });
    let mut conflicts = Vec::new();
    for (other, owned) in ownership.iter().filter(|(m, _)| m.as_str() != manager) {
        for field in fields.intersection(owned) {
            if live.pointer(field) != applied.pointer(field) && live.pointer(field).is_some() {
                conflicts.push(format!(
                    "conflict with \"{other}\": {}",
                    field.replace('/', ".")
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(PatchError::Conflict(conflicts));
    }
    if force {
        for (_, owned) in ownership.iter_mut().filter(|(m, _)| m.as_str() != manager) {
            owned.retain(|f| !fields.contains(f));
        }
    }
    let previous = ownership.remove(manager).unwrap_or_default();
    for dropped in previous.difference(&fields) {
        let owned_elsewhere = ownership.values().any(|o| o.contains(dropped));
        if !owned_elsewhere {
            let _ = remove(live, dropped);
        }
    }
    merge_patch(live, &strip_nulls(applied));
    ownership.insert(manager.to_owned(), fields);
    ownership.retain(|_, owned| !owned.is_empty());
    Ok(())
}

/// Apply configurations never delete by null; a null is simply not owned.
fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn strategic_merge_merges_keyed_lists() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}
        ]}, "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        strategic_merge_patch(
            &mut node,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]},
                    "spec": {"unschedulable": true, "taints": [{"key": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(node["status"]["conditions"][0]["status"], "False");
        assert_eq!(node["status"]["conditions"][1]["type"], "DiskPressure");
        assert_eq!(node["spec"]["unschedulable"], true);
        assert_eq!(node["spec"]["taints"], json!([]));
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "3"},
                {"op": "remove", "path": "/list/0"},
                {"op": "add", "path": "/list/-", "value": 9},
                {"op": "test", "path": "/list", "value": [2, 9]},
            ]),
        )
        .expect("applies");
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "3", "b": "2"}}, "list": [2, 9]})
        );
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/list", "value": []}])
            )
            .is_err()
        );
    }

    #[test]
    fn apply_tracks_ownership_and_conflicts() {
        let mut live = json!({"metadata": {"name": "x"}});
        let mut owners = Ownership::new();
        apply(
            &mut live,
            &json!({"spec": {"a": 1, "b": 2}}),
            "one",
            false,
            &mut owners,
        )
        .expect("first");
        // Re-applying without b removes it.
        apply(
            &mut live,
            &json!({"spec": {"a": 1}}),
            "one",
            false,
            &mut owners,
        )
        .expect("again");
        assert_eq!(live["spec"], json!({"a": 1}));
        // Another manager setting a to another value conflicts, unless forced.
        let err = apply(
            &mut live,
            &json!({"spec": {"a": 5}}),
            "two",
            false,
            &mut owners,
        )
        .expect_err("conflict");
        assert!(err.to_string().contains("\"one\""), "{err}");
        apply(
            &mut live,
            &json!({"spec": {"a": 5}}),
            "two",
            true,
            &mut owners,
        )
        .expect("forced");
        assert_eq!(live["spec"]["a"], 5);
        // Same value from two managers is shared, not a conflict.
        apply(
            &mut live,
            &json!({"spec": {"a": 5}}),
            "one",
            false,
            &mut owners,
        )
        .expect("shared");
    }
}
