//! The model cluster the core's scenarios run against: it applies actions the way the
//! API server and kubelets would, and gives each decision only what `needs()` asks for.

use super::*;

/// A model cluster: applies actions the way the API server and kubelets would.
#[derive(Clone, Debug)]
pub(super) struct World {
    pub(super) nodes: Vec<ObservedNode>,
    pub(super) pods: BTreeMap<String, Vec<ObservedPod>>,
    /// Job name -> (node, target, state).
    pub(super) jobs: BTreeMap<String, (String, String, JobState)>,
    /// Nodes whose next Jobs fail, with how many failures are left.
    pub(super) failing: BTreeMap<String, u32>,
    /// The exit code a failing node's Jobs end with (1 where unset).
    pub(super) failing_exit: BTreeMap<String, i32>,
    /// Nodes that never come back Ready after their Job.
    pub(super) never_return: BTreeSet<String>,
    /// Nodes whose kubelet stopped renewing its Lease while its Ready condition still says
    /// True (the node controller has not marked it Unknown yet).
    pub(super) silent: BTreeSet<String>,
    /// Nodes whose Job succeeds but whose kubelet stays at its old version.
    pub(super) stays_old: BTreeSet<String>,
    /// (node, component) static Pods that crash-loop.
    pub(super) crash_looping: BTreeSet<(String, String)>,
    /// Control-plane nodes whose static Pods run another version than their kubelet, as
    /// after a kubelet moved by hand.
    pub(super) static_versions: BTreeMap<String, String>,
    /// What kube-system/kubeadm-config records; the node Job that runs `kubeadm upgrade
    /// apply` moves it, unless `kubeadm_config_stale`.
    pub(super) kubeadm_version: String,
    pub(super) kubeadm_config_stale: bool,
    /// The node Jobs that run `kubeadm upgrade apply`.
    pub(super) applies: BTreeSet<String>,
    pub(super) others: Vec<OtherUpgrade>,
    pub(super) clock: i64,
    pub(super) gates: crate::gates::GateInputs,
    /// Snapshot Jobs: name -> (node asked, state); `snapshot_outcome` is what the next
    /// one does.
    pub(super) snapshot_jobs: BTreeMap<String, (String, JobState)>,
    pub(super) snapshot_outcome: Option<JobState>,
    /// What a snapshot Job reports: by default a good snapshot.
    pub(super) snapshot_report: Option<String>,
    /// kubeadm-config says etcd is external: the member check does not run. The core's
    /// scenarios check stacked etcd where they say so (tests::etcd); elsewhere each check
    /// would only add a decision before each control-plane node.
    pub(super) etcd_external: bool,
    /// etcd check Jobs: name -> (node asked, state).
    pub(super) etcd_jobs: BTreeMap<String, (String, JobState)>,
    /// What an etcd check reports: by default a healthy member per control-plane node.
    pub(super) etcd_report: Option<String>,
    /// PodDisruptionBudgets: one that allows no disruption refuses evictions it covers.
    pub(super) budgets: Vec<ObservedBudget>,
    /// Alertmanager's silences, by ID.
    pub(super) silences: BTreeMap<String, ModelSilence>,
    /// Hook Jobs and their states; `hook_outcome` is how the next ones end.
    pub(super) hook_jobs: BTreeMap<String, JobState>,
    pub(super) hook_outcome: JobState,
    /// Prepare Jobs: name -> (node, state).
    pub(super) prepare_jobs: BTreeMap<String, (String, JobState)>,
    /// Nodes whose prepare checks find no target packages.
    pub(super) unprepared: BTreeSet<String>,
}

/// A silence in the model's Alertmanager; times in seconds on the world's clock.
#[derive(Clone, Debug)]
pub(super) struct ModelSilence {
    pub(super) node: String,
    pub(super) created: i64,
    pub(super) ends_at: i64,
    pub(super) extensions: u32,
}

