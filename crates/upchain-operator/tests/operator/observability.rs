//! The shipped Grafana dashboard and Prometheus rules only use series the operator
//! exports, so a renamed metric cannot silently blank a panel or mute an alert.

use std::collections::BTreeSet;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Every sample name /metrics can carry: each family's name with its type's suffixes.
fn exported() -> BTreeSet<String> {
    // Started before the node below finished, so its duration is observed.
    let started = "2026-11-22T23:00:00Z".parse().expect("timestamp");
    let metrics = upchain_operator::metrics::Metrics::since(started);
    // Families only list their type once they hold a series: fill each one.
    let status: upchain_api::K8sUpgradeStatus = serde_json::from_value(serde_json::json!({
        "phase": "Workers", "startedAt": "2026-11-22T23:00:00Z", "lastProgressAt": "2026-11-22T23:10:00Z",
        "nodes": [{"name": "w-1", "role": "Worker", "kind": "Minor", "targetVersion": "v1.35.2",
                   "versionBefore": "v1.34.2", "versionAfter": "v1.35.2", "step": "Done",
                   "stepStartedAt": "2026-11-22T23:09:00Z", "startedAt": "2026-11-22T23:01:00Z",
                   "finishedAt": "2026-11-22T23:09:00Z"}]
    }))
    .expect("status");
    metrics.record_status("to-1-35", &status);
    metrics.reconciled(0.01, Some("api"));
    metrics.notified("started", true);
    let mut names = BTreeSet::new();
    for line in metrics.encode().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The upchain series named in a file.
fn referenced(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{REPO}/{path}")).expect(path);
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("k8s_upgrade_") || word.starts_with("upchain_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboards_and_alerts_use_only_exported_series() {
    let exported = exported();
    assert!(exported.contains("k8s_upgrade_in_flight"), "{exported:?}");
    for file in [
        "deploy/grafana/upchain-dashboard.json",
        "charts/upchain/files/prometheus-rules.yaml",
    ] {
        let used = referenced(file);
        assert!(!used.is_empty(), "{file} names no upchain series");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses series upchain does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_valid_json_with_its_variables() {
    let text = std::fs::read_to_string(format!("{REPO}/deploy/grafana/upchain-dashboard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("json");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "upgrade"]);
    assert!(dashboard["panels"].as_array().expect("panels").len() >= 8);
}
