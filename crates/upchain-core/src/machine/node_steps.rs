//! One node's steps: start, drain, upgrade Job, rejoin, soak, done or failed.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{DrainTimeoutAction, NodeRecord, NodeRole, NodeStep, Phase};

use super::decision::Action;
use super::{DRAIN_POLL, Machine, STOP, budget};
use crate::drain::drain_progress;
use crate::exit_codes::{self, Retry};
use crate::job::{JobMode, NodeJob, job_name, untagged_job_name};
use crate::observe::{JobState, pod_names};
use crate::plan::Plan;
use crate::reason::Reason;
use crate::version::KubeVersion;

/// How a draining node's message starts while budgets hold it.
pub(super) const WAITING_ON_BUDGETS: &str = "waiting on PodDisruptionBudget(s)";
/// How a draining node's message begins while Pods the drain options forbid evicting hold it.
pub(super) const WAITING_ON_HELD: &str = "the drain holds back Pods it may not evict:";
/// How a draining node's message begins while it deletes single replicas budgets hold.
pub(super) const DELETING_BLOCKED: &str = "deleting single-replica Pod(s)";
/// kube-controller-manager's `--node-monitor-grace-period` default: a kubelet silent for
/// longer is down, whatever its Ready condition still says.
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(50);
/// How often a node waiting only for a fresh heartbeat is looked at again.
const HEARTBEAT_POLL: Duration = Duration::from_secs(5);

impl<'a> Machine<'a> {
    pub(super) fn start_batch(&mut self, plan: &Plan) {
        self.spend_the_analysis_of_the_boundary();
        let now = Time(self.now);
        let mut started = Vec::new();
        for step in plan.next_batch() {
            let record = NodeRecord {
                name: step.name.clone(),
                role: step.role,
                first_control_plane: step.first_control_plane,
                kind: step.kind,
                target_version: plan.target.to_string(),
                version_before: step.version.to_string(),
                version_after: None,
                step: NodeStep::Draining,
                step_started_at: now.clone(),
                cordoned: true,
                attempts: 0,
                failures: 0,
                reattaches: 0,
                paused_retries: 0,
                job: None,
                started_at: now.clone(),
                finished_at: None,
                message: None,
                waiting_for_pods: Vec::new(),
                waiting_for_budgets: Vec::new(),
                drain_preview: None,
                job_result: None,
            };
            self.status.nodes.retain(|r| r.name != step.name);
            self.status.nodes.push(record);
            started.push(step.name.clone());
        }
        self.progressed();
        for node in &started {
            self.node_event(
                false,
                Reason::NodeStarted,
                node,
                format!("cordoning and draining {node} (target {})", plan.target),
            );
        }
    }

