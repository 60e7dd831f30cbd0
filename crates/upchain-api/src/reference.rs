//! The API reference (docs/api.md), generated from the CRD's schema so that it cannot
//! drift from what the API server enforces.

use serde_json::Value;

/// Markdown for every field of spec and status: path, type, default, description.
pub fn api_reference() -> String {
    let crd = crate::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    let mut out = String::from(
        "# K8sUpgrade API reference (`upchain.dev/v1alpha1`)\n\n\
         Generated from the CRD by `scripts/render-manifests`; CI fails when it differs. \
         `kubectl explain k8supgrade.spec` shows the same text.\n",
    );
    for part in ["spec", "status"] {
        out.push_str(&format!(
            "\n## {part}\n\n| Field | Type | Default | Description |\n| --- | --- | --- | --- |\n"
        ));
        walk(&schema["properties"][part], part, &mut out);
    }
    out
}

fn type_of(node: &Value) -> String {
    match node["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&node["items"])),
        Some(kind) => kind.to_owned(),
        None if node["x-kubernetes-int-or-string"] == true => "int or string".to_owned(),
        None => "object".to_owned(),
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn walk(node: &Value, path: &str, out: &mut String) {
    let Some(properties) = node["properties"]
        .as_object()
        .or_else(|| node["items"]["properties"].as_object())
    else {
        return;
    };
    let required: Vec<&str> = node["required"]
        .as_array()
        .or_else(|| node["items"]["required"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let separator = if node["type"] == "array" { "[]." } else { "." };
    for (name, child) in properties {
        let field = format!("{path}{separator}{name}");
        let default = match &child["default"] {
            Value::Null => String::new(),
            value => format!("`{value}`"),
        };
        let mut description = child["description"].as_str().unwrap_or_default().to_owned();
        if required.contains(&name.as_str()) {
            description.insert_str(0, "**Required.** ");
        }
        out.push_str(&format!(
            "| `{field}` | {} | {} | {} |\n",
            type_of(child),
            cell(&default),
            cell(&description)
        ));
        walk(child, &field, out);
    }
}
