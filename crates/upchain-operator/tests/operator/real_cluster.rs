//! The real-cluster tier (docs/testing.md): a real kubeadm cluster on this machine
//! (`scripts/real-cluster`: one control plane and two workers with their own roots,
//! containerd, sshd and kubelets), upchain installed into it from its own chart with its
//! images built from images/*.Dockerfile, and a K8sUpgrade applied with kubectl that takes
//! every node from 1.35.3 to 1.36.2 through SSH, apt and the real `kubeadm upgrade`.
//! Without `../shared/k8s` it says it skipped; with CI=true that fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::real_api::kubectl;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const UPGRADE: &str = "to-1-36";
const TARGET: &str = "1.36.2";
/// kubectl's arguments for the operator's Pods.
const OPERATOR_PODS: [&str; 6] = [
    "get",
    "pods",
    "-n",
    "upchain-system",
    "-l",
    "app.kubernetes.io/name=upchain",
];

/// A running cluster, torn down (and the host checked to be as it was) when dropped.
struct RealCluster {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl RealCluster {
    /// Starts one, or says why not: without ../shared/k8s the test is skipped, except in CI.
    fn up() -> Option<Self> {
        let shared = Path::new(REPO).join("../shared/k8s/control-plane");
        if !shared.exists() {
            let why = format!(
                "no {}: the real cluster needs ../shared/k8s",
                shared.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("real-cluster-")
            .tempdir()
            .expect("a directory for the cluster");
        let mut cluster = Self {
            dir,
            env: BTreeMap::new(),
        };
        let up = cluster.script(&["up", &cluster.path()]);
        assert!(up.status.success(), "scripts/real-cluster up failed");
        let env = std::fs::read_to_string(cluster.dir.path().join("env")).expect("env file");
        cluster.env = env
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Some(cluster)
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(format!("{REPO}/scripts/real-cluster"))
            .args(args)
            // The operator's image is made of the binary the other tiers test.
            .env("UPCHAIN_OPERATOR_BINARY", env!("CARGO_BIN_EXE_upchain"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/real-cluster runs")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&self.kubeconfig(), args, None)
    }

    fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl's JSON")
    }

    /// A command inside a node, its output (it must succeed).
    fn on_node(&self, node: &str, command: &str) -> String {
        let out = self.script(&["node", &self.path(), node, "bash", "-c", command]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "on {node}: {command}: {text}");
        text
    }

    fn nodes(&self) -> Vec<String> {
        self.env["NODES"]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn ip(&self, node: &str) -> &str {
        &self.env[&format!("IP_{}", node.replace('-', "_"))]
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        let down = self.script(&["down", &self.path()]);
        if !down.status.success() && !std::thread::panicking() {
            panic!("scripts/real-cluster down: the host is not as it was");
        }
    }
}

/// What the sampler saw while the run went on.
#[derive(Default, Debug)]
struct Samples {
    /// Budgets seen with fewer healthy Pods than they require.
    violations: Vec<String>,
    budget_samples: usize,
    /// Seconds each node was seen cordoned.
    cordoned: BTreeMap<String, f64>,
    /// The largest VmHWM of any operator process, in kB.
    peak_rss_kb: u64,
    /// The longest time the API server did not answer, in seconds.
    api_absent: f64,
}

/// Samples the budgets, the cordons and the operator's memory every second until stopped.
/// Requests that fail while the API server restarts are skipped.
fn sample(
    kubeconfig: PathBuf,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let get = |args: &[&str]| -> Option<Value> {
            let out = Command::new("kubectl")
                .args(args)
                .args(["-o", "json", "--request-timeout=5s"])
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).ok())
                .flatten()
        };
        let mut last = Instant::now();
        let mut absent_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let elapsed = now.duration_since(last).as_secs_f64();
            last = now;
            let pdbs = get(&["get", "pdb", "-n", "shop"]);
            match (&pdbs, absent_since) {
                (None, None) => absent_since = Some(now),
                (Some(_), Some(since)) => {
                    let mut s = samples.lock().unwrap();
                    s.api_absent = s.api_absent.max(since.elapsed().as_secs_f64());
                    absent_since = None;
                }
                _ => {}
            }
            if let Some(pdbs) = pdbs {
                let mut s = samples.lock().unwrap();
                s.budget_samples += 1;
                for pdb in pdbs["items"].as_array().into_iter().flatten() {
                    let healthy = pdb["status"]["currentHealthy"].as_i64().unwrap_or(0);
                    let desired = pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0);
                    if healthy < desired {
                        s.violations.push(format!(
                            "{}: {healthy} healthy of {desired} required",
                            pdb["metadata"]["name"]
                        ));
                    }
                }
            }
            if let Some(nodes) = get(&["get", "nodes"]) {
                let mut s = samples.lock().unwrap();
                for node in nodes["items"].as_array().into_iter().flatten() {
                    if node["spec"]["unschedulable"].as_bool() == Some(true) {
                        let name = node["metadata"]["name"].as_str().unwrap_or("?").to_owned();
                        *s.cordoned.entry(name).or_default() += elapsed;
                    }
                }
            }
            if let Some(pods) = get(&OPERATOR_PODS) {
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let rss = operator_peak_rss_kb(pod);
                    let mut s = samples.lock().unwrap();
                    s.peak_rss_kb = s.peak_rss_kb.max(rss);
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

/// The pids of the `upchain` process in an operator Pod, found in its cgroup on the node
/// it runs on: the nodes' kubelets keep each Pod's cgroup under their own cgroup root,
/// named after the node.
fn operator_pids(pod: &Value) -> Vec<String> {
    let (Some(node), Some(uid), Some(qos)) = (
        pod["spec"]["nodeName"].as_str(),
        pod["metadata"]["uid"].as_str(),
        pod["status"]["qosClass"].as_str(),
    ) else {
        return Vec::new();
    };
    let dir = format!(
        "/sys/fs/cgroup/pids/{node}/kubepods/{}/pod{uid}",
        qos.to_lowercase()
    );
    walk(Path::new(&dir))
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "upchain")
        })
        .collect()
}

/// The peak resident memory (VmHWM) of the `upchain` process in an operator Pod, in kB.
fn operator_peak_rss_kb(pod: &Value) -> u64 {
    operator_pids(pod)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .max()
        .unwrap_or(0)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.extend(walk(&entry.path()));
            }
        }
    }
    all
}