    pub(super) fn advance_node(&mut self, index: usize, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Some(node) = self.node(&record.name) else {
            self.enter(
                index,
                NodeStep::Done,
                Some("the node left the cluster during its upgrade".to_owned()),
            );
            let record = &mut self.status.nodes[index];
            record.cordoned = false;
            record.finished_at = Some(Time(self.now));
            let name = record.name.clone();
            return self.node_event(
                true,
                Reason::NodeRemoved,
                &name,
                format!("node {name} left the cluster during its upgrade"),
            );
        };
        let target = KubeVersion::parse_target(&record.target_version).ok();
        let at_target =
            target.is_some_and(|t| KubeVersion::parse_reported(&node.kubelet_version) == Ok(t));
        match record.step {
            NodeStep::Draining => self.drain(index, node.unschedulable, batch),
            NodeStep::Upgrading => self.upgrade_node(index, batch),
            NodeStep::Rejoining => {
                // Verified before it takes workloads again: a node that never comes back
                // Ready at the target (a control-plane node: with its components) stays
                // cordoned.
                let components = match (record.role, target) {
                    (NodeRole::ControlPlane, Some(target)) => {
                        self.components_not_at(&record, target)
                    }
                    _ => Vec::new(),
                };
                let stale = self.stale_heartbeat(&record.name);
                let verified = node.ready && at_target && components.is_empty() && stale.is_none();
                if verified && node.unschedulable {
                    self.act(Action::Uncordon {
                        node: record.name.clone(),
                    });
                } else if !verified && !node.unschedulable {
                    // Uncordoned and then not Ready (in its soak, or by hand): cordoned
                    // again until it is verified.
                    self.act(Action::Cordon {
                        node: record.name.clone(),
                    });
                    self.status.nodes[index].cordoned = true;
                }
                if verified && !node.unschedulable {
                    self.status.nodes[index].cordoned = false;
                    self.enter(index, NodeStep::Soaking, None);
                    self.node_event(
                        false,
                        Reason::NodeRejoined,
                        &record.name,
                        format!("{} is Ready at {}", record.name, record.target_version),
                    );
                    return;
                }
                // Say what it waits for, so that a node held here explains itself.
                let waiting = match (node.ready && at_target, components.is_empty(), &stale) {
                    (false, _, _) => format!(
                        "waiting for the node to be Ready with kubelet {} (kubelet reports {}, \
                         Ready={})",
                        record.target_version, node.kubelet_version, node.ready
                    ),
                    (true, false, _) => format!(
                        "waiting for its control-plane components: {}",
                        components.join("; ")
                    ),
                    (true, true, Some(stale)) => format!("waiting for a fresh heartbeat: {stale}"),
                    (true, true, None) => "uncordoning".to_owned(),
                };
                if record.message.as_deref() != Some(&waiting) {
                    self.status.nodes[index].message = Some(waiting);
                }
                let timeout = Duration::from(self.spec.rejoin_timeout);
                let waited = self.elapsed(&record.step_started_at);
                if waited >= timeout {
                    return self.fail_node(
                        index,
                        format!(
                            "did not come back Ready with kubelet {} within {}s after its upgrade \
                             Job succeeded (kubelet reports {}, Ready={}{}), so it was not \
                             uncordoned and no other node starts; check the kubelet on the node \
                             (journalctl -u kubelet, kubelet --version), then retry or skip it",
                            record.target_version,
                            timeout.as_secs(),
                            node.kubelet_version,
                            node.ready,
                            if components.is_empty() {
                                String::new()
                            } else {
                                format!("; {}", components.join("; "))
                            }
                        ),
                    );
                }
                // A Lease renewal wakes nothing: look again soon while that is all it waits on.
                if node.ready && at_target && components.is_empty() && stale.is_some() {
                    self.requeue_within(HEARTBEAT_POLL);
                }
                self.requeue_within(timeout - waited);
            }
            NodeStep::Soaking => {
                if !(node.ready && at_target) {
                    // Rejoining cordons it again: no workload lands on it until it is
                    // verified, and it fails after the rejoin timeout if it is not.
                    self.enter(
                        index,
                        NodeStep::Rejoining,
                        Some("left Ready while soaking; cordoned again".to_owned()),
                    );
                    return self.node_event(
                        true,
                        Reason::NodeNotReady,
                        &record.name,
                        format!(
                            "{} left Ready while soaking; cordoned again until it rejoins (within \
                             spec.rejoinTimeout)",
                            record.name
                        ),
                    );
                }
                let soak = Duration::from(self.spec.soak);
                let soaked = self.elapsed(&record.step_started_at);
                if soaked >= soak && !self.soak_analysis_passed() {
                    let waiting = format!(
                        "soaked; waiting for analysis {} to pass",
                        self.soak_analysis_pending().join(", ")
                    );
                    if record.message.as_deref() != Some(&waiting) {
                        self.status.nodes[index].message = Some(waiting);
                    }
                    return;
                }
                if soaked >= soak {
                    let record = &mut self.status.nodes[index];
                    record.version_after = Some(node.kubelet_version.clone());
                    record.finished_at = Some(Time(self.now));
                    self.enter(index, NodeStep::Done, None);
                    let name = self.status.nodes[index].name.clone();
                    return self.node_event(
                        false,
                        Reason::NodeUpgraded,
                        &name,
                        format!("{name} runs {}", node.kubelet_version),
                    );
                }
                self.requeue_within(soak - soaked);
            }
            NodeStep::Done | NodeStep::Failed => {}
        }
    }

    /// Why the node's heartbeat does not count as fresh, or None when it does: its Lease
    /// must have been renewed within the node monitor grace period, or a Ready condition
    /// may be what the node controller has not yet had time to mark Unknown.
    fn stale_heartbeat(&self, node: &str) -> Option<String> {
        match self.observed.heartbeats.get(node) {
            Some(Ok(renewed)) => {
                let age = self.now.as_second() - renewed;
                (age > NODE_MONITOR_GRACE.as_secs() as i64).then(|| {
                    format!(
                        "its Lease kube-node-lease/{node} was last renewed {age}s ago, more \
                         than the node monitor grace period ({}s): its kubelet may be down",
                        NODE_MONITOR_GRACE.as_secs()
                    )
                })
            }
            Some(Err(error)) => Some(format!(
                "its Lease kube-node-lease/{node} could not be read ({error})"
            )),
            None => Some(format!("its Lease kube-node-lease/{node} was not read yet")),
        }
    }

