//! The real `upchain` binary against the standalone `upchain sim`, driven through kubectl
//! as a user would, with the operator killed and restarted mid-run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn upchain(args: &[&str]) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upchain starts"),
    )
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is on PATH: run scripts/install-test-tools");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `upchain sim` with `args`, once it has written its kubeconfig into `dir`.
fn sim(dir: &Path, args: &[&str]) -> (Process, std::path::PathBuf) {
    let kubeconfig = dir.join("kubeconfig");
    let mut all = vec![
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let process = upchain(&all);
    until("the kubeconfig", Duration::from_secs(20), || {
        kubeconfig.exists()
    });
    (process, kubeconfig)
}

#[test]
fn upchain_run_against_upchain_sim_survives_kills_and_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, kubeconfig) = sim(dir.path(), &["--nodes", "1+3", "--upgrade-seconds", "1"]);
    let crd = Path::new(REPO).join("crds/k8supgrades.upchain.dev.yaml");
    kubectl(
        &kubeconfig,
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
    );
    let manifests = dir.path().join("upgrade.yaml");
    std::fs::write(
        &manifests,
        "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata:\n  name: to-1-35\nspec:\n  targetVersion: 1.35.2\n  soak: 0s\n  snapshot: {namespace: kube-system, cronJob: etcd-backup}\n",
    )
    .unwrap();
    let runner = Path::new(REPO).join("deploy/examples/upchain-system.yaml");
    kubectl(&kubeconfig, &["apply", "-f", runner.to_str().unwrap()]);
    kubectl(&kubeconfig, &["apply", "-f", manifests.to_str().unwrap()]);

    let policy = crate::harness::chart_policy(dir.path(), &[]);
    let run = |_: ()| {
        upchain(&[
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--leader-election",
            "false",
        ])
    };
    let field = |path: &str| {
        kubectl(
            &kubeconfig,
            &[
                "get",
                "k8su",
                "to-1-35",
                "-o",
                &format!("jsonpath={{{path}}}"),
            ],
        )
    };
    // Killed (SIGKILL, no clean-up) while a worker drains and while a worker's Job runs.
    let mut operator = run(());
    for step in ["Draining", "Upgrading"] {
        until(&format!("a worker {step}"), Duration::from_secs(90), || {
            field(".status.currentStep") == step
                && field(".status.currentNode").starts_with("worker")
        });
        drop(operator);
        operator = run(());
    }
    until("Succeeded", Duration::from_secs(120), || {
        field(".status.phase") == "Succeeded"
    });
    drop(operator);

    let nodes = kubectl(&kubeconfig, &["get", "nodes", "--no-headers"]);
    for line in nodes.lines() {
        assert!(
            line.contains("v1.35.2") && !line.contains("SchedulingDisabled"),
            "{line}"
        );
    }
    // Invariant 1, from the cluster's record: no upgrade Pod ran on the node it upgrades.
    let placements = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-n",
            "upchain-system",
            "-l",
            "app.kubernetes.io/name=upchain-node-upgrade",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}={.metadata.annotations.upchain\\.dev/node}{\"\\n\"}{end}",
        ],
    );
    let upgrade_pods: Vec<&str> = placements.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        upgrade_pods.len(),
        4,
        "one upgrade Pod per node: {upgrade_pods:?}"
    );
    for pair in upgrade_pods {
        let (ran_on, upgrades) = pair.split_once('=').expect("pair");
        assert_ne!(
            ran_on, upgrades,
            "an upgrade Pod ran on the node it upgrades"
        );
    }
    assert!(field(".status.conditions[?(@.type==\"Ready\")].status") == "True");
}

/// `upchain run` started first, as the README's "Running the controller" does: it waits
/// for the CRD, names an outdated one by the fields it lacks, waits for the Lease's
/// namespace, and leads once both are there. It never exits, and never blames the
/// kubeconfig.
#[test]
fn upchain_run_started_before_its_crd_and_namespace_waits_for_them_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, kubeconfig) = sim(dir.path(), &["--nodes", "1+1"]);
    let log = dir.path().join("upchain.log");
    let mut operator = Process(crate::harness::upchain_run(
        &kubeconfig,
        &log,
        &[],
        &[],
        &[],
    ));
    let said = |words: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(words)
    };
    until("the missing CRD named", Duration::from_secs(30), || {
        said(
            "the K8sUpgrade CRD (k8supgrades.upchain.dev) is not installed: apply this release's CRD with `kubectl apply --server-side -f crds/`",
        )
    });

    // An earlier release's CRD, without a field this one writes.
    let mut old: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(REPO).join("crds/k8supgrades.upchain.dev.yaml"))
            .unwrap(),
    )
    .unwrap();
    old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["drain"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("evictUnmanagedPods");
    let old_crd = dir.path().join("old-crd.json");
    std::fs::write(&old_crd, old.to_string()).unwrap();
    kubectl(
        &kubeconfig,
        &["apply", "--server-side", "-f", old_crd.to_str().unwrap()],
    );
    until("the outdated CRD named", Duration::from_secs(30), || {
        said(
            "the installed K8sUpgrade CRD is older than this upchain and lacks spec.drain.evictUnmanagedPods",
        )
    });

    let crd = Path::new(REPO).join("crds/k8supgrades.upchain.dev.yaml");
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crd.to_str().unwrap(),
        ],
    );
    until(
        "the missing Lease namespace named",
        Duration::from_secs(30),
        || {
            said(
                "the namespace upchain-system, where replicas compete for the leader Lease, does not exist: create it (`kubectl create namespace upchain-system`), or choose another with --lease-namespace",
            )
        },
    );
    assert!(
        operator.0.try_wait().unwrap().is_none(),
        "upchain run exited: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let runner = Path::new(REPO).join("deploy/examples/upchain-system.yaml");
    kubectl(&kubeconfig, &["apply", "-f", runner.to_str().unwrap()]);
    until("leading", Duration::from_secs(30), || {
        said("leading: acting on the cluster")
    });
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("kubeconfig"), "{log}");
}
