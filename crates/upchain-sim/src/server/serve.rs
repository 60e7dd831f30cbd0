//! One API request on a resolved type: get, list, create, update, patch, delete, evict.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::faults::Verb;
use super::{Shared, Target, list_kind, parse_body};
use crate::selector::Selector;
use crate::store::{ApiError, PatchType, Propagation};

pub(super) fn serve(
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
                && !(matches!(sub.as_str(), "eviction" | "binding")
                    && rt.plural == "pods"
                    && rt.group.is_empty()) =>
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
        let parsed = Selector::parse(query.get(key).map(String::as_str).unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if key == "fieldSelector"
            && let Some(field) = parsed
                .keys()
                .find(|f| !crate::validation::field_selectable(rt, f))
        {
            return Err(ApiError::BadRequest(format!(
                "field label not supported: {field}"
            )));
        }
        Ok(parsed)
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
            let eviction = if body.is_empty() {
                Value::Null
            } else {
                parse_body(headers, body)?
            };
            let grace = eviction["deleteOptions"]["gracePeriodSeconds"].as_i64();
            Ok((201, store.evict(&namespace, name, grace)?))
        }
        (Verb::Create, Some(name)) if target.subresource.as_deref() == Some("binding") => {
            let binding = parse_body(headers, body)?;
            let node = binding["target"]["name"].as_str().unwrap_or_default();
            Ok((201, store.bind(&namespace, name, node)?))
        }
        (Verb::Create, None) if rt.id() == "selfsubjectaccessreviews.authorization.k8s.io" => {
            let mut review = parse_body(headers, body)?;
            review["status"] = json!({"allowed": true,
                "reason": "the simulated API server authorizes every request"});
            Ok((201, review))
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
            check_preconditions(&store.get(rt, &namespace, name)?, &options)?;
            if rt.id() == "pods" {
                let grace = query
                    .get("gracePeriodSeconds")
                    .and_then(|g| g.parse().ok())
                    .or_else(|| options["gracePeriodSeconds"].as_i64());
                return Ok((200, store.delete_pod(&namespace, name, grace, propagation)?));
            }
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

/// A deletion's preconditions (uid, resourceVersion) hold for `current`, or 409.
fn check_preconditions(current: &Value, options: &Value) -> Result<(), ApiError> {
    for key in ["uid", "resourceVersion"] {
        let (Some(wanted), Some(actual)) = (
            options["preconditions"][key].as_str(),
            current["metadata"][key].as_str(),
        ) else {
            continue;
        };
        if wanted != actual {
            return Err(ApiError::Conflict(format!(
                "Precondition failed: {key} in precondition: {wanted}, {key} in object meta: {actual}"
            )));
        }
    }
    Ok(())
}

/// A continue token: `<resourceVersion>/<namespace>/<name>` of the last item served.
pub(super) fn parse_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
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
