//! The K8sUpgrade controller: observe the cluster, let the pure core decide, write the
//! decision's status (server-side apply on /status), then carry out its actions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Error as ControllerError};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};
use upchain_api::{
    FIELD_MANAGER, FINALIZER, K8sUpgrade, NODE_LABEL, SilenceRecord, UPGRADE_ANNOTATION,
    UPGRADE_LABEL, UPGRADE_UID_ANNOTATION,
};
use upchain_core::evidence::{self, JobEvidence};
use upchain_core::job::{RUNNER_CONTAINER, bounded_name};

use crate::gather;
use crate::metrics::Metrics;
use upchain_core::{
    Action, JobState, Needs, Observed, ObservedBudget, ObservedJob, ObservedNode, ObservedPod,
    OtherUpgrade, decide, finalize, holds_lock,
};

/// Errors of one reconcile; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source the run needs could not be read.
    #[error("{0}; the reconcile is retried with backoff")]
    Gather(String),
    /// A call to the API server failed.
    #[error("{action} failed: {source}; the reconcile is retried with backoff")]
    Kube {
        /// What was being done.
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
    /// A bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "api",
            Error::Gather(_) => "gather",
            Error::Refused { .. } => "refused",
        }
    }

    /// When to reconcile again after the `failures`-th failure in a row: exponential
    /// backoff from 1 s to 5 minutes (jitter is added by the caller), except for a
    /// refusal, which no quick retry can mend.
    fn retry_after(&self, failures: u32) -> Duration {
        match self {
            Error::Refused { .. } => REFUSED_RETRY,
            Error::Kube { .. } | Error::Gather(_) => {
                Duration::from_secs(1u64 << failures.saturating_sub(1).min(8))
                    .min(Duration::from_secs(300))
            }
        }
    }
}

/// How long an object the API server refused as invalid waits before it is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| match source {
        kube::Error::Api(status) if status.code == 422 => Error::Refused {
            action,
            message: status.message,
        },
        source => Error::Kube { action, source },
    }
}

/// What the controller needs to know about its own deployment.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The operator's own Pod (namespace/name), evicted last when its node is drained.
    pub operator_pod: Option<String>,
}

/// Events published before the recorder is replaced by a fresh one.
const EVENTS_PER_RECORDER: usize = 256;

/// kube-runtime's Recorder keeps every Event it published for six minutes, to count
/// repeats as a series; one Event per node and transition made that cache the largest
/// thing in the operator's memory on a big cluster (12 MB at 1,000 nodes). Starting a
/// fresh recorder every few hundred Events bounds it; a repeat across the swap is
/// recorded as a new Event instead of a count.
struct Events {
    client: Client,
    current: Mutex<(Recorder, usize)>,
}

impl Events {
    fn new(client: Client) -> Self {
        Self {
            current: Mutex::new((Recorder::new(client.clone(), Reporter::from("upchain")), 0)),
            client,
        }
    }

    fn recorder(&self) -> Recorder {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.1 >= EVENTS_PER_RECORDER {
            *current = (
                Recorder::new(self.client.clone(), Reporter::from("upchain")),
                0,
            );
        }
        current.1 += 1;
        current.0.clone()
    }
}

struct Context {
    client: Client,
    events: Events,
    settings: Settings,
    upgrades: Store<K8sUpgrade>,
    nodes: Store<Node>,
    failures: Mutex<HashMap<String, u32>>,
    metrics: Arc<Metrics>,
    /// For Prometheus and the notification webhook.
    http: reqwest::Client,
    /// Wakes every K8sUpgrade when one lets go of the cluster, so a waiting one starts now
    /// rather than at its next recheck.
    lock_released: tokio::sync::mpsc::UnboundedSender<()>,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let upgrades_api: Api<K8sUpgrade> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    // Nodes are cached pruned to what the decisions read, and listed in small pages: a
    // page of full Nodes (kilobytes each, mostly images) is the cache's peak memory.
    let (nodes, writer) = reflector::store();
    let node_health = metrics.clone();
    let node_stream = watcher(nodes_api.clone(), watcher::Config::default().page_size(100))
        .default_backoff()
        .modify(ObservedNode::prune)
        .reflect(writer)
        .applied_objects()
        .filter_map(move |node| {
            // The watcher retries on its own (with backoff); a failing Node watch is still
            // worth a line in the log, as a stale node cache holds the run back.
            if let Err(error) = &node {
                warn!(%error, "watching Nodes failed; retrying");
            }
            node_health
                .health
                .watched("Node", node.is_ok(), std::time::Instant::now());
            std::future::ready(node.ok().map(|_| ()))
        });

