//! The HTTP face of the simulated API server: the Kubernetes REST paths for the served
//! types, discovery, list and watch, and injected faults.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::registry::ResourceType;
use crate::selector::Selector;
use crate::store::{ApiError, Change, ChangeType, PatchType, Propagation, Store};
use crate::table;

/// The request verbs faults can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET with watch=true.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Verb {
    fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete
        )
    }
}

/// Faults injected into requests, configurable while the server runs.
#[derive(Debug)]
pub struct Faults {
    /// Share of requests of a verb answered with 500 (0.0 to 1.0).
    pub error_rate: BTreeMap<Verb, f64>,
    /// Share of writes answered with 409 Conflict.
    pub conflict_rate: f64,
    /// Delay added to every request of a verb.
    pub latency: BTreeMap<Verb, Duration>,
    /// Watch connections are closed after this long.
    pub drop_watches_after: Option<Duration>,
    rng: fastrand::Rng,
}

impl Faults {
    /// No faults; `seed` makes later random faults replayable.
    pub fn none(seed: u64) -> Self {
        Self {
            error_rate: BTreeMap::new(),
            conflict_rate: 0.0,
            latency: BTreeMap::new(),
            drop_watches_after: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn roll(&mut self, verb: Verb) -> Option<ApiError> {
        let error_rate = self.error_rate.get(&verb).copied().unwrap_or(0.0);
        if error_rate > 0.0 && self.rng.f64() < error_rate {
            return Some(ApiError::Internal("injected fault: internal error".into()));
        }
        if verb.is_write() && self.conflict_rate > 0.0 && self.rng.f64() < self.conflict_rate {
            return Some(ApiError::Conflict("injected fault: the object has been modified; please apply your changes to the latest version and try again".into()));
        }
        None
    }
}

/// What the server shares between requests.
#[derive(Debug)]
pub struct Shared {
    /// The objects.
    pub store: Mutex<Store>,
    /// Injected faults.
    pub faults: Mutex<Faults>,
    /// The `/version` gitVersion, such as `v1.34.2`.
    pub version: Mutex<String>,
    /// How often a watch with bookmarks allowed receives one.
    pub bookmark_interval: Duration,
    /// The services around the API server that gates read, and the webhook receiver.
    pub surroundings: Mutex<Surroundings>,
    /// Requests served, by verb and resource, for the scale benchmark.
    pub requests: Mutex<BTreeMap<(Verb, String), u64>>,
}

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
fn alertmanager(shared: &Shared, method: &Method, rest: &[&str], body: &Bytes) -> Response {
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
    /// Locks the store; a panic while holding it cannot leave a half-written object
    /// visible, so a poisoned lock is taken over.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    /// What is served besides the API.
    pub fn surroundings(&self) -> MutexGuard<'_, Surroundings> {
        self.surroundings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn prometheus_alerts(shared: &Shared) -> Response {
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

fn api_server_metrics(shared: &Shared) -> Response {
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

/// The axum router serving everything.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(error: &ApiError) -> Response {
    json_response(error.code(), &error.status())
}

/// Where a request points.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let query = query_map(request.uri().query());
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(e) => {
            return error_response(&ApiError::BadRequest(format!("cannot read the body: {e}")));
        }
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    match segments.as_slice() {
        ["prometheus", "api", "v1", "alerts"] => return prometheus_alerts(&shared),
        ["alertmanager", "api", "v2", rest @ ..] => {
            return alertmanager(&shared, &method, rest, &body);
        }
        ["metrics"] => return api_server_metrics(&shared),
        ["webhook"] if method == axum::http::Method::POST => {
            shared
                .surroundings()
                .webhook_messages
                .push(String::from_utf8_lossy(&body).into_owned());
            return (StatusCode::OK, "ok").into_response();
        }
        ["version"] => {
            let version = api_server_version(&shared);
            let minor = version.split('.').nth(1).unwrap_or("0").to_owned();
            return json_response(
                200,
                &json!({"major": "1", "minor": minor, "gitVersion": version, "platform": "linux/amd64", "goVersion": "go1.24"}),
            );
        }
        ["healthz" | "readyz" | "livez"] => return (StatusCode::OK, "ok").into_response(),
        ["api", "v1", "namespaces", namespace, "pods", pod, "log"] if method == Method::GET => {
            let number = |key: &str| query.get(key).and_then(|v| v.parse::<usize>().ok());
            return match shared.store().pod_log(
                namespace,
                pod,
                query.get("container").map(String::as_str),
                number("tailLines"),
                number("limitBytes"),
            ) {
                Ok(log) => {
                    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], log).into_response()
                }
                Err(error) => error_response(&error),
            };
        }
        ["api"] => return json_response(200, &shared.store().registry().core_versions()),
        ["apis"] => return json_response(200, &shared.store().registry().groups()),
        ["openapi", "v3"] => return json_response(200, &shared.store().registry().openapi_index()),
        ["openapi", "v3", "api", version] | ["openapi", "v3", "apis", "", version] => {
            return openapi(&shared, "", version);
        }
        ["openapi", "v3", "apis", group, version] => return openapi(&shared, group, version),
        ["api", version] => return discovery(&shared, "", version),
        ["apis", group, version] => return discovery(&shared, group, version),
        _ => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => {
            return error_response(&ApiError::NotFound {
                kind: "path".into(),
                name: path.clone(),
            });
        }
    };
    let target = {
        let store = shared.store();
        match resolve(&store, group, version, rest) {
            Some(target) => target,
            None => {
                return error_response(&ApiError::NotFound {
                    kind: "resource".into(),
                    name: path.clone(),
                });
            }
        }
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => Verb::Watch,
        (&Method::GET, true, false) => Verb::Get,
        (&Method::GET, false, false) => Verb::List,
        (&Method::POST, _, _) => Verb::Create,
        (&Method::PUT, _, _) => Verb::Update,
        (&Method::PATCH, _, _) => Verb::Patch,
        (&Method::DELETE, _, _) => Verb::Delete,
        _ => {
            return error_response(&ApiError::MethodNotAllowed(format!(
                "{method} is not supported"
            )));
        }
    };
    *shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((verb, target.rt.id()))
        .or_insert(0) += 1;
    let (latency, fault) = {
        let mut faults = shared.faults();
        (faults.latency.get(&verb).copied(), faults.roll(verb))
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        return error_response(&fault);
    }
    if query.contains_key("dryRun") {
        return error_response(&ApiError::BadRequest(
            "dryRun is not supported by the simulated API server".into(),
        ));
    }
    if verb == Verb::Watch {
        return start_watch(&shared, &target, &query);
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or_default();
    let wants_table = accept.contains("as=Table");
    let wants_metadata = accept.contains("as=PartialObjectMetadata");
    match serve(&shared, &target, verb, &query, &headers, &body) {
        Ok((code, value)) if wants_metadata && matches!(verb, Verb::Get | Verb::List) => {
            json_response(code, &metadata_only(verb, value))
        }
        Ok((code, value)) if wants_table && matches!(verb, Verb::Get | Verb::List) => {
            let objects = match verb {
                Verb::List => value["items"].as_array().cloned().unwrap_or_default(),
                _ => vec![value],
            };
            let store = shared.store();
            let crd_name = format!("{}.{}", target.rt.plural, target.rt.group);
            let crd = store
                .all("customresourcedefinitions.apiextensions.k8s.io")
                .into_iter()
                .find(|c| c["metadata"]["name"] == crd_name.as_str());
            let now = store.clock().now();
            json_response(
                code,
                &table::table(
                    &target.rt,
                    crd.as_ref(),
                    &objects,
                    store.resource_version(),
                    now,
                ),
            )
        }
        Ok((code, value)) => json_response(code, &value),
        Err(error) => error_response(&error),
    }
}

/// An object or a list as `PartialObjectMetadata`: what a client asking for metadata only
/// gets, without the objects' spec and status.
fn metadata_only(verb: Verb, value: Value) -> Value {
    let partial = |object: &Value| {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
               "metadata": object["metadata"]})
    };
    match verb {
        Verb::List => json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": value["metadata"],
            "items": value["items"].as_array().into_iter().flatten().map(partial).collect::<Vec<_>>(),
        }),
        _ => partial(&value),
    }
}

