//! What the benchmarks share: the real `upchain run`, its metrics, and its process's costs.

use kube::api::{Api, Patch, PatchParams};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use upchain_api::{K8sUpgrade, Phase};

/// `upchain run` against a kubeconfig, killed when dropped.
pub struct Operator {
    child: Child,
    /// Where its /metrics answer.
    pub metrics: String,
}

impl Operator {
    /// Starts it (one replica, metrics on a free port, its log in `log`) and waits for its
    /// metrics address.
    pub async fn start(kubeconfig: &Path, log: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args([
                "run",
                "--leader-election",
                "false",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("upchain run");
        let metrics = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("metrics on http://").nth(1))
                .and_then(|r| r.split('/').next())
            {
                break addr.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self { child, metrics }
    }

    /// Its /metrics text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).expect("metrics");
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of one of its counters (without labels).
    pub fn counter(&self, name: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// CPU seconds it has used (user and system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
            .sum();
        // Clock ticks are 100 per second on Linux.
        ticks / 100.0
    }

    /// Its peak resident set (VmHWM) so far.
    pub fn peak_rss(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status writes of one K8sUpgrade, as its watchers saw them.
#[derive(Debug, Default)]
pub struct StatusWrites {
    /// Writes that changed the status.
    pub count: u64,
    /// Their serialized sizes, summed.
    pub bytes: u64,
    /// The largest.
    pub largest: usize,
}

/// Applies the K8sUpgrade `object` (named `name`) and follows it through a watch until it
/// has Succeeded, counting its status writes; panics if it fails or takes longer than
/// `within`.
pub async fn upgrade(
    client: &kube::Client,
    name: &str,
    object: &serde_json::Value,
    within: Duration,
) -> StatusWrites {
    use futures_util::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let api: Api<K8sUpgrade> = Api::all(client.clone());
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    api.patch(name, &PatchParams::apply("bench"), &Patch::Apply(object))
        .await
        .unwrap();
    let mut writes = StatusWrites::default();
    let mut last: Vec<u8> = Vec::new();
    let follow = async {
        while let Some(event) = events.next().await {
            // A watch that fell behind lists again; the writes in between are not counted.
            let Ok(watcher::Event::Apply(upgrade) | watcher::Event::InitApply(upgrade)) = event
            else {
                continue;
            };
            let Some(status) = upgrade
                .status
                .filter(|_| upgrade.metadata.name.as_deref() == Some(name))
            else {
                continue;
            };
            let body = serde_json::to_vec(&status).unwrap();
            if body != last {
                writes.count += 1;
                writes.bytes += body.len() as u64;
                writes.largest = writes.largest.max(body.len());
                last = body;
            }
            assert_ne!(status.phase, Some(Phase::Failed), "the run failed");
            if status.phase == Some(Phase::Succeeded) {
                return;
            }
        }
    };
    tokio::time::timeout(within, follow)
        .await
        .expect("the run did not finish");
    writes
}
