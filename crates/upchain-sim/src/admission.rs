//! Admission of custom resources, as the API server does it from the CRD's schema:
//! structural defaults, then the OpenAPI constraints, then the CEL rules
//! (`x-kubernetes-validations`).

use kube_core::cel::{Validator, apply_defaults};
use serde_json::Value;

/// The OpenAPI v3 checks the API server applies, for the subset CRD schemas use: types,
/// nullability, enums, numeric bounds, string lengths and patterns, item counts and
/// required fields. Each error reads `path: what is wrong`.
pub fn openapi_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: Invalid value: null: must not be null"));
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
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !type_ok {
        let expected = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        errors.push(format!(
            "{path}: Invalid value: {value}: must be of type {expected}"
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            allowed.join(", ")
        ));
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64() {
        if let Some(min) = bound("minimum").filter(|m| n < *m) {
            errors.push(format!(
                "{path}: Invalid value: {value}: must be greater than or equal to {min}"
            ));
        }
        if let Some(max) = bound("maximum").filter(|m| n > *m) {
            errors.push(format!(
                "{path}: Invalid value: {value}: must be less than or equal to {max}"
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let length = s.chars().count() as f64;
        if let Some(min) = bound("minLength").filter(|m| length < *m) {
            errors.push(format!(
                "{path}: Invalid value: {value}: should be at least {min} chars long"
            ));
        }
        if let Some(max) = bound("maxLength").filter(|m| length > *m) {
            errors.push(format!(
                "{path}: Too long: may not be more than {max} bytes"
            ));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && regex::Regex::new(pattern).is_ok_and(|r| !r.is_match(s))
        {
            errors.push(format!(
                "{path}: Invalid value: {value}: should match '{pattern}'"
            ));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(max) = bound("maxItems").filter(|m| items.len() as f64 > *m) {
            errors.push(format!(
                "{path}: Too many: {}: must have at most {max} items",
                items.len()
            ));
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
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                let field = if path.is_empty() {
                    required.to_owned()
                } else {
                    format!("{path}.{required}")
                };
                errors.push(format!("{field}: Required value"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, child) in object {
                if let Some(child_schema) = properties.get(key) {
                    let field = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    openapi_errors(child_schema, child, &field, errors);
                }
            }
        }
    }
}

/// The openAPIV3Schema of a CRD's version.
pub fn version_schema<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| &v["schema"]["openAPIV3Schema"])
        .filter(|s| s.is_object())
}

/// Paths (`.status.foo`) of the fields in `value` that `schema` does not declare, where it
/// neither preserves unknown fields nor takes any map key (`additionalProperties`).
pub fn undeclared_fields(schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, field) in fields {
                let child = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(declared), _) | (None, Some(declared)) => {
                        undeclared_fields(declared, field, &child, found);
                    }
                    (None, None)
                        if properties.is_some()
                            || schema.get("type") == Some(&Value::from("object")) =>
                    {
                        found.push(child);
                    }
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    undeclared_fields(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// Defaults `object` from `schema` and checks it; the errors, or the defaulted object.
pub fn admit(schema: &Value, object: &Value, old: Option<&Value>) -> Result<Value, Vec<String>> {
    let defaulted = apply_defaults(schema, object);
    let mut errors = Vec::new();
    openapi_errors(schema, &defaulted, "", &mut errors);
    if errors.is_empty()
        && let Err(failures) = Validator::new().validate(schema, &defaulted, old)
    {
        errors.extend(
            failures
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: Invalid value: {}", e.field_path, e.message)),
        );
    }
    if errors.is_empty() {
        Ok(defaulted)
    } else {
        Err(errors)
    }
}
