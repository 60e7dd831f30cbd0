//! Errors of the `upchain` binary, each saying what to do, with an exit code.

use std::path::PathBuf;

use upchain_core::PlanError;

/// Everything that can stop an `upchain` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node list could not be read.
    #[error(
        "cannot read {path}: {source}; pass a file from `kubectl get nodes -o yaml`, or - for stdin"
    )]
    ReadInput {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {message}")]
    BadInput {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// The upgrade is refused by the version policy or the node list.
    #[error("{0}")]
    Refused(#[from] PlanError),
    /// The CRD could not be rendered.
    #[error("cannot render the CRD: {0}")]
    CrdRender(serde_yaml::Error),
    /// The plan could not be rendered as JSON.
    #[error("cannot render the plan as JSON: {0}")]
    JsonRender(serde_json::Error),
    /// The simulated cluster could not start.
    #[error("{0}")]
    Sim(upchain_sim::SimError),
    /// No cluster could be reached with the given configuration.
    #[error(
        "cannot connect to the cluster: {0}; pass --kubeconfig or run in a Pod with a service account"
    )]
    Connect(String),
    /// Leader election failed although the cluster answered.
    #[error(
        "leader election failed: {source}; the Lease upchain-leader lives in namespace \
         {namespace}: check that it exists and that upchain may get, create and update Leases \
         there, or choose another with --lease-namespace (--leader-election false runs a \
         single replica without one)"
    )]
    LeaderElection {
        /// The Lease's namespace.
        namespace: String,
        /// Why.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The metrics endpoints could not be served.
    #[error("{0}")]
    Serve(#[from] upchain_operator::serve::ServeError),
    /// The demo did not finish its upgrade.
    #[error("demo: {0}")]
    Demo(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Writing to stdout failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl Error {
    /// 2 for bad input or a refused upgrade (the caller must change something), 1 for
    /// anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ReadInput { .. }
            | Error::BadInput { .. }
            | Error::Refused(_)
            | Error::Connect(_)
            | Error::LeaderElection { .. }
            | Error::Serve(_) => 2,
            Error::Sim(
                upchain_sim::SimError::Version(_) | upchain_sim::SimError::Listen { .. },
            ) => 2,
            Error::CrdRender(_)
            | Error::JsonRender(_)
            | Error::Output(_)
            | Error::Sim(_)
            | Error::Runtime(_)
            | Error::Demo(_) => 1,
        }
    }
}
