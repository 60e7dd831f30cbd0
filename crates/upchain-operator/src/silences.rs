//! Alertmanager silences for the nodes in progress, through Alertmanager's v2 API. The
//! core decides when a silence is created, extended and expired; this only talks HTTP.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use upchain_api::SilencesSpec;

/// How long Alertmanager may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why Alertmanager did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    /// Alertmanager could not be reached, refused, or answered something unreadable.
    #[error(
        "Alertmanager at {url} did not {what}: {reason}; check gates.silences.alertmanagerUrl \
         and that the operator can reach it"
    )]
    Alertmanager {
        /// The base URL.
        url: String,
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

fn failed<'a>(spec: &'a SilencesSpec, what: &'static str) -> impl Fn(String) -> SilenceError + 'a {
    move |reason| SilenceError::Alertmanager {
        url: spec.alertmanager_url.clone(),
        what,
        reason,
    }
}

/// An Alertmanager v2 API URL.
fn endpoint(spec: &SilencesSpec, path: &str) -> String {
    format!(
        "{}/api/v2/{path}",
        spec.alertmanager_url.trim_end_matches('/')
    )
}

/// Creates the node's silence (or extends `id`) until `ends_at`; returns its ID, which is
/// new when Alertmanager had already let the old one expire.
pub async fn put(
    http: &reqwest::Client,
    spec: &SilencesSpec,
    upgrade: &str,
    node: &str,
    id: Option<&str>,
    ends_at: Timestamp,
) -> Result<String, SilenceError> {
    let fail = failed(spec, "create the silence");
    let mut matchers: Vec<serde_json::Value> = spec
        .matchers
        .iter()
        .map(|m| json!({"name": m.name, "value": m.value, "isRegex": m.is_regex, "isEqual": true}))
        .collect();
    matchers
        .push(json!({"name": spec.node_label, "value": node, "isRegex": false, "isEqual": true}));
    let mut body = json!({
        "matchers": matchers,
        "startsAt": Timestamp::now().to_string(),
        "endsAt": ends_at.to_string(),
        "createdBy": "upchain",
        "comment": format!("K8sUpgrade {upgrade} is upgrading node {node}; upchain extends this \
                            silence while the node is in progress and expires it when done"),
    });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    #[derive(serde::Deserialize)]
    struct Created {
        #[serde(rename = "silenceID")]
        silence_id: String,
    }
    let response = http
        .post(endpoint(spec, "silences"))
        .timeout(TIMEOUT)
        .json(&body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail(e.without_url().to_string()))?;
    let created: Created = response
        .json()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    Ok(created.silence_id)
}

/// Expires a silence; one Alertmanager no longer knows is already gone.
pub async fn expire(
    http: &reqwest::Client,
    spec: &SilencesSpec,
    id: &str,
) -> Result<(), SilenceError> {
    let response = http
        .delete(endpoint(spec, &format!("silence/{id}")))
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| failed(spec, "expire the silence")(e.without_url().to_string()))?;
    if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    Err(failed(spec, "expire the silence")(
        response.status().to_string(),
    ))
}
