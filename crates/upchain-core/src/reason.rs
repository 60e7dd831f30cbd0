//! Why a condition holds or an Event was recorded. The string form of each reason is part
//! of the API (alerts, dashboards and runbooks match on it): a variant's name is its string,
//! and a new reason is a new variant, so the compiler finds every place that must handle it.

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A condition's or an Event's reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Reason] = &[$(Reason::$name,)*];

            /// The reason as status and Events carry it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// An analysis check failed.
    AnalysisFailed,
    /// An analysis check passed.
    AnalysisPassed,
    /// Waiting for the approve annotation to carry the plan's hash.
    AwaitingApproval,
    /// Pods of a draining node are deleted: a single replica no eviction can move.
    DeletingBlockedPods,
    /// What a drain will evict, before the node is cordoned.
    DrainPreview,
    /// A gate refuses the run.
    Blocked,
    /// Stacked etcd is being checked through the node step.
    CheckingEtcd,
    /// Stacked etcd passed its check.
    EtcdHealthy,
    /// Stacked etcd failed its check: nothing more was started.
    EtcdUnhealthy,
    /// A step failed.
    Failed,
    /// Every check passes.
    GatesPass,
    /// A check refuses the run.
    GatesFailed,
    /// A hook Job failed.
    HookFailed,
    /// A hook Job started.
    HookStarted,
    /// A hook Job succeeded.
    HookSucceeded,
    /// In a blackout of the maintenance window.
    InBlackout,
    /// A run is under way.
    InProgress,
    /// The spec cannot be acted on.
    InvalidSpec,
    /// A node's upgrade Job was created.
    JobCreated,
    /// A node's upgrade Job failed.
    JobFailed,
    /// The API server refused a Job as invalid.
    JobRefused,
    /// A node's upgrade Job succeeded.
    JobSucceeded,
    /// A node failed past its retries.
    NodeFailed,
    /// Nodes are being worked on.
    NodeInProgress,
    /// A node did not come back Ready at the target.
    NodeNotReady,
    /// A node under memory, disk or PID pressure.
    NodePressure,
    /// Nodes that are not Ready.
    NodesNotReady,
    /// A node came back Ready at the target.
    NodeRejoined,
    /// A node left the cluster during its upgrade.
    NodeRemoved,
    /// A node was started: cordon and drain.
    NodeStarted,
    /// A node is done.
    NodeUpgraded,
    /// Nothing moved for spec.stallTimeout.
    NoProgress,
    /// Not configured for this run.
    NotConfigured,
    /// Outside the maintenance window.
    OutsideWindow,
    /// spec.paused.
    Paused,
    /// Not started yet, or not taken yet.
    Pending,
    /// The run checks the cluster after its last node.
    Postflight,
    /// The postflight waits for the cluster to settle.
    PostflightWaiting,
    /// Progress within spec.stallTimeout.
    Progressing,
    /// Reading the checks before the next node.
    ReadingChecks,
    /// The retry annotation took a failed node or hook up again.
    Retrying,
    /// A hook Job runs.
    RunningHook,
    /// The nodes' prepare checks run.
    Preparing,
    /// A node's prepare check failed: nothing was drained.
    PrepareFailed,
    /// Every node passed its prepare check.
    NodesPrepared,
    /// spec.runner.hostKeyPolicy AcceptNew: unknown host keys are asked for, to be confirmed.
    HostKeysUnchecked,
    /// A run started.
    RunStarted,
    /// An Alertmanager silence expired.
    SilenceExpired,
    /// An Alertmanager silence could not be placed or expired.
    SilenceFailed,
    /// A node's alerts were silenced.
    Silenced,
    /// The etcd snapshot is being taken.
    Snapshot,
    /// The etcd snapshot Job started.
    SnapshotStarted,
    /// The etcd snapshot was taken.
    SnapshotTaken,
    /// A minor upgrade runs without an etcd snapshot (spec.snapshotWaiver).
    SnapshotWaived,
    /// No progress for spec.stallTimeout.
    Stalled,
    /// Every selected node runs the target.
    Succeeded,
    /// A new target took over at a node boundary.
    TargetChanged,
    /// Every check passes again.
    Unblocked,
    /// The etcd snapshot Job succeeded.
    Verified,
    /// The version policy refuses the target.
    VersionPolicy,
    /// Waiting for firing alerts to clear.
    WaitingForAlerts,
    /// Waiting for analysis checks to pass.
    WaitingForAnalysis,
    /// Waiting for health checks to pass.
    WaitingForHealthChecks,
    /// Another K8sUpgrade is upgrading the cluster.
    WaitingForUpgrade,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_one_camel_case_word_as_kubernetes_asks() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let s = reason.as_str();
            assert!(
                s.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{s}"
            );
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert!(seen.insert(s), "{s} twice");
        }
    }
}
