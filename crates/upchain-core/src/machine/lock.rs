//! One upgrade at a time: the lock is the running K8sUpgrade itself.

use std::ops::ControlFlow;

use upchain_api::{K8sUpgrade, K8sUpgradeStatus, NodeStep, Phase};

use super::{Machine, STOP, WAIT_POLL};
use crate::observe::OtherUpgrade;
use crate::reason::Reason;

/// True when this status holds the one-upgrade-per-cluster lock: a run is under way,
/// blocked, or failed with nodes touched.
pub fn holds_lock(status: &K8sUpgradeStatus) -> bool {
    match status.phase {
        Some(phase) if phase.is_running() || phase == Phase::Blocked => true,
        Some(Phase::Failed) => status
            .nodes
            .iter()
            .any(|n| n.step == NodeStep::Failed || n.step.is_active()),
        _ => false,
    }
}

impl OtherUpgrade {
    /// Reduces another K8sUpgrade to what the lock needs.
    pub fn from_upgrade(upgrade: &K8sUpgrade) -> Self {
        let status = upgrade.status.clone().unwrap_or_default();
        Self {
            name: upgrade.metadata.name.clone().unwrap_or_default(),
            holds_lock: holds_lock(&status),
            waiting: matches!(status.phase, None | Some(Phase::Pending)) && !upgrade.spec.paused,
            created: upgrade
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
        }
    }
}

impl<'a> Machine<'a> {
    /// The K8sUpgrade this one must wait for, if any.
    pub(super) fn lock_holder(&self) -> Option<String> {
        if self.run_in_progress() {
            return None;
        }
        let me = self.name();
        let created = self
            .upgrade
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        self.observed
            .others
            .iter()
            .filter(|o| o.name != me)
            .find(|o| o.holds_lock)
            .or_else(|| {
                // Two waiting at once: the older one (then the lower name) goes first.
                self.observed
                    .others
                    .iter()
                    .filter(|o| o.name != me)
                    .find(|o| {
                        !o.holds_lock
                            && o.created != 0
                            && (o.created, o.name.as_str()) < (created, me)
                            && o.waiting
                    })
            })
            .map(|o| o.name.clone())
    }

    /// Another K8sUpgrade upgrading the cluster is waited for.
    pub(super) fn wait_for_the_running_upgrade(&mut self) -> ControlFlow<()> {
        let Some(holder) = self.lock_holder() else {
            return ControlFlow::Continue(());
        };
        self.set_phase(Phase::Pending);
        self.requeue_within(WAIT_POLL);
        self.note(
            Reason::WaitingForUpgrade,
            format!(
                "waiting for K8sUpgrade {holder}, which is upgrading this cluster; one upgrade \
                 runs at a time"
            ),
        );
        STOP
    }
}
