//! Leader election: only the replica holding the Lease acts.

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use tracing::{info, warn};

use super::{Settings, run};
use crate::metrics::Metrics;

/// The coordination.k8s.io Lease replicas compete for.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// Seconds a lease is valid without renewal.
    pub duration_seconds: u64,
    /// Seconds of slack before a held lease is renewed.
    pub grace_seconds: u64,
}

/// Runs the controller only while this replica holds the Lease. A replica that loses the
/// lease stops acting at once (the controller is aborted mid-reconcile, which is safe:
/// intent is in status before every action, and every step is idempotent); on shutdown it
/// finishes its reconciles and then releases the lease.
pub async fn run_with_leader_election(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    lease: LeaseSettings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), kube_lease_manager::LeaseManagerError> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        // Exclusion rests on server-side apply conflicts between field managers, so each
        // replica must apply as its own manager (the library's default names it after the
        // identity); one shared manager would let two replicas lead at once.
        .build()
        .await?;
    let (leading, lease_task) = manager.watch().await;
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    loop {
        // A standby is ready: it can take over. A leader is ready once its caches are.
        metrics.set_ready(true);
        let mut became_leader = leading.clone();
        tokio::select! {
            () = shutdown.clone() => break,
            leads = async { became_leader.wait_for(|l| *l).await.is_ok() } => if !leads { break },
        }
        info!(identity = %lease.identity, "leading: acting on the cluster");
        metrics.set_leader(true);
        metrics.set_ready(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut controller = tokio::spawn(run(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut lost = leading.clone();
        tokio::select! {
            () = shutdown.clone() => {
                let _ = stop.send(());
                let _ = controller.await;
                metrics.set_leader(false);
                break;
            }
            () = async { let _ = lost.wait_for(|l| !*l).await; } => {
                controller.abort();
                let _ = (&mut controller).await;
                warn!(identity = %lease.identity, "lost the lease: stopped acting");
            }
            _ = &mut controller => {}
        }
        metrics.set_leader(false);
    }
    // Dropping the receiver makes the manager release the lease.
    drop(leading);
    let _ = lease_task.await;
    Ok(())
}
