//! The HTTP face of the simulated API server: the Kubernetes REST paths for the served
//! types, discovery, list and watch, and injected faults.

mod faults;
mod serve;
mod surroundings;
mod watch;

pub use faults::{Faults, Verb};
use serve::serve;
pub use surroundings::{Silence, Surroundings};
use surroundings::{alertmanager, api_server_metrics, prometheus_alerts};
use watch::start_watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::store::{ApiError, Store};
use crate::table;

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
                &json!({"major": "1", "minor": minor, "emulationMajor": "1", "emulationMinor": minor,
                    "minCompatibilityMajor": "1", "minCompatibilityMinor": minor, "gitVersion": version,
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                    "platform": "linux/amd64"}),
            );
        }
        ["readyz"] => {
            if let Some(check) = shared.surroundings().readyz_failing.clone() {
                let body = format!("[-]{check} failed: reason withheld\nreadyz check failed\n");
                return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
            }
            return (StatusCode::OK, "ok").into_response();
        }
        ["healthz" | "livez"] => return (StatusCode::OK, "ok").into_response(),
        ["api", "v1", "namespaces", namespace, "pods", pod, "log"] if method == Method::GET => {
            let number = |key: &str| query.get(key).and_then(|v| v.parse::<usize>().ok());
            let on_a_node = shared.store().pod_has_node(namespace, pod);
            let log = shared.store().pod_log(
                namespace,
                pod,
                query.get("container").map(String::as_str),
                number("tailLines"),
                number("limitBytes"),
            );
            return match log {
                // A Pod no node runs yet has nothing to say: the API server answers 204.
                Ok(log) if log.is_empty() && !on_a_node => StatusCode::NO_CONTENT.into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(decode("app%3Dweb%2Ctier+in+%28a%29"), "app=web,tier in (a)");
        assert_eq!(decode("100%"), "100%");
    }
}