/// The API server runs the newest version any control-plane node has been upgraded to
/// (`kubeadm upgrade apply` upgrades it first); before any, the version it started at.
fn api_server_version(shared: &Shared) -> String {
    let numbers = |v: &str| -> Option<(u64, u64, u64)> {
        let mut parts = v
            .trim_start_matches('v')
            .split(['.', '-', '+'])
            .map(|p| p.parse::<u64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    };
    let started = shared.version.lock().map(|v| v.clone()).unwrap_or_default();
    shared
        .store()
        .all("nodes")
        .iter()
        .filter(|n| {
            n["metadata"]["labels"]
                .get(crate::seed::CONTROL_PLANE_LABEL)
                .is_some()
        })
        .filter_map(|n| n["status"]["nodeInfo"]["kubeletVersion"].as_str())
        .chain(std::iter::once(started.as_str()))
        .filter_map(|v| numbers(v).map(|n| (n, v.to_owned())))
        .max()
        .map_or(started.clone(), |(_, v)| v)
}

fn discovery(shared: &Shared, group: &str, version: &str) -> Response {
    match shared.store().registry().resources(group, version) {
        Some(list) => json_response(200, &list),
        None => error_response(&ApiError::NotFound {
            kind: "groupversion".into(),
            name: format!("{group}/{version}"),
        }),
    }
}

fn openapi(shared: &Shared, group: &str, version: &str) -> Response {
    match shared.store().registry().openapi_document(group, version) {
        Some(document) => json_response(200, &document),
        None => error_response(&ApiError::NotFound {
            kind: "openapi".into(),
            name: format!("{group}/{version}"),
        }),
    }
}

fn resolve(store: &Store, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let registry = store.registry();
    let namespaced_path = match rest {
        ["namespaces", ns, plural, tail @ ..] => registry
            .find(group, version, plural)
            .filter(|t| t.namespaced)
            .map(|t| (t.clone(), Some((*ns).to_owned()), tail)),
        _ => None,
    };
    let (rt, namespace, tail) = match namespaced_path {
        Some(found) => found,
        None => {
            let (plural, tail) = rest.split_first()?;
            (registry.find(group, version, plural)?.clone(), None, tail)
        }
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        rt,
        namespace,
        name,
        subresource,
    })
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.contains("protobuf") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body's content type {content_type} is not supported: send JSON or YAML"
        )));
    }
    let yaml = content_type.contains("yaml");
    if yaml {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
    }
}