/// The operator's `/metrics`, read as Prometheus would: over TLS from the Pod's IP with the
/// token of a ServiceAccount the chart's `metrics.readers` bound to the reader role.
fn scrape_metrics(cluster: &RealCluster) -> String {
    let token = cluster.kubectl(&["create", "token", "prometheus", "-n", "monitoring"]);
    let pods = cluster.kubectl_json(&OPERATOR_PODS);
    let mut leader_text = None;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let ip = pod["status"]["podIP"].as_str().expect("a Pod IP");
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("https://{ip}:8080/metrics"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("# TYPE"),
            "/metrics of {ip} with the reader's token: {text}"
        );
        if text.contains("upchain_leader 1") || text.contains(UPGRADE) {
            leader_text = Some(text);
        }
    }
    leader_text.expect("one replica leads and reports the run")
}

/// The value of the series `name` whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (series, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| series.split(',').any(|l| l == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// The faults the scenario injects, once each, and when (seconds into the run).
#[derive(Default)]
struct Faults {
    repository_refused: Option<f64>,
    runner_killed: Option<f64>,
    operator_killed: Option<f64>,
}

/// Why the run is blocked on `node`'s prepare check, when it is.
fn prepare_refused(node: &str, status: &Value) -> Option<String> {
    let blocked = status["phase"] == "Blocked";
    let reasons = status["blockedReasons"].as_array()?;
    reasons
        .iter()
        .filter_map(Value::as_str)
        .find(|r| blocked && r.contains(&format!("node {node}: the prepare check")))
        .map(str::to_owned)
}

