//! The node step's second pass (docs/node-script.md): one record per run taken under the
//! lock, done markers the node must agree with, every package lock bounded and named, the
//! exits the operator retries by class, a kubelet that must stay up, host keys learnt
//! once, and the node's own systemd.

use super::*;

/// The RUN_ID a Job carries.
fn run_id_of(job: &Job) -> String {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "RUN_ID")
        .and_then(|v| v.value.clone())
        .unwrap()
}

/// The files a run keeps on the node: the parameters of the one run that holds it, and no
/// copy a Job brought.
fn params_files(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.path("/var/lib/upchain"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("params-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn incoming(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.path("/var/lib/upchain/incoming"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_runs_racing_the_launch_never_downgrade_and_the_loser_leaves_nothing() {
    // 20 rounds, on four nodes at once: each node's rounds follow one another.
    std::thread::scope(|scope| {
        for node in 0..4 {
            scope.spawn(move || race_rounds(node * 5..node * 5 + 5));
        }
    });
}

/// On one node, a Job for the newer target and, 50 ms later, one of another run for the
/// older target, once per round.
fn race_rounds(rounds: std::ops::Range<usize>) {
    let node = Node::start(Family::Debian, Role::Worker);
    let first_round = rounds.start;
    for round in rounds {
        let newer = node.job(JobMode::Upgrade, NEW, &format!("uid-new-{round}"));
        let older = node.job(JobMode::Upgrade, OLD, &format!("uid-old-{round}"));
        let before = node.installed("kubelet");
        let first = node.start_rendered(&newer, &[]);
        std::thread::sleep(Duration::from_millis(50));
        let second = node.start_rendered(&older, &[]);
        let (first, second) = (first.wait(), second.wait());
        let after = node.installed("kubelet");
        assert!(
            !(before == NEW && after == OLD),
            "round {round}: downgraded\n{}\n{}",
            first.output,
            second.output
        );
        // One run holds the node; the other Job is refused and leaves nothing behind.
        let (winner, loser, loser_job) = if first.code == Some(0) {
            (&first, &second, &older)
        } else {
            (&second, &first, &newer)
        };
        assert_eq!(winner.code, Some(0), "round {round}: {}", winner.output);
        assert!(
            matches!(loser.code, Some(18 | 24)),
            "round {round}: {}",
            loser.output
        );
        if round > first_round && loser.code == Some(24) {
            assert!(
                loser.output.contains("does not downgrade"),
                "{}",
                loser.output
            );
        }
        let loser_params = format!("params-{}.env", run_id_of(loser_job));
        assert!(
            !params_files(&node).contains(&loser_params),
            "round {round}: {:?}",
            params_files(&node)
        );
        assert_eq!(params_files(&node).len(), 1, "{:?}", params_files(&node));
        assert!(incoming(&node).is_empty(), "{:?}", incoming(&node));
    }
    assert_eq!(node.installed("kubelet"), NEW);
}

#[test]
fn a_single_job_with_an_older_target_is_refused_and_changes_nothing() {
    let node = Node::start(Family::Debian, Role::Worker);
    assert_upgraded(&node, &node.run_job(JobMode::Upgrade, &[]));
    let older = node
        .start_rendered(&node.job(JobMode::Upgrade, OLD, "uid-2"), &[])
        .wait();
    assert_eq!(older.code, Some(24), "{}", older.output);
    assert!(
        older.output.contains("newer than the target 1.34.3"),
        "{}",
        older.output
    );
    assert_eq!(node.installed("kubelet"), NEW);
    assert_eq!(
        params_files(&node),
        [format!(
            "params-{}.env",
            run_id_of(&node.job(JobMode::Upgrade, NEW, "uid-1"))
        )]
    );
    assert!(incoming(&node).is_empty());
}

#[test]
fn upgrade_rollback_and_upgrade_again_runs_kubeadm_and_the_restart_again() {
    let node = Node::start(Family::Debian, Role::Worker);
    assert_upgraded(&node, &node.run_job(JobMode::Upgrade, &[]));
    let out = node.chroot(&format!(
        "/bin/bash /var/lib/upchain/upgrade-node.sh rollback {OLD}"
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        !node.exists("/var/lib/upchain/done"),
        "rollback clears the markers"
    );
    // The same run's Job again, as a retry of the K8sUpgrade would send it.
    let again = node.run_job(JobMode::Upgrade, &[]);
    assert_upgraded(&node, &again);
    assert_eq!(
        node.calls("kubeadm upgrade node").len(),
        2,
        "{}",
        again.output
    );
    // Two upgrades and the rollback each restarted the kubelet.
    assert_eq!(
        node.calls("systemctl restart kubelet").len(),
        3,
        "{}",
        again.output
    );
}

#[test]
fn a_retry_after_a_failed_verification_runs_kubeadm_again() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch("/var/lib/upchain-test/hold-dpkg");
    let first = node.start_job(JobMode::Upgrade, &[]);
    // kubeadm has run; the kubelet's package is being configured.
    node.wait_for("/var/lib/upchain-test/in-dpkg");
    let manifest = node.path("/etc/kubernetes/manifests/kube-apiserver.yaml");
    let upgraded = std::fs::read_to_string(&manifest).unwrap();
    assert!(upgraded.contains(":v1.35.2"), "{upgraded}");
    // Someone puts the old manifest back by hand.
    std::fs::write(&manifest, upgraded.replace(":v1.35.2", ":v1.34.3")).unwrap();
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-dpkg")).unwrap();
    let failed = first.wait();
    assert_eq!(failed.code, Some(17), "{}", failed.output);
    assert!(
        failed
            .output
            .contains("the next attempt runs kubeadm again"),
        "{}",
        failed.output
    );
    let retry = node.run_job(JobMode::Upgrade, &[]);
    assert_upgraded(&node, &retry);
    assert_eq!(
        node.calls("kubeadm upgrade apply").len(),
        2,
        "{}",
        retry.output
    );
}

/// Runs an upgrade while `lock` is held from the moment `at` appears (or from the start),
/// and checks that it ends with exit 12 within its bound, naming the holder, with the
/// packages held.
fn meets_a_held_lock(family: Family, lock: &str, hold_at: Option<&str>) -> Finished {
    let node = Node::start(family, Role::Worker);
    let (job, holder) = match hold_at {
        None => {
            let holder = hold_lock(&node.path(lock));
            (node.start_job(JobMode::Upgrade, &[]), holder)
        }
        Some(step) => {
            node.touch(&format!("/var/lib/upchain-test/hold-{step}"));
            let job = node.start_job(JobMode::Upgrade, &[]);
            node.wait_for(&format!("/var/lib/upchain-test/in-{step}"));
            let holder = hold_lock(&node.path(lock));
            std::fs::remove_file(node.path(&format!("/var/lib/upchain-test/hold-{step}"))).unwrap();
            (job, holder)
        }
    };
    let finished = job.wait();
    ended_on_the_lock(&finished, lock, holder);
    let held = node.held();
    for package in ["kubeadm", "kubelet", "kubectl"] {
        assert!(held.contains(package), "{lock}: {package} not held: {held}");
    }
    node.assert_state_holds(&["EXIT_CODE=12"]);
    finished
}

/// The Job ended with exit 12 once the 3 s bound passed, having said who held the lock;
/// the holder is stopped.
fn ended_on_the_lock(finished: &Finished, lock: &str, mut holder: Child) {
    let pid = holder.id();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(finished.code, Some(12), "{lock}: {}", finished.output);
    assert!(
        finished
            .output
            .contains(&format!("waiting for the package lock (held by {pid}")),
        "{lock}: {}",
        finished.output
    );
    assert!(
        finished.output.contains("stayed taken for 3s"),
        "{lock}: {}",
        finished.output
    );
}

#[test]
fn every_apt_and_dpkg_lock_is_waited_for_within_one_bound_naming_its_holder() {
    // Each on a node of its own, all at once.
    std::thread::scope(|scope| {
        // The lists lock, met by apt-get update.
        scope.spawn(|| meets_a_held_lock(Family::Debian, "/var/lib/apt/lists/lock", None));
        // dpkg's frontend lock from the start: met by the repair (dpkg --configure -a).
        scope.spawn(|| meets_a_held_lock(Family::Debian, "/var/lib/dpkg/lock-frontend", None));
        // Taken right after the index refresh: met by apt-mark before kubeadm is installed.
        scope.spawn(|| {
            meets_a_held_lock(
                Family::Debian,
                "/var/lib/dpkg/lock-frontend",
                Some("update"),
            )
        });
        // Taken while kubeadm runs: met by apt-mark and apt-get for the kubelet, after it.
        scope.spawn(|| {
            let after_kubeadm = meets_a_held_lock(
                Family::Debian,
                "/var/lib/dpkg/lock-frontend",
                Some("kubeadm"),
            );
            assert!(
                after_kubeadm.output.contains("kubelet"),
                "{}",
                after_kubeadm.output
            );
        });
    });
}

#[test]
fn dnf_4_lock_files_are_waited_for_within_the_bound_naming_their_holder() {
    let held = |lock: &str| {
        let node = Node::start(Family::Rhel, Role::Worker);
        let holder = Command::new("sleep").arg("600").spawn().unwrap();
        let path = node.path(lock);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, holder.id().to_string()).unwrap();
        let finished = node.run_job(JobMode::Upgrade, &[]);
        ended_on_the_lock(&finished, lock, holder);
        assert!(finished.output.contains(lock), "{}", finished.output);
        assert_eq!(node.installed("kubelet"), OLD);
    };
    // Each on a node of its own, both at once.
    std::thread::scope(|scope| {
        scope.spawn(|| held("/var/lib/dnf/rpmdb_lock.pid"));
        scope.spawn(|| held("/var/cache/dnf/metadata_lock.pid"));
    });
}

#[test]
fn a_dpkg_killed_mid_configure_and_then_its_job_leaves_every_package_held() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/hold-dpkg");
    let job = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-dpkg");
    for pid in processes_in(&node.root) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with(b"/usr/bin/dpkg\0") {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    job.kill();
    // The run ends on its own, dpkg gone: wait for its record.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.state().contains("STATUS=failed") {
        assert!(Instant::now() < deadline, "{}", node.state());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-dpkg")).unwrap();
    node.assert_state_holds(&["EXIT_CODE=13"]);
    let status = node.chroot("dpkg-query -W -f='${db:Status-Abbrev}' kubelet");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.starts_with("hF") || status.starts_with("iF") || status.starts_with("hU"),
        "kubelet is left half-configured: {status}"
    );
    let held = node.held();
    for package in ["kubeadm", "kubelet", "kubectl"] {
        assert!(held.contains(package), "{package} not held: {held}");
    }
}

