//! Phase-machine tests: scenarios, and property tests of the design's invariants run
//! against a small model cluster that carries out every decided action.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;
use upchain_api::{K8sUpgrade, K8sUpgradeStatus, NodeStep, Phase, RETRY_ANNOTATION};

use crate::conditions::{self, types};
use crate::job::excluded_nodes;
use crate::machine::{Action, Decision, decide, finalize, holds_lock};
use crate::observe::{
    JobState, Observed, ObservedBudget, ObservedJob, ObservedNode, ObservedPod, OtherUpgrade,
};
use crate::reason::Reason;
use crate::testing::{NodeFixture, upgrade};
use crate::version::KubeVersion;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
}

fn pod(namespace: &str, name: &str) -> ObservedPod {
    ObservedPod {
        namespace: namespace.into(),
        name: name.into(),
        daemonset: false,
        mirror: false,
        finished: false,
        terminating: false,
        unmanaged: false,
        empty_dir: false,
        labels: BTreeMap::new(),
    }
}

/// The jobTemplate of a cluster's etcd backup CronJob.
fn backup_template() -> k8s_openapi::api::batch::v1::JobTemplateSpec {
    serde_json::from_value(serde_json::json!({"spec": {"template": {"spec": {
        "restartPolicy": "OnFailure", "containers": [{"name": "backup", "image": "etcd"}]}}}}))
    .expect("template")
}

/// A PodDisruptionBudget `apps/{app}` over the Pods labelled `app={app}`, allowing no
/// disruption now, expecting `expected_pods`.
fn budget_allowing_nothing(app: &str, expected_pods: i32) -> ObservedBudget {
    let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
        match_expressions: None,
    };
    ObservedBudget {
        namespace: "apps".to_owned(),
        name: app.to_owned(),
        selector: kube_core::Selector::try_from(selector).ok(),
        disruptions_allowed: 0,
        expected_pods,
    }
}

/// A model cluster: applies actions the way the API server and kubelets would.
#[derive(Clone, Debug)]
struct World {
    nodes: Vec<ObservedNode>,
    pods: BTreeMap<String, Vec<ObservedPod>>,
    /// Job name -> (node, target, state).
    jobs: BTreeMap<String, (String, String, JobState)>,
    /// Nodes whose next Jobs fail, with how many failures are left.
    failing: BTreeMap<String, u32>,
    /// Nodes that never come back Ready after their Job.
    never_return: BTreeSet<String>,
    others: Vec<OtherUpgrade>,
    clock: i64,
    gates: crate::gates::GateInputs,
    /// The snapshot CronJob's template, or why it cannot be read.
    snapshot_template: Result<k8s_openapi::api::batch::v1::JobTemplateSpec, String>,
    /// Snapshot Jobs and their states; `snapshot_outcome` is what the next one does.
    snapshot_jobs: BTreeMap<String, JobState>,
    snapshot_outcome: Option<JobState>,
    /// PodDisruptionBudgets: one that allows no disruption refuses evictions it covers.
    budgets: Vec<ObservedBudget>,
    /// Alertmanager's silences, by ID.
    silences: BTreeMap<String, ModelSilence>,
    /// Hook Jobs and their states; `hook_outcome` is how the next ones end.
    hook_jobs: BTreeMap<String, JobState>,
    hook_outcome: JobState,
}

/// A silence in the model's Alertmanager; times in seconds on the world's clock.
#[derive(Clone, Debug)]
struct ModelSilence {
    node: String,
    created: i64,
    ends_at: i64,
    extensions: u32,
}

impl World {
    fn new(nodes: Vec<ObservedNode>) -> Self {
        let pods = nodes
            .iter()
            .map(|n| {
                let mut ds = pod("kube-system", &format!("proxy-{}", n.name));
                ds.daemonset = true;
                (
                    n.name.clone(),
                    vec![pod("apps", &format!("web-{}", n.name)), ds],
                )
            })
            .collect();
        Self {
            nodes,
            pods,
            jobs: BTreeMap::new(),
            failing: BTreeMap::new(),
            never_return: BTreeSet::new(),
            others: Vec::new(),
            clock: 0,
            gates: Default::default(),
            snapshot_template: Ok(backup_template()),
            snapshot_jobs: BTreeMap::new(),
            snapshot_outcome: Some(JobState::Succeeded),
            budgets: Vec::new(),
            silences: BTreeMap::new(),
            hook_jobs: BTreeMap::new(),
            hook_outcome: JobState::Succeeded,
        }
    }

    /// What the operator would observe, given the K8sUpgrade it is about to decide from:
    /// sources outside the API only as far as `needs` asks for them.
    fn observe(&self, upgrade: &K8sUpgrade) -> Observed {
        let status = upgrade.status.as_ref();
        let needs = crate::needs(upgrade);
        let mut gates = self.gates.clone();
        if !needs.alerts {
            gates.alerts = None;
        }
        if !needs.health_checks {
            gates.health_checks = None;
        }
        let draining = crate::nodes_to_read_pods_of(upgrade, &self.nodes);
        // Only the Jobs the operator reads, so the invariants hold on that view.
        let job_nodes = crate::nodes_with_jobs_to_read(status);
        Observed {
            nodes: self.nodes.clone(),
            jobs: self
                .jobs
                .iter()
                .filter(|(_, (node, _, _))| job_nodes.contains(&node.as_str()))
                .map(|(name, (node, _, state))| ObservedJob {
                    name: name.clone(),
                    state: state.clone(),
                    evidence: (*state != JobState::Running).then(|| {
                        let succeeded = *state == JobState::Succeeded;
                        crate::evidence::JobEvidence {
                            exit_code: Some(if succeeded { 0 } else { 1 }),
                            started_at: Some(at(self.clock - 1)),
                            finished_at: Some(at(self.clock)),
                            log: Ok(format!(
                                "upgrading {node}\nssh key passphrase: s3cret-value\n{}\n",
                                if succeeded {
                                    "done"
                                } else {
                                    "E: kubeadm not found"
                                }
                            )),
                        }
                    }),
                })
                .collect(),
            pods: draining
                .into_iter()
                .map(|n| {
                    let pods = self.pods.get(&n).cloned().unwrap_or_default();
                    (n, pods)
                })
                .collect(),
            others: self.others.clone(),
            budgets: self.budgets.clone(),
            operator_pod: None,
            gates,
            snapshot: Some(crate::snapshot::SnapshotInputs {
                template: self.snapshot_template.clone(),
                job: status.and_then(|s| s.snapshot.as_ref()).and_then(|s| {
                    Some(ObservedJob {
                        name: s.job.clone(),
                        state: self.snapshot_jobs.get(&s.job)?.clone(),
                        evidence: None,
                    })
                }),
            }),
            postflight: Some(Default::default()),
            hook_jobs: status
                .iter()
                .flat_map(|s| &s.hooks)
                .filter(|h| h.completed_at.is_none())
                .filter_map(|h| {
                    let name = h.job.split_once('/').map_or(h.job.as_str(), |(_, n)| n);
                    Some(ObservedJob {
                        name: name.to_owned(),
                        state: self.hook_jobs.get(name)?.clone(),
                        evidence: None,
                    })
                })
                .collect(),
        }
    }

