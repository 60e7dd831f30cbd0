//! What every test against the simulated cluster starts from.

use std::time::Duration;

use kube::Client;
use upchain_sim::controllers::Behaviour;
use upchain_sim::{Sim, SimConfig};

/// A simulated cluster whose workloads have started, and a client for it that installed
/// the K8sUpgrade CRD and the runner's prerequisites.
pub async fn simulated(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(config).await.expect("sim");
    assert!(
        sim.settled(Duration::from_secs(30)).await,
        "workloads never started"
    );
    let client = upchain_operator::install::simulated_cluster_client(&sim.url())
        .await
        .expect("CRD, runner namespace, script and SSH Secret");
    (sim, client)
}

/// How long a simulated node upgrade, node restart and Pod start take.
pub fn timing(upgrade: Duration, restart: Duration, pod_start: Duration) -> Behaviour {
    Behaviour {
        upgrade_time: upgrade,
        restart_time: restart,
        pod_start_time: pod_start,
    }
}