    let controller = Controller::new(upgrades_api, watcher::Config::default());
    let upgrades = controller.store();
    let (lock_released, released) = tokio::sync::mpsc::unbounded_channel();
    let released = futures_util::stream::unfold(released, |mut released| async move {
        released.recv().await.map(|()| ((), released))
    });
    let context = Arc::new(Context {
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
    let jobs_api: Api<Job> = Api::all(client.clone());
    let health = metrics.clone();
    controller
        // Not `.owns()`: node Jobs carry no owner reference (see UPGRADE_ANNOTATION), but
        // name their K8sUpgrade in an annotation.
        .watches(
            jobs_api,
            watcher::Config::default().labels(UPGRADE_LABEL),
            |job: Job| {
                job.annotations()
                    .get(UPGRADE_ANNOTATION)
                    .map(|name| ObjectRef::<K8sUpgrade>::new(name))
            },
        )
        // A node change can move every upgrade along (at most one is running). The trigger
        // is the same stream that fills the node cache, and fires after the cache holds the
        // change: a second watch could wake the reconcile before the cache caught up, and
        // a node that then stays put would never wake it again.
        .reconcile_all_on(node_stream)
        .reconcile_all_on(released)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            // Reconcile errors are logged by error_policy; the watches' own are here.
            let watch_failed = matches!(result, Err(ControllerError::QueueError(_)));
            if let Err(ControllerError::QueueError(error)) = &result {
                warn!(%error, "watching K8sUpgrades or their Jobs failed; retrying");
            }
            health.health.watched(
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
    ctx.nodes.wait_until_ready().await.ok();
    ctx.metrics.set_ready();
    // Decide from the object as it is now, not as the watch cache last saw it: the cache
    // can lag behind our own status write, and an older status would repeat transitions.
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    let Some(upgrade) = api
        .get_opt(&upgrade.name_any())
        .await
        .map_err(kube_error("reading the K8sUpgrade"))?
    else {
        ctx.metrics.forget(&upgrade.name_any());
        return Ok(Requeue::await_change());
    };
    let result = if upgrade.meta().deletion_timestamp.is_some() {
        clean_up(&upgrade, ctx).await
    } else if !upgrade.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&upgrade, ctx).await
    } else {
        // observe -> decide -> update_status -> apply
        let observed =
            observe(&upgrade, upchain_core::needs(&upgrade), Jobs::InFlight, ctx).await?;
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

/// Which of the run's Jobs to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jobs {
    /// All of them: letting go of the cluster deletes the finished ones.
    All,
    /// Those of the nodes the next decision looks at (`nodes_with_jobs_to_read`).
    InFlight,
}

/// The run's Jobs, read fresh: a Job created by the last reconcile must be seen by the next,
/// or the node would get a second one.
async fn observe_jobs(
    upgrade: &K8sUpgrade,
    scope: Jobs,
    ctx: &Context,
) -> Result<Vec<ObservedJob>, Error> {
    let mut selector = format!("{UPGRADE_LABEL}={}", bounded_name(&[&upgrade.name_any()]));
    if scope == Jobs::InFlight {
        let nodes = upchain_core::nodes_with_jobs_to_read(upgrade.status.as_ref());
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let labels: Vec<String> = nodes.iter().map(|n| bounded_name(&[n])).collect();
        selector.push_str(&format!(",{NODE_LABEL} in ({})", labels.join(",")));
    }
    let namespace = &upgrade.spec.runner.namespace;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let mut jobs: Vec<ObservedJob> = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error("listing the upgrade's Jobs"))?
        .items
        .iter()
        // A Job left by an earlier K8sUpgrade of the same name is not this one's.
        .filter(|job| job.annotations().get(UPGRADE_UID_ANNOTATION) == upgrade.uid().as_ref())
        .map(ObservedJob::from_job)
        .collect();
    if scope == Jobs::InFlight {
        let upgrading = upchain_core::jobs_awaiting_evidence(upgrade.status.as_ref());
        for job in jobs
            .iter_mut()
            .filter(|j| j.state != JobState::Running && upgrading.contains(&j.name.as_str()))
        {
            job.evidence = job_evidence(&ctx.client, namespace, &job.name).await;
        }
    }
    Ok(jobs)
}

/// What the cluster shows; gate sources only as far as `needs` asks.
async fn observe(
    upgrade: &K8sUpgrade,
    needs: Needs,
    jobs: Jobs,
    ctx: &Context,
) -> Result<Observed, Error> {
    let name = upgrade.name_any();
    let jobs = observe_jobs(upgrade, jobs, ctx).await?;
    // Pods are read only for the nodes being drained, never cached cluster-wide.
    let mut pods = std::collections::BTreeMap::new();
    let pods_api: Api<Pod> = Api::all(ctx.client.clone());
    let nodes: Vec<ObservedNode> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| ObservedNode::from_node(n))
        .collect();
    for node in upchain_core::nodes_to_read_pods_of(upgrade, &nodes) {
        // Whole Pods (the drain reads their volumes), finished ones left out by the
        // selector; only the nodes of one batch are read.
        let selector = format!("spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed");
        let on_node = pods_api
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(kube_error(format!("listing the Pods on {node}")))?;
        pods.insert(
            node,
            on_node.items.iter().map(ObservedPod::from_pod).collect(),
        );
    }
    // Budgets are read with the Pods they cover, only while a node drains.
    let budgets = if pods.is_empty() {
        Vec::new()
    } else {
        let api: Api<PodDisruptionBudget> = Api::all(ctx.client.clone());
        let mut budgets = Vec::new();
        gather::list_paged(&api, ListParams::default(), |page| {
            budgets.extend(page.iter().map(ObservedBudget::from_budget));
        })
        .await
        .map_err(kube_error("listing PodDisruptionBudgets"))?;
        budgets
    };
    Ok(Observed {
        budgets,
        hook_jobs: if needs.hooks {
            hook_jobs(upgrade, ctx).await?
        } else {
            Vec::new()
        },
        nodes,
        jobs,
        pods,
        others: other_upgrades(&name, ctx).await?,
        operator_pod: ctx.settings.operator_pod.clone(),
        gates: gather::gate_inputs(&ctx.client, &ctx.http, upgrade, needs).await,
        snapshot: if needs.snapshot {
            gather::snapshot_inputs(&ctx.client, upgrade).await
        } else {
            None
        },
        postflight: if needs.postflight {
            Some(
                gather::postflight_inputs(&ctx.client)
                    .await
                    .map_err(Error::Gather)?,
            )
        } else {
            None
        },
    })
}

