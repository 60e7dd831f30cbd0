use std::collections::BTreeMap;

use upchain_api::FailedReleasePolicy;

use super::*;
use crate::testing::NodeFixture;
use k8s_openapi::api::core::v1::ConfigMap;

fn v(text: &str) -> KubeVersion {
    KubeVersion::parse_target(text).expect("version")
}

#[test]
fn nodes_gate_lists_every_reason_and_ignores_skipped_nodes() {
    let mut pressured = NodeFixture::worker("w-3").build();
    pressured.pressure = vec!["DiskPressure".into()];
    let nodes = vec![
        NodeFixture::control_plane("cp-0").build(),
        NodeFixture::worker("w-1").not_ready().build(),
        NodeFixture::worker("w-2").cordoned().build(),
        pressured,
        NodeFixture::worker("w-4").not_ready().build(),
    ];
    let reasons = nodes_gate(&nodes, &["w-4".to_owned()], &[]).reasons;
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("w-1 is not Ready"));
    assert!(reasons[1].contains("kubectl uncordon w-2"));
    assert!(reasons[2].contains("DiskPressure"));
}

#[test]
fn nodes_gate_passes_a_healthy_cluster() {
    let nodes = vec![
        NodeFixture::control_plane("cp-0").build(),
        NodeFixture::worker("w-1").build(),
    ];
    assert!(nodes_gate(&nodes, &[], &[]).passed());
}

#[test]
fn quiet_gate_refuses_a_recent_ready_transition() {
    let mut rebooted = NodeFixture::worker("w-1").build();
    rebooted.ready_since = Some(100_000 - 3 * 3600);
    let nodes = vec![NodeFixture::worker("w-0").build(), rebooted];
    let verdict = quiet_gate(&nodes, Duration::from_secs(24 * 3600), 100_000, &[]);
    assert_eq!(verdict.reasons.len(), 1);
    assert!(
        verdict.reasons[0]
            .contains("node w-1 changed Ready 3h ago, within the quiet period of 24h"),
        "{:?}",
        verdict.reasons
    );
    assert!(quiet_gate(&nodes, Duration::from_secs(3600), 100_000, &[]).passed());
    assert!(quiet_gate(&nodes, Duration::ZERO, 100_000, &[]).passed());
}

fn alert(name: &str, state: &str) -> Alert {
    Alert {
        name: name.into(),
        state: state.into(),
        labels: "severity=critical".into(),
    }
}

#[test]
fn alerts_gate_counts_firing_alerts_outside_the_ignore_pattern() {
    let alerts = Ok(vec![
        alert("Watchdog", "firing"),
        alert("KubeNodeNotReady", "firing"),
        alert("HighLatency", "pending"),
        alert("K8sUpgradeInFlight", "firing"),
    ]);
    let verdict = alerts_gate(&alerts, upchain_api::DEFAULT_IGNORE_ALERTS);
    assert_eq!(
        verdict.reasons,
        [
            "alert KubeNodeNotReady is firing (severity=critical): resolve it, or add it to \
          spec.gates.prometheus.ignoreAlerts if it is harmless"
        ]
    );
    assert!(alerts_gate(&Ok(vec![alert("Watchdog", "firing")]), "^Watchdog$").passed());
}

#[test]
fn alerts_gate_refuses_when_prometheus_cannot_be_read() {
    let verdict = alerts_gate(&Err("connection refused".into()), ".*");
    assert!(!verdict.passed());
    assert!(
        verdict.reasons[0].contains("Prometheus alerts could not be read (connection refused)")
    );
    let bad = alerts_gate(&Ok(Vec::new()), "(");
    assert!(bad.reasons[0].contains("not a valid regular expression"));
}

