//! The real-API-server tier: the real `upchain` binary, as the chart's ServiceAccount with
//! the chart's RBAC (rendered by helm), against a real kube-apiserver and controller
//! manager (`../shared/k8s/control-plane`), whose kubelets and scheduler the simulator's
//! node player plays. Without `../shared/k8s` it says it skipped; with CI=true that fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use upchain_sim::control_plane::{self, ControlPlaneError};
use upchain_sim::player::{NodePlayer, PlayerConfig};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A real control plane, or the reason the test is skipped.
pub struct ControlPlane(control_plane::ControlPlane);

impl std::ops::Deref for ControlPlane {
    type Target = control_plane::ControlPlane;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ControlPlane {
    /// Starts one (`with_controller_manager` false: etcd and the API server only), or
    /// says why not: without the script the test is skipped, except in CI (CI=true).
    pub fn up(with_controller_manager: bool) -> Option<Self> {
        let script = control_plane::ControlPlane::script(Path::new(REPO));
        match control_plane::ControlPlane::start(&script, with_controller_manager) {
            Ok(cluster) => Some(Self(cluster)),
            Err(why @ ControlPlaneError::Missing(_)) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("SKIPPED: {why}");
                None
            }
            Err(error) => panic!("{error}"),
        }
    }

    /// A value `control-plane up` wrote to its env file, such as ETCD_PORT.
    pub fn env(&self, key: &str) -> String {
        self.0
            .env(key)
            .unwrap_or_else(|| panic!("{key} in the env file"))
            .to_owned()
    }

    /// A client with the admin kubeconfig.
    pub async fn client(&self) -> Client {
        self.0
            .client()
            .await
            .expect("a client for the control plane")
    }
}

pub(crate) fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    try_kubectl(kubeconfig, args, stdin).unwrap_or_else(|said| panic!("kubectl {args:?}: {said}"))
}

