//! The workloads gate: every Deployment, StatefulSet and DaemonSet updated, ready and
//! available.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

use super::{Source, Verdict, unreachable, verdict};

/// A Deployment, reduced to what the workloads gate needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDeployment {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// spec.replicas.
    pub replicas: i32,
    /// status.updatedReplicas.
    pub updated: i32,
    /// status.availableReplicas.
    pub available: i32,
    /// The Available condition, when reported.
    pub available_condition: Option<bool>,
    /// The Progressing condition, when reported, with its reason.
    pub progressing_condition: Option<(bool, String)>,
}

impl ObservedDeployment {
    /// Reduces a Deployment to what the workloads gate and the addon matrix read.
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status == "True", c.reason.clone().unwrap_or_default()))
        };
        ObservedDeployment {
            namespace: d.metadata.namespace.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            available_condition: condition("Available").map(|(ok, _)| ok),
            progressing_condition: condition("Progressing"),
        }
    }
}

/// A StatefulSet or a DaemonSet, reduced to what the workloads gate needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSet {
    /// `StatefulSet` or `DaemonSet`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pods wanted: spec.replicas, or status.desiredNumberScheduled.
    pub desired: i32,
    /// Pods at the current revision: status.updatedReplicas or updatedNumberScheduled.
    pub updated: i32,
    /// Pods available: status.availableReplicas or numberAvailable.
    pub available: i32,
    /// The update strategy is OnDelete: Pods move to a new revision only when deleted, so
    /// an old revision is no rollout in flight.
    pub on_delete: bool,
}

impl ObservedSet {
    /// Reduces a StatefulSet.
    pub fn from_stateful_set(set: &StatefulSet) -> Self {
        let status = set.status.clone().unwrap_or_default();
        let spec = set.spec.as_ref();
        ObservedSet {
            kind: "StatefulSet",
            namespace: set.metadata.namespace.clone().unwrap_or_default(),
            name: set.metadata.name.clone().unwrap_or_default(),
            desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            on_delete: spec
                .and_then(|s| s.update_strategy.as_ref())
                .and_then(|u| u.type_.as_deref())
                == Some("OnDelete"),
        }
    }

    /// Reduces a DaemonSet.
    pub fn from_daemon_set(set: &DaemonSet) -> Self {
        let status = set.status.clone().unwrap_or_default();
        ObservedSet {
            kind: "DaemonSet",
            namespace: set.metadata.namespace.clone().unwrap_or_default(),
            name: set.metadata.name.clone().unwrap_or_default(),
            desired: status.desired_number_scheduled,
            updated: status.updated_number_scheduled.unwrap_or(0),
            available: status.number_available.unwrap_or(0),
            on_delete: set
                .spec
                .as_ref()
                .and_then(|s| s.update_strategy.as_ref())
                .and_then(|u| u.type_.as_deref())
                == Some("OnDelete"),
        }
    }
}

/// Every Deployment is reconciled: Available, Progressing, updated replicas not short of
/// available ones by more than 10% (autoscalers move replicas under our feet). Every
/// StatefulSet and DaemonSet has all its Pods available and, unless it updates OnDelete,
/// at its current revision.
pub fn workloads_gate(
    deployments: &Source<Vec<ObservedDeployment>>,
    sets: &Source<Vec<ObservedSet>>,
) -> Verdict {
    let deployments = match deployments {
        Ok(deployments) => deployments,
        Err(error) => return unreachable("workloads", "Deployments", error),
    };
    let sets = match sets {
        Ok(sets) => sets,
        Err(error) => return unreachable("workloads", "StatefulSets and DaemonSets", error),
    };
    let mut reasons = Vec::new();
    for d in deployments.iter().filter(|d| d.replicas > 0) {
        let name = format!("{}/{}", d.namespace, d.name);
        if d.available_condition == Some(false) {
            reasons.push(format!(
                "Deployment {name} is not Available ({} of {} replicas): fix it first, a drain \
                 would make it worse",
                d.available, d.replicas
            ));
        } else if let Some((false, reason)) = &d.progressing_condition {
            reasons.push(format!(
                "Deployment {name} is not progressing ({reason}): its rollout is stuck; fix or \
                 roll it back first"
            ));
        } else if f64::from(d.updated) < f64::from(d.available) * 0.9 {
            reasons.push(format!(
                "Deployment {name} has {} updated of {} available replicas: a rollout is still \
                 in flight; wait for it to finish",
                d.updated, d.available
            ));
        }
    }
    for set in sets.iter().filter(|s| s.desired > 0) {
        let name = format!("{} {}/{}", set.kind, set.namespace, set.name);
        if set.available < set.desired {
            reasons.push(format!(
                "{name} has {} of {} Pods available: fix it first, a drain would make it worse",
                set.available, set.desired
            ));
        } else if set.updated < set.desired && !set.on_delete {
            reasons.push(format!(
                "{name} has {} of {} Pods at its current revision: a rollout is in flight; \
                 wait for it to finish",
                set.updated, set.desired
            ));
        }
    }
    verdict(
        "workloads",
        format!(
            "{} Deployment(s), {} StatefulSet(s) and DaemonSet(s) reconciled",
            deployments.len(),
            sets.len()
        ),
        reasons,
    )
}