    fn node_mut(&mut self, name: &str) -> &mut ObservedNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node exists")
    }

    /// Carries out `actions`; returns the silences placed, as the operator records them.
    fn apply(&mut self, actions: &[Action]) -> Vec<upchain_api::SilenceRecord> {
        let mut placed = Vec::new();
        for action in actions {
            match action {
                Action::Silence { node, id, ends_at } => {
                    let now = self.clock;
                    let live = id
                        .as_ref()
                        .filter(|id| self.silences.get(*id).is_some_and(|s| s.ends_at > now));
                    let id = match live {
                        Some(id) => id.clone(),
                        None => format!("silence-{}", self.silences.len() + 1),
                    };
                    let silence = self.silences.entry(id.clone()).or_insert(ModelSilence {
                        node: node.clone(),
                        created: now,
                        ends_at: 0,
                        extensions: 0,
                    });
                    silence.ends_at = ends_at.as_second() - at(0).as_second();
                    silence.extensions += 1;
                    placed.push(upchain_api::SilenceRecord {
                        node: node.clone(),
                        id,
                        ends_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(*ends_at),
                    });
                }
                Action::ExpireSilence { id, .. } => {
                    let now = self.clock;
                    if let Some(silence) = self.silences.get_mut(id) {
                        silence.ends_at = silence.ends_at.min(now);
                    }
                }
                Action::Cordon { node } => self.node_mut(node).unschedulable = true,
                Action::Uncordon { node } => self.node_mut(node).unschedulable = false,
                Action::Evict { node, pods, .. } => {
                    let budgets = &self.budgets;
                    if let Some(list) = self.pods.get_mut(node) {
                        list.retain(|p| {
                            !pods.contains(&p.reference())
                                || budgets
                                    .iter()
                                    .any(|b| b.disruptions_allowed <= 0 && b.covers(p))
                        });
                    }
                }
                Action::DeletePods { node, pods } => {
                    if let Some(list) = self.pods.get_mut(node) {
                        list.retain(|p| !pods.contains(&p.reference()));
                    }
                }
                Action::CreateJob(job)
                    if job
                        .metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| n.contains("etcd-snapshot")) =>
                {
                    let name = job.metadata.name.clone().expect("named");
                    self.snapshot_jobs.entry(name).or_insert(JobState::Running);
                }
                Action::CreateJob(job)
                    if !job
                        .metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(upchain_api::NODE_LABEL)) =>
                {
                    let name = job.metadata.name.clone().expect("named");
                    self.hook_jobs.entry(name).or_insert(JobState::Running);
                }
                Action::CreateJob(job) => {
                    let name = job.metadata.name.clone().expect("named");
                    let env = &job
                        .spec
                        .as_ref()
                        .expect("spec")
                        .template
                        .spec
                        .as_ref()
                        .expect("pod")
                        .containers[0]
                        .env;
                    let value = |key: &str| {
                        env.iter()
                            .flatten()
                            .find(|e| e.name == key)
                            .and_then(|e| e.value.clone())
                            .expect("env set")
                    };
                    self.jobs.entry(name).or_insert((
                        value("NODE_NAME"),
                        value("TARGET_VERSION"),
                        JobState::Running,
                    ));
                }
                Action::DeleteJob { name } => {
                    self.jobs.remove(name);
                }
                Action::Event(_) | Action::Notify(_) => {}
            }
        }
        placed
    }

    /// Time passes: running Jobs finish, upgrading their node (or failing).
    fn tick(&mut self, seconds: i64) {
        self.clock += seconds.max(1);
        for state in self.hook_jobs.values_mut() {
            if *state == JobState::Running {
                *state = self.hook_outcome.clone();
            }
        }
        if let Some(outcome) = &self.snapshot_outcome {
            for state in self.snapshot_jobs.values_mut() {
                if *state == JobState::Running {
                    *state = outcome.clone();
                }
            }
        }
        let running: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, (_, _, s))| *s == JobState::Running)
            .map(|(name, _)| name.clone())
            .collect();
        for name in running {
            let (node, target, _) = self.jobs[&name].clone();
            if let Some(left) = self.failing.get_mut(&node).filter(|l| **l > 0) {
                *left -= 1;
                self.jobs.get_mut(&name).expect("job").2 = JobState::Failed {
                    reason: "BackoffLimitExceeded".into(),
                    message: "exit code 1".into(),
                };
                continue;
            }
            self.jobs.get_mut(&name).expect("job").2 = JobState::Succeeded;
            let never_return = self.never_return.contains(&node);
            let n = self.node_mut(&node);
            n.kubelet_version = format!("v{target}");
            n.ready = !never_return;
        }
    }

    fn version(&self, node: &str) -> KubeVersion {
        let n = self.nodes.iter().find(|n| n.name == node).expect("node");
        KubeVersion::parse_reported(&n.kubelet_version).expect("version")
    }
}

/// Drives decisions against the world, checking invariants at every step.
struct Run {
    upgrade: K8sUpgrade,
    world: World,
    decisions: usize,
}

impl Run {
    fn new(upgrade: K8sUpgrade, world: World) -> Self {
        Self {
            upgrade,
            world,
            decisions: 0,
        }
    }

    fn decide_once(&mut self) -> Decision {
        let now = at(self.world.clock);
        let observed = self.world.observe(&self.upgrade);
        let decision = decide(&self.upgrade, &observed, now);
        check_invariants(&self.upgrade, &self.world, &decision);
        check_idempotent(&self.upgrade, &observed, now, &decision);
        let placed = self.world.apply(&decision.actions);
        let mut status = decision.status.clone();
        crate::record_silences(&mut status, placed);
        self.upgrade.status = Some(status);
        self.decisions += 1;
        decision
    }

    /// Decides and lets time pass until the phase settles in `until` or `limit` decisions.
    fn until(&mut self, limit: usize, until: &[Phase]) -> Phase {
        for _ in 0..limit {
            let decision = self.decide_once();
            let phase = decision.status.phase.expect("phase set");
            if until.contains(&phase) {
                return phase;
            }
            let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
            self.world.tick(i64::try_from(wait).expect("small"));
        }
        self.upgrade
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .expect("phase")
    }

    fn status_or_default(&self) -> K8sUpgradeStatus {
        self.upgrade.status.clone().unwrap_or_default()
    }

    fn status(&self) -> &K8sUpgradeStatus {
        self.upgrade.status.as_ref().expect("status")
    }
}

fn mutating(actions: &[Action]) -> Vec<&Action> {
    actions.iter().filter(|a| a.is_mutating()).collect()
}

/// Idempotence: the same observation again yields the same status, no Event, and no
/// mutating action that the first decision did not already ask for.
fn check_idempotent(upgrade: &K8sUpgrade, observed: &Observed, now: Timestamp, first: &Decision) {
    let mut again = upgrade.clone();
    again.status = Some(first.status.clone());
    let second = decide(&again, observed, now);
    assert_eq!(
        second.status, first.status,
        "a second decision changed the status"
    );
    for action in &second.actions {
        assert!(
            action.is_mutating(),
            "a second decision repeated an Event: {action:?}"
        );
        assert!(
            first.actions.contains(action),
            "new action on repeat: {action:?}"
        );
    }
}

fn check_invariants(upgrade: &K8sUpgrade, world: &World, decision: &Decision) {
    let status = &decision.status;
    let before = upgrade.status.clone().unwrap_or_default();
    let active: Vec<_> = status.nodes.iter().filter(|n| n.step.is_active()).collect();
    let active_names: Vec<&str> = active.iter().map(|n| n.name.as_str()).collect();

    // What a person reads is written as prose: no run of spaces from a lost line
    // continuation.
    let texts = status
        .blocked_reasons
        .iter()
        .chain(status.conditions.iter().map(|c| &c.message))
        .chain(status.nodes.iter().filter_map(|n| n.message.as_ref()))
        .chain(decision.actions.iter().filter_map(|a| match a {
            Action::Event(event) => Some(&event.message),
            Action::Notify(notification) => Some(&notification.text),
            _ => None,
        }));
    for text in texts {
        assert!(!text.contains("  "), "a run of spaces in {text:?}");
    }

    for action in &decision.actions {
        let node_job = |job: &k8s_openapi::api::batch::v1::Job| {
            job.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(upchain_api::NODE_LABEL))
        };
        if let Action::CreateJob(job) = action
            && !node_job(job)
        {
            // The snapshot and hook Jobs come from the user's templates: they run only
            // while no node is out of service.
            assert!(
                active_names.is_empty(),
                "{:?} while {active_names:?} in progress",
                job.metadata.name
            );
        }
        if let Action::CreateJob(job) = action
            && node_job(job)
        {
            // Invariant 1: the Job avoids every node being drained or upgraded.
            let excluded = excluded_nodes(job);
            for name in &active_names {
                assert!(excluded.iter().any(|e| e == name), "Job may land on {name}");
            }
            // Invariant 10: a Job installs its node's pinned target.
            let node = job.metadata.annotations.as_ref().expect("annotated")
                [upchain_api::NODE_ANNOTATION]
                .clone();
            let record = status
                .nodes
                .iter()
                .find(|n| n.name == node)
                .expect("record");
            let labels = job.metadata.labels.as_ref().expect("labels");
            assert_eq!(labels[upchain_api::TARGET_LABEL], record.target_version);
            // Invariant 5: only a supported move, never a downgrade.
            let target = KubeVersion::parse_target(&record.target_version).expect("target");
            assert!(
                world.version(&node).upgrade_kind_to(target).is_some(),
                "unsupported move for {node}"
            );
        }
    }

    // Invariant 10: a node's pinned target changes only once the node reached the old one
    // (it finished, and a new target then took effect at the node boundary).
    for record in &active {
        if let Some(old) = before
            .nodes
            .iter()
            .find(|n| n.name == record.name && n.step.is_active())
            && old.target_version != record.target_version
        {
            let old_target = KubeVersion::parse_target(&old.target_version).expect("target");
            assert!(
                world.version(&record.name) >= old_target,
                "{} re-targeted mid-step",
                record.name
            );
        }
    }

    // Invariant 2: control-plane nodes one at a time and all before any worker; at most
    // maxUnavailable workers at once.
    let control_plane_active = active
        .iter()
        .filter(|n| n.role == upchain_api::NodeRole::ControlPlane)
        .count();
    let workers_active = active.len() - control_plane_active;
    assert!(control_plane_active <= 1, "two control-plane nodes at once");
    if workers_active > 0 {
        assert_eq!(
            control_plane_active, 0,
            "a worker alongside a control-plane node"
        );
        let target = KubeVersion::parse_target(&active[0].target_version).expect("target");
        for node in world
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL))
        {
            if !upgrade.spec.nodes.skip.contains(&node.name) {
                assert!(
                    world.version(&node.name) >= target,
                    "worker started before {}",
                    node.name
                );
            }
        }
    }
    let max = usize::try_from(upgrade.spec.nodes.max_unavailable).expect("positive");
    assert!(
        workers_active <= max,
        "{workers_active} workers at once, max {max}"
    );

    // Invariant 3: a node is started only when every node before it is Done, Ready and at
    // its target.
    let newly_started: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| {
            n.step == NodeStep::Draining
                && !before
                    .nodes
                    .iter()
                    .any(|b| b.name == n.name && b.step.is_active())
        })
        .filter(|n| n.failures == 0 && n.attempts == 0)
        .map(|n| n.name.as_str())
        .collect();
    if !newly_started.is_empty() {
        for record in status
            .nodes
            .iter()
            .filter(|n| !newly_started.contains(&n.name.as_str()))
        {
            assert!(
                !record.step.is_active(),
                "{} still in progress when a node started",
                record.name
            );
            if record.step == NodeStep::Done && world.nodes.iter().any(|n| n.name == record.name) {
                let node = world
                    .nodes
                    .iter()
                    .find(|n| n.name == record.name)
                    .expect("node");
                assert!(
                    node.ready,
                    "{} not Ready when the next node started",
                    record.name
                );
                let target = KubeVersion::parse_target(&record.target_version).expect("target");
                assert!(world.version(&record.name) >= target);
            }
        }
    }

    // Invariant 5 (refusal side): an invalid spec or policy refusal mutates nothing.
    let refused = conditions::get(&status.conditions, types::READY).is_some_and(|c| {
        c.reason == Reason::InvalidSpec.as_str() || c.reason == Reason::VersionPolicy.as_str()
    });
    if refused && active.is_empty() {
        assert!(
            mutating(&decision.actions).is_empty(),
            "mutation despite a refusal"
        );
    }
}

