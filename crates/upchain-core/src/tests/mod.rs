//! Phase-machine tests: scenarios, and property tests of the design's invariants run
//! against a small model cluster that carries out every decided action.

mod analysis;
mod chain;
mod checks;
mod control_plane;
mod drain;
mod invariants;
mod one_off;
mod operations;
mod prepare;
mod world;

use invariants::*;
use world::*;

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
use crate::testing::{NodeFixture, pod, upgrade};
use crate::version::KubeVersion;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
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

/// The actions that change what the cluster runs: a prepare check's pass marked on its
/// node is bookkeeping, like the status, and changes nothing a node runs.
fn mutating(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| a.is_mutating() && !matches!(a, Action::MarkPrepared { .. }))
        .collect()
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
