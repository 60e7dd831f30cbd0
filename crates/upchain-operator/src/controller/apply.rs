//! Apply: the decision's status by server-side apply on /status, then its actions,
//! each idempotent (cordon, evict, delete, Job, silence, Event, notification).

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;
use tracing::{info, warn};
use upchain_api::{FIELD_MANAGER, FINALIZER, K8sUpgrade, PREPARED_ANNOTATION, SilenceRecord};
use upchain_core::{Action, PodRef};

use super::events::publish;
use super::{Context, Error, write_error};

pub(super) async fn write_status(
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
    .map_err(write_error("writing status"))?;
    Ok(())
}

async fn mark_prepared(ctx: &Context, node: &str, run: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PREPARED_ANNOTATION: run}}})),
    )
    .await
    .map_err(write_error(format!(
        "marking {node} as prepared ({PREPARED_ANNOTATION})"
    )))?;
    Ok(())
}

pub(super) async fn set_unschedulable(
    ctx: &Context,
    node: &str,
    unschedulable: bool,
) -> Result<(), Error> {
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
    .map_err(write_error(format!(
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

/// Evictions in flight at once while draining.
pub(super) const EVICTIONS_AT_ONCE: usize = 8;

/// Evicts one Pod. A refused eviction (429: a budget allows no disruption now) or a Pod
/// already gone is not an error: the drain's watches wake the run when a budget moves.
pub(super) async fn evict(
    ctx: &Context,
    pod: PodRef,
    grace_period_seconds: Option<i64>,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            grace_period_seconds: grace_period_seconds.and_then(|g| u32::try_from(g).ok()),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match api.evict(&pod.name, &params).await {
        Ok(_) => info!(%pod, "evicted"),
        Err(kube::Error::Api(e)) if e.code == 429 || e.code == 404 => {
            info!(%pod, code = e.code, "eviction not possible now")
        }
        Err(error) => return Err(write_error(format!("evicting {pod}"))(error)),
    }
    Ok(())
}

/// Carries out the decision's actions in order; returns the Alertmanager silences placed.
pub(super) async fn carry_out(
    upgrade: &K8sUpgrade,
    actions: &[Action],
    ctx: &Context,
) -> Result<Vec<SilenceRecord>, Error> {
    let mut placed = Vec::new();
    for action in actions {
        match action {
            Action::Cordon { node } => set_unschedulable(ctx, node, true).await?,
            Action::Uncordon { node } => set_unschedulable(ctx, node, false).await?,
            Action::MarkPrepared { node, run } => mark_prepared(ctx, node, run).await?,
            Action::Evict {
                pods,
                grace_period_seconds,
                ..
            } => {
                // Several at once, as `kubectl drain` does: a node's Pods leave together
                // rather than one round trip after another.
                let grace_period_seconds = *grace_period_seconds;
                futures_util::stream::iter(pods.clone())
                    .map(|pod| evict(ctx, pod, grace_period_seconds))
                    .buffer_unordered(EVICTIONS_AT_ONCE)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<(), Error>>()?;
            }
            Action::DeletePods { pods, .. } => {
                for pod in pods {
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
                    match api.delete(&pod.name, &DeleteParams::default()).await {
                        Ok(_) => info!(%pod, "deleted"),
                        // Already gone is what the delete wanted.
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(error) => {
                            return Err(write_error(format!("deleting Pod {pod}"))(error));
                        }
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
                    .map_err(write_error(format!("creating Job {namespace}/{name}")));
                if let Err(error @ Error::Refused { .. }) = &created {
                    let event = upchain_core::Event {
                        warning: true,
                        reason: upchain_core::Reason::JobRefused,
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
            Action::DeleteJob { namespace, name } => {
                let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(error) => return Err(write_error(format!("deleting Job {name}"))(error)),
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
pub(super) async fn silence(
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
                let event = upchain_core::silenced_event(node, &new_id, spec);
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

pub(super) async fn silence_failed(
    upgrade: &K8sUpgrade,
    node: &str,
    error: &crate::silences::SilenceError,
    ctx: &Context,
) {
    warn!(node, %error, "Alertmanager silence");
    let event = upchain_core::silence_failed_event(node, &error.to_string());
    publish(upgrade, &event, ctx).await;
}

/// Notifications are best effort: a failure is logged and counted, never fatal. The
/// webhook URL is read from its Secret each time and appears in no log, status or Event.
pub(super) async fn notify(
    upgrade: &K8sUpgrade,
    notification: &upchain_core::Notification,
    ctx: &Context,
) {
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

/// Writes the finalizer list, guarded by the resourceVersion it was computed from.
pub(super) async fn set_finalizers(
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
    .map_err(write_error("updating the finalizer"))?;
    Ok(Requeue::await_change())
}

pub(super) async fn add_finalizer(upgrade: &K8sUpgrade, ctx: &Context) -> Result<Requeue, Error> {
    let mut finalizers = upgrade.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(upgrade, finalizers, ctx).await
}