fn small_cluster() -> Vec<ObservedNode> {
    vec![
        NodeFixture::control_plane("cp-0")
            .kubelet("v1.34.2")
            .build(),
        NodeFixture::worker("w-1").kubelet("v1.34.2").build(),
        NodeFixture::worker("w-2").kubelet("v1.35.2").build(),
        NodeFixture::worker("w-3").kubelet("v1.34.1").build(),
    ]
}

fn quick(target: &str) -> K8sUpgrade {
    let mut u = upgrade(target);
    u.spec.soak = std::time::Duration::from_secs(60).into();
    u
}

#[test]
fn full_chain_upgrades_every_node_in_order() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    for node in &run.world.nodes {
        assert_eq!(node.kubelet_version, "v1.35.2");
        assert!(!node.unschedulable, "{} left cordoned", node.name);
    }
    let status = run.status();
    let order: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, ["cp-0", "w-1", "w-3"]);
    assert!(status.nodes[0].first_control_plane);
    assert_eq!(status.progress.as_deref(), Some("3/3"));
    assert_eq!(status.history.len(), 1);
    assert!(conditions::is_true(&status.conditions, types::READY));
    assert_eq!(status.observed_generation, Some(1));
    // Settled: deciding again changes nothing and does nothing.
    let settled = run.decide_once();
    assert!(settled.actions.is_empty());
    assert_eq!(settled.requeue, None);
}

#[test]
fn nothing_is_mutated_before_the_gates_pass() {
    let mut nodes = small_cluster();
    nodes[1].ready = false;
    let mut run = Run::new(quick("1.35.2"), World::new(nodes));
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Blocked));
    assert!(mutating(&decision.actions).is_empty());
    assert!(decision.status.blocked_reasons[0].contains("w-1 is not Ready"));
    assert!(conditions::is_true(
        &decision.status.conditions,
        types::BLOCKED
    ));
    assert_eq!(decision.requeue, Some(std::time::Duration::from_secs(60)));
    // The cause goes away; the block clears by itself.
    run.world.node_mut("w-1").ready = true;
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn refusals_change_nothing_and_say_why() {
    for (target, reason, words) in [
        ("1.35", "InvalidSpec", "such as 1.35.2"),
        ("1.34.0", "VersionPolicy", "never downgrades"),
        ("1.36.0", "VersionPolicy", "upgrade to 1.35.x first"),
    ] {
        let mut run = Run::new(quick(target), World::new(small_cluster()));
        let decision = run.decide_once();
        assert_eq!(decision.status.phase, Some(Phase::Failed), "{target}");
        assert!(mutating(&decision.actions).is_empty());
        let ready = conditions::get(&decision.status.conditions, types::READY).expect("ready");
        assert_eq!(ready.reason, reason);
        assert!(ready.message.contains(words), "{}", ready.message);
        assert!(
            decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Event(e) if e.warning))
        );
        // Said once: the next reconcile does not repeat the Event.
        assert!(run.decide_once().actions.is_empty());
        // A corrected spec proceeds.
        run.upgrade.spec.target_version = "1.35.2".into();
        run.upgrade.metadata.generation = Some(2);
        assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    }
}

#[test]
fn a_failing_job_is_retried_then_fails_the_run_until_the_retry_annotation() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".into(), 2);
    let mut run = Run::new(quick("1.35.2"), world);
    assert_eq!(run.until(200, &[Phase::Failed]), Phase::Failed);
    let record = run
        .status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("w-1");
    assert_eq!(
        (record.attempts, record.failures, record.step),
        (2, 2, NodeStep::Failed)
    );
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("BackoffLimitExceeded")
    );
    assert!(
        run.world.node_mut("w-1").unschedulable,
        "a failed node stays cordoned"
    );
    assert!(holds_lock(run.status()));
    // w-3 was never touched.
    assert_eq!(run.world.version("w-3"), KubeVersion::new(1, 34, 1));
    assert!(!run.world.node_mut("w-3").unschedulable);
    let ready = conditions::get(&run.status().conditions, types::READY).expect("ready");
    assert!(ready.message.contains(RETRY_ANNOTATION));

    run.upgrade.metadata.annotations = Some([(RETRY_ANNOTATION.to_owned(), "1".to_owned())].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    let record = run
        .status()
        .nodes
        .iter()
        .find(|n| n.name == "w-1")
        .expect("w-1");
    assert_eq!(record.attempts, 3);
}

#[test]
fn a_node_that_never_returns_stalls_then_fails_and_nothing_else_is_drained() {
    let mut world = World::new(small_cluster());
    world.never_return.insert("w-1".into());
    let mut upgrade = quick("1.35.2");
    upgrade.spec.rejoin_timeout = std::time::Duration::from_secs(60 * 60).into();
    upgrade.spec.stall_timeout = std::time::Duration::from_secs(30 * 60).into();
    let mut run = Run::new(upgrade, world);
    let mut saw_stalled = false;
    for _ in 0..400 {
        let decision = run.decide_once();
        saw_stalled |= conditions::is_true(&decision.status.conditions, types::STALLED);
        if decision.status.phase == Some(Phase::Failed) {
            break;
        }
        let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
        run.world.tick(i64::try_from(wait).expect("small"));
    }
    assert!(saw_stalled, "Stalled was never reported");
    assert_eq!(run.status().phase, Some(Phase::Failed));
    assert!(!run.world.node_mut("w-3").unschedulable);
    assert_eq!(run.world.version("w-3"), KubeVersion::new(1, 34, 1));
}

