//! A running simulated cluster: the API server on a local port, its seed content, and the
//! controllers and kubelets that make it behave like a cluster.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::controllers::{self, Behaviour, Placement};
use crate::seed;
use crate::server::{self, Faults, Shared, Surroundings};
use crate::store::{DEFAULT_HISTORY, Store};

/// How to build a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Control-plane nodes.
    pub control_planes: usize,
    /// Worker nodes.
    pub workers: usize,
    /// Kubernetes version every node and the API server start at, such as `v1.34.2`.
    pub version: String,
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The cluster's clock.
    pub clock: Clock,
    /// Watch events kept for resuming watches (older ones get 410 Gone).
    pub history: usize,
    /// Seed of injected random faults, printed by tests so a failure can be replayed.
    pub seed: u64,
    /// How often watches that allow bookmarks receive one.
    pub bookmark_interval: Duration,
    /// Seed workloads (CoreDNS, kube-proxy, applications with PDBs, static pods).
    pub workloads: bool,
    /// How nodes and Jobs behave.
    pub behaviour: Behaviour,
    /// Extra Pods per worker node (one Deployment `filler/filler-N` per worker, no
    /// budget), for scale.
    pub filler_pods_per_node: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            control_planes: 1,
            workers: 6,
            version: "v1.34.2".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            clock: Clock::Real,
            history: DEFAULT_HISTORY,
            seed: 1,
            bookmark_interval: Duration::from_secs(5),
            workloads: true,
            behaviour: Behaviour::default(),
            filler_pods_per_node: 0,
        }
    }
}

