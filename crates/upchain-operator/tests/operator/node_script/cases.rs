//! The node step's cases: every role and OS family, interruptions, locks, prepare checks,
//! refusals and rollback, each against a real sshd and package manager.

use super::*;

fn upgrades_every_role(family: Family) {
    for role in [Role::FirstControlPlane, Role::ControlPlane, Role::Worker] {
        let node = Node::start(family, role);
        let finished = node.run_job(JobMode::Upgrade, &[]);
        assert_upgraded(&node, &finished);
        let kubeadm = node.calls("kubeadm");
        let expected = match role {
            Role::FirstControlPlane => "kubeadm upgrade apply -y v1.35.2",
            _ => "kubeadm upgrade node",
        };
        assert_eq!(kubeadm, [expected], "{role:?}");
        assert!(
            finished
                .output
                .contains("starting the upgrade in its own session")
        );
        assert!(
            finished
                .output
                .contains("verified: kubelet 1.35.2 is active")
        );
        // Run again: every step is already done, nothing runs twice.
        let again = node.run_job(JobMode::Upgrade, &[]);
        assert_eq!(again.code, Some(0), "{}", again.output);
        assert!(
            again.output.contains("already finished"),
            "{}",
            again.output
        );
        assert_eq!(node.calls("kubeadm").len(), 1);
    }
}

#[test]
fn every_role_upgrades_on_a_debian_node_with_the_real_apt() {
    upgrades_every_role(Family::Debian);
}

#[test]
fn every_role_upgrades_on_a_rhel_family_node_with_the_real_dnf() {
    upgrades_every_role(Family::Rhel);
}

fn cut_mid(hold: &str) {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch(&format!("/var/lib/upchain-test/hold-{hold}"));
    let first = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for(&format!("/var/lib/upchain-test/in-{hold}"));
    first.kill();
    // The upgrade goes on without the session; a new Job attaches and reports it.
    let second = node.start_job(JobMode::Upgrade, &[]);
    std::fs::remove_file(node.path(&format!("/var/lib/upchain-test/hold-{hold}"))).unwrap();
    let finished = second.wait();
    assert!(
        finished
            .output
            .contains("attaching to the upgrade already running")
            || finished.output.contains("already finished"),
        "{}",
        finished.output
    );
    assert_upgraded(&node, &finished);
    assert_eq!(node.calls("kubeadm").len(), 1, "one kubeadm upgrade apply");
}

#[test]
fn a_session_cut_mid_dpkg_leaves_a_node_the_next_job_reports_upgraded() {
    cut_mid("dpkg");
}

#[test]
fn a_session_cut_mid_kubeadm_leaves_a_node_the_next_job_reports_upgraded() {
    cut_mid("kubeadm");
}

#[test]
fn two_jobs_at_once_never_run_two_upgrades() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch("/var/lib/upchain-test/hold-kubeadm");
    let first = node.start_job(JobMode::Upgrade, &[]);
    let second = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-kubeadm");
    // A Job of another K8sUpgrade is refused while this run holds the node.
    let other = node
        .start_rendered(&node.job(JobMode::Upgrade, NEW, "uid-2"), &[])
        .wait();
    assert_eq!(other.code, Some(18), "{}", other.output);
    assert!(other.output.contains("holds this node"), "{}", other.output);
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-kubeadm")).unwrap();
    let (first, second) = (first.wait(), second.wait());
    assert_upgraded(&node, &first);
    assert_eq!(second.code, Some(0), "{}", second.output);
    assert_eq!(
        node.calls("kubeadm").len(),
        1,
        "{:?}",
        node.calls("kubeadm")
    );
}

#[test]
fn an_interrupted_dpkg_is_repaired_by_the_next_attempt() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/hold-dpkg");
    let first = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-dpkg");
    // The node loses the upgrade mid-dpkg.
    node.kill_the_upgrade();
    let lost = first.wait();
    assert_eq!(lost.code, Some(21), "{}", lost.output);
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-dpkg")).unwrap();
    let audit = node.chroot("dpkg --audit");
    assert!(
        !String::from_utf8_lossy(&audit.stdout).trim().is_empty(),
        "dpkg was interrupted"
    );
    let finished = node.run_job(JobMode::Upgrade, &[]);
    assert!(
        finished.output.contains("ended without a result"),
        "{}",
        finished.output
    );
    assert_upgraded(&node, &finished);
}

