//! Conformance of the simulated API server as kube-rs sees it.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod faults;
mod objects;
mod refusals;
mod watches;
mod workloads;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config};
use serde_json::json;
use upchain_api::K8sUpgrade;
use upchain_sim::{Clock, Sim, SimConfig};

pub(crate) async fn start(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(config).await.expect("sim starts");
    let mut config = Config::new(sim.url().parse().expect("url"));
    // Answers reach the test as the server sent them (kube-rs would retry 429s itself).
    config.default_retry = false;
    let client = Client::try_from(config).expect("client");
    (sim, client)
}

pub(crate) fn bare() -> SimConfig {
    SimConfig {
        workloads: false,
        ..SimConfig::default()
    }
}

/// Waits (on the real clock, bounded) until `check` holds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The refusal of `result`: its code and message, or a panic naming `what`.
pub(crate) fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
) -> (u16, String) {
    match result {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        other => panic!("{what} must be refused as a real API server refuses it: {other:?}"),
    }
}