#[test]
fn paused_finishes_the_node_in_progress_and_starts_nothing_new() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.until(50, &[Phase::ControlPlane]);
    run.upgrade.spec.paused = true;
    for _ in 0..50 {
        run.decide_once();
        run.world.tick(60);
    }
    let status = run.status();
    assert_eq!(status.nodes.len(), 1, "only cp-0 was started");
    assert_eq!(status.nodes[0].step, NodeStep::Done);
    assert!(!conditions::is_true(&status.conditions, types::PROGRESSING));
    run.upgrade.spec.paused = false;
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
fn a_second_upgrade_waits_for_the_one_running() {
    let mut world = World::new(small_cluster());
    world.others.push(OtherUpgrade {
        name: "first".into(),
        holds_lock: true,
        waiting: false,
        created: 1,
    });
    let mut run = Run::new(quick("1.35.2"), world);
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Pending));
    assert!(mutating(&decision.actions).is_empty());
    let progressing =
        conditions::get(&decision.status.conditions, types::PROGRESSING).expect("set");
    assert_eq!(progressing.reason, "WaitingForUpgrade");
    assert!(progressing.message.contains("first"));
    run.world.others.clear();
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
fn a_new_target_mid_run_applies_at_the_next_node_boundary() {
    let mut nodes = small_cluster();
    nodes[2].kubelet_version = "v1.34.2".into();
    let mut run = Run::new(quick("1.35.1"), World::new(nodes));
    assert_eq!(run.until(50, &[Phase::ControlPlane]), Phase::ControlPlane);
    run.upgrade.spec.target_version = "1.35.2".into();
    assert_eq!(
        run.until(300, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    let status = run.status();
    // cp-0 finished its run to 1.35.1, then went again to 1.35.2.
    assert!(
        run.world
            .jobs
            .values()
            .any(|(n, t, _)| n == "cp-0" && t == "1.35.1"),
        "{:?}",
        run.world.jobs
    );
    assert!(
        run.world
            .nodes
            .iter()
            .all(|n| n.kubelet_version == "v1.35.2")
    );
    assert_eq!(status.target_version.as_deref(), Some("v1.35.2"));
}

#[test]
fn drain_evicts_pods_and_waits_for_them() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    // The next batch's Pods were read with the decision that starts it: it records the
    // drain preview and cordons at once.
    let first = run.decide_once();
    assert!(first.actions.contains(&Action::Cordon {
        node: "cp-0".into()
    }));
    assert!(first.status.nodes[0].drain_preview.is_some());
    let second = run.decide_once();
    let evicted = second.actions.iter().find_map(|a| match a {
        Action::Evict { node, pods, .. } if node == "cp-0" => Some(pods.clone()),
        _ => None,
    });
    // The model applied the eviction straight away, so the node is empty and the Job comes next.
    assert!(
        evicted.is_some()
            || second
                .actions
                .iter()
                .any(|a| matches!(a, Action::CreateJob(_)))
    );
}

#[test]
fn drain_timeout_fails_with_the_pods_named() {
    let mut world = World::new(small_cluster());
    let mut stuck = pod("db", "postgres-0");
    stuck.terminating = true; // held by a PDB in effect: never leaves
    world.pods.get_mut("cp-0").expect("cp-0").push(stuck);
    let mut run = Run::new(quick("1.35.2"), world);
    assert_eq!(run.until(400, &[Phase::Failed]), Phase::Failed);
    let record = &run.status().nodes[0];
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("db/postgres-0")
    );
}

