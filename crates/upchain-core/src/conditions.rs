//! Standard status conditions.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::reason::Reason;

/// Condition types a K8sUpgrade reports.
pub mod types {
    /// True once the run succeeded.
    pub const READY: &str = "Ready";
    /// True while nodes are being worked on.
    pub const PROGRESSING: &str = "Progressing";
    /// True while a check refuses to let the run go on.
    pub const BLOCKED: &str = "Blocked";
    /// True when nothing has moved for spec.stallTimeout.
    pub const STALLED: &str = "Stalled";
    /// True once the etcd snapshot is verified for this run.
    pub const SNAPSHOT_TAKEN: &str = "SnapshotTaken";
    /// False when the node Jobs are not given every node's SSH host key but ask for unknown
    /// ones (spec.runner.hostKeyPolicy AcceptNew).
    pub const HOST_KEYS_VERIFIED: &str = "HostKeysVerified";
}

/// A condition to set: type, status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// Why, as status carries it.
    pub reason: Reason,
    /// What a person should know.
    pub message: String,
}

impl Desired {
    /// A condition with status True.
    pub fn yes(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition with status False.
    pub fn no(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `desired` in `conditions`, keeping `lastTransitionTime` unless the status or the
/// reason changed, so an unchanged condition never rewrites the object.
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: Desired,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if desired.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == desired.type_);
    let transitioned = existing
        .as_ref()
        .is_none_or(|c| c.status != status || c.reason != desired.reason.as_str());
    let condition = Condition {
        last_transition_time: match &existing {
            Some(c) if !transitioned => c.last_transition_time.clone(),
            _ => Time(now),
        },
        message: match crate::text::bounded(&desired.message, crate::text::CONDITION_MESSAGE_BYTES)
        {
            std::borrow::Cow::Borrowed(_) => desired.message,
            std::borrow::Cow::Owned(cut) => cut,
        },
        observed_generation: generation,
        reason: desired.reason.as_str().to_owned(),
        status: status.to_owned(),
        type_: desired.type_.to_owned(),
    };
    match existing {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }
}

/// The condition of this type, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of this type is set and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid")
    }

    #[test]
    fn keeps_transition_time_while_status_and_reason_hold() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Desired::yes(types::BLOCKED, Reason::NodesNotReady, "w-1 NotReady"),
            Some(1),
            at(10),
        );
        set(
            &mut conditions,
            Desired::yes(types::BLOCKED, Reason::NodesNotReady, "w-1, w-2 NotReady"),
            Some(2),
            at(20),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
        assert_eq!(conditions[0].message, "w-1, w-2 NotReady");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_or_reason_changes() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Desired::yes(types::BLOCKED, Reason::NodesNotReady, ""),
            None,
            at(10),
        );
        set(
            &mut conditions,
            Desired::yes(types::BLOCKED, Reason::NodePressure, ""),
            None,
            at(20),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(20)));
        set(
            &mut conditions,
            Desired::no(types::BLOCKED, Reason::NodePressure, ""),
            None,
            at(30),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(30)));
        assert!(!is_true(&conditions, types::BLOCKED));
    }
}
