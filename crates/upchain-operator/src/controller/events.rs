//! Events on K8sUpgrades, through kube-runtime's recorder, bounded to what the API
//! server stores.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::{info, warn};
use upchain_api::K8sUpgrade;

use super::Context;

/// Events published before the recorder is replaced by a fresh one.
pub(super) const EVENTS_PER_RECORDER: usize = 256;

/// kube-runtime's Recorder keeps every Event it published for six minutes, to count
/// repeats as a series; one Event per node and transition made that cache the largest
/// thing in the operator's memory on a big cluster (12 MB at 1,000 nodes). Starting a
/// fresh recorder every few hundred Events bounds it; a repeat across the swap is
/// recorded as a new Event instead of a count.
pub(super) struct Events {
    client: Client,
    current: Mutex<(Recorder, usize)>,
}

impl Events {
    pub(super) fn new(client: Client) -> Self {
        Self {
            current: Mutex::new((Recorder::new(client.clone(), Reporter::from("upchain")), 0)),
            client,
        }
    }

    pub(super) fn recorder(&self) -> Recorder {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.1 >= EVENTS_PER_RECORDER {
            *current = (
                Recorder::new(self.client.clone(), Reporter::from("upchain")),
                0,
            );
        }
        current.1 += 1;
        current.0.clone()
    }
}

/// Events are best effort: a failure to record one is logged, never fatal.
pub(super) async fn publish(upgrade: &K8sUpgrade, event: &upchain_core::Event, ctx: &Context) {
    info!(reason = event.reason.as_str(), node = ?event.node, message = %event.message, "event");
    let recorded = ctx
        .events
        .recorder()
        .publish(
            &KubeEvent {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.as_str().to_owned(),
                note: Some(
                    upchain_core::text::bounded(
                        &event.message,
                        upchain_core::text::EVENT_NOTE_BYTES,
                    )
                    .into_owned(),
                ),
                action: event.reason.as_str().to_owned(),
                // The node an Event is about keeps its own series: the recorder groups
                // Events by reason and related object, not by message.
                secondary: event.node.as_ref().map(|node| ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(node.clone()),
                    ..ObjectReference::default()
                }),
            },
            &upgrade.object_ref(&()),
        )
        .await;
    if let Err(error) = recorded {
        warn!(%error, reason = event.reason.as_str(), "could not record an Event");
    }
}
