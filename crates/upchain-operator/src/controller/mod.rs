//! The K8sUpgrade controller. One reconcile, in the order of these rooms:
//! `observe` (read what `upchain_core::needs` asks for) -> `upchain_core::decide` (pure)
//! -> `apply` (write the status, then carry out the actions; `events` records them).
//! Here: the watches, the loop, the error policy, and deletion; `lease` runs it all only
//! on the replica that leads.

mod apply;
mod drain_watch;
mod events;
mod job_pods;
mod lease;
mod node_cache;
mod observe;

use apply::{add_finalizer, carry_out, set_finalizers, write_status};
use drain_watch::DrainWatch;
use events::Events;
use job_pods::JobPods;
pub use lease::{LeaseSettings, run_with_leader_election};
use node_cache::NodeCache;
use observe::{cached_nodes, observe};

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::controller::{Action as Requeue, Error as ControllerError};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};
use upchain_api::{FINALIZER, K8sUpgrade, UPGRADE_ANNOTATION, UPGRADE_LABEL};

use crate::metrics::Metrics;
use upchain_core::{Needs, PodRef, decide, finalize, holds_lock, woken_by_nodes};

/// Errors of one reconcile; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source the run needs could not be read.
    #[error("{0}; the reconcile is retried with backoff")]
    Gather(String),
    /// Reading from the API server failed.
    #[error("{action} failed: {source}; the reconcile is retried with backoff")]
    Read {
        /// What was being read.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A write to the API server failed.
    #[error("{action} failed: {source}; the reconcile is retried with backoff")]
    Write {
        /// What was being written.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// The API server refused an object as invalid (422): the same object would be
    /// refused again, so it is retried only slowly, or when the K8sUpgrade changes.
    #[error(
        "{action} was refused by the API server: {message}; retried when the K8sUpgrade \
         changes, or in {}s",
        REFUSED_RETRY.as_secs()
    )]
    Refused {
        /// What was being done.
        action: String,
        /// The API server's reason.
        message: String,
    },
}

impl Error {
    /// A bounded label for metrics: forbidden (403: a permission is missing), conflict
    /// (409: someone else wrote first), read, write, gather (a gate source), refused (422).
    pub fn category(&self) -> &'static str {
        let code = match self {
            Error::Read { source, .. } | Error::Write { source, .. } => match source {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            Error::Gather(_) | Error::Refused { .. } => None,
        };
        match (self, code) {
            (_, Some(403)) => "forbidden",
            (_, Some(409)) => "conflict",
            (Error::Read { .. }, _) => "read",
            (Error::Write { .. }, _) => "write",
            (Error::Gather(_), _) => "gather",
            (Error::Refused { .. }, _) => "refused",
        }
    }

    /// When to reconcile again after the `failures`-th failure in a row: exponential
    /// backoff from 1 s to 5 minutes (jitter is added by the caller), except for a
    /// refusal, which no quick retry can mend.
    fn retry_after(&self, failures: u32) -> Duration {
        match self {
            Error::Refused { .. } => REFUSED_RETRY,
            Error::Read { .. } | Error::Write { .. } | Error::Gather(_) => {
                Duration::from_secs(1u64 << failures.saturating_sub(1).min(8))
                    .min(Duration::from_secs(300))
            }
        }
    }
}

/// How long an object the API server refused as invalid waits before it is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// The error of a failed read of `action`.
fn read_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Read { action, source }
}

/// The error of a failed write of `action`; a 422 is a refusal, not a passing failure.
fn write_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| match source {
        kube::Error::Api(status) if status.code == 422 => Error::Refused {
            action,
            message: status.message,
        },
        source => Error::Write { action, source },
    }
}

/// What the controller needs to know about its own deployment.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The operator's own Pod, evicted last when its node is drained.
    pub operator_pod: Option<PodRef>,
    /// The one namespace the operator may create node and hook Jobs in (its Role's); None:
    /// any, and Jobs are watched cluster-wide.
    pub runner_namespace: Option<String>,
    /// What the installation decides: every K8sUpgrade is settled within it.
    pub policy: upchain_core::policy::InstallPolicy,
    /// How the operator reaches the API server: each control-plane node's API server is
    /// asked for `/readyz` the same way, at its own address.
    pub api_server: Option<kube::Config>,
}

impl Settings {
    /// Where the operator's Jobs are watched: the runner namespace, or everywhere when it
    /// is not confined.
    fn job_namespaces(&self) -> Option<Vec<String>> {
        Some(vec![self.runner_namespace.clone()?])
    }
}