#[test]
fn a_drain_on_timeout_force_deletes_the_pods_that_would_not_leave_and_goes_on() {
    let mut world = World::new(small_cluster());
    let mut stuck = pod("db", "postgres-0");
    stuck.terminating = true;
    world.pods.get_mut("cp-0").expect("cp-0").push(stuck);
    let mut upgrade = quick("1.35.2");
    upgrade.spec.drain.on_timeout = upchain_api::DrainTimeoutAction::Force;
    let mut run = Run::new(upgrade, world);
    let mut deleted = Vec::new();
    for _ in 0..400 {
        let decision = run.decide_once();
        deleted.extend(decision.actions.iter().filter_map(|a| match a {
            Action::DeletePods { node, pods } => {
                Some((node.clone(), crate::observe::pod_names(pods)))
            }
            _ => None,
        }));
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
        run.world.tick(i64::try_from(wait).expect("small"));
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    assert_eq!(
        deleted,
        [("cp-0".to_owned(), vec!["db/postgres-0".to_owned()])],
        "deleted once, after the timeout"
    );
}

#[test]
fn pods_a_drain_would_lose_block_the_run_before_their_node_is_cordoned() {
    let mut world = World::new(small_cluster());
    let on_cp = world.pods.get_mut("cp-0").expect("cp-0");
    on_cp.push(ObservedPod {
        unmanaged: true,
        ..pod("default", "debug-shell")
    });
    on_cp.push(ObservedPod {
        empty_dir: true,
        ..pod("apps", "cache-0")
    });
    let mut run = Run::new(quick("1.35.2"), world);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty(), "nothing touched");
    let reasons = blocked.status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("default/debug-shell")
            && reasons.contains("spec.drain.evictUnmanagedPods: true"),
        "{reasons}"
    );
    assert!(
        reasons.contains("apps/cache-0") && reasons.contains("spec.drain.deleteEmptyDirData: true"),
        "{reasons}"
    );
    // The SRE allows both; the next recheck starts the node.
    run.upgrade.spec.drain.evict_unmanaged_pods = true;
    run.upgrade.spec.drain.delete_empty_dir_data = true;
    assert_eq!(
        run.until(400, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn a_single_replica_a_budget_holds_forever_is_deleted_when_the_spec_allows() {
    let mut world = World::new(small_cluster());
    world.pods.get_mut("cp-0").expect("cp-0").push(ObservedPod {
        labels: [("app".to_owned(), "anubis".to_owned())].into(),
        ..pod("apps", "anubis-0")
    });
    world.budgets.push(budget_allowing_nothing("anubis", 1));
    let mut upgrade = quick("1.35.2");
    upgrade.spec.drain.delete_pdb_blocked_single_replica_pods = true;
    let mut run = Run::new(upgrade, world);
    let mut events = Vec::new();
    for _ in 0..10 {
        let decision = run.decide_once();
        events.extend(decision.actions.iter().filter_map(|a| match a {
            Action::Event(e) if e.reason == Reason::DeletingBlockedPods => Some(e.message.clone()),
            _ => None,
        }));
        if !events.is_empty() {
            break;
        }
        run.world.tick(1);
    }
    assert!(events[0].contains("apps/anubis-0"), "{events:?}");
    assert_eq!(
        run.until(400, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded,
        "no drain timeout"
    );
}

#[test]
fn a_long_run_keeps_the_last_hundred_done_records_and_folds_the_rest_to_names() {
    let workers = 260;
    let mut nodes = vec![NodeFixture::control_plane("cp-0").build()];
    nodes.extend((0..workers).map(|i| NodeFixture::worker(&format!("w-{i:03}")).build()));
    let mut upgrade = quick("1.35.2");
    upgrade.spec.nodes.max_unavailable = 20;
    let mut run = Run::new(upgrade, World::new(nodes));
    assert_eq!(
        run.until(2000, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    let status = run.status();
    let done = status
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Done)
        .count();
    assert_eq!(done, crate::machine::DONE_RECORDS_KEPT);
    assert_eq!(status.upgraded_nodes.len(), workers + 1 - done);
    // Oldest first: the control plane went first, and the last worker keeps its record.
    assert_eq!(status.upgraded_nodes[0], "cp-0");
    assert_eq!(status.nodes.last().map(|n| n.name.as_str()), Some("w-259"));
    let total = workers + 1;
    assert_eq!(
        status.progress.as_deref(),
        Some(format!("{total}/{total}").as_str())
    );
    let gauges = crate::gauges::gauges(status);
    assert_eq!(gauges.nodes["Done"], i64::try_from(total).expect("small"));
    let size = serde_json::to_vec(status).expect("serializes").len();
    assert!(size < 100_000, "status of {size} bytes for {total} nodes");
    // The worst case stays below etcd's 1.5 MiB: a hundred records with a full drain
    // preview and log tail each, and 5,000 folded names of a 63-character host name.
    let mut worst = status.nodes.last().expect("a record").clone();
    let long = "x".repeat(crate::evidence::LOG_LINE_CHARS);
    worst.job_result.as_mut().expect("result").log_tail = vec![long; crate::evidence::LOG_LINES];
    worst.drain_preview.as_mut().expect("preview").evict =
        vec!["n".repeat(2 * 63 + 1); crate::drain::PREVIEW_NAMES];
    let record = serde_json::to_vec(&worst).expect("serializes").len();
    let worst_status = record * crate::machine::DONE_RECORDS_KEPT + 5_000 * 66;
    assert!(worst_status < 1_400_000, "{record} bytes per record");
}

#[test]
fn finalizer_waits_for_a_running_job_then_uncordons() {
    let mut run = Run::new(quick("1.35.2"), World::new(small_cluster()));
    run.until(20, &[Phase::ControlPlane]);
    while run.status().nodes[0].step != NodeStep::Upgrading {
        run.decide_once();
    }
    let observed = run.world.observe(&run.upgrade);
    let waiting = finalize(&run.upgrade, &observed);
    assert_eq!(waiting.waiting_for_jobs.len(), 1);
    assert!(waiting.actions.is_empty(), "no uncordon while the Job runs");
    run.world.tick(10);
    let observed = run.world.observe(&run.upgrade);
    let release = finalize(&run.upgrade, &observed);
    assert!(release.can_let_go());
    let job = run.status().nodes[0].job.clone().expect("job");
    assert_eq!(
        release.actions,
        [
            Action::Uncordon {
                node: "cp-0".into()
            },
            Action::DeleteJob { name: job }
        ]
    );
    let _ = run.world.apply(&release.actions);
    let observed = run.world.observe(&run.upgrade);
    assert_eq!(finalize(&run.upgrade, &observed), Default::default());
}

fn arb_cluster() -> impl Strategy<Value = (Vec<ObservedNode>, i32, bool)> {
    (
        1usize..=3,
        0usize..=8,
        1i32..=4,
        any::<bool>(),
        proptest::collection::vec(0u8..3, 11),
    )
        .prop_map(
            |(control_planes, workers, max_unavailable, zero_soak, versions)| {
                let version = |i: usize| match versions[i] {
                    0 => "v1.34.2",
                    1 => "v1.35.0",
                    _ => "v1.35.1",
                };
                let mut nodes = Vec::new();
                for i in 0..control_planes {
                    nodes.push(
                        NodeFixture::control_plane(&format!("cp-{i}"))
                            .kubelet(version(i))
                            .build(),
                    );
                }
                for i in 0..workers {
                    nodes.push(
                        NodeFixture::worker(&format!("w-{i}"))
                            .kubelet(version(control_planes + i))
                            .build(),
                    );
                }
                (nodes, max_unavailable, zero_soak)
            },
        )
}

proptest! {
    /// Invariants 1, 2, 3, 5 and 10 and idempotence hold at every decision of a run, and
    /// the run converges with every node at the target and none left cordoned.
    #[test]
    fn runs_keep_the_invariants_and_converge(
        (nodes, max_unavailable, zero_soak) in arb_cluster(),
        failures in proptest::collection::btree_map(0usize..11, 1u32..2, 0..3),
        retarget_at in proptest::option::of(1usize..40),
    ) {
        let mut world = World::new(nodes.clone());
        for (index, count) in failures {
            if let Some(node) = nodes.get(index) {
                world.failing.insert(node.name.clone(), count);
            }
        }
        let mut upgrade = quick("1.35.1");
        upgrade.spec.nodes.max_unavailable = max_unavailable;
        if zero_soak {
            upgrade.spec.soak = std::time::Duration::ZERO.into();
        }
        let refused = crate::plan::plan(
            KubeVersion::new(1, 35, 1),
            &upgrade.spec.nodes,
            &nodes,
        )
        .is_err();
        let mut run = Run::new(upgrade, world);
        if refused {
            let decision = run.decide_once();
            prop_assert_eq!(decision.status.phase, Some(Phase::Failed));
            prop_assert!(mutating(&decision.actions).is_empty());
            return Ok(());
        }
        for step in 0..600 {
            if Some(step) == retarget_at {
                run.upgrade.spec.target_version = "1.35.2".into();
            }
            let decision = run.decide_once();
            if decision.status.phase == Some(Phase::Succeeded)
                && retarget_at.is_none_or(|r| step > r)
            {
                break;
            }
            let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
            run.world.tick(i64::try_from(wait).expect("small"));
        }
        let target = if retarget_at.is_some() { "v1.35.2" } else { "v1.35.1" };
        let want = KubeVersion::parse_target(target).expect("target");
        if crate::plan::plan(want, &run.upgrade.spec.nodes, &nodes).is_err() {
            // The new target is refused at the boundary: the run stops, nothing cordoned.
            prop_assert_eq!(run.status().phase, Some(Phase::Failed));
            prop_assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
            return Ok(());
        }
        prop_assert_eq!(run.status().phase, Some(Phase::Succeeded));
        for node in &run.world.nodes {
            prop_assert!(run.world.version(&node.name) >= want, "{} not upgraded", node.name);
            prop_assert!(!node.unschedulable, "{} left cordoned", node.name);
        }
    }

    /// Invariant 5: any target the policy refuses is refused without a mutation.
    #[test]
    fn refused_targets_mutate_nothing(major in 0u32..3, minor in 30u32..40, patch in 0u32..5, garbage in "[0-9a-z.v]{0,8}") {
        for target in [format!("{major}.{minor}.{patch}"), garbage.clone()] {
            let world = World::new(small_cluster());
            let refused = KubeVersion::parse_target(&target).map_or(true, |t| {
                crate::plan::plan(t, &upchain_api::NodesSpec::default(), &world.nodes).is_err()
            });
            let mut run = Run::new(quick(&target), world);
            let decision = run.decide_once();
            if refused {
                prop_assert_eq!(decision.status.phase, Some(Phase::Failed));
                prop_assert!(mutating(&decision.actions).is_empty());
            }
        }
    }
}

fn firing(name: &str) -> crate::gates::Alert {
    crate::gates::Alert {
        name: name.into(),
        state: "firing".into(),
        labels: String::new(),
    }
}

fn with_prometheus(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    upgrade.spec.gates.prometheus = Some(
        serde_json::from_value(serde_json::json!({"url": "http://prometheus:9090"})).expect("gate"),
    );
    upgrade
}

#[test]
fn a_firing_alert_blocks_before_anything_is_touched_and_the_block_clears_by_itself() {
    let mut world = World::new(small_cluster());
    world.gates.alerts = Some(Ok(vec![firing("KubeNodeNotReady"), firing("Watchdog")]));
    let mut run = Run::new(with_prometheus(quick("1.35.2")), world);
    let decision = run.decide_once();
    assert_eq!(decision.status.phase, Some(Phase::Blocked));
    assert!(mutating(&decision.actions).is_empty());
    assert_eq!(decision.status.blocked_reasons.len(), 1);
    assert!(decision.status.blocked_reasons[0].starts_with("alert KubeNodeNotReady is firing"));
    // Rechecking while the cause stays says nothing new.
    run.world.tick(60);
    let again = run.decide_once();
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    // An unreachable Prometheus is a reason too, not a pass.
    run.world.gates.alerts = Some(Err("connection refused".into()));
    let unreachable = run.decide_once();
    assert!(
        unreachable.status.blocked_reasons[0].contains("could not be read (connection refused)")
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

#[test]
fn alerts_between_nodes_are_waited_out_then_block() {
    let mut run = Run::new(
        with_prometheus(quick("1.35.2")),
        World::new(small_cluster()),
    );
    run.world.gates.alerts = Some(Ok(Vec::new()));
    while run
        .status_or_default()
        .nodes
        .first()
        .is_none_or(|n| n.step != NodeStep::Soaking)
    {
        run.decide_once();
        run.world.tick(10);
    }
    // Alerts start firing while the first node soaks: the next one waits.
    run.world.gates.alerts = Some(Ok(vec![firing("HighErrorRate")]));
    run.world.tick(60);
    // The node finishes soaking within a decision that read the alerts (they are read
    // whenever the next batch may start, soaking included): the wait begins at once.
    let finished = run.decide_once();
    assert_eq!(finished.status.nodes[0].step, NodeStep::Done);
    assert_eq!(finished.status.nodes.len(), 1, "no node started unchecked");
    assert!(finished.status.alerts_waiting_since.is_some());
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    assert_eq!(
        waiting.status.nodes.len(),
        1,
        "no next node while alerts fire"
    );
    assert!(waiting.status.alerts_waiting_since.is_some());
    assert_ne!(waiting.status.phase, Some(Phase::Blocked));
    // Past gates.prometheus.maxWait (30m by default) the run is Blocked.
    run.world.tick(31 * 60);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    assert!(mutating(&blocked.actions).is_empty());
    run.world.gates.alerts = Some(Ok(Vec::new()));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
}

fn with_snapshot(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    upgrade.spec.snapshot = Some(
        serde_json::from_value(serde_json::json!({"namespace": "kube-system", "cronJob": "etcd-backup", "timeout": "10m"}))
            .expect("snapshot"),
    );
    upgrade
}

#[test]
fn the_snapshot_is_taken_and_verified_before_the_first_node() {
    let mut run = Run::new(with_snapshot(quick("1.35.2")), World::new(small_cluster()));
    let first = run.decide_once();
    assert_eq!(first.status.phase, Some(Phase::Snapshot));
    let created: Vec<&Action> = mutating(&first.actions);
    assert!(
        matches!(created.as_slice(), [Action::CreateJob(job)] if job.metadata.namespace.as_deref() == Some("kube-system")),
        "only the snapshot Job: {created:?}"
    );
    run.world.tick(5);
    let taken = run.decide_once();
    let record = taken.status.snapshot.clone().expect("record");
    assert!(record.verified);
    assert!(conditions::is_true(
        &taken.status.conditions,
        types::SNAPSHOT_TAKEN
    ));
    assert_eq!(
        run.until(200, &[Phase::Succeeded, Phase::Failed]),
        Phase::Succeeded
    );
    assert_eq!(run.world.snapshot_jobs.len(), 1, "one snapshot per run");
}

#[test]
fn a_failed_or_hung_snapshot_blocks_and_is_retried() {
    for outcome in [
        Some(JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "etcdctl exited 1".into(),
        }),
        None,
    ] {
        let mut world = World::new(small_cluster());
        world.snapshot_outcome = outcome.clone();
        let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
        run.decide_once();
        run.world.tick(11 * 60);
        let blocked = run.decide_once();
        assert_eq!(blocked.status.phase, Some(Phase::Blocked), "{outcome:?}");
        let reason = &blocked.status.blocked_reasons[0];
        assert!(
            reason.contains(if outcome.is_some() {
                "failed (BackoffLimitExceeded: etcdctl exited 1)"
            } else {
                "did not finish within 10m"
            }),
            "{reason}"
        );
        assert!(
            run.world.nodes.iter().all(|n| !n.unschedulable),
            "no node touched"
        );
        // The cause is fixed; the next attempt runs after the recheck interval.
        run.world.snapshot_outcome = Some(JobState::Succeeded);
        assert_eq!(
            run.until(200, &[Phase::Succeeded, Phase::Failed]),
            Phase::Succeeded
        );
        assert_eq!(
            run.status().snapshot.as_ref().map(|s| s.attempt),
            Some(2),
            "{outcome:?} {:?}",
            run.world.snapshot_jobs
        );
    }
    let mut world = World::new(small_cluster());
    world.snapshot_template = Err("cronjobs.batch \"etcd-backup\" not found".into());
    let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
    let blocked = run.decide_once();
    assert!(
        blocked.status.blocked_reasons[0]
            .contains("CronJob kube-system/etcd-backup could not be read (cronjobs.batch")
    );
    assert!(mutating(&blocked.actions).is_empty());
}

#[test]
fn a_snapshot_template_the_api_server_would_refuse_blocks_before_any_job() {
    let mut world = World::new(small_cluster());
    let mut template = backup_template();
    template.metadata = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        labels: Some([("backup".to_owned(), "x".repeat(70))].into()),
        ..Default::default()
    });
    world.snapshot_template = Ok(template);
    let mut run = Run::new(with_snapshot(quick("1.35.2")), world);
    let blocked = run.decide_once();
    assert_eq!(blocked.status.phase, Some(Phase::Blocked));
    let reason = &blocked.status.blocked_reasons[0];
    assert!(
        reason
            .contains("CronJob kube-system/etcd-backup jobTemplate.metadata.labels: label backup=")
            && reason.ends_with("fix the CronJob"),
        "{reason}"
    );
    assert!(mutating(&blocked.actions).is_empty(), "no Job created");
}

#[test]
fn no_node_starts_outside_the_window_and_status_says_when_it_opens() {
    let mut upgrade = quick("1.35.2");
    // at(0) is 2027-01-15T08:00:00Z, a Friday.
    upgrade.spec.window = Some(
        serde_json::from_value(
            serde_json::json!({"start": "22:00", "duration": "4h", "timeZone": "UTC"}),
        )
        .expect("window"),
    );
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    assert_eq!(
        waiting
            .status
            .next_window_at
            .as_ref()
            .map(|t| t.0.to_string()),
        Some("2027-01-15T22:00:00Z".to_owned())
    );
    assert_eq!(
        waiting.requeue,
        Some(std::time::Duration::from_secs(14 * 3600))
    );
    run.world.tick(14 * 3600);
    let open = run.decide_once();
    assert!(!open.status.nodes.is_empty(), "the first node starts");
    assert!(open.status.next_window_at.is_none());
}

#[test]
fn no_node_starts_in_a_blackout_and_the_condition_names_it() {
    let mut upgrade = quick("1.35.2");
    // at(0) is 2027-01-15T08:00:00Z; the window is always open but for the blackout.
    upgrade.spec.window = Some(
        serde_json::from_value(serde_json::json!({"blackouts": [
            {"start": "2027-01-14", "end": "2027-01-15", "reason": "release freeze"}]}))
        .expect("window"),
    );
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let waiting = run.decide_once();
    assert!(mutating(&waiting.actions).is_empty());
    let ready = conditions::get(&waiting.status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "InBlackout");
    assert!(
        ready.message.contains("release freeze"),
        "{}",
        ready.message
    );
    assert_eq!(
        waiting.requeue,
        Some(std::time::Duration::from_secs(16 * 3600))
    );
    run.world.tick(16 * 3600);
    assert!(
        !run.decide_once().status.nodes.is_empty(),
        "starts after it"
    );
}

#[test]
fn a_manual_run_shows_its_plan_and_waits_for_the_plans_hash() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.approval = upchain_api::Approval::Manual;
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    for _ in 0..3 {
        let waiting = run.decide_once();
        assert!(
            mutating(&waiting.actions).is_empty(),
            "nothing before approval"
        );
        run.world.tick(60);
    }
    let status = run.status().clone();
    assert_eq!(status.phase, Some(Phase::Pending));
    assert!(status.started_at.is_none(), "no run starts before approval");
    let names: Vec<&str> = status.plan.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cp-0", "w-1", "w-3"]);
    assert!(status.gates.iter().any(|g| g.name == "nodes" && g.passed));
    let hash = status.plan_hash.clone().expect("hash");
    let ready = conditions::get(&status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "AwaitingApproval");
    assert!(
        ready
            .message
            .contains(&format!("upchain.dev/approve={hash}"))
    );

    // An approval of another plan does not start it, and says why.
    run.upgrade.metadata.annotations = Some(
        [(
            upchain_api::APPROVE_ANNOTATION.to_owned(),
            "0123456789abcdef".to_owned(),
        )]
        .into(),
    );
    let stale = run.decide_once();
    assert!(mutating(&stale.actions).is_empty());
    let ready = conditions::get(&stale.status.conditions, types::READY).expect("Ready");
    assert!(
        ready.message.contains("earlier plan's hash"),
        "{}",
        ready.message
    );

    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash.clone())].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    assert_eq!(
        run.status().approved_plan_hash.as_deref(),
        Some(hash.as_str())
    );
}

