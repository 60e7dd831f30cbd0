//! Gates against the simulator: every reason, `upchain check`, the snapshot, the
//! addon, workload and quiet-period gates, the window, approval, CEL health checks.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn gates_block_with_every_reason_touch_nothing_and_clear_by_themselves() {
    let cluster = cluster(1, 2).await;
    let client = &cluster.client;
    // Four causes at once: a firing alert, a pending Helm release, a removed API still in
    // use, and a node whose containerd is too old for 1.35.
    cluster.sim.surroundings().alerts = vec![
        ("KubeNodeNotReady".into(), "firing".into()),
        ("Watchdog".into(), "firing".into()),
    ];
    // Enough further alerts that the Blocked Event's text is over the 1,024 bytes a real
    // API server takes in an Event note.
    let noisy: Vec<String> = (0..8)
        .map(|i| format!("NodeFilesystemWillFillWithinFourHours{i}"))
        .collect();
    for name in &noisy {
        cluster
            .sim
            .surroundings()
            .alerts
            .push((name.clone(), "firing".into()));
    }
    cluster.sim.surroundings().deprecated_apis = vec![(
        "flowcontrol.apiserver.k8s.io".into(),
        "v1beta3".into(),
        "flowschemas".into(),
        "1.32".into(),
    )];
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    secrets
        .create(&Default::default(), &helm_release(1, "deployed"))
        .await
        .expect("release v1");
    secrets
        .create(&Default::default(), &helm_release(2, "pending-upgrade"))
        .await
        .expect("release v2");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let runtime = |version: &str| {
        Patch::Merge(
            json!({"status": {"nodeInfo": {"containerRuntimeVersion": format!("containerd://{version}")}}}),
        )
    };
    nodes
        .patch_status("worker-2", &PatchParams::default(), &runtime("1.6.28"))
        .await
        .expect("old containerd");
    create_webhook_secret(&cluster).await;
    apply_upgrade(client, json!({
        "targetVersion": "1.35.2", "soak": "0s",
        "gates": {"prometheus": {"url": cluster.sim.prometheus_url()}, "helm": true, "recheckInterval": "5s"},
        "notify": {"webhookSecret": {"namespace": "upchain-system", "name": "slack", "key": "url"}}
    })).await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let reasons = blocked.status.expect("status").blocked_reasons;
    let expected = [
        "alert KubeNodeNotReady is firing",
        "flowschemas flowcontrol.apiserver.k8s.io/v1beta3 is still requested and is removed in 1.32",
        "node worker-2 runs containerd 1.6.28, below 1.7.0",
        "Helm release default/web is pending-upgrade at revision 2",
    ];
    for words in expected {
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "missing {words:?} in {reasons:#?}"
        );
    }
    assert_eq!(reasons.len(), expected.len() + noisy.len(), "{reasons:#?}");
    // `kubectl describe` shows the Blocked Event, cut to what the API server takes; the
    // full list is in status.
    // The Event follows the status write that said Blocked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let blocked_event = loop {
        let found = cluster
            .sim
            .objects("events.events.k8s.io")
            .into_iter()
            .find(|e| e["reason"] == "Blocked" && e["regarding"]["name"] == "to-1-35");
        if let Some(event) = found {
            break event;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Blocked Event was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let note = blocked_event["note"].as_str().unwrap_or_default();
    assert!(note.len() <= 1024, "{note}");
    assert!(
        note.contains("alert KubeNodeNotReady is firing")
            && note.ends_with("in the K8sUpgrade's status]"),
        "{note}"
    );
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("k8s_upgrade_blocked{upgrade=\"to-1-35\"} 1"),
        "{exposition}"
    );
    assert_nothing_cordoned(&cluster);
    assert!(cluster.sim.objects("jobs.batch").is_empty(), "no Job");

    // Prometheus going down is a reason of its own, not a pass.
    cluster.sim.surroundings().alerts.clear();
    cluster.sim.surroundings().prometheus_down = true;
    wait_for(&cluster, "Prometheus unreachable", |s| {
        s.blocked_reasons
            .iter()
            .any(|r| r.contains("Prometheus alerts could not be read"))
    })
    .await;
    // Every cause goes; the run starts without anyone touching the object.
    cluster.sim.surroundings().prometheus_down = false;
    cluster.sim.surroundings().deprecated_apis.clear();
    secrets
        .delete("sh.helm.release.v1.web.v2", &Default::default())
        .await
        .expect("rolled back");
    nodes
        .patch_status("worker-2", &PatchParams::default(), &runtime("1.7.24"))
        .await
        .expect("containerd upgraded");
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);

    // One notification per transition, and the webhook's URL is nowhere to be seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let messages = loop {
        let messages = cluster.sim.surroundings().webhook_messages.clone();
        if messages.iter().any(|m| m.contains("succeeded")) || std::time::Instant::now() > deadline
        {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| {
            ["started", "blocked", "succeeded"]
                .into_iter()
                .find(|k| m.contains(&format!("to-1-35 {k}")))
                .unwrap_or("other")
        })
        .collect();
    // Started and succeeded once; blocked once per change of reasons (the causes are
    // removed one at a time, so a recheck may see some of them gone), never repeated.
    assert_eq!(kinds.first(), Some(&"started"), "{messages:#?}");
    assert_eq!(kinds.last(), Some(&"succeeded"), "{messages:#?}");
    assert_eq!(kinds.iter().filter(|k| **k == "started").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "succeeded").count(), 1);
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| *k == "blocked"),
        "{messages:#?}"
    );
    assert!(
        kinds.len() >= 4,
        "blocked, then blocked again with Prometheus down: {messages:#?}"
    );
    assert!(
        messages.windows(2).all(|pair| pair[0] != pair[1]),
        "a notification repeated: {messages:#?}"
    );
    let url = cluster.sim.webhook_url();
    let upgrade = serde_json::to_string(
        &Api::<K8sUpgrade>::all(client.clone())
            .get("to-1-35")
            .await
            .expect("get"),
    )
    .unwrap();
    assert!(!upgrade.contains(&url));
    let events = serde_json::to_string(&cluster.sim.objects("events.events.k8s.io")).unwrap();
    assert!(!events.contains(&url));
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("upchain_notifications_total{kind=\"succeeded\",result=\"sent\"} 1"),
        "{exposition}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upchain_check_explains_a_blocked_cluster_and_changes_nothing() {
    let mut cluster = cluster(1, 2).await;
    cluster.kill_controller();
    cluster.sim.surroundings().alerts = vec![("KubeNodeNotReady".into(), "firing".into())];
    let kubeconfig = cluster.kubeconfig();
    let spec = cluster.dir.path().join("upgrade.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata:\n  name: x\nspec:\n  targetVersion: 1.35.2\n  snapshot: {{}}\n  gates:\n    prometheus:\n      url: {}\n",
            cluster.sim.prometheus_url()
        ),
    )
    .unwrap();
    let check_with = |target: &str, extra: &[&std::ffi::OsStr]| {
        let output = Command::new(env!("CARGO_BIN_EXE_upchain"))
            .args(["check", "--target", target, "--spec"])
            .arg(&spec)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .output()
            .expect("upchain check runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let check = |target: &str| check_with(target, &[]);
    let (code, text) = tokio::task::block_in_place(|| check("1.35.2"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("BLOCK alerts"), "{text}");
    assert!(text.contains("alert KubeNodeNotReady is firing"), "{text}");
    assert!(text.contains("PASS  nodes"), "{text}");
    assert!(
        text.contains("PASS  snapshot         taken through the node step"),
        "{text}"
    );
    assert!(text.contains("PASS  control-plane"), "{text}");
    assert!(text.contains("PASS  policy"), "{text}");
    assert!(text.contains("under the chart's default policy"), "{text}");
    cluster.sim.surroundings().alerts.clear();
    let (code, text) = tokio::task::block_in_place(|| check("1.35.2"));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = tokio::task::block_in_place(|| check("1.37.0"));
    assert_eq!(code, Some(2), "{text}");
    // Judged under the installation's policy, as the operator would: its runner
    // namespace, which does not exist here, is the one checked.
    let policy = cluster.dir.path().join("policy.json");
    let mut installed = upchain_core::policy::InstallPolicy::default();
    installed.runner.namespace = "node-upgrades".to_owned();
    std::fs::write(&policy, serde_json::to_string(&installed).unwrap()).unwrap();
    let (code, text) = tokio::task::block_in_place(|| {
        check_with("1.35.2", &["--policy".as_ref(), policy.as_os_str()])
    });
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("under {}", policy.display())),
        "{text}"
    );
    assert!(
        text.contains("namespace node-upgrades is missing"),
        "{text}"
    );
    assert_nothing_cordoned(&cluster);
    assert!(cluster.sim.objects("jobs.batch").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_is_checked_and_the_snapshot_taken_through_the_node_step_and_failures_block() {
    let cluster = cluster(3, 2).await;
    // A member added and never started: the check names it, nothing is touched.
    let members: Vec<String> = (1..=3)
        .map(|i| format!("upchain-etcd member {i:x}|started|cp-{i}|https://10.0.0.{i}:2380|https://10.0.0.{i}:2379|false"))
        .collect();
    cluster.sim.behaviour().etcd_report = Some(format!(
        "{}\nupchain-etcd member c25d1bfb7c59b8d2|unstarted||https://10.0.0.9:2380||false",
        members.join("\n")
    ));
    cluster.sim.behaviour().snapshot_refused = true;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"recheckInterval": "5s"},
               "snapshot": {"timeout": "1m"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let status = blocked.status.expect("status");
    let reasons = status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("etcd has 4 members, 3 control-plane nodes")
            && reasons.contains(
                "c25d1bfb7c59b8d2 (peer https://10.0.0.9:2380) was added but never started"
            ),
        "{reasons}"
    );
    assert!(
        status.nodes.is_empty() && status.snapshot.is_none(),
        "nothing started"
    );
    assert_nothing_cordoned(&cluster);

    // The member is removed; the snapshot's destination refuses the upload: still Blocked,
    // by the snapshot, which says why.
    cluster.sim.behaviour().etcd_report = None;
    wait_for(&cluster, "the refused snapshot", |s| {
        s.phase == Some(Phase::Blocked)
            && s.blocked_reasons.iter().any(|r| {
                r.contains("the etcd snapshot Job upchain-system/to-1-35-etcd-snapshot-")
                    && r.contains("exit 23")
            })
    })
    .await;
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(exposition.contains("k8s_upgrade_snapshot_taken{upgrade=\"to-1-35\"} 0"));
    assert_nothing_cordoned(&cluster);

    // The destination has room again; the next attempt succeeds and the run goes on.
    cluster.sim.behaviour().snapshot_refused = false;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(120)).await;
    let status = done.status.expect("status");
    let snapshot = status.snapshot.expect("snapshot record");
    assert!(snapshot.verified && snapshot.attempt >= 2, "{snapshot:?}");
    assert_eq!(snapshot.revision, Some(91234));
    assert_eq!(snapshot.total_keys, Some(2210));
    assert!(
        snapshot
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("pvc/upchain-system/upchain-etcd-snapshots/etcd-cp-")),
        "{snapshot:?}"
    );
    assert!(snapshot.restore_check.is_some() && snapshot.sha256.is_some());
    let first_node = status.nodes.first().expect("a node").started_at.0;
    assert!(snapshot.completed_at.expect("completed").0 <= first_node);
    let etcd = status.etcd.expect("etcd record");
    assert!(
        etcd.passed && etcd.before.starts_with("worker-"),
        "{etcd:?}"
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "SnapshotTaken" && c.status == "True")
    );
    let exposition = cluster.operator.as_ref().expect("operator").metrics();
    assert!(
        exposition.contains("k8s_upgrade_snapshot_taken{upgrade=\"to-1-35\"} 1"),
        "{exposition}"
    );
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
    // The etcd Jobs never ran on the node whose member they asked.
    for job in cluster.sim.objects("jobs.batch") {
        let name = job["metadata"]["name"].as_str().unwrap_or_default();
        if name.contains("-etcd-") {
            let excluded = upchain_core::job::excluded_nodes(
                &serde_json::from_value(job.clone()).expect("a Job"),
            );
            assert!(!excluded.is_empty(), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_addon_workload_and_quiet_period_gates_block_and_clear() {
    let cluster = cluster(1, 2).await;
    let client = &cluster.client;
    // The addon matrix says the running CoreDNS (1.0) supports Kubernetes up to 1.34.
    let matrix = |max: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "addon-matrix", "namespace": "upchain-system"},
               "data": {"matrix.yaml": format!("addons:\n- name: coredns\n  kind: Deployment\n  namespace: kube-system\n  workload: coredns\n  supports:\n  - version: \"1.0\"\n    maxKubernetes: \"{max}\"\n")}})
    };
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "upchain-system");
    let apply = PatchParams::apply("test").force();
    config_maps
        .patch("addon-matrix", &apply, &Patch::Apply(matrix("1.34")))
        .await
        .expect("matrix");
    // A Deployment that cannot become Available: its Pods fit no node.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let stuck: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "stuck", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stuck"}}, "template": {
            "metadata": {"labels": {"app": "stuck"}},
            "spec": {"nodeSelector": {"disk": "nvme"}, "containers": [{"name": "app", "image": "registry.example.org/app:1.0"}]}}}
    }))
    .unwrap();
    deployments
        .create(&Default::default(), &stuck)
        .await
        .expect("deployment");
    // worker-1 rebooted just now.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    nodes
        .patch_status(
            "worker-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": now}]}})),
        )
        .await
        .expect("recent reboot");
    apply_upgrade(
        client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
               "gates": {"quietPeriod": "15s", "recheckInterval": "5s",
                         "compatibility": {"addonMatrix": {"namespace": "upchain-system", "name": "addon-matrix", "key": "matrix.yaml"}}}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let reasons = blocked.status.expect("status").blocked_reasons;
    for words in [
        "node worker-1 changed Ready",
        "addon coredns runs 1.0",
        "supports Kubernetes up to 1.34",
        "Deployment default/stuck is not Available",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "missing {words:?} in {reasons:#?}"
        );
    }
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(cluster.sim.objects("jobs.batch").is_empty());
    // The addon is declared fit, the broken Deployment goes, and the quiet period runs out.
    config_maps
        .patch("addon-matrix", &apply, &Patch::Apply(matrix("1.35")))
        .await
        .expect("matrix");
    deployments
        .delete("stuck", &Default::default())
        .await
        .expect("delete");
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_node_starts_outside_the_maintenance_window() {
    let cluster = cluster(1, 2).await;
    // A window that opened an hour ago and closed a minute later: the next one is tomorrow.
    let opened = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let start = opened.strftime("%H:%M").to_string();
    let window = |duration: &str| json!({"start": start, "duration": duration, "timeZone": "UTC"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "window": window("1m")}),
    )
    .await;
    wait_for(&cluster, "the run waiting for its window", |s| {
        s.next_window_at.is_some()
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Progressing" && c.reason == "OutsideWindow")
    })
    .await;
    let status = current_status(&cluster).await;
    let opens = status.next_window_at.expect("next window").0;
    let expected = opened + jiff::SignedDuration::from_hours(24);
    assert!(
        (opens.as_second() - expected.as_second()).abs() < 60,
        "{opens} vs {expected}"
    );
    assert!(
        status.nodes.is_empty(),
        "no node started outside the window"
    );
    assert_nothing_cordoned(&cluster);
    // The window is widened to include now: the run starts.
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "window": window("3h")}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(done.status.expect("status").next_window_at.is_none());
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_runner_namespace_blocks_with_what_to_create() {
    let mut cluster = cluster(1, 2).await;
    cluster.install_with(&["--set", "runnerNamespace=node-upgrades"]);
    apply_upgrade(&cluster.client, json!({"targetVersion": "1.35.2"})).await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    assert_eq!(
        blocked.status.expect("status").blocked_reasons,
        ["namespace node-upgrades is missing: the node Jobs need it (see spec.runner); create it"]
    );
    assert!(cluster.sim.objects("jobs.batch").is_empty());
    assert_nothing_cordoned(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_plan_waits_for_its_hash_and_a_blackout_holds_it() {
    let cluster = cluster(1, 2).await;
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let blackout = json!({"timeZone": "UTC", "blackouts": [
        {"start": today, "end": today, "reason": "release day"}]});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "approval": "Manual", "window": blackout}),
    )
    .await;
    wait_for(&cluster, "the plan awaiting approval", |s| {
        s.plan_hash.is_some()
            && s.gates.iter().any(|g| g.name == "nodes" && g.passed)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "AwaitingApproval")
    })
    .await;
    let status = current_status(&cluster).await;
    assert_eq!(status.plan.len(), 3, "every node is in the plan");
    assert!(status.nodes.is_empty() && status.started_at.is_none());
    let hash = status.plan_hash.expect("hash");
    annotate(&cluster, "upchain.dev/approve", &hash).await;
    // Approved, but today is blacked out: still nothing starts.
    wait_for(&cluster, "the run held by the blackout", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.reason == "InBlackout" && c.message.contains("release day")
        })
    })
    .await;
    assert_nothing_cordoned(&cluster);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "approval": "Manual"}),
    )
    .await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_eq!(
        done.status.expect("status").approved_plan_hash.as_deref(),
        Some(hash.as_str())
    );
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_cel_health_check_blocks_with_its_reason_and_a_passing_one_lets_the_run_through()
{
    let cluster = cluster(1, 2).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "rook-ceph"}})).unwrap(),
        )
        .await
        .expect("namespace");
    ceph_cluster(&cluster.client, "HEALTH_WARN").await;
    let check = json!({"name": "ceph", "apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
        "namespace": "rook-ceph", "objectName": "rook-ceph",
        "expression": "self.status.ceph.health == 'HEALTH_OK'", "timeout": "0s"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "gates": {"healthChecks": [check], "recheckInterval": "5s"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let status = blocked.status.expect("status");
    assert_eq!(
        status.blocked_reasons,
        ["health check ceph: CephCluster rook-ceph/rook-ceph: \
          `self.status.ceph.health == 'HEALTH_OK'` is false"]
    );
    assert!(status.nodes.is_empty());
    assert_nothing_cordoned(&cluster);
    ceph_cluster(&cluster.client, "HEALTH_OK").await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(
        done.status
            .expect("status")
            .gates
            .iter()
            .any(|g| g.name == "healthCheck/ceph" && g.passed)
    );
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_prepare_check_fails_blocks_the_run_before_any_drain() {
    let cluster = cluster(1, 2).await;
    cluster.sim.behaviour().unprepared.insert("worker-2".into());
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"recheckInterval": "5s"}}),
    )
    .await;
    let blocked = wait_for_phase(&cluster, Phase::Blocked, Duration::from_secs(30)).await;
    let status = blocked.status.expect("status");
    let reasons = status.blocked_reasons.join("\n");
    assert!(
        reasons.contains("node worker-2")
            && reasons.contains("exit 11: a target package is not in the configured repository")
            && reasons.contains("no node was drained"),
        "{reasons}"
    );
    assert!(status.nodes.is_empty(), "no node started");
    assert_nothing_cordoned(&cluster);
    // The mirror catches up: the recheck passes and the run goes through.
    cluster.sim.behaviour().unprepared.clear();
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(60)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_crash_looping_after_its_upgrade_never_lets_the_next_control_plane_node_start()
 {
    let cluster = cluster(3, 1).await;
    cluster
        .sim
        .behaviour()
        .crash_looping_after_upgrade
        .insert(("cp-1".into(), "kube-apiserver".into()));
    cp_1_held_in_rejoining(&cluster, "kube-apiserver on cp-1 is not Running and Ready").await;
    // Held there (until the rejoin timeout fails it, which the core's scenario follows):
    // cp-1 cordoned, cp-2 and cp-3 never touched.
    for node in cluster.sim.objects("nodes") {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            node["spec"]["unschedulable"] == true,
            name == "cp-1",
            "{name}"
        );
    }
}

