//! Alertmanager silences for the nodes in progress.

use std::time::Duration;

use jiff::Timestamp;
use upchain_api::{K8sUpgradeStatus, SilenceRecord};

use super::Machine;
use super::decision::{Action, Event};
use crate::gates;
use crate::reason::Reason;

/// Records in `status` the silences the operator placed in Alertmanager for the decision's
/// `Action::Silence`s (the ID is Alertmanager's, known only once it answered).
pub fn record_silences(status: &mut K8sUpgradeStatus, placed: Vec<SilenceRecord>) {
    for record in placed {
        // A node that left progress within the decision keeps no record.
        if !status
            .nodes
            .iter()
            .any(|n| n.name == record.node && n.step.is_active())
        {
            continue;
        }
        match status.silences.iter_mut().find(|s| s.node == record.node) {
            Some(existing) => *existing = record,
            None => status.silences.push(record),
        }
    }
}

impl<'a> Machine<'a> {
    /// Keeps one Alertmanager silence per node in progress: created when the node starts,
    /// extended by `extendBy` once half of it is used (never past `maxDuration` from the
    /// node's start), and expired once the node is no longer in progress.
    pub(super) fn silences(&mut self) {
        let spec = self.spec.gates.silences.as_ref();
        let active: Vec<(String, Timestamp)> = self
            .status
            .nodes
            .iter()
            .filter(|n| n.step.is_active() && spec.is_some())
            .map(|n| (n.name.clone(), n.started_at.0))
            .collect();
        let (kept, ended): (Vec<SilenceRecord>, Vec<SilenceRecord>) =
            std::mem::take(&mut self.status.silences)
                .into_iter()
                .partition(|r| active.iter().any(|(node, _)| *node == r.node));
        self.status.silences = kept;
        for record in ended {
            self.node_event(
                false,
                Reason::SilenceExpired,
                &record.node,
                format!(
                    "expiring the Alertmanager silence {} of {}, which is no longer in progress",
                    record.id, record.node
                ),
            );
            self.act(Action::ExpireSilence {
                node: record.node,
                id: record.id,
            });
        }
        let Some(spec) = spec else {
            return;
        };
        let extend_by = Duration::from(spec.extend_by);
        let step = jiff::SignedDuration::try_from(extend_by).unwrap_or_default();
        let cap =
            jiff::SignedDuration::try_from(Duration::from(spec.max_duration)).unwrap_or_default();
        for (node, started) in active {
            let hard_end = started.saturating_add(cap).unwrap_or(started);
            let wanted = self
                .now
                .saturating_add(step)
                .unwrap_or(self.now)
                .min(hard_end);
            let record = self
                .status
                .silences
                .iter()
                .find(|r| r.node == node)
                .cloned();
            let left = record.as_ref().map_or(Duration::ZERO, |r| {
                Duration::try_from(r.ends_at.0.duration_since(self.now)).unwrap_or_default()
            });
            if left > extend_by / 2 {
                self.requeue_within(left - extend_by / 2);
                continue;
            }
            if wanted <= record.as_ref().map_or(self.now, |r| r.ends_at.0) {
                continue; // at its cap: the silence ends on its own
            }
            // The operator says so in an Event once Alertmanager answered with the ID.
            self.act(Action::Silence {
                node,
                id: record.map(|r| r.id),
                ends_at: wanted,
            });
            self.requeue_within(extend_by / 2);
        }
    }
}

/// The Event for a silence Alertmanager placed for `node` (the operator learns its ID
/// only from Alertmanager's answer).
pub fn silenced_event(node: &str, id: &str, spec: &upchain_api::SilencesSpec) -> Event {
    let human = |d: kube_core::Duration| {
        gates::human(i64::try_from(Duration::from(d).as_secs()).unwrap_or(i64::MAX))
    };
    Event {
        warning: false,
        reason: Reason::Silenced,
        message: format!(
            "silenced {node}'s node alerts in Alertmanager (silence {id}) while it is \
             upgraded: extended in steps of {}, never more than {} after the node started, \
             expired when it is done",
            human(spec.extend_by),
            human(spec.max_duration),
        ),
        node: Some(node.to_owned()),
    }
}

/// The Event for a silence of `node` Alertmanager did not place or expire: best effort,
/// it costs a Warning, not the upgrade.
pub fn silence_failed_event(node: &str, error: &str) -> Event {
    Event {
        warning: true,
        reason: Reason::SilenceFailed,
        message: error.to_owned(),
        node: Some(node.to_owned()),
    }
}
