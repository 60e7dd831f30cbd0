//! What the `/metrics` gauges say about one K8sUpgrade, derived from its status alone.

use std::collections::BTreeMap;

use jiff::Timestamp;
use upchain_api::{K8sUpgradeStatus, Phase};

use crate::conditions::{self, types};
use crate::machine::holds_lock;

/// The per-upgrade gauge values, named after the series they feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeGauges {
    /// `k8s_upgrade_in_flight`: a run is under way (started and neither succeeded nor
    /// refused before touching anything). A Failed run with a node touched stays in flight:
    /// the cluster is half-done until a person acts.
    pub in_flight: bool,
    /// `k8s_upgrade_started_timestamp`, seconds since the epoch (0 when not in flight).
    pub started_timestamp: i64,
    /// `k8s_upgrade_snapshot_taken`.
    pub snapshot_taken: bool,
    /// `k8s_upgrade_blocked`.
    pub blocked: bool,
    /// `k8s_upgrade_stalled`.
    pub stalled: bool,
    /// `k8s_upgrade_last_progress_timestamp`, seconds since the epoch.
    pub last_progress_timestamp: i64,
    /// `k8s_upgrade_phase{phase}`: the current phase.
    pub phase: Phase,
    /// `k8s_upgrade_nodes{state}`: nodes per state (node steps, plus Pending for the plan).
    pub nodes: BTreeMap<&'static str, i64>,
    /// `k8s_upgrade_waiting{reason}`: what the run waits on a person for, if anything
    /// (one of [`WAITING_REASONS`]).
    pub waiting: Option<&'static str>,
}

/// Why a run waits for a person, as `k8s_upgrade_waiting` labels it: `spec.paused`, or its
/// plan's approval (`approval: Manual`).
pub const WAITING_REASONS: [&str; 2] = ["Paused", "AwaitingApproval"];

/// Every state `k8s_upgrade_nodes` reports, so series go to 0 rather than vanish.
pub const NODE_STATES: [&str; 7] = [
    "Pending",
    "Draining",
    "Upgrading",
    "Rejoining",
    "Soaking",
    "Done",
    "Failed",
];

/// The gauges for a status.
pub fn gauges(status: &K8sUpgradeStatus) -> UpgradeGauges {
    let phase = status.phase.unwrap_or(Phase::Pending);
    // In flight exactly while the run holds the one-upgrade-per-cluster lock.
    let in_flight = holds_lock(status);
    let seconds = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map_or(0, |t| t.0.as_second())
    };
    let mut nodes: BTreeMap<&'static str, i64> = NODE_STATES.iter().map(|s| (*s, 0)).collect();
    for record in status
        .nodes
        .iter()
        .filter(|n| Some(&n.target_version) == status.target_version.as_ref())
    {
        *nodes.entry(record.step.as_str()).or_default() += 1;
    }
    *nodes.entry("Done").or_default() += i64::from(status.upgraded_without_record);
    nodes.insert(
        "Pending",
        i64::from(status.pending_nodes.unwrap_or_default()),
    );
    UpgradeGauges {
        in_flight,
        started_timestamp: if in_flight {
            seconds(status.started_at.as_ref())
        } else {
            0
        },
        snapshot_taken: conditions::is_true(&status.conditions, types::SNAPSHOT_TAKEN),
        blocked: phase == Phase::Blocked,
        stalled: conditions::is_true(&status.conditions, types::STALLED),
        last_progress_timestamp: seconds(status.last_progress_at.as_ref()),
        phase,
        nodes,
        waiting: conditions::get(&status.conditions, types::READY).and_then(|ready| {
            WAITING_REASONS
                .into_iter()
                .find(|reason| *reason == ready.reason)
        }),
    }
}

/// Seconds a node took from its start to done, for the per-node duration histogram.
pub fn node_seconds(started: Timestamp, finished: Timestamp) -> f64 {
    finished.duration_since(started).as_secs_f64().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::decide;
    use crate::observe::Observed;
    use crate::testing::{NodeFixture, upgrade};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
    }

    #[test]
    fn a_run_in_progress_is_in_flight_with_its_start_time() {
        let observed = Observed {
            nodes: vec![
                NodeFixture::control_plane("cp-0")
                    .kubelet("v1.34.2")
                    .build(),
                NodeFixture::worker("w-1").kubelet("v1.34.2").build(),
            ]
            .into(),
            ..Observed::default()
        };
        let mut upgrade = upgrade("1.35.2");
        let preparing = decide(&upgrade, &observed, at(0));
        let g = gauges(&preparing.status);
        assert!(g.in_flight && !g.blocked && !g.stalled);
        assert_eq!(g.phase, Phase::Preflight);
        assert_eq!(g.nodes["Pending"], 2);
        // etcd passed its check: the prepare checks run.
        let etcd = preparing
            .status
            .etcd
            .clone()
            .expect("etcd is checked first");
        let succeeded = |name: &str, report: Option<String>| crate::observe::ObservedJob {
            name: name.to_owned(),
            state: crate::observe::JobState::Succeeded,
            evidence: None,
            report,
        };
        let etcd_passed = Observed {
            jobs: vec![succeeded(
                &etcd.job,
                Some(crate::etcd::healthy_report(&[("cp-0", "10.0.0.1")])),
            )],
            ..observed.clone()
        };
        upgrade.status = Some(preparing.status);
        let preparing = decide(&upgrade, &etcd_passed, at(0));
        // The prepare checks passed: the first node starts.
        let passed = Observed {
            jobs: preparing
                .status
                .prepare
                .iter()
                .map(|r| succeeded(&r.job, None))
                .chain(etcd_passed.jobs.clone())
                .collect(),
            ..observed
        };
        upgrade.status = Some(preparing.status);
        let decision = decide(&upgrade, &passed, at(0));
        let g = gauges(&decision.status);
        assert!(g.in_flight && !g.blocked && !g.stalled && !g.snapshot_taken);
        assert_eq!(g.phase, Phase::ControlPlane);
        assert_eq!(g.started_timestamp, at(0).as_second());
        assert_eq!(g.nodes["Draining"], 1);
        assert_eq!(g.nodes["Pending"], 1);
        assert_eq!(g.nodes.len(), NODE_STATES.len());
    }

    #[test]
    fn blocked_and_refused_runs() {
        let observed = Observed {
            nodes: vec![
                NodeFixture::control_plane("cp-0")
                    .kubelet("v1.34.2")
                    .build(),
                NodeFixture::worker("w-1")
                    .kubelet("v1.34.2")
                    .not_ready()
                    .build(),
            ]
            .into(),
            ..Observed::default()
        };
        let blocked = gauges(&decide(&upgrade("1.35.2"), &observed, at(0)).status);
        assert!(blocked.blocked && blocked.in_flight);
        let refused = gauges(&decide(&upgrade("1.34.0"), &observed, at(0)).status);
        assert_eq!(refused.phase, Phase::Failed);
        assert!(
            !refused.in_flight,
            "a refusal before any change is not a half-done rollout"
        );
        assert_eq!(refused.started_timestamp, 0);
    }

    #[test]
    fn node_durations_never_go_negative() {
        assert_eq!(node_seconds(at(10), at(70)), 60.0);
        assert_eq!(node_seconds(at(70), at(10)), 0.0);
    }
}
