//! What the simulator serves besides the API: Prometheus's alerts and the API server's
//! metrics, Alertmanager's silences, and a webhook receiver.

use std::sync::MutexGuard;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, json_response};

/// What the simulated cluster serves besides its API: a Prometheus alerts API
/// (`/prometheus/api/v1/alerts`), an Alertmanager silences API (`/alertmanager/api/v2`),
/// the API server's `/metrics` with
/// `apiserver_requested_deprecated_apis`, and a Slack-compatible webhook (`/webhook`).
#[derive(Clone, Debug, Default)]
pub struct Surroundings {
    /// Alerts Prometheus reports, as (alertname, state: firing or pending).
    pub alerts: Vec<(String, String)>,
    /// Prometheus answers 503, as when it is down.
    pub prometheus_down: bool,
    /// Deprecated APIs still requested: (group, version, resource, removed_release).
    pub deprecated_apis: Vec<(String, String, String, String)>,
    /// Bodies the webhook received, in order.
    pub webhook_messages: Vec<String>,
    /// Silences the Alertmanager API (`/alertmanager/api/v2`) holds, in creation order.
    pub silences: Vec<Silence>,
    /// Alertmanager answers 503, as when it is down.
    pub alertmanager_down: bool,
    /// A check `/readyz` fails with, such as `etcd`: it then answers 500 naming it, as
    /// the API server does when it cannot reach etcd.
    pub readyz_failing: Option<String>,
}

/// A silence held by the simulated Alertmanager.
#[derive(Clone, Debug, PartialEq)]
pub struct Silence {
    /// Its ID.
    pub id: String,
    /// Its matchers, as posted.
    pub matchers: Value,
    /// When it was created, on the cluster's clock.
    pub created_at: jiff::Timestamp,
    /// When it ends: as posted, or the moment it was expired.
    pub ends_at: jiff::Timestamp,
    /// Every `endsAt` it was given, in order.
    pub extensions: Vec<jiff::Timestamp>,
    /// Expired through the API (DELETE).
    pub expired: bool,
}

/// The Alertmanager v2 silences API: create or update (POST with an ID), expire (DELETE),
/// list (GET). As Alertmanager does, an update of an expired silence makes a new one.
pub(super) fn alertmanager(
    shared: &Shared,
    method: &Method,
    rest: &[&str],
    body: &Bytes,
) -> Response {
    let now = shared.store().clock().now();
    let mut surroundings = shared.surroundings();
    if surroundings.alertmanager_down {
        return (StatusCode::SERVICE_UNAVAILABLE, "alertmanager is down").into_response();
    }
    match (method, rest) {
        (&Method::GET, ["silences"]) => {
            let list: Vec<Value> = surroundings
                .silences
                .iter()
                .map(|s| {
                    let state = if s.expired || s.ends_at <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    json!({"id": s.id, "matchers": s.matchers, "endsAt": s.ends_at.to_string(),
                        "status": {"state": state}})
                })
                .collect();
            json_response(200, &json!(list))
        }
        (&Method::POST, ["silences"]) => {
            let Ok(posted) = serde_json::from_slice::<Value>(body) else {
                return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
            };
            let Some(ends_at) = posted["endsAt"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            else {
                return (StatusCode::BAD_REQUEST, "endsAt is not a time").into_response();
            };
            if ends_at <= now || posted["matchers"].as_array().is_none_or(|m| m.is_empty()) {
                return (
                    StatusCode::BAD_REQUEST,
                    "a silence needs matchers and a future endsAt",
                )
                    .into_response();
            }
            let live = posted["id"].as_str().and_then(|id| {
                surroundings
                    .silences
                    .iter_mut()
                    .find(|s| s.id == id && !s.expired && s.ends_at > now)
            });
            let id = match live {
                Some(silence) => {
                    silence.ends_at = ends_at;
                    silence.matchers = posted["matchers"].clone();
                    silence.extensions.push(ends_at);
                    silence.id.clone()
                }
                None => {
                    let id = format!("silence-{}", surroundings.silences.len() + 1);
                    surroundings.silences.push(Silence {
                        id: id.clone(),
                        matchers: posted["matchers"].clone(),
                        created_at: now,
                        ends_at,
                        extensions: vec![ends_at],
                        expired: false,
                    });
                    id
                }
            };
            json_response(200, &json!({"silenceID": id}))
        }
        (&Method::DELETE, ["silence", id]) => {
            match surroundings.silences.iter_mut().find(|s| s.id == *id) {
                Some(silence) => {
                    silence.expired = true;
                    silence.ends_at = silence.ends_at.min(now);
                    (StatusCode::OK, "").into_response()
                }
                None => (StatusCode::NOT_FOUND, "silence not found").into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not an Alertmanager API path").into_response(),
    }
}

impl Shared {
    /// What is served besides the API.
    pub fn surroundings(&self) -> MutexGuard<'_, Surroundings> {
        self.surroundings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn prometheus_alerts(shared: &Shared) -> Response {
    let surroundings = shared.surroundings();
    if surroundings.prometheus_down {
        return (StatusCode::SERVICE_UNAVAILABLE, "prometheus is down").into_response();
    }
    let alerts: Vec<Value> = surroundings
        .alerts
        .iter()
        .map(|(name, state)| {
            json!({"labels": {"alertname": name, "severity": "critical"}, "annotations": {},
                   "state": state, "activeAt": "2026-01-01T00:00:00Z", "value": "1e+00"})
        })
        .collect();
    json_response(
        200,
        &json!({"status": "success", "data": {"alerts": alerts}}),
    )
}

pub(super) fn api_server_metrics(shared: &Shared) -> Response {
    let mut text = String::from(
        "# HELP apiserver_requested_deprecated_apis Gauge of deprecated APIs that have been requested, broken out by API group, version, resource, subresource, and removed_release.\n# TYPE apiserver_requested_deprecated_apis gauge\n",
    );
    for (group, version, resource, removed) in &shared.surroundings().deprecated_apis {
        text.push_str(&format!(
            "apiserver_requested_deprecated_apis{{group=\"{group}\",removed_release=\"{removed}\",resource=\"{resource}\",subresource=\"\",version=\"{version}\"}} 1\n"
        ));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}