#[test]
fn a_new_target_needs_a_new_approval() {
    let mut upgrade = quick("1.35.2");
    upgrade.spec.approval = upchain_api::Approval::Manual;
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    run.decide_once();
    let hash = run.status().plan_hash.clone().expect("hash");
    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash)].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);

    run.upgrade.spec.target_version = "1.35.3".to_owned();
    for _ in 0..3 {
        let waiting = run.decide_once();
        assert!(mutating(&waiting.actions).is_empty());
        run.world.tick(60);
    }
    assert_eq!(run.status().phase, Some(Phase::Pending));
    let hash = run.status().plan_hash.clone().expect("hash");
    run.upgrade.metadata.annotations =
        Some([(upchain_api::APPROVE_ANNOTATION.to_owned(), hash)].into());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
    assert_eq!(run.status().target_version.as_deref(), Some("v1.35.3"));
}

#[test]
fn the_drain_preview_comes_before_the_cordon_and_names_what_holds_the_drain() {
    let mut world = World::new(small_cluster());
    world
        .pods
        .get_mut("w-1")
        .expect("w-1")
        .iter_mut()
        .for_each(|p| {
            p.labels.insert("app".to_owned(), "web".to_owned());
        });
    world.budgets.push(budget_allowing_nothing("web", 2));
    let mut run = Run::new(quick("1.35.2"), world);
    let mut cordoned_with_preview = BTreeSet::new();
    let mut previews = Vec::new();
    for _ in 0..200 {
        let decision = run.decide_once();
        for action in &decision.actions {
            match action {
                Action::Cordon { node } => {
                    let record = decision.status.nodes.iter().find(|r| &r.name == node);
                    assert!(
                        record.is_some_and(|r| r.drain_preview.is_some()),
                        "{node} cordoned before its drain preview"
                    );
                    cordoned_with_preview.insert(node.clone());
                }
                Action::Event(e) if e.reason == Reason::DrainPreview => previews.push(e.clone()),
                _ => {}
            }
        }
        let w1 = decision.status.nodes.iter().find(|r| r.name == "w-1");
        if w1.is_some_and(|r| !r.waiting_for_budgets.is_empty()) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 60)) as i64);
    }
    let record = run
        .status()
        .nodes
        .iter()
        .find(|r| r.name == "w-1")
        .expect("w-1 started")
        .clone();
    let preview = record.drain_preview.expect("preview");
    assert_eq!(preview.evict, ["apps/web-w-1"]);
    assert_eq!(preview.blocked_by, ["apps/web"]);
    assert_eq!(record.waiting_for_pods, ["apps/web-w-1"]);
    assert_eq!(record.waiting_for_budgets, ["apps/web"]);
    assert!(
        record
            .message
            .as_deref()
            .is_some_and(|m| m.contains("apps/web"))
    );
    let w1_preview = previews
        .iter()
        .find(|e| e.node.as_deref() == Some("w-1"))
        .expect("an Event");
    assert!(w1_preview.warning && w1_preview.message.contains("allow no disruption"));
    assert!(cordoned_with_preview.contains("cp-0") && cordoned_with_preview.contains("w-1"));

    // The budget makes room: the drain goes on and the node's message clears.
    run.world.budgets[0].disruptions_allowed = 1;
    run.world.tick(5);
    let moving = run.decide_once();
    let record = moving
        .status
        .nodes
        .iter()
        .find(|r| r.name == "w-1")
        .expect("w-1");
    assert!(record.waiting_for_budgets.is_empty());
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
fn every_node_keeps_its_jobs_exit_code_times_and_redacted_log() {
    let mut world = World::new(small_cluster());
    world.failing.insert("w-1".to_owned(), 1);
    let mut run = Run::new(quick("1.35.2"), world);
    let mut failed_result = None;
    for _ in 0..300 {
        let decision = run.decide_once();
        if let Some(result) = decision
            .status
            .nodes
            .iter()
            .filter_map(|n| n.job_result.as_ref())
            .find(|r| !r.succeeded)
        {
            failed_result.get_or_insert(result.clone());
        }
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    let failed = failed_result.expect("the failed attempt was recorded");
    assert_eq!(failed.exit_code, Some(1));
    assert!(
        failed
            .log_tail
            .iter()
            .any(|l| l.contains("kubeadm not found"))
    );
    for record in &run.status().nodes {
        let result = record.job_result.as_ref().expect("a result per node");
        assert!(
            result.succeeded && result.exit_code == Some(0),
            "{result:?}"
        );
        assert_eq!(result.job, record.job.clone().expect("job"));
        assert!(result.started_at.is_some() && result.finished_at.is_some());
        assert_eq!(result.log_tail.last().map(String::as_str), Some("done"));
        assert!(
            result.log_tail.iter().all(|l| !l.contains("s3cret")),
            "{:?}",
            result.log_tail
        );
    }
}

fn ceph_check(upgrade: &mut K8sUpgrade, timeout: &str) {
    upgrade.spec.gates.health_checks = vec![
        serde_json::from_value(
            serde_json::json!({"name": "ceph", "apiVersion": "ceph.rook.io/v1",
            "kind": "CephCluster", "namespace": "rook-ceph",
            "expression": "self.status.ceph.health == 'HEALTH_OK'", "timeout": timeout}),
        )
        .expect("check"),
    ];
}

fn ceph_health(world: &mut World, health: &str) {
    world.gates.health_checks = Some(
        [(
            "ceph".to_owned(),
            Ok(vec![
                serde_json::json!({"metadata": {"name": "rook-ceph", "namespace": "rook-ceph"},
                "status": {"ceph": {"health": health}}}),
            ]),
        )]
        .into(),
    );
}

#[test]
fn a_failing_health_check_blocks_before_the_run_and_a_passing_one_lets_it_through() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "0s");
    let mut world = World::new(small_cluster());
    ceph_health(&mut world, "HEALTH_WARN");
    let mut run = Run::new(upgrade, world);
    assert_eq!(run.until(5, &[Phase::Blocked]), Phase::Blocked);
    assert_eq!(
        run.status().blocked_reasons,
        ["health check ceph: CephCluster rook-ceph/rook-ceph: \
          `self.status.ceph.health == 'HEALTH_OK'` is false"]
    );
    assert!(
        run.status()
            .gates
            .iter()
            .any(|g| g.name == "healthCheck/ceph" && !g.passed)
    );
    ceph_health(&mut run.world, "HEALTH_OK");
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
fn between_nodes_a_failing_health_check_is_waited_for_then_blocks() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "10m");
    let mut world = World::new(small_cluster());
    ceph_health(&mut world, "HEALTH_OK");
    let mut run = Run::new(upgrade, world);
    // The control plane is done; Ceph is recovering when the next node would start.
    run.until(200, &[Phase::Workers]);
    ceph_health(&mut run.world, "HEALTH_WARN");
    let mut waited = false;
    for _ in 0..100 {
        let decision = run.decide_once();
        let ready = conditions::get(&decision.status.conditions, types::READY).expect("Ready");
        if ready.reason == Reason::WaitingForHealthChecks.as_str() {
            waited = true;
            assert!(
                ready.message.contains("healthCheck/ceph"),
                "{}",
                ready.message
            );
        }
        if decision.status.phase == Some(Phase::Blocked) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 60)) as i64);
    }
    assert!(waited, "the check was waited for first");
    assert_eq!(run.status().phase, Some(Phase::Blocked));
    let active = run
        .status()
        .nodes
        .iter()
        .filter(|n| n.step.is_active())
        .count();
    assert_eq!(active, 0, "no node started while the check failed");
    ceph_health(&mut run.world, "HEALTH_OK");
    assert_eq!(run.until(200, &[Phase::Succeeded]), Phase::Succeeded);
}