#[test]
fn a_follower_that_dies_does_not_end_the_job_while_the_run_goes_on() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch("/var/lib/upchain-test/hold-kubeadm");
    let job = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-kubeadm");
    let followers: Vec<u32> = processes_in(&node.root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .starts_with(b"tail\0")
        })
        .collect();
    assert_eq!(followers.len(), 1, "one follower");
    let _ = Command::new("kill")
        .args(["-KILL", &followers[0].to_string()])
        .status();
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-kubeadm")).unwrap();
    let finished = job.wait();
    assert!(
        finished.output.contains("the log follower stopped"),
        "{}",
        finished.output
    );
    assert_upgraded(&node, &finished);
}

#[test]
fn a_reattach_reports_the_run_and_never_starts_one_over_a_lost_run() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/hold-dpkg");
    let first = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-dpkg");
    // The session and the run are both lost, as on a node that rebooted.
    first.kill();
    node.kill_the_upgrade();
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-dpkg")).unwrap();
    let reattached = node.run_job(JobMode::Upgrade, &[("REATTACH", "true")]);
    assert_eq!(reattached.code, Some(21), "{}", reattached.output);
    // Nothing was started over: the lost run's record stands, dpkg is not repaired.
    node.assert_state_holds(&["STATUS=running"]);
    let audit = node.chroot("dpkg --audit");
    assert!(!String::from_utf8_lossy(&audit.stdout).trim().is_empty());
    // A Job that spends an attempt repairs and resumes.
    assert_upgraded(&node, &node.run_job(JobMode::Upgrade, &[]));
}