    /// What keeps a control-plane node's own components from counting as back at
    /// `target` (empty when they are); the node that ran `kubeadm upgrade apply` also
    /// waits for kubeadm-config to record the target.
    fn components_not_at(&self, record: &NodeRecord, target: KubeVersion) -> Vec<String> {
        match &self.observed.gates.control_plane {
            Some(Ok(control_plane)) => {
                let mut problems = control_plane.node_not_at(&record.name, target);
                if record.first_control_plane {
                    problems.extend(control_plane.apply_not_at(&record.name, target));
                }
                problems
            }
            Some(Err(error)) => vec![format!(
                "the control plane's Pods could not be read ({error})"
            )],
            None => vec!["the control plane's Pods were not read yet".to_owned()],
        }
    }

    pub(super) fn enter(&mut self, index: usize, step: NodeStep, message: Option<String>) {
        let record = &mut self.status.nodes[index];
        record.step = step;
        record.step_started_at = Time(self.now);
        record.message = message;
        record.waiting_for_pods.clear();
        record.waiting_for_budgets.clear();
        self.progressed();
    }

    pub(super) fn fail_node(&mut self, index: usize, message: String) {
        let name = self.status.nodes[index].name.clone();
        self.enter(index, NodeStep::Failed, Some(message.clone()));
        self.status.nodes[index].finished_at = Some(Time(self.now));
        self.node_event(true, Reason::NodeFailed, &name, format!("{name} {message}"));
    }