impl World {
    pub(super) fn new(nodes: Vec<ObservedNode>) -> Self {
        let kubeadm_version = nodes
            .iter()
            .filter(|n| n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL))
            .filter_map(|n| KubeVersion::parse_reported(&n.kubelet_version).ok())
            .min()
            .map_or_else(String::new, |v| v.to_string());
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
            failing_exit: BTreeMap::new(),
            silent: BTreeSet::new(),
            never_return: BTreeSet::new(),
            stays_old: BTreeSet::new(),
            crash_looping: BTreeSet::new(),
            static_versions: BTreeMap::new(),
            kubeadm_version,
            kubeadm_config_stale: false,
            applies: BTreeSet::new(),
            others: Vec::new(),
            clock: 0,
            gates: Default::default(),
            snapshot_jobs: BTreeMap::new(),
            snapshot_outcome: Some(JobState::Succeeded),
            snapshot_report: None,
            etcd_external: true,
            etcd_jobs: BTreeMap::new(),
            etcd_report: None,
            budgets: Vec::new(),
            silences: BTreeMap::new(),
            hook_jobs: BTreeMap::new(),
            hook_outcome: JobState::Succeeded,
            prepare_jobs: BTreeMap::new(),
            unprepared: BTreeSet::new(),
        }
    }

    /// What the operator would observe, given the K8sUpgrade it is about to decide from:
    /// sources outside the API only as far as `needs` asks for them.
    pub(super) fn observe(&self, upgrade: &K8sUpgrade) -> Observed {
        let status = upgrade.status.as_ref();
        let needs = crate::needs(upgrade, &self.nodes);
        let mut gates = self.gates.clone();
        if !needs.alerts {
            gates.alerts = None;
        }
        if !needs.health_checks {
            gates.health_checks = None;
        }
        // The queries asked for, each answered as the model's Prometheus would.
        gates.analysis = (!needs.analysis.is_empty()).then(|| {
            needs
                .analysis
                .iter()
                .map(|name| {
                    let answer = self
                        .gates
                        .analysis
                        .as_ref()
                        .and_then(|a| a.get(name).cloned())
                        .unwrap_or_else(|| Err("no answer".to_owned()));
                    (name.clone(), answer)
                })
                .collect()
        });
        gates.control_plane = needs.control_plane.then(|| Ok(self.control_plane()));
        let draining = needs.pods_of.clone();
        // Only the Jobs the operator reads, so the invariants hold on that view.
        let job_nodes = match &needs.jobs {
            crate::JobsToRead::All => self
                .jobs
                .values()
                .map(|(node, _, _)| node.clone())
                .collect(),
            crate::JobsToRead::OfNodes(nodes) => nodes.clone(),
        };
        // A kubelet that runs renews its Lease every 10 s.
        let heartbeats = needs
            .heartbeats_of
            .iter()
            .map(|name| {
                let renews = self.nodes.iter().any(|n| &n.name == name && n.ready)
                    && !self.silent.contains(name);
                let renewed = if renews {
                    self.clock - 5
                } else {
                    self.clock - 300
                };
                (name.clone(), Ok(at(renewed).as_second()))
            })
            .collect();
        Observed {
            heartbeats,
            nodes: self.nodes.clone().into(),
            jobs: self
                .jobs
                .iter()
                .filter(|(_, (node, _, _))| job_nodes.contains(node))
                .map(|(name, (node, _, state))| ObservedJob {
                    name: name.clone(),
                    state: state.clone(),
                    evidence: (*state != JobState::Running && needs.evidence_of.contains(name))
                        .then(|| {
                            let succeeded = *state == JobState::Succeeded;
                            crate::evidence::JobEvidence {
                                exit_code: Some(if succeeded {
                                    0
                                } else {
                                    self.failing_exit.get(node).copied().unwrap_or(1)
                                }),
                                started_at: Some(at(self.clock - 1)),
                                finished_at: Some(at(self.clock)),
                                report: None,
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
                    report: None,
                })
                .chain(
                    self.prepare_jobs
                        .iter()
                        .filter(|(_, (node, _))| job_nodes.contains(node))
                        .map(|(name, (node, state))| ObservedJob {
                            name: name.clone(),
                            state: state.clone(),
                            evidence: (*state != JobState::Running
                                && needs.evidence_of.contains(name))
                            .then(|| prepare_evidence(node, state)),
                            report: None,
                        }),
                )
                .chain(
                    self.etcd_jobs
                        .iter()
                        .map(|(name, (node, state))| (name, node, state, self.etcd_report()))
                        .chain(self.snapshot_jobs.iter().map(|(name, (node, state))| {
                            (name, node, state, self.snapshot_report(node))
                        }))
                        .filter(|(_, node, _, _)| job_nodes.contains(node))
                        .map(|(name, _, state, report)| ObservedJob {
                            name: name.clone(),
                            state: state.clone(),
                            evidence: None,
                            report: (*state == JobState::Succeeded).then_some(report),
                        }),
                )
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
                        report: None,
                    })
                })
                .collect(),
        }
    }

    /// The control plane's static Pods as kubelets report them: at their node's kubelet
    /// version, Ready while the node is, but for the crash-looping ones; stacked etcd.
    pub(super) fn control_plane(&self) -> crate::gates::ControlPlaneObservation {
        let mut static_pods = Vec::new();
        for node in &self.nodes {
            if !node.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL) {
                continue;
            }
            for component in crate::gates::COMPONENTS.into_iter().chain(["etcd"]) {
                let crashing = self
                    .crash_looping
                    .contains(&(node.name.clone(), component.to_owned()));
                let version = self
                    .static_versions
                    .get(&node.name)
                    .unwrap_or(&node.kubelet_version);
                static_pods.push(crate::gates::StaticPod {
                    node: node.name.clone(),
                    component: component.to_owned(),
                    image: format!("registry.k8s.io/{component}:{version}"),
                    running: node.ready && !crashing,
                    restarts: if crashing { 7 } else { 0 },
                });
            }
        }
        let api_servers = self
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL))
            .map(|n| crate::gates::ApiServerReadyz {
                node: n.name.clone(),
                endpoint: format!("{}:6443", n.internal_ip.clone().unwrap_or_default()),
                answer: if n.ready {
                    Ok(())
                } else {
                    Err("connection refused".to_owned())
                },
            })
            .collect();
        crate::gates::ControlPlaneObservation {
            static_pods,
            readyz: Ok(()),
            etcd_external: self.etcd_external,
            api_servers,
            kubeadm_version: KubeVersion::parse_reported(&self.kubeadm_version)
                .map_err(|e| e.to_string()),
        }
    }

    /// What an etcd check reports now.
    fn etcd_report(&self) -> String {
        self.etcd_report.clone().unwrap_or_else(|| {
            let members: Vec<(&str, String)> = self
                .nodes
                .iter()
                .filter(|n| n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL))
                .enumerate()
                // One address per member, whatever the fixtures' Nodes say.
                .map(|(i, n)| (n.name.as_str(), format!("10.0.0.{}", i + 1)))
                .collect();
            let members: Vec<(&str, &str)> =
                members.iter().map(|(n, a)| (*n, a.as_str())).collect();
            crate::etcd::healthy_report(&members)
        })
    }

    /// What a snapshot of `node`'s member reports.
    fn snapshot_report(&self, node: &str) -> String {
        self.snapshot_report.clone().unwrap_or_else(|| {
            crate::snapshot::good_report(node, "pvc/upchain-system/upchain-etcd-snapshots/etcd.db")
        })
    }

    pub(super) fn node_mut(&mut self, name: &str) -> &mut ObservedNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node exists")
    }

    /// Carries out `actions`; returns the silences placed, as the operator records them.
    pub(super) fn apply(&mut self, actions: &[Action]) -> Vec<upchain_api::SilenceRecord> {
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
                Action::MarkPrepared { node, run } => {
                    self.node_mut(node).prepared = Some(run.clone());
                }
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
                    if matches!(
                        env_of(job, "MODE").as_deref(),
                        Some("etcd-snapshot" | "etcd-check")
                    ) =>
                {
                    let name = job.metadata.name.clone().expect("named");
                    let node = env_of(job, "NODE_NAME").expect("NODE_NAME");
                    let jobs = if env_of(job, "MODE").as_deref() == Some("etcd-check") {
                        &mut self.etcd_jobs
                    } else {
                        &mut self.snapshot_jobs
                    };
                    jobs.entry(name).or_insert((node, JobState::Running));
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
                Action::CreateJob(job) if env_of(job, "MODE").as_deref() == Some("prepare") => {
                    let name = job.metadata.name.clone().expect("named");
                    let node = env_of(job, "NODE_NAME").expect("NODE_NAME");
                    self.prepare_jobs
                        .entry(name)
                        .or_insert((node, JobState::Running));
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
                    if value("FIRST_CONTROL_PLANE") == "true" {
                        self.applies.insert(name.clone());
                    }
                    self.jobs.entry(name).or_insert((
                        value("NODE_NAME"),
                        value("TARGET_VERSION"),
                        JobState::Running,
                    ));
                }
                Action::DeleteJob { name, .. } => {
                    self.jobs.remove(name);
                    self.prepare_jobs.remove(name);
                    self.snapshot_jobs.remove(name);
                    self.etcd_jobs.remove(name);
                }
                Action::Event(_) | Action::Notify(_) => {}
            }
        }
        placed
    }

    /// Time passes: running Jobs finish, upgrading their node (or failing).
    pub(super) fn tick(&mut self, seconds: i64) {
        self.clock += seconds.max(1);
        for state in self.hook_jobs.values_mut() {
            if *state == JobState::Running {
                *state = self.hook_outcome.clone();
            }
        }
        for (node, state) in self.prepare_jobs.values_mut() {
            if *state == JobState::Running {
                *state = if self.unprepared.contains(node) {
                    JobState::Failed {
                        reason: "BackoffLimitExceeded".into(),
                        message: "Job has reached the specified backoff limit".into(),
                    }
                } else {
                    JobState::Succeeded
                };
            }
        }
        if let Some(outcome) = &self.snapshot_outcome {
            for (_, state) in self.snapshot_jobs.values_mut() {
                if *state == JobState::Running {
                    *state = outcome.clone();
                }
            }
        }
        for (_, state) in self.etcd_jobs.values_mut() {
            if *state == JobState::Running {
                *state = JobState::Succeeded;
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
            let stays_old = self.stays_old.contains(&node);
            if !stays_old {
                self.static_versions.remove(&node);
                if self.applies.contains(&name) && !self.kubeadm_config_stale {
                    self.kubeadm_version = format!("v{target}");
                }
            }
            let n = self.node_mut(&node);
            if !stays_old {
                n.kubelet_version = format!("v{target}");
            }
            n.ready = !never_return;
        }
    }

    pub(super) fn version(&self, node: &str) -> KubeVersion {
        let n = self.nodes.iter().find(|n| n.name == node).expect("node");
        KubeVersion::parse_reported(&n.kubelet_version).expect("version")
    }
}

