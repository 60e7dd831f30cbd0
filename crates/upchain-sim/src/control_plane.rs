//! A real control plane for tests and benchmarks: `../shared/k8s/control-plane up DIR`
//! starts etcd, a kube-apiserver and (unless told not to) a controller manager on free
//! loopback ports and writes an admin kubeconfig; `down DIR` stops them. It has no kubelet
//! and no scheduler: the [node player](crate::player) plays them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why a control plane did not start or cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The script is not there.
    #[error(
        "{0} does not exist: the real-API-server tests need it (set UPCHAIN_CONTROL_PLANE to a \
         control-plane script)"
    )]
    Missing(PathBuf),
    /// The script ran and failed, or its files could not be read.
    #[error("control-plane up failed: {0}")]
    Failed(String),
    /// Its kubeconfig does not give a client.
    #[error("the control plane's kubeconfig: {0}")]
    Kubeconfig(String),
}

/// A running control plane in a temporary directory; stopped when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    script: PathBuf,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    env: String,
}

impl ControlPlane {
    /// The control-plane script: `UPCHAIN_CONTROL_PLANE`, else `../shared/k8s/control-plane`
    /// beside the repository at `repo`.
    pub fn script(repo: &Path) -> PathBuf {
        std::env::var_os("UPCHAIN_CONTROL_PLANE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("../shared/k8s/control-plane"))
    }

    /// Starts one with `script` (`with_controller_manager` false: etcd and the API server
    /// only).
    pub fn start(script: &Path, with_controller_manager: bool) -> Result<Self, ControlPlaneError> {
        if !script.exists() {
            return Err(ControlPlaneError::Missing(script.to_owned()));
        }
        let failed = |e: std::io::Error| ControlPlaneError::Failed(e.to_string());
        let dir = tempfile::tempdir().map_err(failed)?;
        let mut command = Command::new(script);
        command.arg("up").arg(dir.path()).stdout(Stdio::null());
        if !with_controller_manager {
            command.env("K8S_NO_KCM", "1");
        }
        let status = command.status().map_err(failed)?;
        if !status.success() {
            return Err(ControlPlaneError::Failed(format!(
                "{} up exited with {status}",
                script.display()
            )));
        }
        let env = std::fs::read_to_string(dir.path().join("env")).map_err(failed)?;
        Ok(Self {
            script: script.to_owned(),
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            env,
        })
    }

    /// Its directory: logs, certificates, the env file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A value `control-plane up` wrote to its env file, such as ETCD_PORT.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// The client configuration of the admin kubeconfig.
    pub async fn config(&self) -> Result<kube::Config, ControlPlaneError> {
        kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| error(&e))?,
            &KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| error(&e))
    }

    /// A client with the admin kubeconfig.
    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        Client::try_from(self.config().await?).map_err(|e| error(&e))
    }
}

fn error(e: &dyn std::fmt::Display) -> ControlPlaneError {
    ControlPlaneError::Kubeconfig(e.to_string())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}