#[test]
fn a_malformed_health_check_expression_is_refused_and_nothing_is_touched() {
    let mut upgrade = quick("1.35.2");
    ceph_check(&mut upgrade, "0s");
    upgrade.spec.gates.health_checks[0].expression = "self.status.ceph.health ==".to_owned();
    let mut run = Run::new(upgrade, World::new(small_cluster()));
    let refused = run.decide_once();
    assert!(mutating(&refused.actions).is_empty());
    assert_eq!(refused.status.phase, Some(Phase::Failed));
    let ready = conditions::get(&refused.status.conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("healthChecks[0] (ceph)"),
        "{}",
        ready.message
    );
}

fn with_silences(mut upgrade: K8sUpgrade, extend_by: &str, cap: &str) -> K8sUpgrade {
    upgrade.spec.gates.silences = Some(
        serde_json::from_value(
            serde_json::json!({"alertmanagerUrl": "http://alertmanager:9093",
            "extendBy": extend_by, "maxDuration": cap}),
        )
        .expect("silences"),
    );
    upgrade
}

/// Decides until `phase`, checking at every instant that no silence reaches further than
/// `extend_by` ahead (what an operator killed then would leave) nor past its node's cap.
fn run_checking_silences(run: &mut Run, phase: Phase, extend_by: i64, cap: i64) {
    for _ in 0..2000 {
        let decision = run.decide_once();
        let now = run.world.clock;
        for silence in run.world.silences.values() {
            assert!(silence.ends_at <= now + extend_by, "{silence:?} at {now}");
            let record = run
                .status()
                .nodes
                .iter()
                .find(|n| n.name == silence.node)
                .expect("a silenced node has a record");
            let started = record.started_at.0.as_second() - at(0).as_second();
            assert!(silence.ends_at <= started + cap, "{silence:?} past its cap");
            assert!(silence.created >= started);
        }
        if decision.status.phase == Some(phase) {
            return;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 120)) as i64);
    }
    panic!("never reached {phase:?}");
}

#[test]
fn each_node_in_progress_is_silenced_and_its_silence_ends_when_it_is_done() {
    let mut run = Run::new(
        with_silences(quick("1.35.2"), "5m", "30m"),
        World::new(small_cluster()),
    );
    run_checking_silences(&mut run, Phase::Succeeded, 300, 1800);
    let status = run.status().clone();
    assert!(status.silences.is_empty(), "{:?}", status.silences);
    let silenced: BTreeSet<&str> = run
        .world
        .silences
        .values()
        .map(|s| s.node.as_str())
        .collect();
    assert_eq!(silenced, BTreeSet::from(["cp-0", "w-1", "w-3"]));
    for silence in run.world.silences.values() {
        let record = status
            .nodes
            .iter()
            .find(|n| n.name == silence.node)
            .expect("record");
        let finished = record.finished_at.as_ref().expect("done").0.as_second() - at(0).as_second();
        assert!(
            silence.ends_at <= finished,
            "{silence:?} outlived its node, done at {finished}"
        );
    }
}

