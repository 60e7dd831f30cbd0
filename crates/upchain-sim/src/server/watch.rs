//! Watches: history replay from a resourceVersion, bookmarks, selector moves, 410 Gone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{Shared, Target, error_response};
use crate::selector::Selector;
use crate::store::{ApiError, Change, ChangeType};

pub(super) fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// One watch: the backlog (initial objects or history since a resourceVersion), then live
/// changes, bookmarks when asked for, until the timeout, a dropped connection or a fault.
pub(super) fn start_watch(
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