/// Applies a K8sUpgrade, waits for cp-1 to be held in Rejoining with `waiting_for` in its
/// record, and checks that no other node started and cp-2 got no Job.
async fn cp_1_held_in_rejoining(cluster: &Cluster, waiting_for: &str) {
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "rejoinTimeout": "10m"}),
    )
    .await;
    wait_for(cluster, "cp-1 held in Rejoining", |s| {
        s.nodes.iter().any(|n| {
            n.name == "cp-1"
                && n.step == upchain_api::NodeStep::Rejoining
                && n.message
                    .as_deref()
                    .is_some_and(|m| m.contains(waiting_for))
        })
    })
    .await;
    let status = current_status(cluster).await;
    assert_eq!(status.nodes.len(), 1, "{:?}", status.nodes);
    assert!(
        cluster
            .sim
            .placements()
            .iter()
            .all(|p| p.upgrades_node.as_deref() != Some("cp-2")),
        "no Job for cp-2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_that_leaves_kubeadm_config_behind_holds_its_node_and_starts_no_other() {
    let cluster = cluster(2, 1).await;
    cluster.sim.behaviour().kubeadm_config_stale = true;
    cp_1_held_in_rejoining(
        &cluster,
        "kube-system/kubeadm-config still records kubernetesVersion v1.34.2",
    )
    .await;
}