#[test]
fn deprecated_apis_removed_by_the_target_refuse() {
    let apis = Ok(vec![
        DeprecatedApi {
            group: "flowcontrol.apiserver.k8s.io".into(),
            version: "v1beta3".into(),
            resource: "flowschemas".into(),
            removed_release: "1.32".into(),
        },
        DeprecatedApi {
            group: "example.io".into(),
            version: "v1beta1".into(),
            resource: "widgets".into(),
            removed_release: "1.37".into(),
        },
    ]);
    let verdict = deprecated_apis_gate(&apis, v("1.35.0"));
    assert_eq!(verdict.reasons.len(), 1);
    assert!(verdict.reasons[0].starts_with(
        "flowschemas flowcontrol.apiserver.k8s.io/v1beta3 is still requested and is removed in 1.32"
    ));
    assert!(deprecated_apis_gate(&Ok(Vec::new()), v("1.35.0")).passed());
    assert!(!deprecated_apis_gate(&Err("403".into()), v("1.35.0")).passed());
}

#[test]
fn containerd_below_the_floor_refuses() {
    let mut old = NodeFixture::worker("w-1").build();
    old.container_runtime = "containerd://1.6.28".into();
    let mut cri_o = NodeFixture::worker("w-2").build();
    cri_o.container_runtime = "cri-o://1.30.0".into();
    let nodes = vec![NodeFixture::worker("w-0").build(), old, cri_o];
    let verdict = containerd_gate(&nodes, &BTreeMap::new(), v("1.35.2"));
    assert_eq!(
        verdict.reasons,
        [
            "node w-1 runs containerd 1.6.28, below 1.7.0 that Kubernetes 1.35 needs: upgrade \
          containerd on it first"
        ]
    );
    let floors = [("1.35".to_owned(), "1.7.23".to_owned())].into();
    assert_eq!(
        containerd_gate(&nodes, &floors, v("1.35.2")).reasons.len(),
        2
    );
    assert!(containerd_gate(&nodes, &BTreeMap::new(), v("1.40.0")).passed());
}

const MATRIX: &str = "addons:\n- name: ingress-nginx\n  kind: Deployment\n  namespace: ingress\n  workload: controller\n  supports:\n  - version: \"1.11\"\n    maxKubernetes: \"1.31\"\n  - version: \"1.12\"\n    maxKubernetes: \"1.35\"\n";

fn addons(image: &str) -> Source<AddonObservation> {
    Ok(AddonObservation {
        matrix: AddonMatrix::parse(MATRIX).expect("matrix"),
        images: [("ingress-nginx".to_owned(), Ok(image.to_owned()))].into(),
    })
}

#[test]
fn an_addon_whose_version_stops_short_of_the_target_refuses() {
    let verdict = addons_gate(
        &addons("registry.k8s.io/ingress-nginx/controller:v1.11.5@sha256:ab"),
        v("1.35.0"),
    );
    assert_eq!(
        verdict.reasons,
        [
            "addon ingress-nginx runs v1.11.5 (registry.k8s.io/ingress-nginx/controller:v1.11.5@sha256:ab), which supports Kubernetes up to 1.31: upgrade it to a version that supports 1.35 first"
        ]
    );
    assert!(addons_gate(&addons("registry:5000/controller:v1.12.1"), v("1.35.0")).passed());
    let older = addons_gate(&addons("controller:v1.9.0"), v("1.35.0"));
    assert!(older.reasons[0].contains("older than every version in the matrix"));
}

#[test]
fn a_bad_matrix_is_explained() {
    let error = AddonMatrix::parse(
        "addons:\n- name: x\n  kind: Pod\n  namespace: a\n  workload: b\n  supports: []\n",
    )
    .expect_err("bad kind");
    assert!(
        error.contains("kind must be Deployment, DaemonSet or StatefulSet"),
        "{error}"
    );
    let error = AddonMatrix::parse("addons: 3").expect_err("not a list");
    assert!(
        error.starts_with("the addon matrix is not valid"),
        "{error}"
    );
}

