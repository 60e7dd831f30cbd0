//! `upchain run`: the controller against a real (or simulated) cluster.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::sync::Arc;

use upchain_core::policy::InstallPolicy;
use upchain_operator::controller::{self, LeaseSettings, Settings};
use upchain_operator::metrics::Metrics;
use upchain_operator::serve::{self, Endpoints, Tls};
use upchain_operator::startup;

use crate::cli::{MetricsAuth, MetricsTls, RunArgs};
use crate::error::Error;
use crate::sim_cmd::shutdown_signal;

/// The installation's policy, checked before anything connects: an operator that would
/// run a tag-pinned image or another namespace's Jobs does not start.
pub(crate) fn read_policy(path: &std::path::Path) -> Result<InstallPolicy, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::BadInput {
        path: path.to_owned(),
        message: format!(
            "cannot read the installation policy ({e}): install upchain with its chart, which \
             mounts it from the ConfigMap <release>-policy, or pass --policy FILE"
        ),
    })?;
    InstallPolicy::parse(&text).map_err(|message| Error::BadInput {
        path: path.to_owned(),
        message,
    })
}

/// Connects and runs the controller until SIGINT or SIGTERM.
pub async fn run(args: &RunArgs) -> Result<(), Error> {
    let policy = read_policy(&args.policy)?;
    let config = connect_config(args.kubeconfig.as_deref()).await?;
    let client = Client::try_from(config.clone()).map_err(|e| Error::Connect(e.to_string()))?;
    let settings = Settings {
        operator_pod: args.pod_namespace.as_ref().zip(args.pod_name.as_ref()).map(
            |(namespace, name)| upchain_core::PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
            },
        ),
        runner_namespace: Some(policy.runner.namespace.clone()),
        policy,
        api_server: Some(config),
    };
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stop = stopped.clone();
    let endpoints = Endpoints {
        tls: match args.metrics_tls {
            MetricsTls::None => None,
            MetricsTls::SelfSigned => Some(Tls::SelfSigned),
            MetricsTls::Files => Some(Tls::Files(args.metrics_tls_dir.clone())),
        },
        auth: (args.metrics_auth == MetricsAuth::Kubernetes).then(|| client.clone()),
    };
    let scheme = if endpoints.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let bound = serve::serve(args.metrics_addr, metrics.clone(), endpoints, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    })
    .await?;
    eprintln!("upchain controller running; metrics on {scheme}://{bound}/metrics; Ctrl-C stops it");
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| args.pod_namespace.clone())
        .unwrap_or_else(|| "upchain-system".to_owned());
    let waited = tokio::select! {
        () = startup::ready(&client, args.leader_election.then_some(lease_namespace.as_str())) => true,
        () = shutdown_signal() => false,
    };
    if !waited {
        let _ = stop.send(true);
        return Ok(());
    }
    if args.leader_election {
        let lease = LeaseSettings {
            name: "upchain-leader".to_owned(),
            namespace: lease_namespace.clone(),
            identity: args
                .pod_name
                .clone()
                .unwrap_or_else(|| format!("upchain-{}", std::process::id())),
            duration_seconds: args.lease_seconds,
            // Renewed when a third of the term is left.
            grace_seconds: (args.lease_seconds / 3).max(1),
        };
        controller::run_with_leader_election(client, settings, metrics, lease, shutdown_signal())
            .await
            .map_err(|source| Error::LeaderElection {
                namespace: lease_namespace,
                source,
            })?;
    } else {
        controller::run(client, settings, metrics, shutdown_signal()).await;
    }
    let _ = stop.send(true);
    Ok(())
}

/// The client configuration for the cluster in `kubeconfig`, or the one KUBECONFIG,
/// ~/.kube/config or the in-cluster service account name.
pub async fn connect_config(kubeconfig: Option<&std::path::Path>) -> Result<Config, Error> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::Connect(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Connect(e.to_string()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?,
    };
    // A PodDisruptionBudget's 429 must come back to the drain, which rechecks on its own
    // schedule, instead of holding a reconcile in the client's retry loop for minutes.
    config.default_retry = false;
    Ok(config)
}