fn list_kind(rt: &ResourceType) -> String {
    format!("{}List", rt.kind)
}

fn serve(
    shared: &Shared,
    target: &Target,
    verb: Verb,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(u16, Value), ApiError> {
    let rt = &target.rt;
    let namespace = target.namespace.clone().unwrap_or_default();
    let status_only = target.subresource.as_deref() == Some("status");
    match (&target.subresource, target.name.as_deref()) {
        (Some(sub), _)
            if sub != "status"
                && !(sub == "eviction" && rt.plural == "pods" && rt.group.is_empty()) =>
        {
            return Err(ApiError::NotFound {
                kind: "subresource".into(),
                name: sub.clone(),
            });
        }
        (Some(_), _) if !rt.status && status_only => {
            return Err(ApiError::NotFound {
                kind: "subresource".into(),
                name: "status".into(),
            });
        }
        _ => {}
    }
    let selector = |key: &str| {
        Selector::parse(query.get(key).map(String::as_str).unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    };
    let mut store = shared.store();
    match (verb, target.name.as_deref()) {
        (Verb::Get, Some(name)) => Ok((200, store.get(rt, &namespace, name)?)),
        (Verb::List, _) => {
            // A continued list reads as of its first page's version, as a real API
            // server's does; a client then watches from that version and catches up.
            let (rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
                Some(token) => {
                    let (rv, slot) = parse_continue(token)?;
                    store.check_kept(rv)?;
                    (rv, Some(slot))
                }
                None => (store.resource_version(), None),
            };
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .filter(|l| *l > 0)
                .unwrap_or(usize::MAX);
            let (items, last) = store.list_page(
                rt,
                target.namespace.as_deref(),
                &selector("labelSelector")?,
                &selector("fieldSelector")?,
                after.as_ref(),
                limit,
            );
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if let Some((namespace, name)) = last {
                metadata["continue"] = json!(format!("{rv}/{namespace}/{name}"));
            }
            Ok((
                200,
                json!({
                    "kind": list_kind(rt), "apiVersion": rt.api_version(),
                    "metadata": metadata,
                    "items": items,
                }),
            ))
        }
        (Verb::Create, Some(name)) if target.subresource.as_deref() == Some("eviction") => {
            Ok((201, store.evict(&namespace, name)?))
        }
        (Verb::Create, None) => Ok((
            201,
            store.create(rt, &namespace, parse_body(headers, body)?, false)?,
        )),
        (Verb::Update, Some(name)) => {
            let object = parse_body(headers, body)?;
            Ok((
                200,
                store.update(rt, &namespace, name, object, status_only)?,
            ))
        }
        (Verb::Patch, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch_type = match content_type.split(';').next().unwrap_or_default() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported patch content type `{other}`"
                    )));
                }
            };
            let manager = query.get("fieldManager").cloned().unwrap_or_default();
            if patch_type == PatchType::Apply && manager.is_empty() {
                return Err(ApiError::BadRequest(
                    "fieldManager is required for apply requests".into(),
                ));
            }
            let force = query.get("force").is_some_and(|f| f == "true");
            let patch = parse_body(headers, body)?;
            let existed = store.get(rt, &namespace, name).is_ok();
            let object = store.patch(
                rt,
                &namespace,
                name,
                patch_type,
                &patch,
                status_only,
                &manager,
                force,
            )?;
            Ok((if existed { 200 } else { 201 }, object))
        }
        (Verb::Delete, Some(name)) => {
            let options: Value = if body.is_empty() {
                Value::Null
            } else {
                parse_body(headers, body)?
            };
            let policy = query
                .get("propagationPolicy")
                .cloned()
                .or_else(|| options["propagationPolicy"].as_str().map(str::to_owned))
                .or_else(|| {
                    options["orphanDependents"]
                        .as_bool()
                        .filter(|o| *o)
                        .map(|_| "Orphan".to_owned())
                });
            let propagation = match policy.as_deref() {
                Some("Foreground") => Propagation::Foreground,
                Some("Orphan") => Propagation::Orphan,
                _ => Propagation::Background,
            };
            Ok((200, store.delete(rt, &namespace, name, propagation)?))
        }
        (Verb::Delete, None) => {
            let doomed = store.list(
                rt,
                target.namespace.as_deref(),
                &selector("labelSelector")?,
                &selector("fieldSelector")?,
            );
            for object in &doomed {
                let meta = &object["metadata"];
                store.delete(
                    rt,
                    meta["namespace"].as_str().unwrap_or_default(),
                    meta["name"].as_str().unwrap_or_default(),
                    Propagation::Background,
                )?;
            }
            Ok((
                200,
                json!({"kind": list_kind(rt), "apiVersion": rt.api_version(), "metadata": {}, "items": doomed}),
            ))
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{verb:?} is not supported on this path"
        ))),
    }
}

