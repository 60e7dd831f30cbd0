//! The default node-upgrade script (`charts/upchain/files/upgrade-node.sh`), run by bash in
//! a sandbox: `apt-get`, `apt-mark`, `kubeadm`, `systemctl`, `curl` and `gpg` are stubs that
//! record their arguments, and the script's files live under a temporary root.

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../charts/upchain/files/upgrade-node.sh"
);

struct Sandbox {
    dir: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    calls: Vec<String>,
    output: String,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["apt-get", "apt-mark", "kubeadm", "systemctl", "curl", "gpg"] {
            // Each stub records its command line, fails when FAIL_ON matches it, and
            // (curl, gpg) writes its output file so the script can go on.
            let stub = format!(
                "#!/usr/bin/env bash\n\
                 line=\"{tool} $*\"\n\
                 echo \"$line\" >> \"$CALLS\"\n\
                 if [ -n \"${{FAIL_ON:-}}\" ] && [[ \"$line\" == $FAIL_ON* ]]; then exit 1; fi\n\
                 if [ \"{tool}\" != apt-get ]; then while [ $# -gt 1 ]; do if [ \"$1\" = -o ]; then : > \"$2\"; fi; shift; done; fi\n\
                 exit 0\n"
            );
            let path = bin.join(tool);
            std::fs::write(&path, stub).unwrap();
            Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        }
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn run(&self, env: &[(&str, &str)]) -> Run {
        let calls = self.dir.path().join("calls");
        let _ = std::fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .arg(SCRIPT)
            .env_clear()
            .env("PATH", path)
            .env("CALLS", &calls)
            .env("UPCHAIN_ROOT", self.root())
            .envs(env.iter().copied())
            .output()
            .expect("bash runs");
        Run {
            code: output.status.code(),
            calls: std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            output: String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        }
    }
}

fn node(role: &str, kind: &str, first: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TARGET_VERSION", "1.35.2".to_owned()),
        ("UPGRADE_KIND", kind.to_owned()),
        ("NODE_NAME", "node-1".to_owned()),
        ("NODE_IP", "10.0.0.1".to_owned()),
        ("NODE_ROLE", role.to_owned()),
        ("FIRST_CONTROL_PLANE", first.to_owned()),
    ]
}

