//! What every test against the simulated cluster starts from.

use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// How long a simulated node upgrade, node restart and a Pod's start (and its stop when
/// deleted) take.
pub fn timing(upgrade: Duration, restart: Duration, pod_start: Duration) -> Behaviour {
    Behaviour {
        upgrade_time: upgrade,
        restart_time: restart,
        pod_start_time: pod_start,
        pod_stop_time: pod_start,
        ..Behaviour::default()
    }
}

/// `upchain run` against `kubeconfig` with `args`, metrics on a free port, its log (the
/// operator's info lines) written to `log`.
pub fn upchain_run(kubeconfig: &Path, log: &Path, args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_upchain"))
        .args([
            "--log",
            "upchain_operator=info",
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("upchain starts")
}