/// A continue token: `<resourceVersion>/<namespace>/<name>` of the last item served.
fn parse_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let mut parts = token.splitn(3, '/');
    match (
        parts.next().and_then(|rv| rv.parse().ok()),
        parts.next(),
        parts.next(),
    ) {
        (Some(rv), Some(namespace), Some(name)) => {
            Ok((rv, (namespace.to_owned(), name.to_owned())))
        }
        _ => Err(ApiError::BadRequest(format!(
            "continue token {token:?} is not one this server issued; list again without it"
        ))),
    }
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// One watch: the backlog (initial objects or history since a resourceVersion), then live
/// changes, bookmarks when asked for, until the timeout, a dropped connection or a fault.
fn start_watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Response {
    let parse = |key: &str| Selector::parse(query.get(key).map(String::as_str).unwrap_or_default());
    let (labels, fields) = match (parse("labelSelector"), parse("fieldSelector")) {
        (Ok(l), Ok(f)) => (l, f),
        (Err(e), _) | (_, Err(e)) => return error_response(&ApiError::BadRequest(e.to_string())),
    };
    let rt = target.rt.clone();
    let namespace = target.namespace.clone();
    let name = target.name.clone();
    let rt_id = rt.id();
    let selected = move |object: &Value| {
        let meta = &object["metadata"];
        namespace
            .as_deref()
            .is_none_or(|n| meta["namespace"].as_str() == Some(n))
            && name
                .as_deref()
                .is_none_or(|n| meta["name"].as_str() == Some(n))
            && labels.matches_labels(object)
            && fields.matches_fields(object)
    };
    // What this watch sees of a change: a modification that moves an object out of (into)
    // the selection is a DELETED (ADDED) event, as on a real server.
    let event = move |change: &Change| -> Option<Bytes> {
        if change.resource != rt_id {
            return None;
        }
        let now = selected(&change.object);
        let before = change.previous.as_ref().map(&selected);
        let kind = match (change.kind, before, now) {
            (ChangeType::Modified, Some(true), false) => "DELETED",
            (ChangeType::Modified, Some(false), true) => "ADDED",
            (kind, _, true) => kind.as_str(),
            _ => return None,
        };
        Some(event_line(kind, &change.object))
    };
    let since = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
        .filter(|rv| *rv > 0);
    let (backlog, gone, mut live, mut last_rv): (
        Vec<Bytes>,
        bool,
        broadcast::Receiver<Arc<Change>>,
        u64,
    ) = {
        let store = shared.store();
        let live = store.subscribe();
        let current = store.resource_version();
        let (backlog, gone) = match since {
            None => (
                store
                    .list(
                        &target.rt,
                        target.namespace.as_deref(),
                        &Selector::default(),
                        &Selector::default(),
                    )
                    .into_iter()
                    .filter_map(|object| {
                        event(&Change {
                            rv: current,
                            resource: target.rt.id(),
                            kind: ChangeType::Added,
                            object,
                            previous: None,
                        })
                    })
                    .collect(),
                false,
            ),
            Some(rv) => match store.history_since(rv) {
                Ok(history) => (history.iter().filter_map(|c| event(c)).collect(), false),
                // As a real server does: an ERROR event carrying the 410 Status, then the end.
                Err(gone) => (vec![event_line("ERROR", &gone.status())], true),
            },
        };
        (backlog, gone, live, current)
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let drop_after = shared.faults().drop_watches_after;
    let bookmark_every = shared.bookmark_interval;
    let kind = target.rt.kind.clone();
    let api_version = target.rt.api_version();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let end = tokio::time::Instant::now() + drop_after.map_or(timeout, |d| d.min(timeout));
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => break,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(Ok(event_line("BOOKMARK", &bookmark))).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        if let Some(line) = event(&change)
                            && tx.send(Ok(line)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow to keep up is closed; it resumes from its last version.
                    Err(_) => break,
                },
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(decode("app%3Dweb%2Ctier+in+%28a%29"), "app=web,tier in (a)");
        assert_eq!(decode("100%"), "100%");
    }
}