#[test]
fn the_prepare_check_changes_nothing_and_catches_a_missing_package() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    let before = node.repository();
    let ready = node.run_job(JobMode::Prepare, &[]);
    assert_eq!(ready.code, Some(0), "{}", ready.output);
    assert!(
        ready.output.contains("ready for 1.35.2"),
        "{}",
        ready.output
    );
    // The first control-plane node asks the target's kubeadm for its plan.
    assert_eq!(node.calls("kubeadm"), ["kubeadm upgrade plan v1.35.2"]);
    let missing = node
        .start_rendered(&node.job(JobMode::Prepare, "1.35.9", "uid-1"), &[])
        .wait();
    assert_eq!(missing.code, Some(11), "{}", missing.output);
    assert!(
        missing
            .output
            .contains("not found in the configured repository"),
        "{}",
        missing.output
    );
    assert_untouched(&node, &before);
    assert!(
        !node.exists("/var/lib/upchain/state"),
        "prepare starts no run"
    );
}

#[test]
fn the_prepare_check_works_on_the_rhel_family() {
    let node = Node::start(Family::Rhel, Role::Worker);
    let before = node.repository();
    let ready = node.run_job(JobMode::Prepare, &[]);
    assert_eq!(ready.code, Some(0), "{}", ready.output);
    let missing = node
        .start_rendered(&node.job(JobMode::Prepare, "1.35.9", "uid-1"), &[])
        .wait();
    assert_eq!(missing.code, Some(11), "{}", missing.output);
    assert_untouched(&node, &before);
}

#[test]
fn an_unknown_os_is_refused_before_anything_changes() {
    let node = Node::start(Family::Debian, Role::Worker);
    let before = node.repository();
    std::fs::remove_file(node.path("/etc/os-release")).unwrap();
    std::fs::write(node.path("/etc/os-release"), "ID=alpine\nVERSION_ID=3.20\n").unwrap();
    for mode in [JobMode::Prepare, JobMode::Upgrade] {
        let finished = node.run_job(mode, &[]);
        assert_eq!(finished.code, Some(10), "{}", finished.output);
        assert!(
            finished.output.contains("unsupported OS 'alpine'"),
            "{}",
            finished.output
        );
    }
    assert_untouched(&node, &before);
}

#[test]
fn a_host_key_mismatch_or_no_known_hosts_is_refused() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.write_known_hosts("stranger");
    let finished = node.run_job(JobMode::Upgrade, &[]);
    assert_eq!(finished.code, Some(255), "{}", finished.output);
    assert!(
        finished.output.to_lowercase().contains("host key"),
        "{}",
        finished.output
    );
    assert!(!node.exists("/var/lib/upchain"), "nothing reached the node");
    std::fs::write(node.known_hosts(), "").unwrap();
    let empty = node.run_job(JobMode::Upgrade, &[]);
    assert_eq!(empty.code, Some(2), "{}", empty.output);
    assert!(
        empty.output.contains("no known host keys"),
        "{}",
        empty.output
    );
    assert!(!node.exists("/var/lib/upchain"), "nothing reached the node");
}