/// The hook Jobs that status.hooks says are running, read by name.
async fn hook_jobs(upgrade: &K8sUpgrade, ctx: &Context) -> Result<Vec<ObservedJob>, Error> {
    let mut jobs = Vec::new();
    for record in upgrade
        .status
        .iter()
        .flat_map(|s| &s.hooks)
        .filter(|h| h.completed_at.is_none())
    {
        let (namespace, name) = split_key(&record.job);
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        let job = api
            .get_opt(name)
            .await
            .map_err(kube_error(format!("reading the hook Job {}", record.job)))?;
        jobs.extend(
            job.filter(|j| j.annotations().get(UPGRADE_UID_ANNOTATION) == upgrade.uid().as_ref())
                .as_ref()
                .map(ObservedJob::from_job),
        );
    }
    Ok(jobs)
}

/// The other K8sUpgrades, read fresh when there are any: the lock they may hold is in
/// their status, and the cache can lag behind the write that released it.
async fn other_upgrades(name: &str, ctx: &Context) -> Result<Vec<OtherUpgrade>, Error> {
    if ctx.upgrades.state().iter().all(|u| u.name_any() == name) {
        return Ok(Vec::new());
    }
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(kube_error("listing K8sUpgrades"))?
        .items
        .iter()
        .filter(|u| u.name_any() != name)
        .map(OtherUpgrade::from_upgrade)
        .collect())
}

