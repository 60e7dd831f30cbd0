//! `/metrics`, `/healthz` and `/readyz`: the seed's gauge names, one series per K8sUpgrade
//! (label `upgrade`), so its alerts keep working.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use upchain_api::{K8sUpgradeStatus, NodeStep, Phase};
use upchain_core::gauges::{NODE_STATES, WAITING_REASONS, gauges, node_seconds};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpgradeLabel {
    upgrade: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    upgrade: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    upgrade: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    upgrade: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabel {
    upgrade: String,
    target_version: String,
    from_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabel {
    kind: String,
    result: String,
}

/// A watch failing for this long without a break makes the controller unhealthy: its
/// caches, and so its decisions, no longer follow the cluster.
const WATCH_FAILING_LIMIT: Duration = Duration::from_secs(5 * 60);
/// A reconcile running this long is stuck: every API call it makes times out well before.
const RECONCILE_STUCK_LIMIT: Duration = Duration::from_secs(10 * 60);
/// A failing watch retries with a backoff well under this: no error for this long means
/// it recovered, even when no good event came to say so (nothing changed meanwhile).
const WATCH_QUIET_AFTER_ERRORS: Duration = Duration::from_secs(2 * 60);

/// What `/healthz` answers: whether the controller's watches and reconciles are alive. A
/// kubelet restarts the operator when they are not.
#[derive(Debug, Default)]
pub struct Health {
    /// Watches whose last event was an error: since when they fail, and their last error.
    failing_watches: Mutex<HashMap<&'static str, (Instant, Instant)>>,
    /// Reconciles under way, by K8sUpgrade, and when they began.
    reconciling: Mutex<HashMap<String, Instant>>,
}

impl Health {
    /// Records one event of `watch`: an error starts (or continues) a failing spell.
    pub fn watched(&self, watch: &'static str, ok: bool, now: Instant) {
        let mut failing = lock(&self.failing_watches);
        if ok {
            failing.remove(watch);
        } else {
            failing.entry(watch).or_insert((now, now)).1 = now;
        }
    }

    /// Records that a reconcile of `upgrade` began (`true`) or ended.
    pub fn reconciling(&self, upgrade: &str, running: bool, now: Instant) {
        let mut reconciling = lock(&self.reconciling);
        if running {
            reconciling.insert(upgrade.to_owned(), now);
        } else {
            reconciling.remove(upgrade);
        }
    }

    /// What is wrong at `now`; empty when healthy.
    pub fn problems(&self, now: Instant) -> Vec<String> {
        let mut problems: Vec<String> = lock(&self.failing_watches)
            .iter()
            .filter(|(_, (since, last))| {
                now.duration_since(*since) >= WATCH_FAILING_LIMIT
                    && now.duration_since(*last) < WATCH_QUIET_AFTER_ERRORS
            })
            .map(|(watch, (since, _))| {
                format!(
                    "the {watch} watch has failed for {}s",
                    now.duration_since(*since).as_secs()
                )
            })
            .collect();
        problems.extend(
            lock(&self.reconciling)
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= RECONCILE_STUCK_LIMIT)
                .map(|(upgrade, since)| {
                    format!(
                        "the reconcile of {upgrade} has run for {}s",
                        now.duration_since(*since).as_secs()
                    )
                }),
        );
        problems.sort();
        problems
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    in_flight: Family<UpgradeLabel, Gauge>,
    started: Family<UpgradeLabel, Gauge>,
    snapshot_taken: Family<UpgradeLabel, Gauge>,
    blocked: Family<UpgradeLabel, Gauge>,
    stalled: Family<UpgradeLabel, Gauge>,
    last_progress: Family<UpgradeLabel, Gauge>,
    phase: Family<PhaseLabel, Gauge>,
    nodes: Family<StateLabel, Gauge>,
    waiting: Family<ReasonLabel, Gauge>,
    info: Family<InfoLabel, Gauge>,
    /// The versions each upgrade's info series carries now, so a new target replaces the
    /// old series rather than adding one.
    info_of: Mutex<HashMap<String, InfoLabel>>,
    node_duration: Family<RoleLabel, Histogram>,
    reconciles: Counter,
    reconcile_errors: Family<CategoryLabel, Counter>,
    notifications: Family<NotificationLabel, Counter>,
    reconcile_duration: Histogram,
    leader: Gauge,
    ready: AtomicBool,
    /// Nodes whose duration was already observed, so each is counted once.
    timed: std::sync::Mutex<std::collections::HashSet<(String, String, String)>>,
    /// When this process started: only nodes finished since are observed.
    since: jiff::Timestamp,
    /// What `/healthz` answers.
    pub health: Health,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::since(jiff::Timestamp::now())
    }
}

impl Metrics {
    /// Metrics that observe the duration of nodes finished at or after `since`.
    pub fn since(since: jiff::Timestamp) -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            in_flight: Family::default(),
            started: Family::default(),
            snapshot_taken: Family::default(),
            blocked: Family::default(),
            stalled: Family::default(),
            last_progress: Family::default(),
            phase: Family::default(),
            nodes: Family::default(),
            waiting: Family::default(),
            info: Family::default(),
            info_of: Mutex::default(),
            node_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(15.0, 2.0, 10))
            }),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            notifications: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            leader: Gauge::default(),
            ready: AtomicBool::new(false),
            timed: std::sync::Mutex::default(),
            since,
            health: Health::default(),
            registry: Registry::default(),
        };
        registry.register(
            "k8s_upgrade_in_flight",
            "1 while an upgrade run is under way or failed half-way",
            metrics.in_flight.clone(),
        );
        registry.register(
            "k8s_upgrade_started_timestamp",
            "Start of the run in flight, seconds since the epoch (0 when none)",
            metrics.started.clone(),
        );
        registry.register(
            "k8s_upgrade_snapshot_taken",
            "1 once the etcd snapshot of the run is verified",
            metrics.snapshot_taken.clone(),
        );
        registry.register(
            "k8s_upgrade_blocked",
            "1 while a gate refuses the run (nothing was changed)",
            metrics.blocked.clone(),
        );
        registry.register(
            "k8s_upgrade_stalled",
            "1 when the run made no progress for spec.stallTimeout",
            metrics.stalled.clone(),
        );
        registry.register(
            "k8s_upgrade_last_progress_timestamp",
            "Last time a node moved to its next step, seconds since the epoch",
            metrics.last_progress.clone(),
        );
        registry.register(
            "k8s_upgrade_phase",
            "1 for the run's current phase",
            metrics.phase.clone(),
        );
        registry.register(
            "k8s_upgrade_nodes",
            "Nodes of the run per state",
            metrics.nodes.clone(),
        );
        registry.register(
            "k8s_upgrade_waiting",
            "1 while the run waits for a person, by reason (Paused, AwaitingApproval)",
            metrics.waiting.clone(),
        );
        registry.register(
            "k8s_upgrade_info",
            "1, labelled with the run's target and from-versions (empty before a run)",
            metrics.info.clone(),
        );
        registry.register(
            "k8s_upgrade_node_duration_seconds",
            "Time from a node's start to done",
            metrics.node_duration.clone(),
        );
        registry.register(
            "upchain_reconciles",
            "Reconciles run",
            metrics.reconciles.clone(),
        );
        registry.register(
            "upchain_reconcile_errors",
            "Reconciles failed, by error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "upchain_reconcile_duration_seconds",
            "Reconcile latency",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "upchain_notifications",
            "Notifications sent to the webhook, by kind and result (sent or failed)",
            metrics.notifications.clone(),
        );
        registry.register(
            "upchain_leader",
            "Whether this replica holds the leader lease and acts",
            metrics.leader.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Sets the gauges of `upgrade` from its status.
    pub fn record_status(&self, upgrade: &str, status: &K8sUpgradeStatus) {
        let g = gauges(status);
        let label = UpgradeLabel {
            upgrade: upgrade.to_owned(),
        };
        self.in_flight
            .get_or_create(&label)
            .set(i64::from(g.in_flight));
        self.started.get_or_create(&label).set(g.started_timestamp);
        self.snapshot_taken
            .get_or_create(&label)
            .set(i64::from(g.snapshot_taken));
        self.blocked.get_or_create(&label).set(i64::from(g.blocked));
        self.stalled.get_or_create(&label).set(i64::from(g.stalled));
        self.last_progress
            .get_or_create(&label)
            .set(g.last_progress_timestamp);
        for phase in Phase::ALL {
            let label = PhaseLabel {
                upgrade: upgrade.to_owned(),
                phase: phase.as_str().to_owned(),
            };
            self.phase
                .get_or_create(&label)
                .set(i64::from(phase == g.phase));
        }
        for state in NODE_STATES {
            let label = StateLabel {
                upgrade: upgrade.to_owned(),
                state: state.to_owned(),
            };
            self.nodes
                .get_or_create(&label)
                .set(g.nodes.get(state).copied().unwrap_or(0));
        }
        for reason in WAITING_REASONS {
            let label = ReasonLabel {
                upgrade: upgrade.to_owned(),
                reason: reason.to_owned(),
            };
            self.waiting
                .get_or_create(&label)
                .set(i64::from(g.waiting == Some(reason)));
        }
        let info = InfoLabel {
            upgrade: upgrade.to_owned(),
            target_version: status.target_version.clone().unwrap_or_default(),
            from_version: status.from_version.clone().unwrap_or_default(),
        };
        if let Some(old) = lock(&self.info_of).insert(upgrade.to_owned(), info.clone())
            && old != info
        {
            self.info.remove(&old);
        }
        self.info.get_or_create(&info).set(1);
        let mut timed = self.timed.lock().unwrap_or_else(|p| p.into_inner());
        for node in status.nodes.iter().filter(|n| n.step == NodeStep::Done) {
            // A node finished before this process started was observed by the process
            // that finished it: after a restart or a failover it is not counted again.
            let Some(finished) = node.finished_at.as_ref().filter(|f| f.0 >= self.since) else {
                continue;
            };
            if timed.insert((
                upgrade.to_owned(),
                node.name.clone(),
                node.target_version.clone(),
            )) {
                self.node_duration
                    .get_or_create(&RoleLabel {
                        role: node.role.as_str().to_owned(),
                    })
                    .observe(node_seconds(node.started_at.0, finished.0));
            }
        }
    }

    /// Drops every series of a deleted upgrade.
    pub fn forget(&self, upgrade: &str) {
        let label = UpgradeLabel {
            upgrade: upgrade.to_owned(),
        };
        for family in [
            &self.in_flight,
            &self.started,
            &self.snapshot_taken,
            &self.blocked,
            &self.stalled,
            &self.last_progress,
        ] {
            family.remove(&label);
        }
        for phase in Phase::ALL {
            self.phase.remove(&PhaseLabel {
                upgrade: upgrade.to_owned(),
                phase: phase.as_str().to_owned(),
            });
        }
        for state in NODE_STATES {
            self.nodes.remove(&StateLabel {
                upgrade: upgrade.to_owned(),
                state: state.to_owned(),
            });
        }
        for reason in WAITING_REASONS {
            self.waiting.remove(&ReasonLabel {
                upgrade: upgrade.to_owned(),
                reason: reason.to_owned(),
            });
        }
        if let Some(info) = lock(&self.info_of).remove(upgrade) {
            self.info.remove(&info);
        }
        self.timed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(name, _, _)| name != upgrade);
    }

    /// Counts a reconcile and its latency.
    pub fn reconciled(&self, seconds: f64, error_category: Option<&str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(seconds);
        if let Some(category) = error_category {
            self.reconcile_errors
                .get_or_create(&CategoryLabel {
                    category: category.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a notification, sent or failed.
    pub fn notified(&self, kind: &str, sent: bool) {
        self.notifications
            .get_or_create(&NotificationLabel {
                kind: kind.to_owned(),
                result: if sent { "sent" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks this replica ready (`/readyz` 200): a standby that the API server answered,
    /// or a leader whose node cache is filled.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether this replica is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use upchain_api::{NodeRecord, NodeRole, UpgradeKind};

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(seconds).unwrap()
    }

    fn done(name: &str, finished: i64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            role: NodeRole::Worker,
            first_control_plane: false,
            kind: UpgradeKind::Patch,
            target_version: "1.35.2".into(),
            version_before: "v1.35.1".into(),
            version_after: Some("v1.35.2".into()),
            step: NodeStep::Done,
            step_started_at: Time(at(finished - 60)),
            cordoned: false,
            attempts: 1,
            failures: 0,
            reattaches: 0,
            paused_retries: 0,
            job: None,
            started_at: Time(at(finished - 60)),
            finished_at: Some(Time(at(finished))),
            message: None,
            waiting_for_pods: Vec::new(),
            waiting_for_budgets: Vec::new(),
            drain_preview: None,
            job_result: None,
        }
    }

    fn status(phase: Phase, nodes: Vec<NodeRecord>) -> K8sUpgradeStatus {
        K8sUpgradeStatus {
            phase: Some(phase),
            nodes,
            ..K8sUpgradeStatus::default()
        }
    }

    fn lines_with(metrics: &Metrics, needle: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn health_fails_on_a_watch_failing_for_minutes_or_a_reconcile_that_never_ends() {
        let health = Health::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        health.watched("nodes", false, at(0));
        health.watched("nodes", false, at(200));
        assert!(
            health.problems(at(299)).is_empty(),
            "a short spell is retried"
        );
        assert_eq!(
            health.problems(at(300)),
            ["the nodes watch has failed for 300s"]
        );
        health.watched("nodes", true, at(301));
        assert!(
            health.problems(at(400)).is_empty(),
            "one good event ends the spell"
        );
        // A spell that stopped erroring ended, though no good event said so.
        health.watched("K8sUpgrade", false, at(1_000));
        assert!(
            health.problems(at(1_400)).is_empty(),
            "quiet for minutes after its one error"
        );
        for t in (1_000..=1_400).step_by(10) {
            health.watched("K8sUpgrade", false, at(t));
        }
        assert_eq!(
            health.problems(at(1_400)),
            ["the K8sUpgrade watch has failed for 400s"]
        );
        health.watched("K8sUpgrade", true, at(1_401));

        health.reconciling("to-1-35", true, at(0));
        assert!(health.problems(at(599)).is_empty());
        assert_eq!(
            health.problems(at(600)),
            ["the reconcile of to-1-35 has run for 600s"]
        );
        health.reconciling("to-1-35", false, at(601));
        assert!(health.problems(at(900)).is_empty());
    }

    #[test]
    fn deleting_one_upgrade_keeps_the_others_series() {
        let metrics = Metrics::since(at(1_000));
        metrics.record_status("failed-run", &status(Phase::Failed, Vec::new()));
        metrics.record_status("gone", &status(Phase::Succeeded, Vec::new()));
        metrics.forget("gone");
        assert!(lines_with(&metrics, "upgrade=\"gone\"").is_empty());
        assert!(
            lines_with(&metrics, "k8s_upgrade_phase{")
                .iter()
                .any(|l| l.contains("upgrade=\"failed-run\"")
                    && l.contains("phase=\"Failed\"")
                    && l.ends_with(" 1")),
            "the Failed series of another upgrade survives: {}",
            metrics.encode()
        );
        assert!(!lines_with(&metrics, "k8s_upgrade_nodes{upgrade=\"failed-run\"").is_empty());
    }

    #[test]
    fn the_info_series_carries_the_versions_and_a_new_target_replaces_it() {
        let metrics = Metrics::since(at(1_000));
        let mut run = status(Phase::Succeeded, Vec::new());
        run.from_version = Some("1.34.2".into());
        run.target_version = Some("1.35.2".into());
        metrics.record_status("u", &run);
        assert_eq!(
            lines_with(&metrics, "k8s_upgrade_info{"),
            ["k8s_upgrade_info{upgrade=\"u\",target_version=\"1.35.2\",from_version=\"1.34.2\"} 1"]
        );
        run.from_version = Some("1.35.2".into());
        run.target_version = Some("1.36.0".into());
        metrics.record_status("u", &run);
        let info = lines_with(&metrics, "k8s_upgrade_info{");
        assert_eq!(info.len(), 1, "{info:?}");
        assert!(info[0].contains("target_version=\"1.36.0\""));
        metrics.forget("u");
        assert!(lines_with(&metrics, "k8s_upgrade_info{").is_empty());
    }

    #[test]
    fn a_node_is_timed_once_and_never_again_after_a_restart() {
        let count = |metrics: &Metrics| {
            lines_with(metrics, "k8s_upgrade_node_duration_seconds_count")
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>()
        };
        let run = status(Phase::Workers, vec![done("w-0", 900), done("w-1", 1_100)]);
        let metrics = Metrics::since(at(1_000));
        metrics.record_status("u", &run);
        metrics.record_status("u", &run);
        assert_eq!(
            count(&metrics),
            1,
            "w-1 only: w-0 finished before the start"
        );
        // A restarted operator (or a new leader) sees both records again.
        let restarted = Metrics::since(at(1_200));
        restarted.record_status("u", &run);
        assert_eq!(count(&restarted), 0);
    }
}
