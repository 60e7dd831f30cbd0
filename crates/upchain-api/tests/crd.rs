//! The CRD as the API server sees it: structural, admission refusing bad objects with a
//! readable message, CEL rules within the cost budget, and `crds/` up to date.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use kube::core::cel::{Validator, WarningKind, apply_defaults, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = upchain_api::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

/// The OpenAPI checks the API server applies, for the subset of OpenAPI our schema uses.
fn openapi_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: must not be null"));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
    {
        return;
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: wrong type"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: Unsupported value {value}"));
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64()
        && (bound("minimum").is_some_and(|m| n < m) || bound("maximum").is_some_and(|m| n > m))
    {
        errors.push(format!("{path}: out of range"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as f64;
        if bound("minLength").is_some_and(|m| len < m)
            || bound("maxLength").is_some_and(|m| len > m)
        {
            errors.push(format!("{path}: bad length"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(pattern)
                .expect("pattern compiles")
                .is_match(s)
        {
            errors.push(format!("{path}: should match '{pattern}'"));
        }
    }
    if let Some(items) = value.as_array() {
        if bound("maxItems").is_some_and(|m| items.len() as f64 > m) {
            errors.push(format!("{path}: too many items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                openapi_errors(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !object.contains_key(required.as_str().unwrap_or_default()) {
                errors.push(format!(
                    "{path}.{}: Required value",
                    required.as_str().unwrap_or_default()
                ));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, child) in object {
                if let Some(child_schema) = properties.get(key) {
                    openapi_errors(child_schema, child, &format!("{path}.{key}"), errors);
                }
            }
        }
    }
}

/// Admission as the API server does it: defaults, OpenAPI, then CEL. Returns the messages.
fn admit(spec: Value) -> Result<Value, Vec<String>> {
    let schema = schema();
    let object = json!({
        "apiVersion": "upchain.dev/v1alpha1",
        "kind": "K8sUpgrade",
        "metadata": {"name": "to-1-35"},
        "spec": spec,
    });
    let object = apply_defaults(&schema, &object);
    let mut errors = Vec::new();
    openapi_errors(&schema, &object, "", &mut errors);
    if errors.is_empty()
        && let Err(cel) = Validator::new().validate(&schema, &object, None)
    {
        errors.extend(
            cel.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors)
    }
}

#[test]
fn minimal_object_is_admitted_with_defaults() {
    let object = admit(json!({"targetVersion": "1.35.2"})).expect("admitted");
    let spec = &object["spec"];
    assert_eq!(spec["nodes"]["maxUnavailable"], 1);
    assert_eq!(spec["runner"]["attempts"], 2);
    assert_eq!(spec["stallTimeout"], "5400s");
    // The admitted object is what the operator reads.
    let parsed: upchain_api::K8sUpgrade =
        serde_json::from_value(object).expect("operator reads it");
    assert_eq!(parsed.spec.target_version, "1.35.2");
}

#[test]
fn full_example_is_admitted() {
    admit(json!({
        "targetVersion": "v1.35.2",
        "paused": false,
        "nodes": {
            "workerSelector": {"matchLabels": {"pool": "general"}},
            "order": ["w-3"], "skip": ["w-9"], "maxUnavailable": 2
        },
        "runner": {
            "namespace": "upchain-system", "image": "example.org/runner:1", "sshUser": "ubuntu",
            "scriptConfigMap": {"name": "script", "key": "upgrade-node.sh"},
            "sshSecret": {"name": "ssh", "key": "id_ed25519"},
            "activeDeadlineSeconds": 1800, "attempts": 3, "ttlSecondsAfterFinished": 3600,
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}
        },
        "drain": {"timeout": "10m", "gracePeriodSeconds": 60, "onTimeout": "Force"},
        "soak": "10m", "rejoinTimeout": "45m", "stallTimeout": "2h"
    }))
    .expect("admitted");
}

#[test]
fn bad_objects_are_refused_with_a_readable_message() {
    let table = [
        (json!({}), "targetVersion: Required value"),
        (json!({"targetVersion": "1.35"}), "MAJOR.MINOR.PATCH"),
        (json!({"targetVersion": "latest"}), "MAJOR.MINOR.PATCH"),
        (
            json!({"targetVersion": "1.35.2; rm -rf /"}),
            "MAJOR.MINOR.PATCH",
        ),
        (
            json!({"targetVersion": "1.35.2", "nodes": {"maxUnavailable": 0}}),
            "maxUnavailable: out of range",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"attempts": 0}}),
            "attempts: out of range",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"activeDeadlineSeconds": 5}}),
            "out of range",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"namespace": ""}}),
            "namespace: bad length",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"sshUser": "root; reboot"}}),
            "plain login name",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"scriptConfigMap": {"name": "s", "key": "../x"}}}),
            "key may contain only",
        ),
        (
            json!({"targetVersion": "1.35.2", "nodes": {"skip": [""]}}),
            "skip[0]: bad length",
        ),
        (
            json!({"targetVersion": "1.35.2", "nodes": {"skip": ["a"], "order": ["a"]}}),
            "both in skip and in order",
        ),
        (
            json!({"targetVersion": "1.35.2", "soak": "ten minutes"}),
            "soak: should match",
        ),
        (
            json!({"targetVersion": "1.35.2", "stallTimeout": "30s"}),
            "at least 1m",
        ),
        (
            json!({"targetVersion": "1.35.2", "drain": {"onTimeout": "Ignore"}}),
            "Unsupported value",
        ),
    ];
    for (spec, expected) in table {
        let errors = admit(spec.clone()).expect_err(&spec.to_string());
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{spec}: {errors:?}"
        );
    }
}