#[test]
fn accept_new_asks_for_a_node_key_once_and_then_checks_it_strictly() {
    let node = Node::start(Family::Debian, Role::Worker);
    std::fs::write(node.known_hosts(), "").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let env = [
        ("HOST_KEY_POLICY", HostKeyPolicy::AcceptNew.as_str()),
        ("UPCHAIN_REPORT", report.to_str().unwrap()),
        ("TMPDIR", work.to_str().unwrap()),
    ];
    let asked = node.run_job(JobMode::Upgrade, &env);
    assert_eq!(asked.code, Some(25), "{}", asked.output);
    assert!(!node.exists("/var/lib/upchain"), "nothing ran on the node");
    let host = std::fs::read_to_string(node.conf.path().join("host.pub")).unwrap();
    let key: Vec<&str> = host.split_whitespace().take(2).collect();
    let line = format!("{} {}", node.name, key.join(" "));
    assert_eq!(
        std::fs::read_to_string(&report).unwrap().trim(),
        format!("upchain-host-key {line}")
    );
    assert!(asked.output.contains(&line), "{}", asked.output);
    assert!(
        std::fs::read_dir(&work).unwrap().next().is_none(),
        "the key copy is gone"
    );
    // Confirmed, the line in the known hosts: the upgrade runs.
    std::fs::write(node.known_hosts(), format!("{line}\n")).unwrap();
    assert_upgraded(&node, &node.run_job(JobMode::Upgrade, &env));
    // The node shows another key: refused, not learnt again.
    node.write_known_hosts("stranger");
    let changed = node.run_job(JobMode::Upgrade, &env);
    assert_eq!(changed.code, Some(255), "{}", changed.output);
    assert!(
        changed.output.to_lowercase().contains("host key"),
        "{}",
        changed.output
    );
    assert!(std::fs::read_dir(&work).unwrap().next().is_none());
}

