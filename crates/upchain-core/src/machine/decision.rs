//! What a decision is made of: the actions the operator carries out, the Events and
//! notifications it publishes, and the next status.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use upchain_api::K8sUpgradeStatus;

use crate::observe::PodRef;
use crate::reason::Reason;

/// Something the operator must do to the cluster, or record.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Mark the node unschedulable.
    Cordon {
        /// The node.
        node: String,
    },
    /// Mark the node schedulable again.
    Uncordon {
        /// The node.
        node: String,
    },
    /// Record on the node, in the `upchain.dev/prepared` annotation, that it passed this
    /// run's prepare check: one name per node would outgrow the status at thousands.
    MarkPrepared {
        /// The node.
        node: String,
        /// The run: `<K8sUpgrade>/<target>/<run start>`.
        run: String,
    },
    /// Evict these Pods (namespace/name) through the Eviction API, respecting PDBs.
    Evict {
        /// The node being drained.
        node: String,
        /// The Pods.
        pods: Vec<PodRef>,
        /// Grace period override, from spec.drain.gracePeriodSeconds.
        grace_period_seconds: Option<i64>,
    },
    /// Delete these Pods without the Eviction API (drain timed out with onTimeout: Force).
    DeletePods {
        /// The node being drained.
        node: String,
        /// The Pods.
        pods: Vec<PodRef>,
    },
    /// Create the Job, or adopt it if it already exists (its name is deterministic).
    CreateJob(Box<Job>),
    /// Delete a Job (its Pods go with it): a finished node Job when its K8sUpgrade is
    /// deleted, or a snapshot Job that outlived its timeout before the next attempt.
    DeleteJob {
        /// The Job's namespace.
        namespace: String,
        /// The Job.
        name: String,
    },
    /// Create the node's Alertmanager silence, or extend it (same ID), until `ends_at`;
    /// the operator records the ID Alertmanager returns in status.silences.
    Silence {
        /// The node.
        node: String,
        /// The silence to extend; None creates one.
        id: Option<String>,
        /// When it is to end.
        ends_at: Timestamp,
    },
    /// Expire the Alertmanager silence of a node no longer in progress.
    ExpireSilence {
        /// The node.
        node: String,
        /// The silence.
        id: String,
    },
    /// Record an Event on the K8sUpgrade.
    Event(Event),
    /// Send a notification to the configured webhook.
    Notify(Notification),
}

impl Action {
    /// True for actions that change the cluster (everything but Events and notifications).
    pub fn is_mutating(&self) -> bool {
        !matches!(self, Action::Event(_) | Action::Notify(_))
    }
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// A run started.
    Started,
    /// A gate refused the run.
    Blocked,
    /// No progress for stallTimeout.
    Stalled,
    /// A node or the spec failed the run.
    Failed,
    /// Every node runs the target.
    Succeeded,
}

impl NotifyKind {
    /// The notification kind an Event reason stands for, if any.
    pub(super) fn for_reason(reason: Reason) -> Option<Self> {
        match reason {
            Reason::RunStarted => Some(Self::Started),
            Reason::Blocked => Some(Self::Blocked),
            Reason::Stalled => Some(Self::Stalled),
            Reason::NodeFailed
            | Reason::InvalidSpec
            | Reason::VersionPolicy
            | Reason::HookFailed
            | Reason::AnalysisFailed => Some(Self::Failed),
            Reason::Succeeded => Some(Self::Succeeded),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Blocked => "blocked",
            Self::Stalled => "stalled",
            Self::Failed => "failed",
            Self::Succeeded => "succeeded",
        }
    }
}

/// A notification: sent once per transition, never carrying a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// What it is about.
    pub kind: NotifyKind,
    /// The text, naming the K8sUpgrade.
    pub text: String,
}

/// An Event to record on the K8sUpgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// Why, as the Event carries it.
    pub reason: Reason,
    /// What happened, for a person.
    pub message: String,
    /// The node it is about, if any: Events about different nodes are kept apart.
    pub node: Option<String>,
}

/// What one reconcile decided: the next status, what to do, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to write (server-side apply on /status) before the actions.
    pub status: K8sUpgradeStatus,
    /// The actions to carry out, in order.
    pub actions: Vec<Action>,
    /// Reconcile again after this long even if nothing changes; None waits for a change.
    pub requeue: Option<Duration>,
}
