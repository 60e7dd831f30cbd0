//! etcd through the node step, against a real etcd cluster: three members of Debian's
//! etcd-server with TLS as kubeadm sets it up, each control-plane node's root pointing at
//! its member in an etcd static Pod manifest. The check Job's report is judged by
//! upchain-core as the operator judges it; the snapshot is saved, read back, test-restored,
//! copied to the destination and read back there.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use upchain_core::etcd::{EtcdReport, judge};
use upchain_core::job::JobMode;
use upchain_core::snapshot::verify_report;

use super::{Family, Finished, NEW, Node, Role, free_port, run_ok, sandbox};

/// A real etcd cluster on loopback, one member per name.
struct EtcdCluster {
    // Kept until the members stop: their data directories.
    _dir: tempfile::TempDir,
    members: Vec<(String, u16, Child)>,
}

impl EtcdCluster {
    /// Starts a member per name, with `quota_bytes` as every member's backend quota.
    fn start(names: &[&str], quota_bytes: u64) -> Self {
        let pki = sandbox().join("etcd-pki");
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=https://127.0.0.1:{peer}"))
            .collect();
        let tls = |side: &str| {
            [
                format!("--{side}cert-file={}", pki.join("server.crt").display()),
                format!("--{side}key-file={}", pki.join("server.key").display()),
                format!("--{side}trusted-ca-file={}", pki.join("ca.crt").display()),
                format!("--{side}client-cert-auth"),
            ]
        };
        let members = names
            .iter()
            .zip(&ports)
            .map(|(name, (client, peer))| {
                let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
                let child = Command::new("etcd")
                    .arg(format!("--name={name}"))
                    .arg(format!("--data-dir={}", dir.path().join(name).display()))
                    .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
                    .arg(format!(
                        "--advertise-client-urls=https://127.0.0.1:{client}"
                    ))
                    .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster={}", initial.join(",")))
                    .arg(format!("--quota-backend-bytes={quota_bytes}"))
                    .args(tls(""))
                    .args(tls("peer-"))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("Debian's etcd-server (scripts/node-sandbox installs it)");
                ((*name).to_owned(), *client, child)
            })
            .collect();
        let cluster = Self { _dir: dir, members };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster
            .etcdctl(&["endpoint", "health", "--cluster"])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    /// etcdctl against the first member, as the host runs it.
    fn etcdctl(&self, args: &[&str]) -> Output {
        let pki = sandbox().join("etcd-pki");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://127.0.0.1:{}",
                self.members[0].1
            ))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!("--cert={}", pki.join("server.crt").display()))
            .arg(format!("--key={}", pki.join("server.key").display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// Changes the membership. etcd refuses a change while it judges the cluster
    /// unhealthy (its strict reconfiguration check, for a few seconds after the last one
    /// or while a member lags on a busy machine): waited out, as an operator would.
    fn reconfigure(&self, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(args);
            if out.status.success() {
                return;
            }
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                said.contains("unhealthy cluster") && Instant::now() < deadline,
                "etcdctl {args:?}: {said}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Gives `node` the etcd static Pod manifest and certificates of member `index`, as
    /// kubeadm leaves them on a control-plane node.
    fn place_member(&self, node: &Node, index: usize) {
        let pki = node.path("/etc/kubernetes/pki/etcd");
        std::fs::create_dir_all(&pki).unwrap();
        for file in ["ca.crt", "server.crt", "server.key"] {
            std::fs::copy(sandbox().join("etcd-pki").join(file), pki.join(file)).unwrap();
        }
        let (name, client, _) = &self.members[index];
        std::fs::write(
            node.path("/etc/kubernetes/manifests/etcd.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\n\
                 spec:\n  containers:\n  - command:\n    - etcd\n    - --name={name}\n    \
                 - --advertise-client-urls=https://127.0.0.1:{client}\n    \
                 - --cert-file=/etc/kubernetes/pki/etcd/server.crt\n    \
                 - --key-file=/etc/kubernetes/pki/etcd/server.key\n    \
                 - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt\n    \
                 - --quota-backend-bytes=65536\n    image: registry.k8s.io/etcd:3.6.13-0\n"
            ),
        )
        .unwrap();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs an etcd Job of `mode` through `node`; its termination message and output.
fn run_etcd_job(node: &Node, mode: JobMode, destination: &Path) -> (Finished, String) {
    let report = destination.with_extension("report");
    let _ = std::fs::remove_file(&report);
    let finished = node
        .start_rendered(
            &node.job(mode, NEW, "uid-1"),
            &[
                ("UPCHAIN_REPORT", report.to_str().unwrap()),
                ("SNAPSHOT_DESTINATION", destination.to_str().unwrap()),
            ],
        )
        .wait();
    (
        finished,
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

const MEMBERS: [&str; 3] = ["cp-a", "cp-b", "cp-c"];

fn judged(report: &str) -> Vec<String> {
    judge(&EtcdReport::parse(report).expect("a report"), &MEMBERS, 80)
}

#[test]
fn etcd_is_judged_and_snapshotted_through_the_node_step_against_a_real_cluster() {
    let cluster = EtcdCluster::start(&MEMBERS, 65536);
    let node = Node::start(Family::Debian, Role::ControlPlane);
    cluster.place_member(&node, 0);
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("snapshots");
    std::fs::create_dir_all(&destination).unwrap();

    // Healthy: three voting members, one leader, no alarm, every member keeping up.
    let (finished, report) = run_etcd_job(&node, JobMode::EtcdCheck, &destination);
    assert_eq!(finished.code, Some(0), "{}", finished.output);
    assert_eq!(judged(&report), Vec::<String>::new(), "{report}");
    assert!(
        report.lines().all(|l| l.starts_with("upchain-etcd ")),
        "{report}"
    );
    assert!(
        report.len() < 4096,
        "fits a termination message: {}",
        report.len()
    );

    // A stale member: added with `member add`, never started.
    cluster.reconfigure(&["member", "add", "stale", "--peer-urls=https://127.0.0.1:1"]);
    let (_, report) = run_etcd_job(&node, JobMode::EtcdCheck, &destination);
    let problems = judged(&report);
    assert!(
        problems[0].contains("4 members, 3 control-plane nodes")
            && problems[1].contains("was added but never started"),
        "{problems:#?}"
    );
    remove_member(&cluster, "https://127.0.0.1:1");

    // A learner, never promoted.
    cluster.reconfigure(&[
        "member",
        "add",
        "learner",
        "--learner",
        "--peer-urls=https://127.0.0.1:2",
    ]);
    let (_, report) = run_etcd_job(&node, JobMode::EtcdCheck, &destination);
    let problems = judged(&report);
    assert!(
        problems.iter().any(|p| p.contains("a learner")),
        "{problems:#?}"
    );
    remove_member(&cluster, "https://127.0.0.1:2");
    let (_, report) = run_etcd_job(&node, JobMode::EtcdCheck, &destination);
    assert_eq!(judged(&report), Vec::<String>::new(), "{report}");

    // The snapshot: saved, read back, restored into a scratch directory, copied to the
    // destination and its checksum read back from there; the node keeps no copy.
    for i in 0..20 {
        cluster.etcdctl(&["put", &format!("/registry/k{i}"), "v"]);
    }
    let (finished, report) = run_etcd_job(&node, JobMode::EtcdSnapshot, &destination);
    assert_eq!(finished.code, Some(0), "{}", finished.output);
    let snapshot = verify_report(&report, 1024).unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert!(
        snapshot.total_keys >= 20 && snapshot.revision > 20,
        "{snapshot:?}"
    );
    assert!(
        snapshot.restore_check.contains("as in the snapshot"),
        "{snapshot:?}"
    );
    assert!(
        snapshot.location.contains("/snapshots/etcd-"),
        "{snapshot:?}"
    );
    let file = snapshot.location.rsplit('/').next().expect("a file name");
    let copy = std::fs::read(destination.join(file)).expect("the copy at the destination");
    assert_eq!(i64::try_from(copy.len()).unwrap(), snapshot.size_bytes);
    let sha = Command::new("sha256sum")
        .arg(destination.join(file))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sha.stdout).starts_with(&snapshot.sha256));
    let left: Vec<_> = std::fs::read_dir(node.path("/var/lib/upchain/snapshot"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the node's copy is removed: {left:?}");

    // A destination that refuses the upload: the Job fails, saying so.
    let full = scratch.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
            .arg(&full),
    );
    let (finished, report) = run_etcd_job(&node, JobMode::EtcdSnapshot, &full);
    let _ = Command::new("umount").arg(&full).status();
    assert_eq!(finished.code, Some(23), "{}", finished.output);
    assert!(
        finished.output.contains("refused the snapshot"),
        "{}",
        finished.output
    );
    assert!(verify_report(&report, 1024).is_err());

    // NOSPACE: the database reaches its quota and etcd raises the alarm.
    let big = "x".repeat(20_000);
    for i in 0..10 {
        if !cluster
            .etcdctl(&["put", &format!("/big/{i}"), &big])
            .status
            .success()
        {
            break;
        }
    }
    let (_, report) = run_etcd_job(&node, JobMode::EtcdCheck, &destination);
    let problems = judged(&report);
    assert!(
        problems.iter().any(|p| p.contains("has alarm NOSPACE")),
        "{problems:#?}\n{report}"
    );
}

/// Removes the member whose peer URL is `peer`.
fn remove_member(cluster: &EtcdCluster, peer: &str) {
    let list = cluster.etcdctl(&["member", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    let id = list
        .lines()
        .find(|l| l.contains(peer))
        .and_then(|l| l.split(',').next())
        .expect("the member");
    cluster.reconfigure(&["member", "remove", id]);
}