#[test]
fn injection_strings_are_refused_before_anything_reaches_the_node() {
    let node = Node::start(Family::Debian, Role::Worker);
    for (key, value) in [
        ("TARGET_VERSION", "1.35.2;id"),
        ("TARGET_VERSION", "1.35.2\nid"),
        ("NODE_NAME", "node-1;touch /pwned"),
        ("NODE_NAME", "$(touch /pwned)"),
        ("NODE_IP", "127.0.0.1 -oProxyCommand=touch"),
        ("SSH_USER", "root@evil"),
        ("REPOSITORY_URL", "file:///srv/repo' ;touch /pwned;'"),
    ] {
        let finished = node.run_job(JobMode::Upgrade, &[(key, value)]);
        assert_eq!(finished.code, Some(2), "{key}={value}: {}", finished.output);
    }
    assert!(!node.exists("/var/lib/upchain"), "nothing reached the node");
    // The node script refuses them itself, whoever wrote its parameters.
    std::fs::create_dir_all(node.path("/var/lib/upchain")).unwrap();
    std::fs::copy(
        format!("{REPO}/charts/upchain/files/upgrade-node.sh"),
        node.path("/var/lib/upchain/upgrade-node.sh"),
    )
    .unwrap();
    for params in [
        "TARGET_VERSION='1.35.2;id'\nUPGRADE_KIND='minor'\nNODE_NAME='n'\nNODE_ROLE='worker'\n",
        "TARGET_VERSION='1.35.2'\nUPGRADE_KIND='minor'\nNODE_NAME='n;id'\nNODE_ROLE='worker'\n",
        "TARGET_VERSION='1.35.2'\nUPGRADE_KIND='minor'\nNODE_NAME='n'\nNODE_ROLE='worker'\nPATH='/tmp'\n",
        "TARGET_VERSION=$(id)\n",
    ] {
        std::fs::write(node.path("/var/lib/upchain/params.env"), params).unwrap();
        let out = node
            .chroot("/bin/bash /var/lib/upchain/upgrade-node.sh run /var/lib/upchain/params.env");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{params}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!node.exists("/pwned"));
    assert_eq!(node.installed("kubelet"), OLD);
}

#[test]
fn a_job_that_names_the_wrong_role_is_refused() {
    let node = Node::start(Family::Debian, Role::Worker);
    let finished = node.run_job(JobMode::Upgrade, &[("NODE_ROLE", "control-plane")]);
    assert_eq!(finished.code, Some(2), "{}", finished.output);
    assert!(
        finished.output.contains("is a worker node"),
        "{}",
        finished.output
    );
    assert_eq!(node.installed("kubelet"), OLD);
}

#[test]
fn a_kubelet_that_does_not_come_back_fails_with_its_own_code_and_packages_stay_held() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/kubelet-fails");
    let finished = node.run_job(JobMode::Upgrade, &[("KUBELET_TIMEOUT", "2")]);
    assert_eq!(finished.code, Some(16), "{}", finished.output);
    assert!(node.state().contains("EXIT_CODE=16"), "{}", node.state());
    assert!(node.held().contains("kubelet"));
}

#[test]
fn rollback_after_a_minor_upgrade_returns_a_worker_to_the_old_minor() {
    for family in [Family::Debian, Family::Rhel] {
        let worker = Node::start(family, Role::Worker);
        assert_upgraded(&worker, &worker.run_job(JobMode::Upgrade, &[]));
        let out = worker.chroot(&format!(
            "/bin/bash /var/lib/upchain/upgrade-node.sh rollback {OLD}"
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{family:?}: {text}");
        for package in ["kubeadm", "kubelet", "kubectl"] {
            assert_eq!(worker.installed(package), OLD, "{family:?} {package}");
            assert!(worker.held().contains(package), "{family:?} {package}");
        }
        assert!(
            worker.repository().contains("/v1.34/"),
            "{}",
            worker.repository()
        );
        worker.assert_state_holds(&[
            "RUN_ID=rollback-1.34.3",
            "STATUS=succeeded",
            "VERSION_AFTER=1.34.3",
        ]);
    }
    let control_plane = Node::start(Family::Debian, Role::FirstControlPlane);
    assert_upgraded(
        &control_plane,
        &control_plane.run_job(JobMode::Upgrade, &[]),
    );
    let out = control_plane.chroot(&format!(
        "/bin/bash /var/lib/upchain/upgrade-node.sh rollback {OLD}"
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubeadm cannot downgrade a control plane")
    );
    assert_eq!(control_plane.installed("kubelet"), NEW);
}
