//! What the demo, the tests and the benchmark install next to the operator: the CRD, and
//! the runner namespace with the node script and the SSH Secret
//! (`deploy/examples/upchain-system.yaml`).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use upchain_api::FIELD_MANAGER;

/// The runner namespace, script ConfigMap and SSH Secret, with placeholder content.
pub const RUNNER_PREREQUISITES: &str = include_str!("../../../deploy/examples/upchain-system.yaml");

/// Why a simulated cluster could not be made ready for the operator.
#[derive(Debug, thiserror::Error)]
pub enum SimClientError {
    /// The simulator's URL is not one a client takes.
    #[error("the simulator's URL {url} cannot be used: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No client could be made.
    #[error("cannot make a client for the simulator: {0}")]
    Client(kube::Error),
    /// The CRD or the runner's prerequisites could not be installed.
    #[error(
        "applying the CRD and creating the runner namespace, script and SSH Secret failed: {0}"
    )]
    Install(kube::Error),
}

/// A client for the simulated cluster at `url`, with the K8sUpgrade CRD and the runner's
/// prerequisites installed: what the demo, the tests and the benchmark start from. It
/// does not retry on its own, as `upchain run` does not.
pub async fn simulated_cluster_client(url: &str) -> Result<Client, SimClientError> {
    let client =
        Client::try_from(simulated_cluster_config(url)?).map_err(SimClientError::Client)?;
    crd_and_runner_prerequisites(&client)
        .await
        .map_err(SimClientError::Install)?;
    Ok(client)
}

/// How [`simulated_cluster_client`] reaches the simulated cluster at `url`; the
/// controller asks each simulated API server for `/readyz` the same way.
pub fn simulated_cluster_config(url: &str) -> Result<kube::Config, SimClientError> {
    let uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| SimClientError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let mut config = kube::Config::new(uri);
    config.default_retry = false;
    Ok(config)
}

/// Applies the K8sUpgrade CRD, then [`RUNNER_PREREQUISITES`], by server-side apply.
pub async fn crd_and_runner_prerequisites(client: &Client) -> Result<(), kube::Error> {
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            "k8supgrades.upchain.dev",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(upchain_api::crd()),
        )
        .await?;
    runner_prerequisites(client).await
}

/// Applies [`RUNNER_PREREQUISITES`] by server-side apply.
async fn runner_prerequisites(client: &Client) -> Result<(), kube::Error> {
    for document in serde_yaml::Deserializer::from_str(RUNNER_PREREQUISITES) {
        let object = serde_json::Value::deserialize(document).map_err(|e| {
            kube::Error::Service(format!("deploy/examples/upchain-system.yaml: {e}").into())
        })?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match object["kind"].as_str() {
            Some("Namespace") => {
                Api::<Namespace>::all(client.clone())
                    .patch(&name, &params, &Patch::Apply(&object))
                    .await?;
            }
            Some("ConfigMap") => {
                Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                    .patch(&name, &params, &Patch::Apply(&object))
                    .await?;
            }
            Some("Secret") => {
                Api::<Secret>::namespaced(client.clone(), &namespace)
                    .patch(&name, &params, &Patch::Apply(&object))
                    .await?;
            }
            Some("PersistentVolumeClaim") => {
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
                    .patch(&name, &params, &Patch::Apply(&object))
                    .await?;
            }
            _ => {}
        }
    }
    Ok(())
}