/// kubectl's output, or all it said when it failed (a refusal a test expects).
pub(crate) fn try_kubectl(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is on PATH: run scripts/install-test-tools");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text + &String::from_utf8_lossy(&out.stderr))
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs what the chart would (CRD, RBAC, ServiceAccount, node script) and the
/// runner's objects, and returns a kubeconfig that acts as the chart's ServiceAccount.
fn install_as_the_chart(cluster: &ControlPlane) -> PathBuf {
    let admin = cluster.kubeconfig();
    let crd = Path::new(REPO).join("crds/k8supgrades.upchain.dev.yaml");
    kubectl(
        admin,
        &["apply", "--server-side", "-f", crd.to_str().expect("utf-8")],
        None,
    );
    kubectl(admin, &["create", "namespace", "upchain-system"], None);
    // As docs/install.md labels it: the node Jobs' Pods must pass restricted admission.
    kubectl(
        admin,
        &[
            "label",
            "namespace",
            "upchain-system",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    let rendered = crate::harness::render_chart(&[
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/configmap-script.yaml",
        "--show-only",
        "templates/policy.yaml",
        "--show-only",
        "templates/admission.yaml",
    ])
    .unwrap_or_else(|e| panic!("helm template: {e}"));
    kubectl(admin, &["apply", "-f", "-"], Some(&rendered));
    let runner =
        std::fs::read_to_string(Path::new(REPO).join("deploy/examples/upchain-system.yaml"))
            .expect("runner objects");
    // The chart installed the real node script and the snapshot's claim; the example's
    // are not needed.
    let keys: Vec<&str> = runner
        .split("\n---\n")
        .filter(|doc| {
            !doc.contains("name: upchain-node-upgrade")
                && !doc.contains("kind: Namespace")
                && !doc.contains("kind: PersistentVolumeClaim")
        })
        .collect();
    kubectl(admin, &["apply", "-f", "-"], Some(&keys.join("\n---\n")));
    let token = kubectl(
        admin,
        &[
            "create",
            "token",
            "upchain",
            "-n",
            "upchain-system",
            "--duration",
            "2h",
        ],
        None,
    );
    let server = kubectl(
        admin,
        &[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let ca = kubectl(
        admin,
        &[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    let path = cluster.dir().join("upchain.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: real, cluster: {{server: {server}, certificate-authority-data: {ca}}}}}]\n\
             users: [{{name: upchain, user: {{token: {}}}}}]\n\
             contexts: [{{name: upchain, context: {{cluster: real, user: upchain, namespace: upchain-system}}}}]\n\
             current-context: upchain\n",
            token.trim()
        ),
    )
    .expect("kubeconfig");
    path
}

fn field(kubeconfig: &Path, path: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "k8su",
            "to-1-35",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ],
        None,
    )
}

pub(crate) fn until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One control-plane node and two workers, whose upgrade Pods run for `upgrade_time`.
fn small(upgrade_time: Duration) -> PlayerConfig {
    PlayerConfig {
        control_planes: 1,
        workers: 2,
        upgrade_time,
        ..PlayerConfig::default()
    }
}

/// A real control plane with the node player and the chart's install, ready for
/// `upchain run` as the chart's ServiceAccount.
pub(crate) struct RealRun {
    cluster: ControlPlane,
    player: NodePlayer,
    pub(crate) operator_kubeconfig: PathBuf,
    operator: Option<Process>,
}

impl RealRun {
    pub(crate) async fn start(mut player: PlayerConfig) -> Option<Self> {
        let cluster = ControlPlane::up(true)?;
        let operator_kubeconfig = tokio::task::block_in_place(|| install_as_the_chart(&cluster));
        // The API server's mirror Pods say where it answers, as kubeadm's do.
        let server = kubectl(
            cluster.kubeconfig(),
            &[
                "config",
                "view",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
            None,
        );
        player.api_server = server
            .trim()
            .strip_prefix("https://")
            .map(|s| s.trim_end_matches('/').to_owned());
        let player = NodePlayer::start(cluster.client().await, player)
            .await
            .expect("the node player registers the nodes");
        Some(Self {
            cluster,
            player,
            operator_kubeconfig,
            operator: None,
        })
    }

    pub(crate) fn admin(&self) -> &Path {
        self.cluster.kubeconfig()
    }

    pub(crate) fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl(self.admin(), args, stdin)
    }

    /// Starts (or restarts, after a SIGKILL) `upchain run` as the chart's ServiceAccount.
    pub(crate) fn run_operator(&mut self) {
        self.operator = None;
        self.operator = Some(self.spawn_operator("upchain-0", &["--leader-election", "false"]));
    }

    /// `upchain run` as the chart's ServiceAccount, as Pod `identity`, with `args`.
    fn spawn_operator(&self, identity: &str, args: &[&str]) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cluster.dir().join("operator.log"))
            .expect("log");
        Process(
            Command::new(env!("CARGO_BIN_EXE_upchain"))
                .args([
                    "run",
                    "--kubeconfig",
                    self.operator_kubeconfig.to_str().expect("utf-8"),
                ])
                .arg("--policy")
                .arg(crate::harness::chart_policy(self.cluster.dir(), &[]))
                .args(if args.contains(&"--metrics-addr") {
                    &[][..]
                } else {
                    &["--metrics-addr", "127.0.0.1:0"][..]
                })
                .args(args)
                .env("POD_NAME", identity)
                .env("POD_NAMESPACE", "upchain-system")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("upchain runs"),
        )
    }

    pub(crate) fn field(&self, path: &str) -> String {
        field(self.admin(), path)
    }

    /// Who holds the Leases in the release namespace (the leader's).
    fn lease_holders(&self) -> String {
        self.kubectl(
            &[
                "get",
                "lease",
                "-n",
                "upchain-system",
                "-o",
                "jsonpath={.items[*].spec.holderIdentity}",
            ],
            None,
        )
    }

    /// Waits for `phase`, or fails with the status, the Pods and the operator's log.
    fn wait_for_phase(&self, phase: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.field(".status.phase");
            if now == phase {
                return;
            }
            if Instant::now() > deadline || (now == "Failed" && phase != "Failed") {
                let log = std::fs::read_to_string(self.cluster.dir().join("operator.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "{now}, not {phase}: {}\n{}\noperator log (last lines first):\n{}",
                    self.field(".status"),
                    self.kubectl(&["get", "pods", "-A", "-o", "wide"], None),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Applies K8sUpgrade `name` to 1.35.2 without an etcd snapshot, with `extra` spec
    /// lines.
    pub(crate) fn apply_upgrade(&self, name: &str, extra: &str) {
        self.apply_spec(
            name,
            &format!(
                "  snapshotWaiver: {{reason: the test control plane's etcd is disposable}}\n{extra}"
            ),
        );
    }

    /// Applies K8sUpgrade `name` to 1.35.2, with `lines` in its spec.
    pub(crate) fn apply_spec(&self, name: &str, lines: &str) {
        self.kubectl(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata: {{name: {name}}}\n\
                 spec:\n  targetVersion: 1.35.2\n  soak: 0s\n  \
                 gates: {{quietPeriod: 0s, recheckInterval: 5s}}\n{lines}"
            )),
        );
    }

    /// Invariant 1: no upgrade Pod ran on the node it upgrades. Returns how many ran.
    fn assert_no_job_ran_on_its_node(&self) -> usize {
        let upgrades: Vec<_> = self
            .player
            .placements()
            .into_iter()
            .filter(|p| p.upgrades_node.is_some())
            .collect();
        for placement in &upgrades {
            assert_ne!(
                placement.upgrades_node.as_deref(),
                Some(placement.node.as_str()),
                "{placement:?}"
            );
        }
        upgrades.len()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_with_budgets_a_blocked_gate_and_operator_kills_on_a_real_api_server() {
    // Slow enough that polling sees each step: Pods end after their 5 s grace period,
    // and a node's Job runs for 3 s.
    let Some(mut run) = RealRun::start(PlayerConfig {
        control_planes: 1,
        workers: 3,
        upgrade_time: Duration::from_secs(3),
        honour_grace_period: true,
        ..PlayerConfig::default()
    })
    .await
    else {
        return;
    };
    tokio::task::block_in_place(|| {
        run.kubectl(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: apps}\n\
                 spec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    \
                 metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 5\n      \
                 containers: [{name: web, image: registry.example.org/web:1}]\n---\n\
                 apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: apps}\n\
                 spec: {maxUnavailable: 1, selector: {matchLabels: {app: web}}}\n",
            ),
        );
        until("the web Pods Ready", Duration::from_secs(60), || {
            run.kubectl(
                &[
                    "get",
                    "deploy",
                    "web",
                    "-n",
                    "apps",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
                None,
            ) == "3"
        });
        // Someone else cordoned worker-3: the nodes gate blocks, and describe says why.
        run.kubectl(&["cordon", "worker-3"], None);
        run.run_operator();
        // With the etcd snapshot, under the chart's default values: no waiver.
        run.apply_spec("to-1-35", "  snapshot: {}\n");
        run.wait_for_phase("Blocked", Duration::from_secs(60));
        let described = run.kubectl(&["describe", "k8su", "to-1-35"], None);
        assert!(
            described.contains("worker-3") && described.contains("Blocked"),
            "{described}"
        );
        assert_eq!(run.field(".status.nodes"), "", "nothing started");
        run.kubectl(&["uncordon", "worker-3"], None);
        // Killed (SIGKILL) while a worker drains and while a worker's Job runs.
        for step in ["Draining", "Upgrading"] {
            until(
                &format!("a worker {step}"),
                Duration::from_secs(120),
                || {
                    run.field(".status.currentStep") == step
                        && run.field(".status.currentNode").starts_with("worker")
                },
            );
            run.run_operator();
        }
        run.wait_for_phase("Succeeded", Duration::from_secs(240));
        // The snapshot and the etcd checks went through the node step in the runner
        // namespace; the operator may not create a Job in kube-system.
        assert_eq!(run.field(".status.snapshot.verified"), "true");
        assert!(
            run.field(".status.snapshot.location")
                .starts_with("pvc/upchain-system/upchain-etcd-snapshots/"),
            "{}",
            run.field(".status.snapshot")
        );
        assert_eq!(run.field(".status.etcd.passed"), "true");
        let can_i = try_kubectl(
            &run.operator_kubeconfig,
            &["auth", "can-i", "create", "jobs", "-n", "kube-system"],
            None,
        );
        // can-i exits 1 when the answer is no.
        let (Ok(said) | Err(said)) = can_i;
        assert_eq!(said.trim(), "no", "create jobs -n kube-system");
        let nodes = run.kubectl(&["get", "nodes", "--no-headers"], None);
        for line in nodes.lines() {
            assert!(
                line.contains("v1.35.2") && !line.contains("SchedulingDisabled"),
                "{line}"
            );
        }
    });
    assert_eq!(run.assert_no_job_ran_on_its_node(), 4);
    let mut rejoins: Vec<String> = run.player.rejoins().into_iter().map(|r| r.0).collect();
    rejoins.sort();
    assert_eq!(
        rejoins,
        ["cp-1", "worker-1", "worker-2", "worker-3"],
        "each node upgraded once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_node_stops_the_run_on_a_real_api_server() {
    let Some(mut run) = RealRun::start(PlayerConfig {
        control_planes: 1,
        workers: 2,
        failing_nodes: ["worker-1".to_owned()].into(),
        ..PlayerConfig::default()
    })
    .await
    else {
        return;
    };
    tokio::task::block_in_place(|| {
        run.run_operator();
        run.apply_upgrade("to-1-35", "");
        run.wait_for_phase("Failed", Duration::from_secs(180));
        let message = run.field(".status.nodes[?(@.name==\"worker-1\")].message");
        assert!(message.contains("exit 15"), "{message}");
        let nodes = run.kubectl(&["get", "nodes", "--no-headers"], None);
        for line in nodes.lines() {
            let cordoned = line.contains("SchedulingDisabled");
            assert_eq!(cordoned, line.starts_with("worker-1 "), "{line}");
            if line.starts_with("worker-2 ") {
                assert!(line.contains("v1.34.2"), "worker-2 never started: {line}");
            }
        }
    });
    run.assert_no_job_ran_on_its_node();
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_a_second_upgrade_waiting_and_deletion_mid_run_on_a_real_api_server() {
    let Some(mut run) = RealRun::start(small(Duration::from_secs(3))).await else {
        return;
    };
    tokio::task::block_in_place(|| {
        run.run_operator();
        run.apply_upgrade("to-1-35", "  approval: Manual\n");
        until(
            "the plan awaiting approval",
            Duration::from_secs(60),
            || run.field(".status.conditions[?(@.type==\"Ready\")].reason") == "AwaitingApproval",
        );
        assert_eq!(run.field(".status.nodes"), "", "nothing before approval");
        let hash = run.field(".status.planHash");
        run.kubectl(
            &[
                "annotate",
                "k8su",
                "to-1-35",
                &format!("upchain.dev/approve={hash}"),
            ],
            None,
        );
        until(
            "the approved run under way",
            Duration::from_secs(60),
            || !run.field(".status.currentNode").is_empty(),
        );
        run.apply_upgrade("second", "");
        let second = |path: &str| {
            run.kubectl(
                &[
                    "get",
                    "k8su",
                    "second",
                    "-o",
                    &format!("jsonpath={{{path}}}"),
                ],
                None,
            )
        };
        until(
            "the second waiting for the first",
            Duration::from_secs(60),
            || {
                second(".status.conditions[?(@.type==\"Progressing\")].reason")
                    == "WaitingForUpgrade"
            },
        );
        assert_eq!(
            second(".status.nodes"),
            "",
            "the waiting one touched nothing"
        );
        // Deleted while a worker's Job runs: the Job finishes, the node is uncordoned, and
        // the finalizer goes.
        until("a worker upgrading", Duration::from_secs(120), || {
            run.field(".status.currentStep") == "Upgrading"
                && run.field(".status.currentNode").starts_with("worker")
        });
        run.kubectl(&["delete", "k8su", "to-1-35", "--wait=false"], None);
        until("to-1-35 gone", Duration::from_secs(120), || {
            run.kubectl(&["get", "k8su", "-o", "name"], None)
                .lines()
                .all(|l| l != "k8supgrade.upchain.dev/to-1-35")
        });
        // The second takes over and finishes the cluster.
        until("the second Succeeded", Duration::from_secs(240), || {
            second(".status.phase") == "Succeeded"
        });
        let nodes = run.kubectl(&["get", "nodes", "--no-headers"], None);
        for line in nodes.lines() {
            assert!(
                line.contains("v1.35.2") && !line.contains("SchedulingDisabled"),
                "{line}"
            );
        }
    });
    run.assert_no_job_ran_on_its_node();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_a_leader_and_the_survivor_finishes_on_a_real_api_server() {
    let Some(run) = RealRun::start(small(Duration::from_secs(2))).await else {
        return;
    };
    tokio::task::block_in_place(|| {
        // The chart's leader Role: a Lease in the release namespace.
        let election = ["--leader-election", "true", "--lease-seconds", "3"];
        let mut replicas: Vec<(&str, Process)> = ["upchain-a", "upchain-b"]
            .into_iter()
            .map(|identity| (identity, run.spawn_operator(identity, &election)))
            .collect();
        run.apply_upgrade("to-1-35", "");
        until("a worker in progress", Duration::from_secs(120), || {
            run.field(".status.currentNode").starts_with("worker")
        });
        let holder = run.lease_holders();
        let leader = replicas
            .iter()
            .position(|(identity, _)| holder.split_whitespace().any(|h| h == *identity))
            .unwrap_or_else(|| panic!("no replica holds the Lease: {holder:?}"));
        // The leader dies without releasing the Lease; the other takes it once it expires.
        drop(replicas.remove(leader));
        let survivor = replicas[0].0;
        run.wait_for_phase("Succeeded", Duration::from_secs(180));
        let holder = run.lease_holders();
        assert!(holder.split_whitespace().any(|h| h == survivor), "{holder}");
    });
    let mut rejoins: Vec<String> = run.player.rejoins().into_iter().map(|r| r.0).collect();
    rejoins.sort();
    assert_eq!(
        rejoins,
        ["cp-1", "worker-1", "worker-2"],
        "each node upgraded once"
    );
    run.assert_no_job_ran_on_its_node();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_only_permitted_tokens_over_tls_on_a_real_api_server() {
    let Some(run) = RealRun::start(small(Duration::from_secs(1))).await else {
        return;
    };
    let token = |account: &str| {
        run.kubectl(
            &["create", "serviceaccount", account, "-n", "upchain-system"],
            None,
        );
        run.kubectl(&["create", "token", account, "-n", "upchain-system"], None)
            .trim()
            .to_owned()
    };
    let (prometheus, stranger) =
        tokio::task::block_in_place(|| (token("prometheus"), token("stranger")));
    // As metrics.readers would bind it.
    run.kubectl(
        &[
            "create",
            "clusterrolebinding",
            "prometheus-reads-upchain",
            "--clusterrole",
            "upchain-metrics-reader",
            "--serviceaccount",
            "upchain-system:prometheus",
        ],
        None,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    // As the chart's Deployment runs it.
    let _operator = run.spawn_operator(
        "upchain-0",
        &[
            "--leader-election",
            "false",
            "--metrics-addr",
            &addr,
            "--metrics-auth",
            "kubernetes",
            "--metrics-tls",
            "self-signed",
        ],
    );
    let http = reqwest::Client::builder()
        // The certificate is self-signed, as with the chart's default.
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let get = |path: &str, token: Option<&str>| {
        let request = http.get(format!("https://{addr}{path}"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.unwrap_or_default()))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/healthz", None).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the metrics server never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, _) = get("/healthz", None).await.expect("answer");
    assert_eq!(status, 200, "the kubelet's probes need no token");
    let (status, body) = get("/metrics", None).await.expect("answer");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, body) = get("/metrics", Some("not-a-token")).await.expect("answer");
    assert_eq!(status, 401, "{body}");
    let (status, body) = get("/metrics", Some(&stranger)).await.expect("answer");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:upchain-system:stranger may not get /metrics"),
        "{body}"
    );
    let (status, body) = get("/metrics", Some(&prometheus)).await.expect("answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upchain_leader"), "{body}");
    assert!(
        http.get(format!("http://{addr}/metrics"))
            .send()
            .await
            .is_err(),
        "no plain HTTP beside TLS"
    );
}