impl Faults {
    fn inject(&mut self, cluster: &RealCluster, status: &Value, at: Duration) {
        let records = status["nodes"].as_array().cloned().unwrap_or_default();
        let in_step = |role: &str, step: &str| {
            records
                .iter()
                .find(|r| r["role"] == role && r["step"] == step)
                .cloned()
        };
        // The runner Pod killed while `kubeadm upgrade apply` runs on the control plane: the
        // upgrade goes on detached on the node, and the next Pod attaches to it.
        if self.runner_killed.is_none()
            && let Some(record) = in_step("ControlPlane", "Upgrading")
        {
            let node = record["name"].as_str().unwrap_or_default();
            let state = std::fs::read_to_string(
                cluster
                    .dir
                    .path()
                    .join(node)
                    .join("root/var/lib/upchain/state"),
            )
            .unwrap_or_default();
            if state.contains("STEP=kubeadm upgrade apply")
                && let Some(job) = record["job"].as_str()
            {
                let out = Command::new("kubectl")
                    .args(["delete", "pods", "-n", "upchain-system", "-l"])
                    .arg(format!("batch.kubernetes.io/job-name={job}"))
                    .args(["--grace-period=0", "--force", "--request-timeout=10s"])
                    .env("KUBECONFIG", cluster.kubeconfig())
                    .output()
                    .expect("kubectl");
                if String::from_utf8_lossy(&out.stdout).contains("deleted") {
                    eprintln!("real cluster: killed {job}'s Pod during kubeadm upgrade apply");
                    self.runner_killed = Some(at.as_secs_f64());
                }
            }
        }
        // The leading operator killed (SIGKILL) while it drains a worker.
        if self.operator_killed.is_none() && in_step("Worker", "Draining").is_some() {
            let lease = Command::new("kubectl")
                .args([
                    "get",
                    "lease",
                    "-n",
                    "upchain-system",
                    "upchain-leader",
                    "-o",
                ])
                .arg("jsonpath={.spec.holderIdentity}")
                .env("KUBECONFIG", cluster.kubeconfig())
                .output()
                .expect("kubectl");
            let leader = String::from_utf8_lossy(&lease.stdout).into_owned();
            let out = Command::new("kubectl")
                .args(["get", "pod", "-n", "upchain-system", &leader, "-o", "json"])
                .env("KUBECONFIG", cluster.kubeconfig())
                .output()
                .expect("kubectl");
            if let Ok(pod) = serde_json::from_slice::<Value>(&out.stdout) {
                for pid in operator_pids(&pod) {
                    if Command::new("kill")
                        .args(["-9", &pid])
                        .status()
                        .is_ok_and(|s| s.success())
                    {
                        eprintln!("real cluster: killed the leader {leader} (pid {pid}) mid-drain");
                        self.operator_killed = Some(at.as_secs_f64());
                    }
                }
            }
        }
    }
}