struct Context {
    client: Client,
    events: Events,
    settings: Settings,
    upgrades: Store<K8sUpgrade>,
    nodes: NodeCache,
    failures: Mutex<HashMap<String, u32>>,
    metrics: Arc<Metrics>,
    /// For Prometheus and the notification webhook.
    http: reqwest::Client,
    /// Wakes every K8sUpgrade when one lets go of the cluster, so a waiting one starts now
    /// rather than at its next recheck.
    lock_released: tokio::sync::mpsc::UnboundedSender<()>,
    /// The draining nodes' Pods and the budgets, watched.
    drain: DrainWatch,
    /// The Pods of the operator's Jobs, watched.
    job_pods: JobPods,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let upgrades_api: Api<K8sUpgrade> = Api::all(client.clone());
    let nodes_api: Api<node_cache::WatchedNode> = Api::all(client.clone());
    let controller = Controller::new(upgrades_api, watcher::Config::default());
    let upgrades = controller.store();
    // Nodes are cached as the decisions read them (controller/node_cache.rs).
    let (nodes, node_changes) = NodeCache::watch(nodes_api, metrics.clone());
    // Ready once the nodes are listed, whether or not a K8sUpgrade exists yet: a fresh
    // install has none, and `helm install --wait` waits for this.
    let listed = nodes.until_listed();
    let ready = metrics.clone();
    tokio::spawn(async move {
        listed.await;
        ready.set_ready(true);
    });
    let woken = upgrades.clone();
    // Only a change of what the decisions read wakes anything: not a heartbeat.
    let node_stream = node_changes.flat_map(move |()| {
        let to_wake: Vec<ObjectRef<K8sUpgrade>> = woken
            .state()
            .iter()
            .filter(|upgrade| woken_by_nodes(upgrade))
            .map(|upgrade| ObjectRef::from_obj(upgrade.as_ref()))
            .collect();
        futures_util::stream::iter(to_wake)
    });

    let (lock_released, released) = tokio::sync::mpsc::unbounded_channel();
    let released = futures_util::stream::unfold(released, |mut released| async move {
        released.recv().await.map(|()| ((), released))
    });
    let (drain_changed, drain_wakes) = tokio::sync::mpsc::unbounded_channel();
    let drain_wakes = futures_util::stream::unfold(drain_wakes, |mut wakes| async move {
        wakes.recv().await.map(|upgrade| (upgrade, wakes))
    });
    let job_namespaces = settings.job_namespaces();
    let (job_pods, job_pods_succeeded) = JobPods::watch(&client, job_namespaces.as_deref());
    let context = Arc::new(Context {
        job_pods,
        drain: DrainWatch::new(client.clone(), drain_changed),
        events: Events::new(client.clone()),
        client: client.clone(),
        settings,
        upgrades: upgrades.clone(),
        nodes,
        failures: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        http: reqwest::Client::new(),
        lock_released,
    });
    let jobs_apis: Vec<Api<Job>> = apis_in(&client, job_namespaces.as_deref());
    let watch_metrics = metrics.clone();
    let mut controller = controller;
    for jobs_api in jobs_apis {
        // Not `.owns()`: node Jobs carry no owner reference (see UPGRADE_ANNOTATION), but
        // name their K8sUpgrade in an annotation.
        controller = controller.watches(
            jobs_api,
            watcher::Config::default().labels(UPGRADE_LABEL),
            |job: Job| {
                job.annotations()
                    .get(UPGRADE_ANNOTATION)
                    .map(|name| ObjectRef::<K8sUpgrade>::new(name))
            },
        );
    }
    controller
        // A node change can move the running upgrade along (at most one runs). The trigger
        // is the same stream that fills the node cache, and fires after the cache holds the
        // change: a second watch could wake the reconcile before the cache caught up, and
        // a node that then stays put would never wake it again.
        .reconcile_on(node_stream)
        .reconcile_all_on(released)
        .reconcile_on(drain_wakes)
        .reconcile_on(job_pods_succeeded)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            // Reconcile errors are logged by error_policy; the watches' own are here.
            let watch_failed = matches!(result, Err(ControllerError::QueueError(_)));
            if let Err(ControllerError::QueueError(error)) = &result {
                warn!(%error, "watching K8sUpgrades or their Jobs failed; retrying");
            }
            watch_metrics.health.watched(
                "K8sUpgrade and Job",
                !watch_failed,
                std::time::Instant::now(),
            );
            std::future::ready(())
        })
        .await;
}

#[instrument(skip_all, fields(upgrade = %upgrade.name_any()))]
async fn reconcile(upgrade: Arc<K8sUpgrade>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let name = upgrade.name_any();
    ctx.metrics.health.reconciling(&name, true, started);
    let result = reconcile_once(upgrade, &ctx).await;
    ctx.metrics
        .health
        .reconciling(&name, false, std::time::Instant::now());
    let category = result.as_ref().err().map(Error::category);
    ctx.metrics
        .reconciled(started.elapsed().as_secs_f64(), category);
    result
}

