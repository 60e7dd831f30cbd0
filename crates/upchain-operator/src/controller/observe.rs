//! Observe: what the next decision needs, read fresh (Jobs, Pods, budgets) or from the
//! caches (Nodes), and the gate sources through `gather`. Nothing here decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tracing::warn;
use upchain_api::{K8sUpgrade, NODE_LABEL, UPGRADE_LABEL, UPGRADE_UID_ANNOTATION};
use upchain_core::evidence::{JobEvidence, JobPod};
use upchain_core::job::{RUNNER_CONTAINER, bounded_name};
use upchain_core::{
    JobState, JobsToRead, Needs, Observed, ObservedJob, ObservedNode, OtherUpgrade,
};

use super::{Context, Error, read_error};

/// Where each kubelet renews its node's Lease.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
use crate::gather;

/// The run's Jobs that `needs` names, read fresh: a Job created by the last reconcile must
/// be seen by the next, or the node would get a second one.
pub(super) async fn observe_jobs(
    upgrade: &K8sUpgrade,
    needs: &Needs,
    ctx: &Context,
) -> Result<Vec<ObservedJob>, Error> {
    let mut selector = format!("{UPGRADE_LABEL}={}", bounded_name(&[&upgrade.name_any()]));
    if let JobsToRead::OfNodes(nodes) = &needs.jobs {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let labels: Vec<String> = nodes.iter().map(|n| bounded_name(&[n])).collect();
        selector.push_str(&format!(",{NODE_LABEL} in ({})", labels.join(",")));
    }
    let namespace = &upgrade.spec.runner.namespace;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let pods_of = |job: &str| ctx.job_pods.of_job(namespace, job);
    let mut jobs: Vec<ObservedJob> = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(read_error("listing the upgrade's Jobs"))?
        .items
        .iter()
        // A Job left by an earlier K8sUpgrade of the same name is not this one's.
        .filter(|job| job.annotations().get(UPGRADE_UID_ANNOTATION) == upgrade.uid().as_ref())
        .map(|job| ObservedJob::from_job_and_pods(job, &pods_of(&job.name_any())))
        .collect();
    for job in jobs
        .iter_mut()
        .filter(|j| j.state != JobState::Running && needs.evidence_of.contains(&j.name))
    {
        job.evidence = job_evidence(&ctx.client, namespace, &job.name, pods_of(&job.name)).await;
        // The Job's end can be seen before the watched Pod's: its report is read from the
        // Pod as the API server has it then.
        if job.report.is_none() {
            job.report = job.evidence.as_ref().and_then(|e| e.report.clone());
        }
    }
    Ok(jobs)
}

/// The nodes as the cache holds them.
pub(super) fn cached_nodes(ctx: &Context) -> Arc<Vec<ObservedNode>> {
    ctx.nodes.nodes()
}

/// What the cluster shows: the cached `nodes`, and what `needs` asks for, read fresh.
pub(super) async fn observe(
    upgrade: &K8sUpgrade,
    needs: &Needs,
    nodes: Arc<Vec<ObservedNode>>,
    ctx: &Context,
) -> Result<Observed, Error> {
    let name = upgrade.name_any();
    let jobs = observe_jobs(upgrade, needs, ctx).await?;
    // Pods only of the nodes being drained (and the next batch's), never cluster-wide;
    // from the drain's watches, which also wake this K8sUpgrade when they change.
    let (pods, budgets) = if needs.pods_of.is_empty() {
        ctx.drain.release(&name);
        (BTreeMap::new(), Vec::new())
    } else {
        let pods = ctx.drain.pods(&name, &needs.pods_of).await?;
        (pods, ctx.drain.budgets().await?)
    };
    Ok(Observed {
        heartbeats: heartbeats(&ctx.client, &needs.heartbeats_of).await,
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
        gates: gather::gate_inputs(
            &ctx.client,
            &ctx.http,
            upgrade,
            needs,
            ctx.settings.runner_namespace.as_deref(),
            ctx.settings.api_server.as_ref(),
        )
        .await,
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

/// When each named node's kubelet last renewed its Lease in kube-node-lease, read fresh:
/// the one heartbeat that moves every few seconds.
async fn heartbeats(client: &Client, nodes: &[String]) -> BTreeMap<String, Result<i64, String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let mut renewed = BTreeMap::new();
    for node in nodes {
        let read = match leases.get_opt(node).await {
            Ok(Some(lease)) => lease
                .spec
                .and_then(|s| s.renew_time)
                .map(|t| t.0.as_second())
                .ok_or_else(|| "it has no renewTime".to_owned()),
            Ok(None) => Err("it does not exist: the kubelet has not registered".to_owned()),
            Err(error) => Err(format!(
                "{error}; the operator needs get on leases in {NODE_LEASE_NAMESPACE} (the chart \
                 grants it)"
            )),
        };
        renewed.insert(node.clone(), read);
    }
    renewed
}

/// The hook Jobs that status.hooks says are running, read by name.
pub(super) async fn hook_jobs(
    upgrade: &K8sUpgrade,
    ctx: &Context,
) -> Result<Vec<ObservedJob>, Error> {
    let mut jobs = Vec::new();
    for record in upgrade
        .status
        .iter()
        .flat_map(|s| &s.hooks)
        .filter(|h| h.completed_at.is_none())
    {
        // Recorded as namespace/name by the decision that started it.
        let Some((namespace, name)) = record.job.split_once('/') else {
            continue;
        };
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        let job = api
            .get_opt(name)
            .await
            .map_err(read_error(format!("reading the hook Job {}", record.job)))?;
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
pub(super) async fn other_upgrades(name: &str, ctx: &Context) -> Result<Vec<OtherUpgrade>, Error> {
    if ctx.upgrades.state().iter().all(|u| u.name_any() == name) {
        return Ok(Vec::new());
    }
    let api: Api<K8sUpgrade> = Api::all(ctx.client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(read_error("listing K8sUpgrades"))?
        .items
        .iter()
        .filter(|u| u.name_any() != name)
        .map(OtherUpgrade::from_upgrade)
        .collect())
}

/// What a finished Job's Pod left: its container's exit code and times, and the end of its
/// log. Read once, when the decision is about to move the node past its Job.
pub(super) async fn job_evidence(
    client: &Client,
    namespace: &str,
    job: &str,
    known: Vec<JobPod>,
) -> Option<JobEvidence> {
    match gather::finished_job_log(client, namespace, job, RUNNER_CONTAINER, known).await {
        Ok((pod, log)) => Some(JobEvidence::from_job_pod(&pod, log)),
        Err(error) => {
            warn!(job, %error, "reading the Pod of a finished Job");
            None
        }
    }
}