/// What a finished Job's Pod left: its container's exit code and times, and the end of its
/// log. Read once, when the decision is about to move the node past its Job.
async fn job_evidence(client: &Client, namespace: &str, job: &str) -> Option<JobEvidence> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await;
    let pod = match listed {
        // The last Pod the Job ran is the one that decided how it ended.
        Ok(list) => list
            .items
            .into_iter()
            .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))?,
        Err(error) => {
            warn!(job, %error, "reading the Pod of a finished Job");
            return None;
        }
    };
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .and_then(|c| c.iter().find(|c| c.name == RUNNER_CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let params = LogParams {
        container: Some(RUNNER_CONTAINER.to_owned()),
        tail_lines: Some(i64::try_from(evidence::LOG_LINES * 4).unwrap_or(40)),
        limit_bytes: Some(evidence::LOG_BYTES),
        ..LogParams::default()
    };
    let log = pods
        .logs(&pod.name_any(), &params)
        .await
        .map_err(|e| gather::describe(&e));
    Some(JobEvidence {
        exit_code: terminated.map(|t| t.exit_code),
        started_at: terminated.and_then(|t| t.started_at.as_ref()).map(|t| t.0),
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
        log,
    })
}

async fn write_status(
    upgrade: &K8sUpgrade,
    status: &upchain_api::K8sUpgradeStatus,
    ctx: &Context,
) -> Result<(), Error> {
    /// Serialized straight to the request body: a JSON tree of a large status would be
    /// several times its size in memory.
    #[derive(Debug, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusPatch<'a> {
        api_version: &'static str,
        kind: &'static str,
        status: &'a upchain_api::K8sUpgradeStatus,
    }
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    let patch = StatusPatch {
        api_version: "upchain.dev/v1alpha1",
        kind: "K8sUpgrade",
        status,
    };
    api.patch_status(
        &upgrade.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error("writing status"))?;
    Ok(())
}

async fn set_unschedulable(ctx: &Context, node: &str, unschedulable: bool) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let value = if unschedulable {
        json!(true)
    } else {
        json!(null)
    };
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"unschedulable": value}})),
    )
    .await
    .map_err(kube_error(format!(
        "{} {node}",
        if unschedulable {
            "cordoning"
        } else {
            "uncordoning"
        }
    )))?;
    info!(node, unschedulable, "node schedulability set");
    Ok(())
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// Evictions in flight at once while draining.
const EVICTIONS_AT_ONCE: usize = 8;

/// Evicts one Pod. A refused eviction (429: a budget allows no disruption now) or a Pod
/// already gone is not an error: the drain rechecks on its own schedule.
async fn evict(ctx: &Context, key: String, grace_period_seconds: Option<i64>) -> Result<(), Error> {
    let (namespace, name) = split_key(&key);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            grace_period_seconds: grace_period_seconds.and_then(|g| u32::try_from(g).ok()),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match api.evict(name, &params).await {
        Ok(_) => info!(pod = %key, "evicted"),
        Err(kube::Error::Api(e)) if e.code == 429 || e.code == 404 => {
            info!(pod = %key, code = e.code, "eviction not possible now")
        }
        Err(error) => return Err(kube_error(format!("evicting {key}"))(error)),
    }
    Ok(())
}