#[test]
fn a_real_kubeadm_cluster_is_upgraded_by_upchain_installed_from_its_chart() {
    let started = Instant::now();
    let Some(cluster) = RealCluster::up() else {
        return;
    };
    eprintln!(
        "real cluster: up in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The images, as a user's CI would build them from the Dockerfiles (the operator's
    // build stage being the binary under test), imported where a registry would serve them.
    let images = cluster.script(&["upchain-images", &cluster.path()]);
    assert!(images.status.success(), "building upchain's images failed");

    // As docs/install.md installs it: the namespace labelled restricted, the SSH key, the
    // nodes' host keys collected with ssh-keyscan, and the chart.
    cluster.kubectl(&["create", "namespace", "upchain-system"]);
    cluster.kubectl(&[
        "label",
        "namespace",
        "upchain-system",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "upchain-ssh",
        "-n",
        "upchain-system",
        &format!("--from-file=ssh-privatekey={}", cluster.env["SSH_KEY"]),
    ]);
    cluster.kubectl(&["create", "namespace", "monitoring"]);
    cluster.kubectl(&["create", "serviceaccount", "prometheus", "-n", "monitoring"]);
    let mut known_hosts = String::new();
    for node in cluster.nodes() {
        let out = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", cluster.ip(&node)])
            .output()
            .expect("ssh-keyscan");
        let line = String::from_utf8_lossy(&out.stdout);
        let key = line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!key.is_empty(), "ssh-keyscan of {node}: {line}");
        known_hosts.push_str(&format!("    {node} {key}\n"));
    }
    // What the installer gives and the chart has no default for: the runner image's
    // digest, as the registry (here, the nodes' containerd) reports it, and the nodes'
    // network.
    let runner_digest = std::fs::read_to_string(cluster.dir.path().join("images/runner.digest"))
        .expect("upchain-images wrote the runner's digest");
    let runner_digest = runner_digest.trim();
    let node_cidr = &cluster.env["NODE_CIDR"];
    let values = cluster.dir.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "nodeScript:\n\
             \x20 # No CoreDNS in this cluster; its nodes still run cgroup v1.\n\
             \x20 skipCoreDNSPhase: true\n\
             \x20 ignorePreflightErrors: [SystemVerification]\n\
             \x20 # The cluster's mirror of pkgs.k8s.io, on each node's disk.\n\
             \x20 repository:\n\
             \x20   url: \"{}\"\n\
             \x20 knownHosts: |\n{known_hosts}\
             metrics:\n\
             \x20 readers: [{{namespace: monitoring, name: prometheus}}]\n\
             policy:\n\
             \x20 runner:\n\
             \x20   image: {{digest: \"{runner_digest}\"}}\n\
             \x20 snapshot: {{storageClassName: upchain-snapshots, size: 1Gi}}\n\
             networkPolicy:\n\
             \x20 nodeCIDRs: [\"{node_cidr}\"]\n",
            cluster.env["REPOSITORY_URL"]
        ),
    )
    .unwrap();
    // This cluster has no storage of its own: the snapshots' volume is a directory on the
    // node the snapshot Job lands on (a real cluster's would be network storage), made
    // writable for the runner's user, as a volume with fsGroup would be.
    for node in cluster.nodes() {
        cluster.on_node(
            &node,
            "install -d -o 65532 -g 65532 -m 0750 /var/lib/upchain-snapshots",
        );
    }
    kubectl(
        &cluster.kubeconfig(),
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: upchain-snapshots}\n\
             spec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n\
             \x20 storageClassName: upchain-snapshots\n\
             \x20 claimRef: {namespace: upchain-system, name: upchain-etcd-snapshots}\n\
             \x20 hostPath: {path: /var/lib/upchain-snapshots, type: Directory}\n",
        ),
    );
    let install = Command::new("helm")
        .args([
            "install",
            "upchain",
            "charts/upchain",
            "-n",
            "upchain-system",
            "-f",
        ])
        .arg(&values)
        .args(["--wait", "--timeout", "5m"])
        .env("KUBECONFIG", cluster.kubeconfig())
        .current_dir(REPO)
        .output()
        .expect("helm");
    if !install.status.success() {
        // What kept the operator from becoming Available, as a person would look for it.
        let said = |args: &[&str]| {
            let out = Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", cluster.kubeconfig())
                .output()
                .expect("kubectl");
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        };
        panic!(
            "helm install: {}\n{}\n{}\n{}",
            String::from_utf8_lossy(&install.stderr),
            said(&["get", "pods", "-A", "-o", "wide"]),
            said(&["-n", "upchain-system", "describe", "pods"]),
            said(&[
                "-n",
                "upchain-system",
                "logs",
                "-l",
                "app.kubernetes.io/name=upchain",
                "--tail",
                "40",
                "--prefix",
            ]),
        );
    }
    eprintln!(
        "real cluster: upchain installed at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let workloads = format!("{REPO}/tests/real-cluster/workloads.yaml");
    cluster.kubectl(&["apply", "-f", &workloads]);
    for workload in ["deployment/web", "statefulset/db"] {
        cluster.kubectl(&["rollout", "status", "-n", "shop", workload, "--timeout=3m"]);
    }

    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(cluster.kubeconfig(), samples.clone(), stop.clone());
    // A worker whose repository lacks the target: a tmpfs over its copy of the 1.36
    // repository, in the node's own mount namespace, until the prepare check refused it.
    let lacking = cluster.nodes()[2].clone();
    cluster.on_node(
        &lacking,
        "mount -t tmpfs -o ro,size=1m empty '/srv/repo/core:/stable:/v1.36'",
    );
    let run_started = Instant::now();
    cluster.kubectl(&[
        "apply",
        "-f",
        &format!("{REPO}/tests/real-cluster/k8supgrade.yaml"),
    ]);
    let mut last = String::new();
    let mut faults = Faults::default();
    let phase = loop {
        assert!(
            run_started.elapsed() < Duration::from_secs(25 * 60),
            "the run did not end in 25 minutes; last seen: {last}"
        );
        std::thread::sleep(Duration::from_secs(1));
        let out = Command::new("kubectl")
            .args(["get", "k8su", UPGRADE, "-o", "json", "--request-timeout=5s"])
            .env("KUBECONFIG", cluster.kubeconfig())
            .output()
            .expect("kubectl");
        let Ok(upgrade) = serde_json::from_slice::<Value>(&out.stdout) else {
            continue; // the API server restarts during the control plane's upgrade
        };
        let status = &upgrade["status"];
        let now = format!(
            "{} {} {}",
            status["phase"].as_str().unwrap_or("-"),
            status["progress"].as_str().unwrap_or("-"),
            status["currentNode"].as_str().unwrap_or("")
        );
        faults.inject(&cluster, status, run_started.elapsed());
        if faults.repository_refused.is_none()
            && let Some(reason) = prepare_refused(&lacking, status)
        {
            // Nothing may be cordoned while a prepare check refuses.
            let nodes = cluster.kubectl_json(&["get", "nodes"]);
            let cordoned: Vec<_> = nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["spec"]["unschedulable"].as_bool() == Some(true))
                .map(|n| n["metadata"]["name"].clone())
                .collect();
            assert!(cordoned.is_empty(), "cordoned while blocked: {cordoned:?}");
            eprintln!("real cluster: blocked, nothing cordoned: {reason}");
            faults.repository_refused = Some(run_started.elapsed().as_secs_f64());
            cluster.on_node(&lacking, "umount '/srv/repo/core:/stable:/v1.36'");
        }
        if now != last {
            eprintln!(
                "real cluster: {:>4.0} s {now}",
                run_started.elapsed().as_secs_f64()
            );
            last = now;
        }
        if let Some(phase @ ("Succeeded" | "Failed")) = status["phase"].as_str() {
            break phase.to_owned();
        }
    };
    let run_length = run_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap();
    let upgrade = cluster.kubectl_json(&["get", "k8su", UPGRADE]);
    assert_eq!(
        phase,
        "Succeeded",
        "the run ended {phase}: {}\n{}",
        upgrade["status"],
        cluster.kubectl(&["describe", "k8su", UPGRADE])
    );

    // The faults were met: kubeadm ran once on the control plane although its runner Pod
    // was killed, and the run went on after its leader was killed mid-drain.
    let refused_at = faults
        .repository_refused
        .expect("the prepare check refused the worker whose repository lacked the target");
    let runner_killed = faults
        .runner_killed
        .expect("the runner Pod was killed during kubeadm upgrade apply");
    let operator_killed = faults
        .operator_killed
        .expect("the leader was killed mid-drain");
    let backups = cluster.on_node(
        &cluster.nodes()[0],
        "ls -d /etc/kubernetes/tmp/kubeadm-backup-manifests-* | wc -l",
    );
    assert_eq!(
        backups.trim(),
        "1",
        "kubeadm upgrade apply ran more than once"
    );

    // Every node runs the target: the kubelet it reports, the binary, the packages.
    let nodes = cluster.kubectl_json(&["get", "nodes"]);
    for node in nodes["items"].as_array().unwrap() {
        let name = node["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"],
            format!("v{TARGET}"),
            "{name}'s kubelet"
        );
        assert_eq!(
            node["spec"]["unschedulable"].as_bool(),
            None,
            "{name} uncordoned"
        );
        let installed = cluster.on_node(
            name,
            "kubelet --version; dpkg-query -W -f '${Version} ' kubeadm kubelet kubectl",
        );
        assert!(
            installed.contains(&format!("Kubernetes v{TARGET}"))
                && installed.matches(&format!("{TARGET}-1.1")).count() == 3,
            "{name}: {installed}"
        );
    }
    // The control plane: static Pods' manifests and their running images, kubeadm-config.
    let control_plane = &cluster.nodes()[0];
    let manifests = cluster.on_node(control_plane, "cat /etc/kubernetes/manifests/kube-*.yaml");
    for component in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            manifests.contains(&format!("image: registry.k8s.io/{component}:v{TARGET}")),
            "{component}'s manifest is not at v{TARGET}"
        );
        let pod = cluster.kubectl_json(&[
            "get",
            "pod",
            "-n",
            "kube-system",
            &format!("{component}-{control_plane}"),
        ]);
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            format!("registry.k8s.io/{component}:v{TARGET}")
        );
    }
    let config = cluster.kubectl_json(&["get", "configmap", "-n", "kube-system", "kubeadm-config"]);
    assert!(
        config["data"]["ClusterConfiguration"]
            .as_str()
            .unwrap()
            .contains(&format!("kubernetesVersion: v{TARGET}")),
        "kubeadm-config: {}",
        config["data"]
    );
    let etcd = cluster.on_node(
        control_plane,
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
         --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint health 2>&1",
    );
    assert!(etcd.contains("is healthy"), "etcd: {etcd}");

    // No budget was ever violated, and no node Job ran on the node it upgraded.
    assert!(samples.budget_samples > 30, "too few budget samples");
    assert!(
        samples.violations.is_empty(),
        "budgets violated: {:?}",
        samples.violations
    );
    let job_pods = cluster.kubectl_json(&[
        "get",
        "pods",
        "-n",
        "upchain-system",
        "-l",
        "upchain.dev/node",
    ]);
    let mut node_jobs = 0;
    for pod in job_pods["items"].as_array().unwrap() {
        let target = pod["metadata"]["labels"]["upchain.dev/node"]
            .as_str()
            .unwrap();
        let ran_on = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap();
        if !name.contains("-prepare-") {
            node_jobs += 1;
            assert_ne!(ran_on, target, "{name} ran on the node it upgraded");
        }
    }
    assert!(
        node_jobs >= 3,
        "one node Job per node at least: {node_jobs}"
    );

    // The records, Events and metrics say what happened.
    let records = upgrade["status"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(records.len(), 3, "a record per node: {records:?}");
    let events = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={UPGRADE}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    for reason in ["RunStarted", "SnapshotTaken", "Succeeded"] {
        assert!(
            events.lines().any(|r| r == reason),
            "no {reason} Event: {events}"
        );
    }
    let metrics = scrape_metrics(&cluster);
    // The snapshot went through the node step: saved on the control-plane node, test-
    // restored, copied to the claim and read back; etcd was checked member by member.
    let snapshot = &upgrade["status"]["snapshot"];
    assert!(
        snapshot["sizeBytes"].as_u64().unwrap_or(0) > 1024
            && snapshot["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("pvc/upchain-system/upchain-etcd-snapshots/"))
            && snapshot["restoreCheck"]
                .as_str()
                .is_some_and(|r| r.contains("as in the snapshot"))
            && snapshot["sha256"].as_str().is_some_and(|s| s.len() == 64),
        "the etcd snapshot: {snapshot}"
    );
    let etcd_check = &upgrade["status"]["etcd"];
    assert!(
        etcd_check["passed"] == true
            && etcd_check["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("1 voting member(s) ({control_plane})"))),
        "the etcd check: {etcd_check}"
    );
    let run = [("upgrade", UPGRADE)];
    for (gauge, value) in [
        ("k8s_upgrade_snapshot_taken", 1.0),
        ("k8s_upgrade_in_flight", 0.0),
        ("k8s_upgrade_blocked", 0.0),
        ("k8s_upgrade_stalled", 0.0),
    ] {
        assert_eq!(
            metric(&metrics, gauge, &run),
            Some(value),
            "{gauge}: {metrics}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "k8s_upgrade_nodes",
            &[("upgrade", UPGRADE), ("state", "Done")]
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "k8s_upgrade_phase",
            &[("upgrade", UPGRADE), ("phase", "Succeeded")]
        ),
        Some(1.0),
        "{metrics}"
    );

    eprintln!(
        "real cluster: asserted: Succeeded in {:.0} s; every node's kubelet and packages at v{TARGET}; \
         the static Pods' manifests and images and kubeadm-config at v{TARGET}; etcd healthy; \
         {} budget samples, none violated; {node_jobs} node Jobs, none on the node it upgraded; \
         {} records; blocked at {refused_at:.0} s with nothing cordoned while {lacking}'s repository \
         lacked the target, then on once it had it; the runner Pod killed at {runner_killed:.0} s during kubeadm upgrade apply, \
         which ran once; the leader killed at {operator_killed:.0} s mid-drain; the etcd snapshot taken through the node step, test-restored and read back ({} bytes at {}); \
         etcd checked member by member before the run and each node; \
         RunStarted, SnapshotTaken and Succeeded Events; /metrics over TLS with a reader's token",
        run_length.as_secs_f64(),
        samples.budget_samples,
        records.len(),
        snapshot["sizeBytes"],
        snapshot["location"]
    );
    eprintln!(
        "real cluster: cordoned per node (sampled each second): {:?}; operator peak RSS {} kB; \
         the API server away for {:.0} s at most, ridden out; whole test {:.0} s",
        samples
            .cordoned
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect::<Vec<_>>(),
        samples.peak_rss_kb,
        samples.api_absent,
        started.elapsed().as_secs_f64()
    );
}
