//! Deletion of a K8sUpgrade: running node Jobs finish, cordoned nodes are released.

use upchain_api::{K8sUpgrade, NodeRecord};

use super::decision::Action;
use crate::observe::{JobState, Observed};

/// What deleting a K8sUpgrade requires before its finalizer may be removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finalization {
    /// Uncordons of nodes upchain cordoned, and deletions of the run's finished Jobs.
    pub actions: Vec<Action>,
    /// Upgrade Jobs still running: a node's upgrade is never cut off half-way.
    pub waiting_for_jobs: Vec<String>,
}

impl Finalization {
    /// True when, once `actions` are carried out, the finalizer can go.
    pub fn can_let_go(&self) -> bool {
        self.waiting_for_jobs.is_empty()
    }
}

/// On deletion: let running node Jobs finish, uncordon every node upchain cordoned (a
/// node whose Job still runs stays cordoned until it finishes), and delete the finished
/// Jobs, which no owner reference ties to the K8sUpgrade. A Job the operator cannot see
/// is taken as not running, so a Job that was never created cannot hold the deletion.
pub fn finalize(upgrade: &K8sUpgrade, observed: &Observed) -> Finalization {
    let status = upgrade.status.clone().unwrap_or_default();
    let mut finalization = Finalization::default();
    for job in &observed.jobs {
        if job.state == JobState::Running {
            finalization.waiting_for_jobs.push(job.name.clone());
        }
    }
    let job_running = |record: &NodeRecord| {
        record
            .job
            .as_ref()
            .is_some_and(|job| finalization.waiting_for_jobs.contains(job))
    };
    let nodes = observed.nodes_by_name();
    for record in &status.nodes {
        let unschedulable = nodes
            .get(record.name.as_str())
            .is_some_and(|n| n.unschedulable);
        if record.cordoned && unschedulable && !job_running(record) {
            finalization.actions.push(Action::Uncordon {
                node: record.name.clone(),
            });
        }
    }
    finalization.actions.extend(
        observed
            .jobs
            .iter()
            .filter(|job| job.state != JobState::Running)
            .map(|job| Action::DeleteJob {
                namespace: upgrade.spec.runner.namespace.clone(),
                name: job.name.clone(),
            }),
    );
    // A node whose Job still runs keeps its silence until it lapses.
    finalization.actions.extend(
        status
            .silences
            .iter()
            .filter(|s| {
                !status
                    .nodes
                    .iter()
                    .any(|r| r.name == s.node && job_running(r))
            })
            .map(|s| Action::ExpireSilence {
                node: s.node.clone(),
                id: s.id.clone(),
            }),
    );
    finalization
}
