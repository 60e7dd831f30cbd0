//! The CRD as the API server sees it: structural, admission refusing bad objects with a
//! readable message, CEL rules within the cost budget, and `crds/` up to date.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use kube::core::cel::{WarningKind, compile_schema, estimate_rule_cost};
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

/// Admission as the API server does it (defaults, OpenAPI, then CEL), as the simulated
/// API server implements it. Returns the messages.
fn admit(spec: Value) -> Result<Value, Vec<String>> {
    let object = json!({
        "apiVersion": "upchain.dev/v1alpha1",
        "kind": "K8sUpgrade",
        "metadata": {"name": "to-1-35"},
        "spec": spec,
    });
    upchain_sim::admission::admit(&schema(), &object, None)
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
fn the_runner_fields_the_installation_decides_may_be_left_unset_or_repeated() {
    admit(json!({"targetVersion": "1.35.2", "runner": {}})).expect("admitted");
    admit(json!({"targetVersion": "1.35.2", "runner": {
        "namespace": "upchain-system", "image": "ghcr.io/upchain-dev/upchain-runner:0.1.0",
        "sshSecret": {"name": "upchain-ssh", "key": "ssh-privatekey"}}}))
    .expect("admitted: the operator judges them against the installation's policy");
}

/// A pre-run hook whose Pod has `extra` fields.
fn hooked(extra: serde_json::Value) -> serde_json::Value {
    let mut pod = json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]});
    for (key, value) in extra.as_object().expect("object") {
        pod[key] = value.clone();
    }
    json!({"targetVersion": "1.35.2", "hooks": {"pre": {"namespace": "upchain-system",
        "template": {"spec": {"template": {"spec": pod}}}}}})
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
            "maxUnavailable: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"attempts": 0}}),
            "attempts: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"activeDeadlineSeconds": 5}}),
            "greater than or equal to 60",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"namespace": "n".repeat(64)}}),
            "namespace: Too long",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"sshUser": "root; reboot"}}),
            "plain login name",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"repository": {"url": "https://m/'; touch /x"}}}),
            "repository.url must be an http(s) or file URL without spaces or quotes",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"hostKeyPolicy": "Maybe"}}),
            "Unsupported value: \"Maybe\"",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"sshPort": 0}}),
            "sshPort: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            hooked(json!({"serviceAccountName": "upchain"})),
            "a hook runs as the ServiceAccount upchain-hooks",
        ),
        (
            hooked(json!({"automountServiceAccountToken": true})),
            "a hook runs as the ServiceAccount upchain-hooks",
        ),
        (
            hooked(json!({"hostPID": true})),
            "may not use the host's network, PID or IPC namespace",
        ),
        (
            hooked(json!({"volumes": [{"name": "k", "secret": {"secretName": "upchain-ssh"}}]})),
            "may not mount a Secret or a hostPath",
        ),
        (
            hooked(json!({"volumes": [{"name": "r", "hostPath": {"path": "/"}}]})),
            "may not mount a Secret or a hostPath",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"ttlSecondsAfterFinished": 0}}),
            "ttlSecondsAfterFinished: Invalid value: 0: must be greater than or equal to 60",
        ),
        (
            json!({"targetVersion": "1.35.2", "runner": {"scriptConfigMap": {"name": "s", "key": "../x"}}}),
            "key may contain only",
        ),
        (
            json!({"targetVersion": "1.35.2", "nodes": {"skip": [""]}}),
            "skip[0]: Invalid value",
        ),
        (
            json!({"targetVersion": "1.35.2", "nodes": {"skip": ["a"], "order": ["a"]}}),
            "both in skip and in order",
        ),
        (
            json!({"targetVersion": "1.35.2", "soak": "ten minutes"}),
            "soak: Invalid value: \"ten minutes\": should match",
        ),
        (
            json!({"targetVersion": "1.35.2", "stallTimeout": "30s"}),
            "at least 1m",
        ),
        (
            json!({"targetVersion": "1.35.2", "drain": {"onTimeout": "Ignore"}}),
            "onTimeout: Unsupported value: \"Ignore\"",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"prometheus": {"url": "prometheus:9090"}}}),
            "must start with http:// or https://",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"recheckInterval": "1s"}}),
            "recheckInterval must be at least 5s",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"analysis": [{"name": "errors",
                "query": "up", "threshold": {"operator": "LessThan", "value": 1},
                "when": ["AfterBatch"]}]}}),
            "an analysis check needs a Prometheus to ask",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"analysis": [{"name": "errors",
                "url": "http://thanos:9090", "query": "up", "when": ["AfterBatch"]}]}}),
            "exactly one of threshold and expression",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"analysis": [{"name": "errors",
                "url": "http://thanos:9090", "query": "up", "expression": "true",
                "when": ["AfterBatch"], "interval": "0s"}]}}),
            "interval must be at least 1s",
        ),
        (
            json!({"targetVersion": "1.35.2", "gates": {"analysis": [{"name": "errors",
                "url": "http://thanos:9090", "query": "up", "expression": "true",
                "when": ["Sometimes"]}]}}),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            json!({"targetVersion": "1.35.2", "window": {"start": "25:00", "duration": "1h"}}),
            "start: Invalid value",
        ),
        (
            json!({"targetVersion": "1.35.2", "window": {"start": "22:00", "duration": "200h"}}),
            "between 1m and 168h",
        ),
        (
            json!({"targetVersion": "1.35.2", "window": {"start": "22:00", "duration": "1h", "days": ["Funday"]}}),
            "Unsupported value: \"Funday\"",
        ),
        (
            json!({"targetVersion": "1.35.2", "snapshot": {"minSizeBytes": 0}}),
            "spec.snapshot.minSizeBytes: Invalid value",
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

/// Every K8sUpgrade shipped under deploy/ is admitted as it is written.
#[test]
fn every_example_k8supgrade_is_admitted() {
    fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy"),
        &mut files,
    );
    let mut admitted = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document).expect("yaml");
            if object["kind"] != "K8sUpgrade" {
                continue;
            }
            upchain_sim::admission::admit(&schema(), &object, None)
                .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
            admitted += 1;
        }
    }
    assert!(admitted >= 3, "only {admitted} examples found");
}

#[test]
fn an_installed_crd_older_than_the_binary_is_named_by_the_fields_it_lacks() {
    assert!(upchain_api::crd_fields_missing(&upchain_api::crd()).is_empty());
    // The CRD of an earlier release: no step records and no drain option of this one.
    let mut old = serde_json::to_value(upchain_api::crd()).unwrap();
    let schema = &mut old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    schema["status"]["properties"]["nodes"]["items"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("jobResult");
    schema["spec"]["properties"]["drain"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("evictUnmanagedPods");
    let old: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(old).unwrap();
    assert_eq!(
        upchain_api::crd_fields_missing(&old),
        ["spec.drain.evictUnmanagedPods", "status.nodes[].jobResult"]
    );
    let mut unserved = upchain_api::crd();
    unserved.spec.versions[0].served = false;
    assert_eq!(
        upchain_api::crd_fields_missing(&unserved),
        ["the version upchain.dev/v1alpha1 (not served)"]
    );
}
