//! `upchain sim`: a simulated cluster served until interrupted.

use std::time::Duration;

use upchain_sim::controllers::Behaviour;
use upchain_sim::{Sim, SimConfig};

use crate::cli::SimArgs;
use crate::error::Error;

/// Serves the simulated cluster until SIGINT or SIGTERM.
pub async fn run(args: &SimArgs) -> Result<(), Error> {
    let (control_planes, workers) = args.nodes;
    let config = SimConfig {
        control_planes,
        workers,
        version: args.version.clone(),
        listen: args.listen,
        workloads: !args.bare,
        behaviour: Behaviour {
            upgrade_time: Duration::from_secs(args.upgrade_seconds),
            restart_time: Duration::from_secs(args.upgrade_seconds),
            ..Behaviour::default()
        },
        ..SimConfig::default()
    };
    let sim = Sim::start(config).await.map_err(Error::Sim)?;
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