#[test]
fn pending_helm_releases_refuse_and_failed_ones_warn() {
    let release = |name: &str, status: &str| HelmRelease {
        namespace: "apps".into(),
        name: name.into(),
        revision: 4,
        status: status.into(),
    };
    let releases = Ok(vec![
        release("web", "deployed"),
        release("db", "pending-upgrade"),
        release("old", "failed"),
    ]);
    let blocked = helm_gate(&releases, FailedReleasePolicy::Block);
    assert_eq!(blocked.reasons.len(), 2);
    assert!(
        blocked.reasons[0].starts_with("Helm release apps/db is pending-upgrade at revision 4")
    );
    assert!(
        blocked.reasons[1].starts_with("Helm release apps/old failed at revision 4: fix it"),
        "{:?}",
        blocked.reasons
    );
    let warned = helm_gate(&releases, FailedReleasePolicy::Warn);
    assert_eq!(warned.reasons.len(), 1, "only the pending one blocks");
    assert!(warned.evidence.contains("1 failed (a warning only)"));
    assert!(
        helm_gate(
            &Ok(vec![release("web", "deployed")]),
            FailedReleasePolicy::Block
        )
        .passed()
    );
    assert!(!helm_gate(&Err("forbidden".into()), FailedReleasePolicy::Block).passed());
}

fn deployment(updated: i32, available: i32) -> ObservedDeployment {
    ObservedDeployment {
        namespace: "apps".into(),
        name: "web".into(),
        replicas: 10,
        updated,
        available,
        available_condition: Some(true),
        progressing_condition: Some((true, "NewReplicaSetAvailable".into())),
    }
}

#[test]
fn workloads_not_reconciled_refuse_with_a_tolerance() {
    let deployments = |d: ObservedDeployment| workloads_gate(&Ok(vec![d]), &Ok(Vec::new()));
    assert!(deployments(deployment(9, 10)).passed());
    let short = deployments(deployment(5, 10));
    assert!(short.reasons[0].contains("5 updated of 10 available"));
    let mut stuck = deployment(10, 10);
    stuck.progressing_condition = Some((false, "ProgressDeadlineExceeded".into()));
    assert!(deployments(stuck).reasons[0].contains("ProgressDeadlineExceeded"));
    let mut down = deployment(10, 2);
    down.available_condition = Some(false);
    assert!(deployments(down).reasons[0].contains("is not Available"));
}

#[test]
fn stateful_and_daemon_sets_need_every_pod_available_and_current() {
    let set = |kind, updated, available, on_delete| ObservedSet {
        kind,
        namespace: "data".into(),
        name: "db".into(),
        desired: 3,
        updated,
        available,
        on_delete,
    };
    let gate = |s: ObservedSet| workloads_gate(&Ok(Vec::new()), &Ok(vec![s]));
    assert!(gate(set("StatefulSet", 3, 3, false)).passed());
    assert_eq!(
        gate(set("StatefulSet", 3, 2, false)).reasons,
        [
            "StatefulSet data/db has 2 of 3 Pods available: fix it first, a drain would make it \
          worse"
        ]
    );
    assert!(
        gate(set("DaemonSet", 1, 3, false)).reasons[0]
            .starts_with("DaemonSet data/db has 1 of 3 Pods at its current revision")
    );
    assert!(
        gate(set("DaemonSet", 1, 3, true)).passed(),
        "OnDelete moves Pods only when they are deleted"
    );
    assert!(!workloads_gate(&Ok(Vec::new()), &Err("forbidden".into())).passed());
}