#[test]
fn a_silence_is_extended_in_steps_and_never_past_its_cap() {
    let mut world = World::new(small_cluster());
    world.never_return.insert("cp-0".to_owned());
    let mut run = Run::new(with_silences(quick("1.35.2"), "5m", "20m"), world);
    // cp-0 never comes back: it fails after rejoinTimeout (30m), long past the 20m cap.
    run_checking_silences(&mut run, Phase::Failed, 300, 1200);
    let silence = run
        .world
        .silences
        .values()
        .find(|s| s.node == "cp-0")
        .expect("silenced");
    assert!(silence.extensions >= 4, "{silence:?}");
    let started = run.status().nodes[0].started_at.0.as_second() - at(0).as_second();
    assert_eq!(
        silence.ends_at,
        started + 1200,
        "it ran to its cap and stopped"
    );
    assert!(
        run.status().silences.is_empty(),
        "a failed node is not silenced"
    );
}

fn with_hooks(mut upgrade: K8sUpgrade) -> K8sUpgrade {
    let hook = serde_json::json!({"namespace": "ops", "timeout": "10m", "template": {"spec": {
        "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "hook", "image": "registry.example.org/hook:1"}]}}}}});
    upgrade.spec.hooks = Some(
        serde_json::from_value(serde_json::json!({"pre": hook, "post": hook})).expect("hooks"),
    );
    upgrade
}

#[test]
fn the_pre_hook_runs_before_the_first_node_and_the_post_hook_after_the_postflight() {
    let mut run = Run::new(with_hooks(quick("1.35.2")), World::new(small_cluster()));
    let mut order = Vec::new();
    for _ in 0..300 {
        let decision = run.decide_once();
        for action in &decision.actions {
            match action {
                Action::Event(e)
                    if e.reason.as_str().starts_with("Hook") || e.reason == Reason::NodeStarted =>
                {
                    order.push(e.reason);
                }
                _ => {}
            }
        }
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    assert_eq!(run.status().phase, Some(Phase::Succeeded));
    assert_eq!(order.first(), Some(&Reason::HookStarted));
    assert_eq!(order.get(1), Some(&Reason::HookSucceeded));
    assert_eq!(order[2], Reason::NodeStarted);
    assert_eq!(
        &order[order.len() - 2..],
        [Reason::HookStarted, Reason::HookSucceeded]
    );
    let hooks = &run.status().hooks;
    assert_eq!(hooks.len(), 2);
    assert!(
        hooks
            .iter()
            .all(|h| h.succeeded && h.job.starts_with("ops/test-"))
    );
}

#[test]
fn a_failed_pre_hook_blocks_untouched_and_a_failed_post_hook_fails_the_run_until_a_retry() {
    let mut world = World::new(small_cluster());
    world.hook_outcome = JobState::Failed {
        reason: "BackoffLimitExceeded".into(),
        message: "exit 3".into(),
    };
    let mut run = Run::new(with_hooks(quick("1.35.2")), world);
    assert_eq!(run.until(20, &[Phase::Blocked]), Phase::Blocked);
    assert!(run.status().nodes.is_empty(), "no node touched");
    assert!(run.status().blocked_reasons[0].contains("pre-run hook Job ops/"));
    assert!(run.status().blocked_reasons[0].contains("exit 3"));
    // The hook is fixed: the retried pre hook passes, the post hook fails.
    run.world.hook_outcome = JobState::Succeeded;
    for _ in 0..300 {
        let decision = run.decide_once();
        if decision
            .status
            .hooks
            .iter()
            .any(|h| h.kind == upchain_api::HookKind::Pre && h.succeeded)
        {
            break;
        }
        run.world.tick(30);
    }
    run.world.hook_outcome = JobState::Failed {
        reason: "DeadlineExceeded".into(),
        message: "too slow".into(),
    };
    assert_eq!(run.until(300, &[Phase::Failed]), Phase::Failed);
    let ready = conditions::get(&run.status().conditions, types::READY).expect("Ready");
    assert_eq!(ready.reason, "HookFailed");
    assert!(ready.message.contains("post-run hook") && ready.message.contains("too slow"));
    // It stays Failed, starting nothing, until the retry annotation.
    for _ in 0..5 {
        let still = run.decide_once();
        assert_eq!(still.status.phase, Some(Phase::Failed));
        assert!(mutating(&still.actions).is_empty());
        run.world.tick(60);
    }
    run.world.hook_outcome = JobState::Succeeded;
    run.upgrade.metadata.annotations = Some([(RETRY_ANNOTATION.to_owned(), "1".to_owned())].into());
    assert_eq!(run.until(50, &[Phase::Succeeded]), Phase::Succeeded);
    let post = run
        .status()
        .hooks
        .iter()
        .find(|h| h.kind == upchain_api::HookKind::Post)
        .expect("post");
    assert_eq!(post.attempt, 2);
}

#[test]
fn a_hook_template_the_api_server_would_refuse_fails_the_spec_before_anything() {
    for (template, expected) in [
        (
            serde_json::json!({"spec": {"template": {"spec": {"containers": []}}}}),
            "spec.hooks.pre.template has no containers",
        ),
        (
            serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            "spec.hooks.pre.template.spec.template.spec.restartPolicy is unset (Always)",
        ),
    ] {
        let mut upgrade = with_hooks(quick("1.35.2"));
        upgrade
            .spec
            .hooks
            .as_mut()
            .expect("hooks")
            .pre
            .as_mut()
            .expect("pre")
            .template = template;
        let mut run = Run::new(upgrade, World::new(small_cluster()));
        let refused = run.decide_once();
        assert_eq!(refused.status.phase, Some(Phase::Failed));
        assert!(mutating(&refused.actions).is_empty());
        let ready = conditions::get(&refused.status.conditions, types::READY).expect("Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(ready.message.contains(expected), "{}", ready.message);
    }
}

#[test]
fn notifications_go_once_per_transition() {
    let mut upgrade = with_prometheus(quick("1.35.2"));
    upgrade.spec.notify = Some(
        serde_json::from_value(serde_json::json!({"webhookSecret": {"namespace": "upchain-system", "name": "slack", "key": "url"}}))
            .expect("notify"),
    );
    let mut world = World::new(small_cluster());
    world.gates.alerts = Some(Ok(vec![firing("KubeNodeNotReady")]));
    let mut run = Run::new(upgrade, world);
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.extend(
            run.decide_once()
                .actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Notify(n) => Some(n),
                    _ => None,
                }),
        );
        run.world.tick(60);
    }
    run.world.gates.alerts = Some(Ok(Vec::new()));
    for _ in 0..200 {
        let decision = run.decide_once();
        sent.extend(decision.actions.into_iter().filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        }));
        if decision.status.phase == Some(Phase::Succeeded) {
            break;
        }
        run.world
            .tick(decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600)) as i64);
    }
    let kinds: Vec<&str> = sent.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(kinds, ["started", "blocked", "succeeded"]);
    assert!(sent[1].text.contains("KubeNodeNotReady"));
    assert!(sent.iter().all(|n| n.text.starts_with("K8sUpgrade test ")));
}

#[test]
fn a_node_job_started_under_the_untagged_name_is_followed_not_doubled() {
    // An upchain from before Job names carried the uid tag started this node's Job; the
    // new one takes over mid-run.
    let world = World::new(small_cluster());
    let mut run = Run::new(quick("1.35.2"), world);
    for _ in 0..20 {
        run.decide_once();
        if run
            .status_or_default()
            .nodes
            .iter()
            .any(|n| n.step == NodeStep::Upgrading)
        {
            break;
        }
        run.world.tick(1);
    }
    let status = run.upgrade.status.as_mut().expect("status");
    let record = status
        .nodes
        .iter_mut()
        .find(|n| n.step == NodeStep::Upgrading)
        .expect("a node upgrading");
    let tagged = record.job.clone().expect("job");
    let untagged = crate::job::untagged_job_name(
        "test",
        &record.name,
        crate::KubeVersion::new(1, 35, 2),
        record.attempts,
    );
    record.job = Some(untagged.clone());
    let job = run.world.jobs.remove(&tagged).expect("running job");
    run.world.jobs.insert(untagged.clone(), job);
    let next = run.decide_once();
    assert!(
        !next
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateJob(_))),
        "a second Job for the node: {:?}",
        next.actions
    );
    assert!(
        next.status
            .nodes
            .iter()
            .any(|n| n.job.as_ref() == Some(&untagged))
    );
}