/// Carries out the decision's actions in order; returns the Alertmanager silences placed.
async fn carry_out(
    upgrade: &K8sUpgrade,
    actions: &[Action],
    ctx: &Context,
) -> Result<Vec<SilenceRecord>, Error> {
    let mut placed = Vec::new();
    for action in actions {
        match action {
            Action::Cordon { node } => set_unschedulable(ctx, node, true).await?,
            Action::Uncordon { node } => set_unschedulable(ctx, node, false).await?,
            Action::Evict {
                pods,
                grace_period_seconds,
                ..
            } => {
                // Several at once, as `kubectl drain` does: a node's Pods leave together
                // rather than one round trip after another.
                let grace_period_seconds = *grace_period_seconds;
                futures_util::stream::iter(pods.clone())
                    .map(|key| evict(ctx, key, grace_period_seconds))
                    .buffer_unordered(EVICTIONS_AT_ONCE)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<(), Error>>()?;
            }
            Action::DeletePods { pods, .. } => {
                for key in pods {
                    let (namespace, name) = split_key(key);
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
                    match api.delete(name, &DeleteParams::default()).await {
                        Ok(_) => info!(pod = %key, "deleted"),
                        // Already gone is what the delete wanted.
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(error) => return Err(kube_error(format!("deleting Pod {key}"))(error)),
                    }
                }
            }
            Action::CreateJob(job) => {
                let namespace = job.metadata.namespace.clone().unwrap_or_default();
                let name = job.metadata.name.clone().unwrap_or_default();
                let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
                // Server-side apply creates the Job or adopts the one already there.
                let created = api
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(job.as_ref()),
                    )
                    .await
                    .map_err(kube_error(format!("creating Job {namespace}/{name}")));
                if let Err(error @ Error::Refused { .. }) = &created {
                    let event = upchain_core::Event {
                        warning: true,
                        reason: "JobRefused",
                        message: error.to_string(),
                        node: job
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(upchain_api::NODE_ANNOTATION))
                            .cloned(),
                    };
                    publish(upgrade, &event, ctx).await;
                }
                created?;
            }
            Action::DeleteJob { name } => {
                let api: Api<Job> =
                    Api::namespaced(ctx.client.clone(), &upgrade.spec.runner.namespace);
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(error) => return Err(kube_error(format!("deleting Job {name}"))(error)),
                }
            }
            Action::Silence { node, id, ends_at } => {
                if let Some(record) = silence(upgrade, node, id.as_deref(), *ends_at, ctx).await {
                    placed.push(record);
                }
            }
            Action::ExpireSilence { node, id } => {
                let Some(spec) = &upgrade.spec.gates.silences else {
                    continue;
                };
                if let Err(error) = crate::silences::expire(&ctx.http, spec, id).await {
                    silence_failed(upgrade, node, &error, ctx).await;
                }
            }
            Action::Event(event) => publish(upgrade, event, ctx).await,
            Action::Notify(notification) => notify(upgrade, notification, ctx).await,
        }
    }
    Ok(placed)
}

/// Creates or extends a node's silence. Best effort, like notifications: an Alertmanager
/// that cannot be reached costs a Warning Event, not the upgrade.
async fn silence(
    upgrade: &K8sUpgrade,
    node: &str,
    id: Option<&str>,
    ends_at: jiff::Timestamp,
    ctx: &Context,
) -> Option<SilenceRecord> {
    let spec = upgrade.spec.gates.silences.as_ref()?;
    match crate::silences::put(&ctx.http, spec, &upgrade.name_any(), node, id, ends_at).await {
        Ok(new_id) => {
            info!(node, id = new_id, %ends_at, "node alerts silenced");
            if id != Some(new_id.as_str()) {
                let event = upchain_core::Event {
                    warning: false,
                    reason: "Silenced",
                    message: format!(
                        "silenced {node}'s node alerts in Alertmanager (silence {new_id}) while \
                         it is upgraded: extended in steps of {}, never more than {} after the \
                         node started, expired when it is done",
                        human(spec.extend_by),
                        human(spec.max_duration),
                    ),
                    node: Some(node.to_owned()),
                };
                publish(upgrade, &event, ctx).await;
            }
            Some(SilenceRecord {
                node: node.to_owned(),
                id: new_id,
                ends_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ends_at),
            })
        }
        Err(error) => {
            silence_failed(upgrade, node, &error, ctx).await;
            None
        }
    }
}

/// A spec duration as a person writes it, such as `15m`.
fn human(duration: kube::core::Duration) -> String {
    let seconds = std::time::Duration::from(duration).as_secs();
    upchain_core::gates::human(i64::try_from(seconds).unwrap_or(i64::MAX))
}

