//! What `upchain run` waits for before it acts, each said once with what to do: the CRD
//! this build writes (a status write with a field an older CRD lacks fails whole), and
//! the namespace of the leader Lease. Started before either exists, it waits for them
//! rather than exiting, so the order in which they are installed does not matter.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::{Client, Resource};
use tracing::{info, warn};
use upchain_api::K8sUpgrade;

/// How often an unmet condition is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

/// Why the installed CRD is not the one this build writes, with what to do; None once it is.
async fn crd_problem(client: &Client) -> Option<String> {
    let name = format!("{}.{}", K8sUpgrade::plural(&()), K8sUpgrade::group(&()));
    let upgrade_it = "apply this release's CRD with `kubectl apply --server-side -f crds/` \
                      (Helm installs a chart's CRDs once and never upgrades them; see \
                      docs/install.md)";
    match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(&name)
        .await
    {
        Ok(None) => Some(format!(
            "the K8sUpgrade CRD ({name}) is not installed: {upgrade_it}"
        )),
        Ok(Some(installed)) => {
            let missing = upchain_api::crd_fields_missing(&installed);
            (!missing.is_empty()).then(|| {
                format!(
                    "the installed K8sUpgrade CRD is older than this upchain and lacks {}: \
                     {upgrade_it}",
                    missing.join(", ")
                )
            })
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Some(format!(
            "upchain may not read the CustomResourceDefinition {name} ({}): grant `get` on it \
             (the Helm chart and the kustomize base do)",
            e.message
        )),
        Err(error) => Some(format!(
            "cannot read the CustomResourceDefinition {name}: {error}"
        )),
    }
}

/// Why the Lease namespace cannot hold the Lease yet, with what to do; None once it can.
async fn lease_namespace_problem(client: &Client, namespace: &str) -> Option<String> {
    match Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
    {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!(
            "the namespace {namespace}, where replicas compete for the leader Lease, does not \
             exist: create it (`kubectl create namespace {namespace}`), or choose another with \
             --lease-namespace"
        )),
        // Without namespace reads, creating the Lease is the test that remains.
        Err(kube::Error::Api(e)) if e.code == 403 => None,
        Err(error) => Some(format!("cannot read the namespace {namespace}: {error}")),
    }
}

/// Waits until `problem` has none, logging each distinct problem once.
async fn wait_until<F, Fut>(what: &str, mut problem: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let mut said: Option<String> = None;
    while let Some(now) = problem().await {
        if said.as_ref() != Some(&now) {
            warn!("waiting for {what}: {now}");
            said = Some(now);
        }
        tokio::time::sleep(RECHECK).await;
    }
    if said.is_some() {
        info!("{what}: ready");
    }
}

/// Returns once the CRD is current and, with leader election, the Lease namespace exists.
pub async fn ready(client: &Client, lease_namespace: Option<&str>) {
    wait_until("the K8sUpgrade CRD", || crd_problem(client)).await;
    if let Some(namespace) = lease_namespace {
        wait_until("the leader Lease's namespace", || {
            lease_namespace_problem(client, namespace)
        })
        .await;
    }
}
