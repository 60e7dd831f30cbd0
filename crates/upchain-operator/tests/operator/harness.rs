//! What every test against the simulated cluster starts from.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::Client;
use upchain_sim::controllers::Behaviour;
use upchain_sim::{Sim, SimConfig};

/// A simulated cluster whose workloads have started, and a client for it that installed
/// the K8sUpgrade CRD and the runner's prerequisites.
pub async fn simulated(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(config).await.expect("sim");
    assert!(
        sim.settled(Duration::from_secs(30)).await,
        "workloads never started"
    );
    let client = upchain_operator::install::simulated_cluster_client(&sim.url())
        .await
        .expect("CRD, runner namespace, script and SSH Secret");
    (sim, client)
}

/// How long a simulated node upgrade, node restart and a Pod's start (and its stop when
/// deleted) take.
pub fn timing(upgrade: Duration, restart: Duration, pod_start: Duration) -> Behaviour {
    Behaviour {
        upgrade_time: upgrade,
        restart_time: restart,
        pod_start_time: pod_start,
        pod_stop_time: pod_start,
        ..Behaviour::default()
    }
}

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// helm, as scripts/install-test-tools installs it.
pub fn helm() -> Command {
    let tools = std::env::var_os("UPCHAIN_TOOLS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/upchain/tools")
        },
        std::path::PathBuf::from,
    );
    let installed = tools.join("bin/helm");
    let mut helm = Command::new(if installed.is_file() {
        installed
    } else {
        "helm".into()
    });
    helm.current_dir(REPO);
    helm
}

/// The chart rendered as an installation would: tests/helm/install-values.yaml and
/// `args` (more values). Its objects, or what helm said when it refused.
pub fn render_chart(args: &[&str]) -> Result<String, String> {
    let output = helm()
        .args([
            "template",
            "upchain",
            "charts/upchain",
            "--namespace",
            "upchain-system",
        ])
        .args(["-f", "tests/helm/install-values.yaml"])
        .args(args)
        .output()
        .expect("helm is installed by scripts/install-test-tools");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The installation policy the chart renders with `args`, written into `dir`: what
/// `upchain run --policy` reads in a Pod the chart made.
pub fn chart_policy(dir: &Path, args: &[&str]) -> std::path::PathBuf {
    let mut all = vec!["--show-only", "templates/policy.yaml"];
    all.extend_from_slice(args);
    let rendered = render_chart(&all).unwrap_or_else(|e| panic!("helm template: {e}"));
    let config_map: serde_json::Value = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .find(|v: &serde_json::Value| v["kind"] == "ConfigMap")
        .expect("the policy ConfigMap");
    let path = dir.join("policy.json");
    std::fs::write(
        &path,
        config_map["data"]["policy.json"]
            .as_str()
            .expect("policy.json"),
    )
    .expect("policy file");
    path
}

/// `upchain run` against `kubeconfig` with `args`, metrics on a free port, its log (the
/// operator's info lines) written to `log`, under the policy the chart renders with
/// `policy` values (none: an installation's defaults).
pub fn upchain_run(
    kubeconfig: &Path,
    log: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    policy: &[&str],
) -> Child {
    let dir = log.parent().expect("the log's directory");
    Command::new(env!("CARGO_BIN_EXE_upchain"))
        .args([
            "--log",
            "upchain_operator=info",
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--policy")
        .arg(chart_policy(dir, policy))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("upchain starts")
}

/// The `prometheus` binary scripts/install-test-tools unpacks from the Debian package.
fn prometheus_binary() -> std::path::PathBuf {
    let tools = std::env::var_os("UPCHAIN_TOOLS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/upchain/tools")
        },
        std::path::PathBuf::from,
    );
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([tools.join("bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
        .expect(
            "prometheus is installed by scripts/install-test-tools (Debian's prometheus package)",
        )
}

/// A real Prometheus scraping its targets every second, on a free loopback port, stopped
/// when dropped. It answers the analysis checks' PromQL as a fleet's Thanos would.
pub struct Prometheus {
    child: Child,
    /// Its base URL, such as `http://127.0.0.1:41234`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// One scrape target: its `host:port`, its metrics path, and the labels its series get
/// (a fleet's `cluster` and `stage`, as Thanos's external labels would add them).
pub struct Target<'a> {
    pub address: &'a str,
    pub path: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

impl Prometheus {
    pub fn start(targets: &[Target]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let labels: Vec<String> = t
                    .labels
                    .iter()
                    .map(|(name, value)| format!("{name}: '{value}'"))
                    .collect();
                format!(
                    "- job_name: target-{i}\n  metrics_path: {}\n  static_configs:\n  - targets: ['{}']\n    labels: {{{}}}\n",
                    t.path,
                    t.address,
                    labels.join(", ")
                )
            })
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}",
                jobs.concat()
            ),
        )
        .expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !prometheus.get("/-/ready").starts_with("HTTP/1.1 200") {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let address = self.url.trim_start_matches("http://");
        let Ok(mut stream) = std::net::TcpStream::connect(address) else {
            return String::new();
        };
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An exporter of the test's own: serves whatever text `metrics` holds at any path.
pub fn exporter(metrics: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = metrics.lock().expect("metrics").clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    address
}