/// Applies a K8sUpgrade rechecked every 5 s, waits for Blocked, and returns its reasons.
async fn blocked_from_the_start(cluster: &Cluster) -> String {
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"recheckInterval": "5s"}}),
    )
    .await;
    let blocked = wait_for_phase(cluster, Phase::Blocked, Duration::from_secs(30)).await;
    blocked.status.expect("status").blocked_reasons.join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_etcd_member_blocks_the_run_before_anything_is_touched() {
    let cluster = cluster(3, 1).await;
    cluster.sim.crash_loop_static_pod("cp-2", "etcd");
    let reasons = blocked_from_the_start(&cluster).await;
    assert!(
        reasons.contains("etcd on cp-2 is not Running and Ready"),
        "{reasons}"
    );
    assert_nothing_cordoned(&cluster);

    // A control-plane node without its etcd mirror Pod, where kubeadm-config says etcd is
    // stacked, is a finding, never a sign of external etcd.
    let cluster = super::cluster(2, 1).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client.clone(), "kube-system");
    pods.delete(
        "etcd-cp-2",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .expect("the mirror Pod deleted");
    let reasons = blocked_from_the_start(&cluster).await;
    assert!(
        reasons.contains(
            "etcd on cp-2 has no mirror Pod, but kube-system/kubeadm-config says etcd is stacked"
        ),
        "{reasons}"
    );
    assert_nothing_cordoned(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_whose_readyz_fails_blocks_the_run_and_the_block_clears_by_itself() {
    let cluster = cluster(1, 2).await;
    cluster.sim.surroundings().readyz_failing = Some("etcd".into());
    let reasons = blocked_from_the_start(&cluster).await;
    assert!(
        reasons.contains("the API server's /readyz fails") && reasons.contains("[-]etcd failed"),
        "{reasons}"
    );
    assert_nothing_cordoned(&cluster);
    cluster.sim.surroundings().readyz_failing = None;
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(60)).await;
    assert_every_node_upgraded(&cluster);
}