    pub(super) fn drain(&mut self, index: usize, cordoned: bool, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Some(pods) = self.observed.pods.get(&record.name) else {
            // The operator lists the Pods of draining nodes; look again straight away, and
            // cordon once the preview says what the drain will do.
            return self.requeue_within(Duration::ZERO);
        };
        let progress = drain_progress(
            pods,
            self.observed.operator_pod.as_ref(),
            &self.observed.budgets,
            &self.spec.drain,
        );
        if record.drain_preview.is_none() {
            let preview = progress.preview();
            let blocked = if preview.blocked_by.is_empty() {
                String::new()
            } else {
                format!(
                    "; PodDisruptionBudget(s) {} allow no disruption now and will hold the \
                     drain until they do",
                    preview.blocked_by.join(", ")
                )
            };
            self.node_event(
                !preview.blocked_by.is_empty(),
                Reason::DrainPreview,
                &record.name,
                format!(
                    "draining {} evicts {} Pod(s){}{blocked}",
                    record.name,
                    preview.evict_count,
                    if preview.evict.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", preview.evict.join(", "))
                    }
                ),
            );
            self.status.nodes[index].drain_preview = Some(preview);
        }
        if !cordoned {
            self.act(Action::Cordon {
                node: record.name.clone(),
            });
        }
        if cordoned && progress.is_done() {
            self.status.nodes[index].attempts += 1;
            self.enter(index, NodeStep::Upgrading, None);
            return self.upgrade_node(index, batch);
        }
        let timeout = Duration::from(self.spec.drain.timeout);
        let mut deleting = None;
        let waited = self.elapsed(&record.step_started_at);
        if waited >= timeout {
            match self.spec.drain.on_timeout {
                DrainTimeoutAction::Fail => {
                    return self.fail_node(
                        index,
                        format!(
                            "drain timed out after {}s; these Pods did not leave: {}. A \
                             PodDisruptionBudget that allows no disruption is the usual cause",
                            timeout.as_secs(),
                            pod_names(&progress.waiting).join(", ")
                        ),
                    );
                }
                DrainTimeoutAction::Force => self.act(Action::DeletePods {
                    node: record.name.clone(),
                    pods: progress.waiting.clone(),
                }),
            }
        } else {
            if !progress.evict.is_empty() {
                self.act(Action::Evict {
                    node: record.name.clone(),
                    pods: progress.evict.clone(),
                    grace_period_seconds: self.spec.drain.grace_period_seconds,
                });
            }
            if !progress.delete.is_empty() {
                let message = format!(
                    "{DELETING_BLOCKED} {}: their PodDisruptionBudget allows no disruption \
                     and expects one Pod, so no eviction can ever move them \
                     (spec.drain.deletePdbBlockedSingleReplicaPods)",
                    pod_names(&progress.delete).join(", "),
                );
                if record.message.as_ref() != Some(&message) {
                    self.node_event(
                        true,
                        Reason::DeletingBlockedPods,
                        &record.name,
                        format!("{} {message}", record.name),
                    );
                }
                deleting = Some(message);
                self.act(Action::DeletePods {
                    node: record.name.clone(),
                    pods: progress.delete.clone(),
                });
            }
        }
        // What holds the drain, the first that applies; a message of ours that no longer
        // does is cleared.
        let held = progress.held_reasons(&record.name);
        let message = if !held.is_empty() {
            Some(format!(
                "{WAITING_ON_HELD} {}; or see drain.onTimeout",
                held.join("; ")
            ))
        } else if deleting.is_some() {
            deleting
        } else if !progress.blocked_by.is_empty() {
            Some(format!(
                "{WAITING_ON_BUDGETS} {} that allow no disruption now; scale up or relax them, \
                 or see drain.onTimeout",
                progress.blocked_by.join(", ")
            ))
        } else {
            None
        };
        let record = &mut self.status.nodes[index];
        let ours = |m: &str| {
            [WAITING_ON_BUDGETS, WAITING_ON_HELD, DELETING_BLOCKED]
                .iter()
                .any(|prefix| m.starts_with(prefix))
        };
        if message.is_some() || record.message.as_deref().is_some_and(ours) {
            record.message = message;
        }
        record.waiting_for_pods = pod_names(&progress.waiting);
        record.waiting_for_budgets = progress.blocked_by;
        self.requeue_within(DRAIN_POLL);
    }

    pub(super) fn upgrade_node(&mut self, index: usize, batch: &[String]) {
        let record = self.status.nodes[index].clone();
        let Ok(target) = KubeVersion::parse_target(&record.target_version) else {
            return self.fail_node(
                index,
                format!("has an unreadable target {}", record.target_version),
            );
        };
        let owner = self.owner();
        let untagged = untagged_job_name(owner.name, &record.name, target, record.attempts);
        let name = match &record.job {
            Some(job) if *job == untagged => untagged,
            _ => job_name(owner, &record.name, target, record.attempts),
        };
        if record.job.as_deref() != Some(&name) {
            self.status.nodes[index].job = Some(name.clone());
            self.node_event(
                false,
                Reason::JobCreated,
                &record.name,
                format!(
                    "upgrade Job {name} for {} (attempt {})",
                    record.name, record.attempts
                ),
            );
        }
        let observed = self.observed.job(&name);
        if let Some(job) = observed.filter(|j| j.state != JobState::Running) {
            self.status.nodes[index].job_result = Some(crate::evidence::job_result(
                &name,
                &job.state,
                job.evidence.as_ref(),
            ));
        }
        // How the node's last Job ended decides what this one is: one sent after a lost
        // session only re-attaches; one after the node was held waits out the pause first.
        let previous = record
            .job_result
            .as_ref()
            .filter(|r| r.job != name)
            .map(|r| exit_codes::retry(r.exit_code));
        match observed.map(|j| &j.state) {
            None => {
                if previous == Some(Retry::AfterPause) {
                    let waited = self.elapsed(&record.step_started_at);
                    if waited < exit_codes::RETRY_PAUSE {
                        return self.requeue_within(exit_codes::RETRY_PAUSE - waited);
                    }
                }
                let node_ip = self
                    .node(&record.name)
                    .and_then(|n| n.internal_ip.clone())
                    .unwrap_or_default();
                let job = NodeJob {
                    owner,
                    runner: &self.spec.runner,
                    node: &record.name,
                    node_ip: &node_ip,
                    role: record.role,
                    first_control_plane: record.first_control_plane,
                    kind: record.kind,
                    target,
                    attempt: record.attempts,
                    batch,
                    mode: JobMode::Upgrade,
                    reattach: previous == Some(Retry::Reattach),
                    control_plane_available: self.control_plane_available(batch),
                    run_started: self.run_started(),
                    snapshot_claim: None,
                }
                .render();
                self.act(Action::CreateJob(Box::new(job)));
            }
            Some(JobState::Running) => {}
            Some(JobState::Succeeded) => {
                self.enter(index, NodeStep::Rejoining, None);
                self.node_event(
                    false,
                    Reason::JobSucceeded,
                    &record.name,
                    format!(
                        "upgrade Job {name} succeeded; {} is uncordoned once it is Ready at {}",
                        record.name, record.target_version
                    ),
                );
            }
            Some(JobState::Failed { reason, message }) => {
                let code = self.status.nodes[index]
                    .job_result
                    .as_ref()
                    .and_then(|r| r.exit_code);
                let exit = code
                    .map(|code| format!("{}; ", exit_codes::describe(code)))
                    .unwrap_or_default();
                let detail = format!("upgrade Job {name} failed ({exit}{reason}: {message})");
                self.after_failed_job(index, &name, exit_codes::retry(code), detail);
            }
        }
    }

    /// A failed upgrade Job is followed by its exit's class: a lost session re-attaches
    /// and a node held by another process is tried again after a pause, each a few times
    /// without spending an attempt; an upgrade that failed spends one; what only a person
    /// can fix is never retried.
    fn after_failed_job(&mut self, index: usize, job: &str, retry: Retry, detail: String) {
        let record = self.status.nodes[index].clone();
        let free = match retry {
            Retry::Reattach if record.reattaches < exit_codes::MAX_REATTACHES => {
                self.status.nodes[index].reattaches += 1;
                Some(format!(
                    "{detail}; a new Job attaches to the run on the node, which may go on \
                     (re-attach {} of {}, no attempt spent)",
                    record.reattaches + 1,
                    exit_codes::MAX_REATTACHES
                ))
            }
            Retry::AfterPause if record.paused_retries < exit_codes::MAX_PAUSED_RETRIES => {
                self.status.nodes[index].paused_retries += 1;
                Some(format!(
                    "{detail}; trying again in {}s (try {} of {} after a pause, no attempt spent)",
                    exit_codes::RETRY_PAUSE.as_secs(),
                    record.paused_retries + 1,
                    exit_codes::MAX_PAUSED_RETRIES
                ))
            }
            _ => None,
        };
        if let Some(message) = free {
            self.status.nodes[index].attempts += 1;
            self.enter(index, NodeStep::Upgrading, Some(message.clone()));
            self.node_event(true, Reason::JobFailed, &record.name, message);
            return;
        }
        let namespace = &self.spec.runner.namespace;
        if retry == Retry::Never {
            return self.fail_node(
                index,
                format!(
                    "{detail}; retrying cannot help until the node, the repository or the spec \
                     is fixed, so the node is left cordoned. See kubectl -n {namespace} logs \
                     job/{job}, fix what it says, then retry with the upchain.dev/retry annotation"
                ),
            );
        }
        let failures = record.failures + 1;
        self.status.nodes[index].failures = failures;
        if failures < self.spec.runner.attempts {
            self.status.nodes[index].attempts += 1;
            self.enter(index, NodeStep::Upgrading, Some(detail.clone()));
            self.node_event(
                true,
                Reason::JobFailed,
                &record.name,
                format!(
                    "{detail}; retrying ({} of {} attempts used)",
                    failures, self.spec.runner.attempts
                ),
            );
        } else {
            self.fail_node(
                index,
                format!(
                    "{detail} after {failures} attempt(s); the node is left cordoned. \
                     See kubectl -n {namespace} logs job/{job}"
                ),
            );
        }
    }

    /// The nodes in progress take their next step; the run waits on them.
    pub(super) fn advance_nodes_in_progress(&mut self) -> ControlFlow<()> {
        let active: Vec<usize> = (0..self.status.nodes.len())
            .filter(|&i| self.status.nodes[i].step.is_active())
            .collect();
        let Some(&first) = active.first() else {
            return ControlFlow::Continue(());
        };
        let batch: Vec<String> = active
            .iter()
            .map(|&i| self.status.nodes[i].name.clone())
            .collect();
        if active
            .iter()
            .all(|&i| self.status.nodes[i].step == NodeStep::Soaking)
        {
            self.analyse_the_soak();
        }
        for &i in &active {
            self.advance_node(i, &batch);
        }
        if self.status.nodes.iter().any(|n| n.step == NodeStep::Failed) {
            self.fail_on_node();
            return STOP;
        }
        self.stop_on_a_failed_soak()?;
        self.set_phase(match self.status.nodes[first].role {
            NodeRole::ControlPlane => Phase::ControlPlane,
            NodeRole::Worker => Phase::Workers,
        });
        let step = self.status.nodes[first].step;
        self.note(
            Reason::NodeInProgress,
            format!(
                "{} is {}",
                budget::name_the_batch(&batch, ", "),
                step.as_str()
            ),
        );
        STOP
    }
}