/// Drives decisions against the world, checking invariants at every step.
pub(super) struct Run {
    pub(super) upgrade: K8sUpgrade,
    pub(super) world: World,
    pub(super) decisions: usize,
}

impl Run {
    pub(super) fn new(upgrade: K8sUpgrade, world: World) -> Self {
        Self {
            upgrade,
            world,
            decisions: 0,
        }
    }

    /// Runs the prepare checks a new run starts with: the next decision starts a node.
    pub(super) fn prepare(&mut self) {
        let decision = self.decide_once();
        assert!(
            decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::CreateJob(_))),
            "the prepare Jobs start: {:?}",
            decision.status.conditions
        );
        self.world.tick(1);
    }

    /// Lets the time pass that `decision` asked to be looked at again after (30 s when it
    /// asked for nothing), within `1..=max` seconds.
    pub(super) fn wait_as_asked(&mut self, decision: &Decision, max: u64) {
        let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, max));
        self.world.tick(i64::try_from(wait).expect("small"));
    }

    pub(super) fn decide_once(&mut self) -> Decision {
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
    pub(super) fn until(&mut self, limit: usize, until: &[Phase]) -> Phase {
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

    pub(super) fn status_or_default(&self) -> K8sUpgradeStatus {
        self.upgrade.status.clone().unwrap_or_default()
    }

    pub(super) fn status(&self) -> &K8sUpgradeStatus {
        self.upgrade.status.as_ref().expect("status")
    }
}

/// A value of a rendered Job's container environment.
pub(super) fn env_of(job: &k8s_openapi::api::batch::v1::Job, key: &str) -> Option<String> {
    job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == key)
        .and_then(|e| e.value.clone())
}

/// What a finished prepare Job's Pod shows: ready, or exit 11 with the script's words.
fn prepare_evidence(node: &str, state: &JobState) -> crate::evidence::JobEvidence {
    let ready = *state == JobState::Succeeded;
    crate::evidence::JobEvidence {
        exit_code: Some(if ready { 0 } else { 11 }),
        started_at: None,
        finished_at: None,
        report: None,
        log: Ok(if ready {
            format!("upchain[{node}]: ready\n")
        } else {
            format!(
                "upchain[{node}]: error: kubeadm kubelet kubectl 1.35.2 not found in the \
                 configured repository\n"
            )
        }),
    }
}
