//! Reading node lists and K8sUpgrade manifests from files, as kubectl writes them.

use std::io::Read;
use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;
use upchain_api::K8sUpgrade;

use crate::error::Error;

/// Reads a file, or stdin for `-`.
pub fn read(path: &Path) -> Result<String, Error> {
    let mut text = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result.map_err(|source| Error::ReadInput {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadInput {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Parses the output of `kubectl get nodes -o yaml|json` (a List or NodeList), a single
/// Node, or several YAML documents of either.
pub fn parse_nodes(path: &Path, text: &str) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| bad(path, format!("not YAML or JSON: {e}")))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        match kind {
            "List" | "NodeList" => {
                let items = value
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .ok_or_else(|| bad(path, format!("a {kind} without items")))?;
                for (index, item) in items.iter().enumerate() {
                    nodes.push(node(path, item, Some(index))?);
                }
            }
            _ => nodes.push(node(path, &value, None)?),
        }
    }
    Ok(nodes)
}

fn node(path: &Path, value: &serde_yaml::Value, index: Option<usize>) -> Result<Node, Error> {
    let place = index.map_or_else(String::new, |i| format!("item {i}: "));
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("nothing");
    if kind != "Node" {
        return Err(bad(
            path,
            format!(
                "{place}expected kind Node, found {kind}; pass the output of `kubectl get nodes -o yaml`"
            ),
        ));
    }
    serde_yaml::from_value(value.clone())
        .map_err(|e| bad(path, format!("{place}not a valid Node: {e}")))
}

/// Parses a K8sUpgrade manifest.
pub fn parse_upgrade(path: &Path, text: &str) -> Result<K8sUpgrade, Error> {
    serde_yaml::from_str(text).map_err(|e| {
        bad(
            path,
            format!(
                "not a K8sUpgrade manifest (apiVersion upchain.dev/v1alpha1, kind K8sUpgrade): {e}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"a"}}"#;

    #[test]
    fn reads_lists_single_nodes_and_multiple_documents() {
        let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{NODE},{NODE}]}}"#);
        assert_eq!(parse_nodes(Path::new("x"), &list).expect("list").len(), 2);
        assert_eq!(parse_nodes(Path::new("x"), NODE).expect("node").len(), 1);
        let docs = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n";
        assert_eq!(parse_nodes(Path::new("x"), docs).expect("docs").len(), 2);
        assert!(parse_nodes(Path::new("x"), "").expect("empty").is_empty());
    }

    #[test]
    fn names_what_is_wrong() {
        let pod = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}]}"#;
        let err = parse_nodes(Path::new("nodes.yaml"), pod).expect_err("a pod");
        assert!(
            err.to_string()
                .contains("item 0: expected kind Node, found Pod"),
            "{err}"
        );
        let err = parse_nodes(Path::new("nodes.yaml"), "a: [").expect_err("garbage");
        assert!(err.to_string().contains("not YAML or JSON"), "{err}");
    }
}