async fn reconcile_once(upgrade: Arc<K8sUpgrade>, ctx: &Arc<Context>) -> Result<Requeue, Error> {
    ctx.nodes.wait_until_ready().await;
    // Decide from the object as it is now, not as the watch cache last saw it: the cache
    // can lag behind our own status write, and an older status would repeat transitions.
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    let Some(mut upgrade) = api
        .get_opt(&upgrade.name_any())
        .await
        .map_err(read_error("reading the K8sUpgrade"))?
    else {
        ctx.metrics.forget(&upgrade.name_any());
        ctx.drain.release(&upgrade.name_any());
        return Ok(Requeue::await_change());
    };
    // Everything below acts on the spec within the installation's policy; what it asked
    // beyond that blocks the run through the policy gate.
    let settled = ctx.settings.policy.settle(&upgrade.spec);
    upgrade.spec = settled.spec;
    let result = if upgrade.meta().deletion_timestamp.is_some() {
        clean_up(&upgrade, ctx).await
    } else if !upgrade.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&upgrade, ctx).await
    } else {
        // observe -> decide -> update_status -> apply
        let observed = {
            let nodes = cached_nodes(ctx);
            let mut observed =
                observe(&upgrade, &upchain_core::needs(&upgrade, &nodes), nodes, ctx).await?;
            observed.gates.policy_refusals = settled.refusals;
            observed
        };
        let decision = decide(&upgrade, &observed, jiff::Timestamp::now());
        // Gauges first: whoever sees the new status also sees them.
        ctx.metrics
            .record_status(&upgrade.name_any(), &decision.status);
        if upgrade.status.as_ref() != Some(&decision.status) {
            write_status(&upgrade, &decision.status, ctx).await?;
            if upgrade.status.as_ref().is_some_and(holds_lock) && !holds_lock(&decision.status) {
                ctx.lock_released.send(()).ok();
            }
        }
        let placed = carry_out(&upgrade, &decision.actions, ctx).await?;
        if !placed.is_empty() {
            // The silences' IDs are Alertmanager's: on record once it answered.
            let mut status = decision.status.clone();
            upchain_core::record_silences(&mut status, placed);
            if status != decision.status {
                write_status(&upgrade, &status, ctx).await?;
            }
        }
        Ok(decision
            .requeue
            .map_or_else(Requeue::await_change, |after| {
                Requeue::requeue(after.max(Duration::from_millis(50)))
            }))
    };
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&upgrade.name_any());
    }
    result
}

/// Exponential backoff per object with jitter: 1 s, 2 s, 4 s ... at most 5 minutes.
fn error_policy(upgrade: Arc<K8sUpgrade>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let count = failures.entry(upgrade.name_any()).or_insert(0);
    *count = count.saturating_add(1);
    let base = error.retry_after(*count);
    let jitter = base.mul_f64(fastrand::f64() * 0.2);
    warn!(upgrade = %upgrade.name_any(), category = error.category(), %error, retry_in = ?base + jitter, "reconcile failed");
    Requeue::requeue(base + jitter)
}

/// On deletion: running node Jobs finish, nodes upchain cordoned are uncordoned, then the
/// finalizer goes.
async fn clean_up(upgrade: &K8sUpgrade, ctx: &Context) -> Result<Requeue, Error> {
    if !upgrade.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    // Deletion looks at nodes and Jobs only: no gate is evaluated.
    let observed = observe(upgrade, &Needs::for_deletion(), cached_nodes(ctx), ctx).await?;
    let finalization = finalize(upgrade, &observed);
    carry_out(upgrade, &finalization.actions, ctx).await?;
    if !finalization.can_let_go() {
        info!(waiting_for = ?finalization.waiting_for_jobs, "deletion waits for running node Jobs");
        return Ok(Requeue::requeue(Duration::from_secs(5)));
    }
    let finalizers = upgrade
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let requeue = set_finalizers(upgrade, finalizers, ctx).await?;
    ctx.lock_released.send(()).ok();
    Ok(requeue)
}

/// An Api per namespace of `namespaces`, or one across the cluster.
fn apis_in<K>(client: &Client, namespaces: Option<&[String]>) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespaces {
        Some(namespaces) => namespaces
            .iter()
            .map(|namespace| Api::namespaced(client.clone(), namespace))
            .collect(),
        None => vec![Api::all(client.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_refused_object_waits_for_a_change_and_a_failed_call_backs_off_quickly() {
        let refused = write_error("creating Job upchain-system/j")(api_error(422));
        assert_eq!(refused.category(), "refused");
        assert_eq!(refused.retry_after(1), REFUSED_RETRY);
        assert!(
            refused
                .to_string()
                .contains("retried when the K8sUpgrade changes")
        );
        let failed = write_error("creating Job upchain-system/j")(api_error(500));
        assert_eq!(failed.category(), "write");
        assert_eq!(
            read_error("listing Jobs")(api_error(403)).category(),
            "forbidden"
        );
        assert_eq!(
            write_error("writing status")(api_error(409)).category(),
            "conflict"
        );
        let backoff: Vec<u64> = (1..=10).map(|n| failed.retry_after(n).as_secs()).collect();
        assert_eq!(backoff, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
    }
}