#[test]
fn postflight_wants_the_target_images_and_ready_pods() {
    let pod = |image: &str, running| StaticPod {
        node: "cp-1".into(),
        component: "kube-apiserver".into(),
        image: image.into(),
        running,
        restarts: 0,
    };
    let good = PostflightInputs {
        static_pods: vec![pod("registry.k8s.io/kube-apiserver:v1.35.2", true)],
        pods_expected: 100,
        pods_ready: 95,
    };
    assert!(postflight_gate(&good, v("1.35.2")).passed());
    let bad = PostflightInputs {
        static_pods: vec![pod("registry.k8s.io/kube-apiserver:v1.34.2", true)],
        pods_expected: 100,
        pods_ready: 80,
    };
    let reasons = postflight_gate(&bad, v("1.35.2")).reasons;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].contains("only 80 of 100 Pods are Ready"));
}

#[test]
fn missing_runner_prerequisites_refuse_by_name() {
    let spec = crate::testing::upgrade("1.35.2").spec;
    let runner = &spec.runner;
    let present = RunnerFacts {
        namespace: Ok(true),
        script_keys: Ok(Some(vec![runner.script_config_map.key.clone()])),
        ssh_secret: Ok(true),
        known_hosts_keys: Ok(Some(vec![runner.known_hosts.key.clone()])),
        permitted_namespace: None,
        pod_security: crate::pod_security::Level::Restricted,
        snapshot_claim: None,
    };
    assert!(runner_gate(&spec, &present).passed());
    let no_claim = RunnerFacts {
        snapshot_claim: Some(("upchain-etcd-snapshots".to_owned(), Ok(false))),
        ..present.clone()
    };
    assert_eq!(
        runner_gate(&spec, &no_claim).reasons,
        [
            "PersistentVolumeClaim upchain-system/upchain-etcd-snapshots (the etcd snapshot's \
             destination, policy.snapshot; the chart creates it with \
             policy.snapshot.createClaim) is missing: the node Jobs need it (see spec.runner); \
             create it"
        ]
    );
    let no_known_hosts = RunnerFacts {
        known_hosts_keys: Ok(None),
        ..present.clone()
    };
    let reasons = runner_gate(&spec, &no_known_hosts).reasons;
    assert!(
        reasons[0]
            .starts_with("ConfigMap upchain-system/upchain-known-hosts (the nodes' SSH host keys"),
        "{reasons:?}"
    );
    let mut accept_new = spec.clone();
    accept_new.runner.host_key_policy = upchain_api::HostKeyPolicy::AcceptNew;
    assert!(runner_gate(&accept_new, &no_known_hosts).passed());
    let no_secret = RunnerFacts {
        ssh_secret: Ok(false),
        ..present.clone()
    };
    assert_eq!(
        runner_gate(&spec, &no_secret).reasons,
        [
            "Secret upchain-system/upchain-ssh (the SSH key) is missing: the node Jobs need \
          it (see spec.runner); create it"
        ]
    );
    let wrong_key = RunnerFacts {
        script_keys: Ok(Some(vec!["other.sh".to_owned()])),
        ..present.clone()
    };
    assert!(
        runner_gate(&spec, &wrong_key).reasons[0]
            .starts_with("key upgrade-node.sh of ConfigMap upchain-system/upchain-node-upgrade")
    );
    let no_namespace = RunnerFacts {
        namespace: Ok(false),
        ..no_secret
    };
    assert_eq!(
        runner_gate(&spec, &no_namespace).reasons.len(),
        1,
        "only the namespace is named"
    );
}

/// Everything the node Jobs need exists, in the permitted namespace upchain-system, which
/// enforces `level`.
fn everything_present(spec: &K8sUpgradeSpec, level: crate::pod_security::Level) -> RunnerFacts {
    RunnerFacts {
        namespace: Ok(true),
        script_keys: Ok(Some(vec![spec.runner.script_config_map.key.clone()])),
        ssh_secret: Ok(true),
        known_hosts_keys: Ok(Some(vec![spec.runner.known_hosts.key.clone()])),
        permitted_namespace: Some("upchain-system".to_owned()),
        pod_security: level,
        snapshot_claim: None,
    }
}

