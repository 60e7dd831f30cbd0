//! Stacked etcd, checked through the node step before the run, before each control-plane
//! node and before the first worker (crate::etcd judges what the check reports), and the
//! control-plane node the etcd Jobs go through.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use upchain_api::{CONTROL_PLANE_LABEL, EtcdCheckRecord, NodeRole, UpgradeKind};

use super::one_off::{JobOutcome, NextAttempt, OneOffRecord};
use super::{Action, Machine, STOP};
use crate::job::{JobMode, NodeJob};
use crate::observe::{Observed, ObservedJob, ObservedNode};
use crate::plan::Plan;
use crate::reason::Reason;
use crate::version::KubeVersion;

impl<'r> From<&'r EtcdCheckRecord> for OneOffRecord<'r> {
    fn from(r: &'r EtcdCheckRecord) -> Self {
        OneOffRecord::new(
            r.attempt,
            r.completed_at.as_ref(),
            r.passed,
            r.message.as_deref(),
        )
    }
}

impl<'a> Machine<'a> {
    /// The control-plane nodes, by name.
    fn control_plane_nodes(&self) -> Vec<&'a ObservedNode> {
        let observed: &'a Observed = self.observed;
        let mut nodes: Vec<&'a ObservedNode> = observed
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(CONTROL_PLANE_LABEL))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// The control-plane node whose etcd member the etcd Jobs ask: a Ready one outside
    /// `avoid` (the nodes about to go down), else the first (with one control-plane node,
    /// the one about to be upgraded, asked before it is touched).
    pub(super) fn etcd_node(&self, avoid: &[&str]) -> Option<ObservedNode> {
        let nodes = self.control_plane_nodes();
        nodes
            .iter()
            .find(|n| n.ready && n.internal_ip.is_some() && !avoid.contains(&n.name.as_str()))
            .or_else(|| nodes.iter().find(|n| n.internal_ip.is_some()))
            .map(|n| (*n).clone())
    }

    /// An etcd check or snapshot Job through `node`.
    pub(super) fn etcd_job(
        &self,
        node: &ObservedNode,
        mode: JobMode,
        attempt: i32,
        snapshot_claim: Option<&str>,
    ) -> Job {
        let target = self
            .status
            .target_version
            .as_deref()
            .and_then(|t| KubeVersion::parse_target(t).ok())
            .or_else(|| KubeVersion::parse_target(&self.spec.target_version).ok())
            .unwrap_or(KubeVersion::new(1, 0, 0));
        let node_ip = node.internal_ip.clone().unwrap_or_default();
        // The Job never runs on the node it asks.
        let batch = [node.name.clone()];
        NodeJob {
            owner: self.owner(),
            runner: &self.spec.runner,
            node: &node.name,
            node_ip: &node_ip,
            role: NodeRole::ControlPlane,
            first_control_plane: false,
            kind: UpgradeKind::Patch,
            target,
            attempt,
            batch: &batch,
            mode,
            reattach: false,
            control_plane_available: self.control_plane_available(&batch),
            run_started: self.run_started(),
            snapshot_claim,
        }
        .render()
    }

    /// True when kubeadm-config says etcd is external: its own check hook applies then.
    fn etcd_is_external(&self) -> bool {
        matches!(&self.observed.gates.control_plane, Some(Ok(cp)) if cp.etcd_external)
    }

    /// The node an etcd check (stacked or external) is due before: the next batch's first
    /// node when it is a control-plane node or the first worker; none once a worker has
    /// begun, or when nothing is left.
    pub(super) fn etcd_check_due_before(&self, plan: &Plan) -> Option<String> {
        let next = plan.next_batch().next()?;
        let workers_begun = self
            .status
            .nodes
            .iter()
            .any(|n| n.role == NodeRole::Worker && n.name != next.name);
        (next.role == NodeRole::ControlPlane || !workers_begun).then(|| next.name.clone())
    }

    /// Before the run, before each control-plane node and before the first worker: the
    /// etcd check must pass for that node, or the run is Blocked naming each member and
    /// what is wrong with it.
    pub(super) fn check_etcd_members(&mut self, plan: &Plan) -> ControlFlow<()> {
        if self.etcd_is_external() {
            return ControlFlow::Continue(());
        }
        let Some(before) = self.etcd_check_due_before(plan) else {
            return ControlFlow::Continue(());
        };
        // status.etcd is cleared when a run starts: what it holds is this run's.
        let previous = self.status.etcd.clone();
        let current = previous.clone().filter(|r| r.before == before);
        let attempt = match self.next_attempt(current.as_ref().map(OneOffRecord::from), true) {
            NextAttempt::Done => return ControlFlow::Continue(()),
            // A new check takes the number after the run's last: names stay unique.
            NextAttempt::Run(1) if current.is_none() => previous.map_or(1, |p| p.attempt + 1),
            NextAttempt::Run(attempt) => attempt,
            NextAttempt::Failed { message, retry_in } => {
                self.requeue_within(retry_in.unwrap_or_default());
                self.block(vec![message]);
                return STOP;
            }
        };
        let batch: Vec<&str> = plan.next_batch().map(|s| s.name.as_str()).collect();
        let Some(node) = self.etcd_node(&batch) else {
            self.block(vec![
                "etcd cannot be checked: no control-plane node has an InternalIP to reach \
                 its member through; check the Nodes' addresses"
                    .to_owned(),
            ]);
            return STOP;
        };
        let job = self.etcd_job(&node, JobMode::EtcdCheck, attempt, None);
        let name = job.metadata.name.clone().unwrap_or_default();
        let shown = format!("{}/{name}", self.spec.runner.namespace);
        if current.as_ref().is_none_or(|r| r.job != name) {
            self.status.etcd = Some(EtcdCheckRecord {
                before: before.clone(),
                node: node.name.clone(),
                job: name.clone(),
                attempt,
                started_at: Time(self.now),
                completed_at: None,
                passed: false,
                message: None,
            });
            self.progressed();
        }
        let observed = self.observed.job(&name);
        let started = self
            .status
            .etcd
            .as_ref()
            .map_or(Time(self.now), |r| r.started_at.clone());
        let timeout = Duration::from_secs(
            u64::try_from(self.spec.runner.active_deadline_seconds).unwrap_or(3600),
        );
        let outcome = self.job_outcome(observed.map(|j| &j.state), &started, timeout);
        let verdict = match outcome {
            JobOutcome::Running(left) => {
                self.act(Action::CreateJob(Box::new(job)));
                self.requeue_within(left);
                self.note(
                    Reason::CheckingEtcd,
                    format!(
                        "checking etcd through {}'s member (Job {shown}) before {before}",
                        node.name
                    ),
                );
                return STOP;
            }
            JobOutcome::Succeeded => match observed.and_then(|j| j.report.as_deref()) {
                None => Err(vec![format!(
                    "the etcd check Job {shown} succeeded but left no report in its \
                     termination message; check its log"
                )]),
                Some(report) => crate::etcd::EtcdReport::parse(report)
                    .map_err(|e| vec![e])
                    .and_then(|report| {
                        let control_planes: Vec<&str> = self
                            .control_plane_nodes()
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect();
                        let problems = crate::etcd::judge(
                            &report,
                            &control_planes,
                            self.spec.gates.etcd_database_quota_percent,
                        );
                        if problems.is_empty() {
                            Ok(report.summary())
                        } else {
                            Err(problems)
                        }
                    }),
            },
            JobOutcome::Failed(how) => {
                let exit = observed
                    .map(ObservedJob::exit_described)
                    .unwrap_or_default();
                Err(vec![format!(
                    "the etcd check Job {shown} {how}{exit}; check its log"
                )])
            }
        };
        let now = Time(self.now);
        match verdict {
            Ok(summary) => {
                if let Some(record) = self.status.etcd.as_mut() {
                    record.completed_at = Some(now);
                    record.passed = true;
                    record.message = Some(summary.clone());
                }
                self.progressed();
                self.event(
                    false,
                    Reason::EtcdHealthy,
                    format!(
                        "etcd checked through {} before {before}: {summary}",
                        node.name
                    ),
                );
                ControlFlow::Continue(())
            }
            Err(problems) => {
                let message = format!(
                    "etcd, checked through {} before {before}: {}; {before} was not started. \
                     The check is retried every recheck interval (docs/operations.md, etcd)",
                    node.name,
                    problems.join("; ")
                );
                if let Some(record) = self.status.etcd.as_mut() {
                    record.completed_at = Some(now);
                    record.message = Some(message.clone());
                }
                self.event(true, Reason::EtcdUnhealthy, message.clone());
                self.block(vec![message]);
                STOP
            }
        }
    }
}