async fn silence_failed(
    upgrade: &K8sUpgrade,
    node: &str,
    error: &crate::silences::SilenceError,
    ctx: &Context,
) {
    warn!(node, %error, "Alertmanager silence");
    let event = upchain_core::Event {
        warning: true,
        reason: "SilenceFailed",
        message: error.to_string(),
        node: Some(node.to_owned()),
    };
    publish(upgrade, &event, ctx).await;
}

/// Notifications are best effort: a failure is logged and counted, never fatal. The
/// webhook URL is read from its Secret each time and appears in no log, status or Event.
async fn notify(upgrade: &K8sUpgrade, notification: &upchain_core::Notification, ctx: &Context) {
    let Some(spec) = &upgrade.spec.notify else {
        return;
    };
    let kind = notification.kind.as_str();
    let sent = match crate::notify::send(
        &ctx.client,
        &ctx.http,
        &spec.webhook_secret,
        &notification.text,
    )
    .await
    {
        Ok(()) => true,
        Err(error) => {
            warn!(kind, %error, "could not send a notification");
            false
        }
    };
    ctx.metrics.notified(kind, sent);
}

/// Events are best effort: a failure to record one is logged, never fatal.
async fn publish(upgrade: &K8sUpgrade, event: &upchain_core::Event, ctx: &Context) {
    info!(reason = event.reason, node = ?event.node, message = %event.message, "event");
    let recorded = ctx
        .events
        .recorder()
        .publish(
            &KubeEvent {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.to_owned(),
                note: Some(
                    upchain_core::text::bounded(
                        &event.message,
                        upchain_core::text::EVENT_NOTE_BYTES,
                    )
                    .into_owned(),
                ),
                action: event.reason.to_owned(),
                // The node an Event is about keeps its own series: the recorder groups
                // Events by reason and related object, not by message.
                secondary: event.node.as_ref().map(|node| ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(node.clone()),
                    ..ObjectReference::default()
                }),
            },
            &upgrade.object_ref(&()),
        )
        .await;
    if let Err(error) = recorded {
        warn!(%error, reason = event.reason, "could not record an Event");
    }
}

/// Writes the finalizer list, guarded by the resourceVersion it was computed from.
async fn set_finalizers(
    upgrade: &K8sUpgrade,
    finalizers: Vec<String>,
    ctx: &Context,
) -> Result<Requeue, Error> {
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": upgrade.resource_version()}});
    api.patch(
        &upgrade.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(kube_error("updating the finalizer"))?;
    Ok(Requeue::await_change())
}

async fn add_finalizer(upgrade: &K8sUpgrade, ctx: &Context) -> Result<Requeue, Error> {
    let mut finalizers = upgrade.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(upgrade, finalizers, ctx).await
}

/// On deletion: running node Jobs finish, nodes upchain cordoned are uncordoned, then the
/// finalizer goes.
async fn clean_up(upgrade: &K8sUpgrade, ctx: &Context) -> Result<Requeue, Error> {
    if !upgrade.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    // Deletion looks at nodes and Jobs only: no gate is evaluated.
    let observed = observe(upgrade, Needs::default(), Jobs::All, ctx).await?;
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
        let mut became_leader = leading.clone();
        tokio::select! {
            () = shutdown.clone() => break,
            leads = async { became_leader.wait_for(|l| *l).await.is_ok() } => if !leads { break },
        }
        info!(identity = %lease.identity, "leading: acting on the cluster");
        metrics.set_leader(true);
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
        let refused = kube_error("creating Job upchain-system/j")(api_error(422));
        assert_eq!(refused.category(), "refused");
        assert_eq!(refused.retry_after(1), REFUSED_RETRY);
        assert!(
            refused
                .to_string()
                .contains("retried when the K8sUpgrade changes")
        );
        let failed = kube_error("creating Job upchain-system/j")(api_error(500));
        assert_eq!(failed.category(), "api");
        let backoff: Vec<u64> = (1..=10).map(|n| failed.retry_after(n).as_secs()).collect();
        assert_eq!(backoff, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
    }
}
