//! `upchain sim`: a simulated cluster served until interrupted.

use std::time::Duration;

use upchain_sim::controllers::Behaviour;
use upchain_sim::{Sim, SimConfig};

use crate::cli::SimArgs;
use crate::error::Error;

/// The simulated cluster the `sim` and `demo` commands start.
pub fn sim_config(
    nodes: (usize, usize),
    version: &str,
    bare: bool,
    upgrade_seconds: u64,
) -> SimConfig {
    SimConfig {
        control_planes: nodes.0,
        workers: nodes.1,
        version: version.to_owned(),
        workloads: !bare,
        behaviour: Behaviour {
            upgrade_time: Duration::from_secs(upgrade_seconds),
            restart_time: Duration::from_secs(upgrade_seconds),
            ..Behaviour::default()
        },
        ..SimConfig::default()
    }
}

/// Serves the simulated cluster until SIGINT or SIGTERM.
pub async fn run(args: &SimArgs) -> Result<(), Error> {
    let (control_planes, workers) = args.nodes;
    let config = SimConfig {
        listen: args.listen,
        ..sim_config(args.nodes, &args.version, args.bare, args.upgrade_seconds)
    };
    let sim = Sim::start(config).await.map_err(Error::Sim)?;
    // The kubeconfig appears once the seeded workloads run, so whoever waits for it gets a
    // settled cluster.
    sim.settled(std::time::Duration::from_secs(30)).await;
    if let Some(path) = &args.kubeconfig {
        sim.write_kubeconfig(path).map_err(Error::Sim)?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!(
        "simulated cluster with {control_planes} control-plane and {workers} worker node(s) at {} serving on {}; Ctrl-C stops it",
        args.version,
        sim.url()
    );
    shutdown_signal().await;
    sim.shutdown().await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
