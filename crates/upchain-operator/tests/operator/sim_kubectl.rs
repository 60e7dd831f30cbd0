//! `upchain sim` as kubectl sees it: the standalone server, reached through the kubeconfig
//! it writes. kubectl is installed by scripts/install-test-tools.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A running `upchain sim`, stopped when dropped.
struct SimProcess {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl SimProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args([
                "sim",
                "--nodes",
                "1+3",
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upchain sim starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "upchain sim wrote no kubeconfig");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            kubeconfig,
            _dir: dir,
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl is on PATH: run scripts/install-test-tools");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {text}");
        text
    }

    /// Runs kubectl until `check` accepts its output (the cluster settles asynchronously).
    fn until(&self, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, text) = self.kubectl(args);
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {args:?} never satisfied the check: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(relative: &str) -> String {
    Path::new(REPO).join(relative).display().to_string()
}

#[test]
fn kubectl_lists_applies_drains_and_deletes() {
    let sim = SimProcess::start();
    assert!(sim.ok(&["version"]).contains("Server Version: v1.34.2"));
    let nodes = sim.ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 4, "{nodes}");
    let describe = sim.ok(&["describe", "node", "cp-1"]);
    assert!(
        describe.contains("node-role.kubernetes.io/control-plane:NoSchedule"),
        "{describe}"
    );

    // The CRD and a K8sUpgrade, as a user would apply them.
    sim.ok(&[
        "apply",
        "--server-side",
        "-f",
        &path("crds/k8supgrades.upchain.dev.yaml"),
    ]);
    let upgrade = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        upgrade.path(),
        "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata:\n  name: to-1-35\nspec:\n  targetVersion: 1.35.2\n  snapshotWaiver: {reason: a simulated cluster}\n",
    )
    .expect("write");
    sim.ok(&[
        "apply",
        "--server-side",
        "-f",
        upgrade.path().to_str().unwrap(),
    ]);
    let got = sim.ok(&[
        "get",
        "k8su",
        "to-1-35",
        "-o",
        "jsonpath={.spec.targetVersion}",
    ]);
    assert_eq!(got, "1.35.2");
    // Schema defaults are applied at admission, as a real API server does.
    assert_eq!(
        sim.ok(&["get", "k8su", "to-1-35", "-o", "jsonpath={.spec.soak}"]),
        "300s"
    );
    // A malformed target is refused with the CRD's own message, and nothing is stored.
    let bad = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        bad.path(),
        "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata:\n  name: bad\nspec:\n  targetVersion: \"1.35\"\n",
    )
    .expect("write");
    let (accepted, refusal) =
        sim.kubectl(&["apply", "--server-side", "-f", bad.path().to_str().unwrap()]);
    assert!(
        !accepted && refusal.contains("targetVersion must be MAJOR.MINOR.PATCH"),
        "{refusal}"
    );
    assert!(!sim.kubectl(&["get", "k8su", "bad"]).0);
    // Server-side printing: the CRD's printer columns.
    let table = sim.ok(&["get", "k8su"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "TARGET", "PHASE", "PROGRESS", "NODE", "AGE"],
        "{table}"
    );

    // Drain: PDB-respecting evictions, DaemonSet Pods left alone.
    sim.until(
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "status.phase!=Running",
            "-o",
            "name",
        ],
        |t| t.trim().is_empty() || t.contains("No resources"),
    );
    let drained = sim.ok(&[
        "drain",
        "worker-1",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=60s",
    ]);
    assert!(drained.contains("node/worker-1 drained"), "{drained}");
    assert_eq!(
        sim.ok(&[
            "get",
            "node",
            "worker-1",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ]),
        "true"
    );
    let row = sim.ok(&["get", "node", "worker-1", "--no-headers"]);
    assert!(
        row.contains("Ready,SchedulingDisabled") && row.contains("v1.34.2"),
        "{row}"
    );
    let left = sim.ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=worker-1",
        "-o",
        "name",
    ]);
    assert!(left.lines().all(|l| l.contains("kube-proxy")), "{left}");
    sim.ok(&["uncordon", "worker-1"]);

    sim.ok(&["delete", "k8su", "to-1-35"]);
    let (found, text) = sim.kubectl(&["get", "k8su", "to-1-35"]);
    assert!(!found && text.contains("NotFound"), "{text}");
}