#[test]
fn jobs_go_only_where_upchain_may_create_them() {
    let mut spec = crate::testing::upgrade("1.35.2").spec;
    let facts = everything_present(&spec, crate::pod_security::Level::Restricted);
    assert!(runner_gate(&spec, &facts).passed());
    spec.runner.namespace = "kube-system".to_owned();
    assert_eq!(
        runner_gate(&spec, &facts).reasons,
        [
            "spec.runner.namespace is kube-system, but this upchain may create Jobs only in \
          upchain-system (its Role is there: the chart's runnerNamespace); set \
          spec.runner.namespace to upchain-system, or install upchain with \
          runnerNamespace=kube-system"
        ]
    );
    spec.runner.namespace = "upchain-system".to_owned();
    spec.gates.external_etcd_check = Some(
        serde_json::from_value(serde_json::json!({"namespace": "ops", "template": {}}))
            .expect("hook"),
    );
    assert_eq!(
        runner_gate(&spec, &facts).reasons,
        [
            "spec.gates.externalEtcdCheck runs its Job in namespace ops: hooks run in the runner \
          namespace only, where upchain may create Jobs; set its namespace to upchain-system"
        ]
    );
}

#[test]
fn a_runner_namespace_that_does_not_enforce_restricted_blocks() {
    let spec = crate::testing::upgrade("1.35.2").spec;
    for level in [
        crate::pod_security::Level::Privileged,
        crate::pod_security::Level::Baseline,
    ] {
        let reasons = runner_gate(&spec, &everything_present(&spec, level)).reasons;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with(&format!(
                "namespace upchain-system enforces Pod Security {}, not restricted",
                level.as_str()
            )),
            "{reasons:?}"
        );
        assert!(
            reasons[0].contains("pod-security.kubernetes.io/enforce=restricted"),
            "{reasons:?}"
        );
    }
}

#[test]
fn deprecated_api_series_are_read_from_the_exposition() {
    let text = "# HELP apiserver_requested_deprecated_apis x\n\
        apiserver_requested_deprecated_apis{group=\"flowcontrol.apiserver.k8s.io\",removed_release=\"1.32\",resource=\"flowschemas\",subresource=\"\",version=\"v1beta3\"} 1\n\
        apiserver_requested_deprecated_apis{group=\"\",removed_release=\"1.40\",resource=\"widgets\",subresource=\"\",version=\"v1\"} 0\n\
        apiserver_request_total{code=\"200\"} 5\n";
    assert_eq!(
        text.lines()
            .filter_map(deprecated_api_series)
            .collect::<Vec<_>>(),
        [DeprecatedApi {
            group: "flowcontrol.apiserver.k8s.io".into(),
            version: "v1beta3".into(),
            resource: "flowschemas".into(),
            removed_release: "1.32".into(),
        }]
    );
}

#[test]
fn only_the_latest_helm_revision_counts() {
    let revision = |name: &str, revision, status: &str| HelmRelease {
        namespace: "apps".into(),
        name: name.into(),
        revision,
        status: status.into(),
    };
    let latest = latest_revisions([
        revision("web", 3, "pending-upgrade"),
        revision("web", 2, "superseded"),
        revision("db", 1, "deployed"),
        revision("web", 4, "deployed"),
    ]);
    assert_eq!(
        latest,
        [
            revision("db", 1, "deployed"),
            revision("web", 4, "deployed")
        ]
    );
}

#[test]
fn image_tags_are_read_past_registries_and_digests() {
    assert_eq!(
        image_tag("registry:5000/a/b:v1.2.3@sha256:x"),
        Some("v1.2.3")
    );
    assert_eq!(image_tag("registry:5000/a/b"), None);
}