/// Errors starting a simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The version is not `vMAJOR.MINOR.PATCH`.
    #[error("`{0}` is not a Kubernetes version such as 1.34.2")]
    Version(String),
    /// Seeding failed (a bug in the seed content).
    #[error("cannot seed the cluster: {0}")]
    Seed(String),
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig to {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running simulated cluster. Dropping it stops the server and the controllers.
#[derive(Debug)]
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    state: Arc<Mutex<controllers::State>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Starts the API server and the cluster's controllers.
    pub async fn start(config: SimConfig) -> Result<Sim, SimError> {
        let version =
            normalise(&config.version).ok_or_else(|| SimError::Version(config.version.clone()))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Listen {
            addr: config.listen,
            source,
        })?;
        let mut store = Store::new(config.clock.clone(), config.history);
        // The API server's mirror Pods say where it answers, as kubeadm's do.
        seed::cluster(&mut store, &config, &version, addr)
            .map_err(|e| SimError::Seed(e.to_string()))?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            faults: Mutex::new(Faults::none(config.seed)),
            version: Mutex::new(version),
            bookmark_interval: config.bookmark_interval,
            surroundings: Mutex::new(Surroundings::default()),
            requests: Mutex::new(std::collections::BTreeMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let router = server::router(shared.clone());
        let mut server_stop = stopped.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "simulated API server stopped");
            }
        });
        let state = Arc::new(Mutex::new(controllers::State::new(
            config.behaviour.clone(),
        )));
        let controllers = tokio::spawn(controllers::run(
            shared.clone(),
            state.clone(),
            config.clock.clone(),
            stopped,
        ));
        Ok(Sim {
            addr,
            shared,
            state,
            stop,
            tasks: vec![server, controllers],
        })
    }

    /// Waits (on the real clock, polling) until every seeded workload is Available, as on
    /// a cluster that has been up for a while; false when `within` passes first. With a
    /// virtual clock nothing starts until the test moves it.
    pub async fn settled(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let settled = {
                let store = self.store();
                ["deployments.apps", "statefulsets.apps"]
                    .iter()
                    .flat_map(|resource| store.all(resource))
                    .all(|workload| {
                        let wanted = workload["spec"]["replicas"].as_u64().unwrap_or(1);
                        workload["status"]["readyReplicas"].as_u64().unwrap_or(0) >= wanted
                    })
            };
            if settled {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points kubectl or any client at this cluster.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: upchain-sim\n  cluster:\n    server: {}\n\
             users:\n- name: upchain-sim\n  user: {{}}\ncontexts:\n- name: upchain-sim\n  context:\n    \
             cluster: upchain-sim\n    user: upchain-sim\n    namespace: default\ncurrent-context: upchain-sim\n",
            self.url()
        )
    }

    /// Writes the kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig()).map_err(|source| SimError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// The objects, for tests that look at the cluster directly.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store()
    }

    /// Injected request faults, changeable while the cluster runs.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node and Job behaviour and faults, changeable while the cluster runs.
    pub fn behaviour(&self) -> MutexGuard<'_, controllers::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a control-plane static Pod (`component` on `node`) crash-loop: Running, not
    /// Ready, restarting.
    pub fn crash_loop_static_pod(&self, node: &str, component: &str) {
        let mut store = self.store();
        let pod = store.all("pods").into_iter().find(|p| {
            p["spec"]["nodeName"] == node
                && p["metadata"]["labels"]["component"] == component
                && p["metadata"]["labels"]["tier"] == "control-plane"
        });
        if let Some(mut pod) = pod {
            controllers::set_unready(&mut pod, 7);
            let _ = store.write_own(pod, true);
        }
    }

    /// Sets the kubernetesVersion kube-system/kubeadm-config records, as a cluster whose
    /// control plane was changed by hand may have it.
    pub fn set_kubeadm_version(&self, version: &str) {
        controllers::record_kubeadm_version(&mut self.store(), version);
    }

    /// The kubernetesVersion kube-system/kubeadm-config records.
    pub fn kubeadm_version(&self) -> Option<String> {
        let config_map = self.store().all("configmaps").into_iter().find(|c| {
            c["metadata"]["namespace"] == "kube-system" && c["metadata"]["name"] == "kubeadm-config"
        })?;
        let text = config_map["data"]["ClusterConfiguration"]
            .as_str()?
            .to_owned();
        text.lines()
            .find_map(|line| line.strip_prefix("kubernetesVersion: "))
            .map(str::to_owned)
    }

    /// Where every Pod was scheduled, in order: the record invariant checks read.
    pub fn placements(&self) -> Vec<Placement> {
        self.behaviour().placements.clone()
    }

    /// The Prometheus alerts, deprecated-API metrics and webhook messages, changeable and
    /// readable while the cluster runs.
    pub fn surroundings(&self) -> MutexGuard<'_, Surroundings> {
        self.shared.surroundings()
    }

    /// Base URL of the simulated Prometheus (its alerts API is under `/api/v1/alerts`).
    pub fn prometheus_url(&self) -> String {
        format!("{}/prometheus", self.url())
    }

    /// Base URL of the simulated Alertmanager (its silences API is under `/api/v2`).
    pub fn alertmanager_url(&self) -> String {
        format!("{}/alertmanager", self.url())
    }

    /// URL of the simulated Slack-compatible webhook.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhook", self.url())
    }

    /// Requests served so far, by verb and resource (such as `pods`, `nodes`).
    pub fn requests(&self) -> std::collections::BTreeMap<(crate::server::Verb, String), u64> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When each upgraded node came back Ready at its new version, in order.
    pub fn rejoins(&self) -> Vec<(String, jiff::Timestamp)> {
        self.behaviour().rejoins.clone()
    }

    /// Every moment a node was cordoned, with every node's state then.
    pub fn cordons(&self) -> Vec<crate::store::CordonMoment> {
        self.store().cordons.clone()
    }

    /// Every object of a type (`nodes`, `pods`, `jobs.batch`, ...).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.store().all(resource)
    }

    /// Stops the server and the controllers.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `1.34.2` or `v1.34.2` as `v1.34.2`.
fn normalise(version: &str) -> Option<String> {
    let numbers = version.strip_prefix('v').unwrap_or(version);
    let parts: Vec<&str> = numbers.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| format!("v{numbers}"))
}
