//! The workloads gate: every Deployment updated, ready and available.

use super::*;

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

/// Every Deployment is reconciled: Available, Progressing, updated replicas not short of
/// available ones by more than 10% (autoscalers move replicas under our feet).
pub fn workloads_gate(deployments: &Source<Vec<ObservedDeployment>>) -> Verdict {
    let deployments = match deployments {
        Ok(deployments) => deployments,
        Err(error) => return unreachable("workloads", "Deployments", error),
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
    verdict(
        "workloads",
        format!("{} Deployment(s) reconciled", deployments.len()),
        reasons,
    )
}