#[test]
fn the_control_plane_gate_names_the_component_the_node_and_what_it_saw() {
    let nodes = vec![
        crate::testing::NodeFixture::control_plane("cp-1")
            .kubelet("v1.35.2")
            .build(),
        crate::testing::NodeFixture::control_plane("cp-2")
            .kubelet("v1.34.2")
            .build(),
    ];
    let pod = |node: &str, component: &str, tag: &str, running: bool| StaticPod {
        node: node.into(),
        component: component.into(),
        image: format!("registry.k8s.io/{component}:{tag}"),
        running,
        restarts: if running { 0 } else { 4 },
    };
    let healthy: Vec<StaticPod> = ["cp-1", "cp-2"]
        .into_iter()
        .flat_map(|node| {
            let tag = if node == "cp-1" { "v1.35.2" } else { "v1.34.2" };
            COMPONENTS
                .into_iter()
                .map(move |c| pod(node, c, tag, true))
                .chain([pod(node, "etcd", "3.5.16-0", true)])
        })
        .collect();
    let done = |name: &str| -> NodeRecord {
        serde_json::from_value(serde_json::json!({"name": name, "role": "ControlPlane",
            "kind": "Minor", "targetVersion": "v1.35.2", "versionBefore": "v1.34.2",
            "step": "Done", "stepStartedAt": "2026-11-30T00:00:00Z",
            "startedAt": "2026-11-30T00:00:00Z"}))
        .expect("record")
    };
    let answers = |cp2: Source<()>| {
        vec![
            ApiServerReadyz {
                node: "cp-1".into(),
                endpoint: "10.0.0.1:6443".into(),
                answer: Ok(()),
            },
            ApiServerReadyz {
                node: "cp-2".into(),
                endpoint: "10.0.0.2:6443".into(),
                answer: cp2,
            },
        ]
    };
    let observed = |pods: Vec<StaticPod>, readyz: Source<()>| {
        Ok(ControlPlaneObservation {
            static_pods: pods,
            readyz,
            kubeadm_version: Ok(KubeVersion::new(1, 35, 2)),
            etcd_external: false,
            api_servers: answers(Ok(())),
        })
    };
    let good = control_plane_gate(
        &nodes,
        &observed(healthy.clone(), Ok(())),
        &[done("cp-1")],
        None,
    );
    assert!(good.passed(), "{:?}", good.reasons);
    assert!(good.evidence.contains("every API server's /readyz"));

    // cp-1 was upgraded but its scheduler still runs the old image; etcd on cp-2 is down;
    // /readyz fails.
    let mut broken = healthy.clone();
    broken[2].image = "registry.k8s.io/kube-scheduler:v1.34.2".into();
    broken[7].running = false;
    broken[7].restarts = 4;
    let verdict = control_plane_gate(
        &nodes,
        &observed(broken, Err("500: [-]etcd failed".into())),
        &[done("cp-1")],
        None,
    );
    assert_eq!(verdict.reasons.len(), 3, "{:#?}", verdict.reasons);
    assert!(verdict.reasons[0].contains(
        "kube-scheduler on cp-1 runs registry.k8s.io/kube-scheduler:v1.34.2, not v1.35.2"
    ));
    assert!(verdict.reasons[1].starts_with("etcd on cp-2 is not Running and Ready (4 restart(s))"));
    assert!(verdict.reasons[2].contains("/readyz fails (500: [-]etcd failed)"));

    // Every API server is asked at its own address: the Service's answer is not enough.
    let mut one_down = observed(healthy.clone(), Ok(())).expect("observed");
    one_down.api_servers = answers(Err("connection refused".into()));
    let verdict = control_plane_gate(&nodes, &Ok(one_down), &[done("cp-1")], None);
    assert_eq!(verdict.reasons.len(), 1, "{:#?}", verdict.reasons);
    assert!(
        verdict.reasons[0].starts_with(
            "the API server on cp-2 fails /readyz at 10.0.0.2:6443 (connection refused)"
        )
    );

    // A missing etcd mirror Pod is a finding while kubeadm-config says etcd is stacked,
    // and nothing to look for when it says external.
    let no_etcd: Vec<StaticPod> = healthy
        .iter()
        .filter(|p| !(p.component == "etcd" && p.node == "cp-2"))
        .cloned()
        .collect();
    let verdict = control_plane_gate(
        &nodes,
        &observed(no_etcd.clone(), Ok(())),
        &[done("cp-1")],
        None,
    );
    assert_eq!(verdict.reasons.len(), 1, "{:#?}", verdict.reasons);
    assert!(verdict.reasons[0].starts_with(
        "etcd on cp-2 has no mirror Pod, but kube-system/kubeadm-config says etcd is stacked"
    ));
    let mut external = observed(no_etcd, Ok(())).expect("observed");
    external.etcd_external = true;
    let verdict = control_plane_gate(&nodes, &Ok(external), &[done("cp-1")], None);
    assert!(verdict.passed(), "{:?}", verdict.reasons);
    assert!(verdict.evidence.contains("etcd is external"));
    let unreadable = control_plane_gate(&nodes, &Err("403".into()), &[], None);
    assert!(unreadable.reasons[0].contains("could not be read (403)"));

    // cp-1 ran `kubeadm upgrade apply`, yet kubeadm-config still records the old version.
    let mut applied = done("cp-1");
    applied.first_control_plane = true;
    let mut stale = observed(healthy.clone(), Ok(())).expect("observed");
    stale.kubeadm_version = Ok(KubeVersion::new(1, 34, 2));
    let verdict = control_plane_gate(&nodes, &Ok(stale.clone()), &[applied.clone()], None);
    assert_eq!(verdict.reasons.len(), 1, "{:#?}", verdict.reasons);
    assert!(
        verdict.reasons[0].contains(
            "kube-system/kubeadm-config still records kubernetesVersion v1.34.2, not v1.35.2: \
             `kubeadm upgrade apply` on cp-1 did not finish"
        ),
        "{}",
        verdict.reasons[0]
    );
    stale.kubeadm_version = Err("kube-system/kubeadm-config does not exist: ...".into());
    let verdict = control_plane_gate(&nodes, &Ok(stale), &[], None);
    assert!(verdict.reasons[0].starts_with("kube-system/kubeadm-config does not exist"));

    // The skew rule before workers: cp-2's API server is still at 1.34.2.
    let verdict = control_plane_gate(
        &nodes,
        &observed(healthy.clone(), Ok(())),
        &[done("cp-1")],
        Some(KubeVersion::new(1, 35, 2)),
    );
    assert_eq!(verdict.reasons.len(), 1, "{:#?}", verdict.reasons);
    assert!(verdict.reasons[0].starts_with(
        "the kube-apiserver on cp-2 runs v1.34.2, older than the workers' kubelets at v1.35.2"
    ));
}

#[test]
fn kubeadm_config_says_which_version_kubeadm_applied() {
    let config_map = |data: Option<&str>| -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": data.map(|d| serde_json::json!({"ClusterConfiguration": d})),
        }))
        .expect("config map")
    };
    let real = "apiServer: {}\napiVersion: kubeadm.k8s.io/v1beta4\nclusterName: kubernetes\n\
                kind: ClusterConfiguration\nkubernetesVersion: v1.34.3\n";
    assert_eq!(
        kubeadm_config_version(Some(&config_map(Some(real)))),
        Ok(KubeVersion::new(1, 34, 3))
    );
    let missing = kubeadm_config_version(None).expect_err("missing");
    assert!(missing.contains("does not exist"), "{missing}");
    let empty = kubeadm_config_version(Some(&config_map(None))).expect_err("empty");
    assert!(empty.contains("has no ClusterConfiguration"), "{empty}");
    let no_version =
        kubeadm_config_version(Some(&config_map(Some("kind: ClusterConfiguration\n"))))
            .expect_err("no version");
    assert!(no_version.contains("kubernetesVersion"), "{no_version}");
}
