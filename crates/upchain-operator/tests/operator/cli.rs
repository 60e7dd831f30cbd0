//! The real `upchain` binary, run as a user would.

use assert_cmd::Command;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples");

fn upchain() -> Command {
    Command::cargo_bin("upchain").expect("binary built")
}

fn example(name: &str) -> String {
    format!("{EXAMPLES}/{name}")
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], stdin: Option<String>) -> Output {
    let mut command = upchain();
    command.args(args);
    if let Some(input) = stdin {
        command.write_stdin(input);
    }
    let output = command.output().expect("runs");
    Output {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
    }
}

fn plan_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("STEP"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn plans_a_mixed_cluster_from_kubectl_yaml() {
    let out = run(
        &[
            "plan",
            "--target",
            "1.35.2",
            "-f",
            &example("nodes-1cp-6w-mixed.yaml"),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("Upgrade v1.34.1 -> v1.35.2 (minor upgrade"),
        "{}",
        out.stdout
    );
    let rows = plan_rows(&out.stdout);
    let nodes: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        nodes,
        [
            "k8s-cp-1",
            "k8s-worker-1",
            "k8s-worker-3",
            "k8s-worker-4",
            "k8s-worker-6"
        ]
    );
    assert_eq!(rows[0][3], "control-plane");
    assert_eq!(&rows[0][6..9], ["kubeadm", "upgrade", "apply"]);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[6..9] == ["kubeadm", "upgrade", "node"])
    );
    // A node's Job never runs on the node itself.
    for row in &rows {
        assert!(
            !row[9..]
                .iter()
                .any(|cell| cell.trim_end_matches(',') == row[2]),
            "{row:?}"
        );
    }
    assert!(
        out.stdout
            .contains("k8s-worker-2  worker  v1.35.2  already at target")
    );
    assert!(
        out.stdout
            .contains("k8s-worker-5  worker  v1.35.2  already at target")
    );
}

#[test]
fn reads_json_from_stdin_and_prints_json() {
    let yaml = std::fs::read_to_string(example("nodes-3cp-4w-ha.yaml")).expect("example");
    let value: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let out = run(
        &[
            "plan",
            "--target",
            "v1.35.2",
            "-f",
            "-",
            "--max-unavailable",
            "2",
            "-o",
            "json",
        ],
        Some(value.to_string()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(plan["kind"], "patch");
    let batches: Vec<i64> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["batch"].as_i64().expect("batch"))
        .collect();
    assert_eq!(batches, [1, 2, 3, 4, 4, 5, 5]);
}

#[test]
fn resumes_a_partial_run_without_a_second_apply() {
    let out = run(
        &[
            "plan",
            "--target",
            "1.35.2",
            "-f",
            &example("nodes-partial-run.yaml"),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("upgrade apply"));
    assert_eq!(plan_rows(&out.stdout).len(), 3);
}

#[test]
fn follows_a_k8supgrade_manifest_and_skip_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("upgrade.yaml");
    std::fs::write(
        &spec,
        "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata: {name: to-1-35}\n\
         spec:\n  targetVersion: 1.35.2\n  nodes:\n    order: [k8s-worker-6]\n",
    )
    .expect("write");
    let out = run(
        &[
            "plan",
            "--target",
            "1.35.2",
            "-f",
            &example("nodes-1cp-6w-mixed.yaml"),
            "--spec",
            spec.to_str().expect("utf-8"),
            "--skip",
            "k8s-worker-4",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let nodes: Vec<String> = plan_rows(&out.stdout)
        .into_iter()
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(
        nodes,
        ["k8s-cp-1", "k8s-worker-6", "k8s-worker-1", "k8s-worker-3"]
    );
    assert!(out.stdout.contains("skipped (spec.nodes.skip)"));
}

#[test]
fn refuses_bad_input_with_exit_code_2_and_a_readable_message() {
    let mixed = example("nodes-1cp-6w-mixed.yaml");
    let table: Vec<(Vec<&str>, Option<String>, &str)> = vec![
        (
            vec!["plan", "--target", "1.34.9", "-f", &mixed],
            None,
            "never downgrades",
        ),
        (
            vec!["plan", "--target", "1.36.0", "-f", &mixed],
            None,
            "one minor version at a time",
        ),
        (
            vec!["plan", "--target", "1.35", "-f", &mixed],
            None,
            "such as 1.35.2",
        ),
        (
            vec!["plan", "--target", "1.35.2", "-f", "/no/such/file"],
            None,
            "cannot read /no/such/file",
        ),
        (
            vec!["plan", "--target", "1.35.2", "-f", "-"],
            Some(r#"{"apiVersion":"v1","kind":"List","items":[]}"#.to_owned()),
            "node list is empty",
        ),
        (
            vec!["plan", "--target", "1.35.2", "-f", "-"],
            Some("{{{ not yaml".to_owned()),
            "not YAML or JSON",
        ),
        (
            vec!["plan", "--target", "1.35.2", "-f", "-"],
            Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#.to_owned()),
            "expected kind Node, found Pod",
        ),
    ];
    for (args, stdin, expected) in table {
        let out = run(&args, stdin);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn crd_subcommand_prints_the_checked_in_crd() {
    let out = run(&["crd"], None);
    assert_eq!(out.code, 0);
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/k8supgrades.upchain.dev.yaml"
    ))
    .expect("crds/");
    assert_eq!(out.stdout, checked_in);
}

#[test]
fn demo_upgrades_the_simulated_cluster_and_exits_0() {
    let out = run(
        &[
            "demo",
            "--nodes",
            "1+2",
            "--bare",
            "--soak-seconds",
            "0",
            "--timeout-seconds",
            "120",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Succeeded in"), "{}", out.stdout);
    // The drain preview, and each node's Alertmanager silence created and expired.
    for line in [
        "drain preview for worker-1: evicts 0 Pod(s); no PodDisruptionBudget blocks it",
        "silence silence-1 created in Alertmanager for cp-1",
        "silence silence-1 for cp-1 expired: the node is done",
        "silence silence-3 for worker-2 expired: the node is done",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in\n{}", out.stdout);
    }
    for node in ["cp-1", "worker-1", "worker-2"] {
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(node))
            .expect("summary row");
        assert!(
            row.contains("v1.34.2") && row.contains("v1.35.2") && row.contains("Done"),
            "{row}"
        );
        assert!(
            row.ends_with("kubelet v1.35.2 restarted; done"),
            "the Job's last line: {row}"
        );
    }
}