fn run(sandbox: &Sandbox, env: &[(&'static str, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sandbox.run(&env)
}

const PACKAGES_THEN_RESTART: [&str; 9] = [
    "apt-mark unhold kubeadm",
    "apt-get install -y --allow-change-held-packages -o Dpkg::Options::=--force-confold kubeadm=1.35.2-*",
    "apt-mark hold kubeadm",
    "KUBEADM",
    "apt-mark unhold kubelet kubectl",
    "apt-get install -y --allow-change-held-packages -o Dpkg::Options::=--force-confold kubelet=1.35.2-* kubectl=1.35.2-*",
    "apt-mark hold kubelet kubectl",
    "systemctl daemon-reload",
    "systemctl restart kubelet",
];

fn expected(repository_switch: bool, kubeadm: &str) -> Vec<String> {
    let mut calls = Vec::new();
    if repository_switch {
        calls.push(
            "curl -fsSL -o KEYRING.asc https://pkgs.k8s.io/core:/stable:/v1.35/deb/Release.key"
                .to_owned(),
        );
        calls.push("gpg --dearmor --yes -o KEYRING KEYRING.asc".to_owned());
    }
    calls.push("apt-get update -q".to_owned());
    calls.extend(
        PACKAGES_THEN_RESTART
            .iter()
            .map(|c| c.replace("KUBEADM", kubeadm)),
    );
    calls
}

fn normalise(calls: &[String], root: &Path) -> Vec<String> {
    let keyring = root.join("etc/apt/keyrings/kubernetes-apt-keyring.gpg");
    calls
        .iter()
        .map(|c| c.replace(keyring.to_str().unwrap(), "KEYRING"))
        .collect()
}

#[test]
fn the_first_control_plane_node_of_a_minor_upgrade_switches_the_repository_and_applies() {
    let sandbox = Sandbox::new();
    let result = run(&sandbox, &node("control-plane", "minor", "true"));
    assert_eq!(result.code, Some(0), "{}", result.output);
    assert_eq!(
        normalise(&result.calls, &sandbox.root()),
        expected(true, "kubeadm upgrade apply -y v1.35.2")
    );
    let sources = std::fs::read_to_string(
        sandbox
            .root()
            .join("etc/apt/sources.list.d/kubernetes.list"),
    )
    .expect("sources");
    assert!(
        sources.contains("https://pkgs.k8s.io/core:/stable:/v1.35/deb/ /"),
        "{sources}"
    );
}

#[test]
fn other_control_plane_nodes_and_workers_run_kubeadm_upgrade_node() {
    for (role, first) in [("control-plane", "false"), ("worker", "false")] {
        let sandbox = Sandbox::new();
        let result = run(&sandbox, &node(role, "minor", first));
        assert_eq!(result.code, Some(0), "{}", result.output);
        assert_eq!(
            normalise(&result.calls, &sandbox.root()),
            expected(true, "kubeadm upgrade node"),
            "{role}"
        );
    }
}

#[test]
fn a_patch_upgrade_keeps_the_repository() {
    for (role, first, kubeadm) in [
        ("control-plane", "true", "kubeadm upgrade apply -y v1.35.2"),
        ("worker", "false", "kubeadm upgrade node"),
    ] {
        let sandbox = Sandbox::new();
        let result = run(&sandbox, &node(role, "patch", first));
        assert_eq!(result.code, Some(0), "{}", result.output);
        assert_eq!(result.calls, expected(false, kubeadm), "{role}");
    }
}

#[test]
fn the_coredns_phase_can_be_skipped() {
    let sandbox = Sandbox::new();
    let mut env = node("control-plane", "patch", "true");
    env.push(("SKIP_COREDNS_PHASE", "true".to_owned()));
    let result = run(&sandbox, &env);
    assert_eq!(result.code, Some(0), "{}", result.output);
    assert!(result.calls.contains(
        &"kubeadm upgrade apply -y v1.35.2 --skip-phases=addon/coredns --ignore-preflight-errors=CoreDNSMigration,CoreDNSUnsupportedPlugins"
            .to_owned()
    ), "{:?}", result.calls);
}

#[test]
fn running_again_does_not_switch_the_repository_twice() {
    let sandbox = Sandbox::new();
    let env = node("worker", "minor", "false");
    assert_eq!(run(&sandbox, &env).code, Some(0));
    let again = run(&sandbox, &env);
    assert_eq!(again.code, Some(0), "{}", again.output);
    assert_eq!(again.calls, expected(false, "kubeadm upgrade node"));
    assert!(again.output.contains("apt repository already at v1.35"));
}

#[test]
fn a_failing_step_stops_the_script_with_a_non_zero_code() {
    for (fail_on, last) in [
        ("kubeadm upgrade", "kubeadm upgrade node"),
        ("apt-get update", "apt-get update -q"),
        ("systemctl restart", "systemctl restart kubelet"),
    ] {
        let sandbox = Sandbox::new();
        let mut env = node("worker", "patch", "false");
        env.push(("FAIL_ON", fail_on.to_owned()));
        let result = run(&sandbox, &env);
        assert_ne!(result.code, Some(0), "{fail_on}: {}", result.output);
        assert_eq!(
            result.calls.last().map(String::as_str),
            Some(last),
            "nothing runs after {fail_on}: {:?}",
            result.calls
        );
    }
}

#[test]
fn old_kubeadm_backups_are_reclaimed() {
    let sandbox = Sandbox::new();
    let backups = sandbox.root().join("etc/kubernetes/tmp");
    for kind in ["etcd", "manifests"] {
        for day in 1..=4 {
            std::fs::create_dir_all(backups.join(format!("kubeadm-backup-{kind}-2026-11-0{day}")))
                .unwrap();
        }
    }
    let result = run(&sandbox, &node("control-plane", "patch", "true"));
    assert_eq!(result.code, Some(0), "{}", result.output);
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "kubeadm-backup-etcd-2026-11-03",
            "kubeadm-backup-etcd-2026-11-04",
            "kubeadm-backup-manifests-2026-11-03",
            "kubeadm-backup-manifests-2026-11-04"
        ]
    );
}

#[test]
fn bad_parameters_are_refused_before_anything_runs() {
    for (key, value) in [
        ("TARGET_VERSION", "1.35"),
        ("UPGRADE_KIND", "major"),
        ("NODE_ROLE", "etcd"),
    ] {
        let sandbox = Sandbox::new();
        let mut env = node("worker", "patch", "false");
        env.retain(|(k, _)| *k != key);
        env.push((key, value.to_owned()));
        let result = run(&sandbox, &env);
        assert_eq!(result.code, Some(2), "{key}={value}: {}", result.output);
        assert!(result.calls.is_empty(), "{:?}", result.calls);
    }
}