#[test]
fn under_systemd_the_upgrade_is_a_transient_unit_and_the_kubelet_unit_restarts() {
    let node = Node::boot(Role::Worker);
    let started_before =
        node.ssh("systemctl show -p ActiveEnterTimestampMonotonic --value kubelet");
    let finished = node.run_job(JobMode::Upgrade, &[("KUBELET_SETTLE", "3")]);
    assert_upgraded(&node, &finished);
    assert!(
        finished
            .output
            .contains("starting the upgrade as systemd unit upchain-node-upgrade-"),
        "{}",
        finished.output
    );
    let journal = node.ssh("journalctl -q --no-pager -o cat -u 'upchain-node-upgrade-*'");
    let journal = String::from_utf8_lossy(&journal.stdout).into_owned();
    assert!(
        journal.contains("upchain node upgrade to 1.35.2"),
        "{journal}"
    );
    let active = node.ssh("systemctl is-active kubelet");
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    let started_after = node.ssh("systemctl show -p ActiveEnterTimestampMonotonic --value kubelet");
    assert_ne!(
        started_before.stdout, started_after.stdout,
        "the kubelet unit restarted"
    );
    let version = node.ssh("kubelet --version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "Kubernetes v1.35.2"
    );
}

#[test]
fn under_systemd_a_kubelet_that_crashes_after_its_restart_fails_verification() {
    let node = Node::boot(Role::Worker);
    node.touch("/var/lib/upchain-test/kubelet-crashes");
    let finished = node.run_job(JobMode::Upgrade, &[("KUBELET_SETTLE", "15")]);
    assert_eq!(finished.code, Some(16), "{}", finished.output);
    assert!(
        finished.output.contains("stopped or restarted within 15s"),
        "{}",
        finished.output
    );
    node.assert_state_holds(&["STATUS=failed", "EXIT_CODE=16"]);
    assert!(node.held().contains("kubelet"));
}
