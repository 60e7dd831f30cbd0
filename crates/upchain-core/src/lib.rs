//! Pure upgrade logic for upchain: inputs in, decisions out.
//!
//! No I/O, no clock reads, no Kubernetes client: the operator observes the cluster,
//! calls [`decide`], and carries out the returned [`Decision`].
#![forbid(unsafe_code)]

pub mod analysis;
pub mod conditions;
pub mod drain;
pub mod etcd;
pub mod evidence;
pub mod exit_codes;
pub mod gates;
pub mod gauges;
pub mod health;
pub mod hooks;
pub mod job;
pub mod machine;
pub mod observe;
pub mod plan;
pub mod pod_security;
pub mod policy;
pub mod reason;
pub mod snapshot;
pub mod template;
pub mod text;
pub mod version;
pub mod window;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use machine::{
    Action, Decision, Event, JobsToRead, Needs, Notification, NotifyKind, decide, finalize,
    holds_lock, needs, record_silences, silence_failed_event, silenced_event, woken_by_nodes,
};
pub use observe::{
    JobState, Observed, ObservedBudget, ObservedJob, ObservedNode, ObservedPod, OtherUpgrade,
    PodRef,
};
pub use plan::{Exclusion, Plan, PlanError, plan};
pub use reason::Reason;
pub use version::{KubeVersion, VersionError};