#[test]
fn every_rule_compiles_and_fits_the_cost_budget() {
    fn walk(node: &kube::core::cel::CompiledSchema, rules: &mut usize) {
        assert!(
            node.compilation_errors().is_empty(),
            "{:?}",
            node.compilation_errors()
        );
        for rule in node.validations.iter().flatten() {
            *rules += 1;
            let warnings = estimate_rule_cost(&rule.rule.rule, node);
            assert!(
                !warnings
                    .iter()
                    .any(|w| matches!(w.kind, WarningKind::CostExceeded)),
                "{}: {warnings:?}",
                rule.rule.rule
            );
        }
        node.properties
            .values()
            .for_each(|child| walk(child, rules));
        if let Some(items) = &node.items {
            walk(items, rules);
        }
    }
    let mut rules = 0;
    walk(&compile_schema(&schema()), &mut rules);
    assert!(rules >= 8, "only {rules} rules found");
}

/// A structural schema, as apiextensions.k8s.io/v1 requires: every node typed (or an
/// explicit int-or-string / preserve-unknown-fields), no references or combinators.
#[test]
fn schema_is_structural() {
    fn walk(node: &Value, path: &str) {
        for forbidden in [
            "$ref",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
        ] {
            assert!(node.get(forbidden).is_none(), "{path} has {forbidden}");
        }
        let escape = node.get("x-kubernetes-int-or-string").is_some()
            || node.get("x-kubernetes-preserve-unknown-fields").is_some();
        assert!(node.get("type").is_some() || escape, "{path} has no type");
        for (key, child) in node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk(child, &format!("{path}.{key}"));
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"));
        }
        if let Some(additional) = node.get("additionalProperties").filter(|a| a.is_object()) {
            walk(additional, &format!("{path}{{}}"));
        }
    }
    walk(&schema(), "");
}

#[test]
fn crd_names_scope_columns_and_subresources() {
    let crd = upchain_api::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("k8supgrades.upchain.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["k8su".to_owned()]));
    let version = &crd.spec.versions[0];
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Target", "Phase", "Progress", "Node", "Age"]);
}

#[test]
fn checked_in_crd_matches_the_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/k8supgrades.upchain.dev.yaml"
    );
    let checked_in =
        std::fs::read_to_string(path).expect("crds/k8supgrades.upchain.dev.yaml exists");
    assert!(
        checked_in == upchain_api::crd_yaml().expect("renders"),
        "crds/ is stale: run `cargo run -q -p upchain-operator -- crd > crds/k8supgrades.upchain.dev.yaml`"
    );
}
