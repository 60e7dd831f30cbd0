//! What is shipped to a cluster, checked without one: every base image of the Dockerfiles
//! pinned to a version, and a non-root final user (the real-cluster test builds and runs them).
//! The chart, rendered by helm: what its defaults grant, and its probes.

#[test]
fn images_pin_their_bases_and_run_as_non_root() {
    for name in ["operator", "runner"] {
        let path = format!(
            "{}/../../images/{name}.Dockerfile",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("Dockerfile");
        let instructions: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        for from in instructions.iter().filter(|l| l.starts_with("FROM ")) {
            let image = from.split_whitespace().nth(1).expect("image");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{name}: {image} is not pinned"
            );
        }
        let user = instructions
            .iter()
            .rev()
            .find(|l| l.starts_with("USER "))
            .expect("a USER instruction");
        let uid = user[5..].split(':').next().unwrap().trim();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "{name}: the final user must be a non-root uid, not {uid}"
        );
        assert_eq!(
            instructions.last().map(|l| l.starts_with("USER ")),
            Some(false),
            "{name}: USER comes before the entrypoint"
        );
    }
}

/// `helm template` of the chart as an installation renders it
/// (tests/helm/install-values.yaml) with `args` (such as `-f` or `--set-json`): its
/// objects, or what helm said when it refused.
fn render(args: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let text = crate::harness::render_chart(args)?;
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect())
}

/// The chart rendered with its defaults.
fn default_chart() -> Vec<serde_json::Value> {
    render(&[]).unwrap_or_else(|e| panic!("{e}"))
}

/// One permission: (namespace, "" cluster-wide; API group, or "url" for a non-resource
/// URL; resource or URL; object name, "*" for any; verb).
type Grant = (String, String, String, String, String);

/// Every permission the chart's Roles and ClusterRoles grant the subject
/// `namespace/name`, one per verb and name.
fn grants_to(objects: &[serde_json::Value], namespace: &str, name: &str) -> Vec<Grant> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().map(text).collect()
    };
    // (kind, namespace of a Role, name) of every role bound to the subject.
    let bound: Vec<(String, String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .filter(|o| {
            o["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["namespace"] == namespace && s["name"] == name
            })
        })
        .map(|o| {
            let role = &o["roleRef"];
            let namespace = if role["kind"] == "Role" {
                text(&o["metadata"]["namespace"])
            } else {
                String::new()
            };
            (text(&role["kind"]), namespace, text(&role["name"]))
        })
        .collect();
    let mut grants = Vec::new();
    for object in objects.iter().filter(|o| {
        let namespace = if o["kind"] == "Role" {
            text(&o["metadata"]["namespace"])
        } else {
            String::new()
        };
        bound.contains(&(text(&o["kind"]), namespace, text(&o["metadata"]["name"])))
    }) {
        let namespace = if object["kind"] == "Role" {
            text(&object["metadata"]["namespace"])
        } else {
            String::new()
        };
        for rule in object["rules"].as_array().into_iter().flatten() {
            let names = match list(&rule["resourceNames"]) {
                names if names.is_empty() => vec!["*".to_owned()],
                names => names,
            };
            let targets: Vec<(String, String)> = list(&rule["apiGroups"])
                .into_iter()
                .flat_map(|group| {
                    list(&rule["resources"])
                        .into_iter()
                        .map(move |resource| (group.clone(), resource))
                })
                .chain(
                    list(&rule["nonResourceURLs"])
                        .into_iter()
                        .map(|url| ("url".to_owned(), url)),
                )
                .collect();
            for (group, resource) in targets {
                for name in &names {
                    for verb in list(&rule["verbs"]) {
                        grants.push((
                            namespace.clone(),
                            group.clone(),
                            resource.clone(),
                            name.clone(),
                            verb,
                        ));
                    }
                }
            }
        }
    }
    grants
}

/// What the chart grants upchain's own ServiceAccount.
fn grants(objects: &[serde_json::Value]) -> Vec<Grant> {
    grants_to(objects, "upchain-system", "upchain")
}

/// What docs/install.md says upchain may do, given the runner namespace, the SSH Secret's
/// name and the optional grants switched on (`extra`, in the same form).
fn allow_list(
    runner: &str,
    ssh_secret: &str,
    extra: &[(&str, &str, &str, &str, &[&str])],
) -> Vec<Grant> {
    let always: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            "",
            "upchain.dev",
            "k8supgrades",
            "*",
            &["get", "list", "watch", "patch"],
        ),
        ("", "upchain.dev", "k8supgrades/status", "*", &["patch"]),
        (
            "",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "k8supgrades.upchain.dev",
            &["get"],
        ),
        ("", "", "nodes", "*", &["get", "list", "watch", "patch"]),
        ("", "", "pods", "*", &["list", "watch"]),
        ("", "", "pods/eviction", "*", &["create"]),
        (
            "",
            "policy",
            "poddisruptionbudgets",
            "*",
            &["list", "watch"],
        ),
        ("", "", "namespaces", "*", &["get"]),
        ("", "apps", "deployments", "*", &["get", "list"]),
        ("", "apps", "daemonsets", "*", &["get", "list"]),
        ("", "apps", "statefulsets", "*", &["get", "list"]),
        ("", "events.k8s.io", "events", "*", &["create", "patch"]),
        (
            "",
            "authentication.k8s.io",
            "tokenreviews",
            "*",
            &["create"],
        ),
        (
            "",
            "authorization.k8s.io",
            "subjectaccessreviews",
            "*",
            &["create"],
        ),
        ("", "url", "/readyz", "*", &["get"]),
        ("", "url", "/metrics", "*", &["get"]),
        (
            "upchain-system",
            "coordination.k8s.io",
            "leases",
            "*",
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        (
            "RUNNER",
            "batch",
            "jobs",
            "*",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("RUNNER", "", "pods", "*", &["list", "watch"]),
        ("RUNNER", "", "pods/log", "*", &["get"]),
        ("RUNNER", "", "configmaps", "*", &["get"]),
        ("RUNNER", "", "secrets", "SSH", &["get"]),
        (
            "RUNNER",
            "",
            "persistentvolumeclaims",
            "upchain-etcd-snapshots",
            &["get"],
        ),
        ("kube-system", "", "configmaps", "kubeadm-config", &["get"]),
        (
            "kube-node-lease",
            "coordination.k8s.io",
            "leases",
            "*",
            &["get"],
        ),
    ];
    always
        .iter()
        .chain(extra)
        .flat_map(|(namespace, group, resource, name, verbs)| {
            let namespace = if *namespace == "RUNNER" {
                runner
            } else {
                namespace
            };
            let name = if *name == "SSH" { ssh_secret } else { name };
            verbs.iter().map(move |verb| {
                (
                    namespace.to_owned(),
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    name.to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn the_chart_grants_nothing_beyond_its_allow_list() {
    let default = grants(&default_chart());
    let allowed = allow_list("upchain-system", "upchain-ssh", &[]);
    let beyond: Vec<&Grant> = default.iter().filter(|g| !allowed.contains(g)).collect();
    assert!(
        beyond.is_empty(),
        "granted beyond docs/install.md: {beyond:#?}"
    );
    for secret_read in default.iter().filter(|g| g.2 == "secrets") {
        assert_eq!(
            secret_read.3, "upchain-ssh",
            "only the SSH Secret, by name: {secret_read:?}"
        );
    }
    assert!(
        !default.iter().any(|g| g.0.is_empty() && g.2 == "jobs"),
        "no Jobs cluster-wide"
    );
    let full = render(&["-f", "tests/helm/full-values.yaml"]).expect("full values render");
    let allowed = allow_list(
        "node-upgrades",
        "node-upgrade-ssh",
        &[
            ("", "", "secrets", "*", &["list"]),
            ("", "", "pods", "*", &["delete"]),
            ("", "ceph.rook.io", "cephclusters", "*", &["get", "list"]),
            ("upchain-system", "", "secrets", "slack-webhook", &["get"]),
            ("monitoring", "", "configmaps", "addon-matrix", &["get"]),
        ],
    );
    let beyond: Vec<Grant> = grants(&full)
        .into_iter()
        .filter(|g| !allowed.contains(g))
        .collect();
    assert!(
        beyond.is_empty(),
        "granted beyond docs/install.md: {beyond:#?}"
    );
}

#[test]
fn health_check_reads_of_secrets_or_wildcards_are_refused_at_render_time() {
    for (rule, says) in [
        (
            r#"[{"apiGroups":[""],"resources":["secrets"],"verbs":["get"]}]"#,
            "would let upchain read Secrets",
        ),
        (
            r#"[{"apiGroups":["*"],"resources":["cephclusters"],"verbs":["get"]}]"#,
            "uses a wildcard",
        ),
        (
            r#"[{"apiGroups":["ceph.rook.io"],"resources":["*"],"verbs":["list"]}]"#,
            "uses a wildcard",
        ),
    ] {
        let refused =
            render(&["--set-json", &format!("rbac.healthCheckReads={rule}")]).expect_err("refused");
        assert!(refused.contains(says), "{rule}: {refused}");
    }
}

#[test]
fn the_default_chart_grants_what_documented_features_read_and_probes_time_out() {
    let objects = default_chart();
    let grants = |kind: &str, namespace: Option<&str>, resource: &str, verb: &str| {
        objects.iter().any(|o| {
            o["kind"] == kind
                && namespace.is_none_or(|n| o["metadata"]["namespace"] == n)
                && o["rules"].as_array().into_iter().flatten().any(|r| {
                    r["resources"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == resource))
                        && r["verbs"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == verb))
                })
        })
    };
    // Nothing in kube-system beyond reading: no Job, CronJob or log there.
    for resource in ["jobs", "cronjobs", "pods/log"] {
        assert!(
            !grants("Role", Some("kube-system"), resource, "get"),
            "{resource}"
        );
    }
    // The start-up check of the installed CRD.
    assert!(grants(
        "ClusterRole",
        None,
        "customresourcedefinitions",
        "get"
    ));
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(
            container[probe]["timeoutSeconds"]
                .as_i64()
                .is_some_and(|t| t >= 3),
            "{probe}: {}",
            container[probe]
        );
    }
}

#[test]
fn alerts_are_installed_wherever_the_prometheus_operator_is() {
    let kinds = |objects: Vec<serde_json::Value>| -> Vec<String> {
        objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .filter(|k| matches!(*k, "PrometheusRule" | "ServiceMonitor"))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert!(
        kinds(default_chart()).is_empty(),
        "nothing to install them into"
    );
    let with_the_operator = render(&[
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ])
    .expect("renders");
    assert_eq!(
        kinds(with_the_operator),
        ["PrometheusRule", "ServiceMonitor"]
    );
    let switched_off = render(&[
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--set",
        "metrics.prometheusRule.enabled=false",
    ])
    .expect("renders");
    assert!(kinds(switched_off).is_empty());
}

#[test]
fn metrics_are_served_on_the_pod_ip_over_tls_to_permitted_readers_only() {
    let objects = default_chart();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--metrics-addr=$(POD_IP):8080"), "{args:?}");
    assert!(args.contains(&"--metrics-auth=kubernetes"), "{args:?}");
    assert!(args.contains(&"--metrics-tls=self-signed"), "{args:?}");
    assert!(container["env"].as_array().expect("env").iter().any(
        |e| e["name"] == "POD_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    // The reader role is for Prometheus: only /metrics, bound by default to the Prometheus
    // Operator's usual accounts, so that a default install's alerts have series.
    let reader = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "upchain-metrics-reader")
        .expect("metrics-reader ClusterRole");
    assert_eq!(
        reader["rules"],
        serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    for (namespace, name) in [
        ("monitoring", "prometheus-k8s"),
        ("monitoring", "kube-prometheus-stack-prometheus"),
    ] {
        assert_eq!(
            grants_to(&objects, namespace, name),
            [(
                String::new(),
                "url".to_owned(),
                "/metrics".to_owned(),
                "*".to_owned(),
                "get".to_owned()
            )],
            "{namespace}/{name}"
        );
    }

    let full = render(&["-f", "tests/helm/full-values.yaml"]).expect("full values render");
    assert_eq!(
        grants_to(&full, "monitoring", "prometheus-k8s"),
        [(
            String::new(),
            "url".to_owned(),
            "/metrics".to_owned(),
            "*".to_owned(),
            "get".to_owned()
        )]
    );
    let deployment = full
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"],
        "upchain-metrics-tls"
    );
    let monitor = full
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["tlsConfig"]["serverName"],
        "upchain-metrics.upchain-system.svc"
    );
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );

    let open = render(&[
        "--set",
        "metrics.auth=none",
        "--set",
        "metrics.tls.mode=none",
    ])
    .expect("renders");
    assert!(
        grants(&open)
            .iter()
            .all(|g| g.2 != "tokenreviews" && g.2 != "subjectaccessreviews"),
        "no reviews without metrics.auth"
    );
    assert!(
        !open
            .iter()
            .any(|o| o["metadata"]["name"] == "upchain-metrics-reader")
    );
}

#[test]
fn node_jobs_may_reach_only_ssh_on_the_nodes_and_dns() {
    let full = render(&["-f", "tests/helm/full-values.yaml"]).expect("full values render");
    let policy = full
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], "node-upgrades");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchExpressions"][0]["key"],
        upchain_api::NODE_LABEL
    );
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(spec["ingress"], serde_json::json!([]));
    let egress = spec["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 2);
    assert_eq!(
        egress[0]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "fd00:20::/64"}}])
    );
    assert_eq!(
        egress[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 2222}])
    );
    assert!(
        egress[1]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .all(|p| p["port"] == 53)
    );
}

#[test]
fn the_chart_asks_for_what_only_the_installation_knows_and_refuses_root_for_any_address() {
    let bare = crate::harness::helm()
        .args([
            "template",
            "upchain",
            "charts/upchain",
            "--namespace",
            "upchain-system",
        ])
        .output()
        .expect("helm");
    assert!(!bare.status.success());
    let said = String::from_utf8_lossy(&bare.stderr);
    assert!(
        said.contains("policy.runner.image.digest is required"),
        "{said}"
    );
    let error = render(&[
        "--set",
        "policy.runner.image.digest=",
        "--set",
        "policy.runner.image.allowTag=false",
    ])
    .expect_err("no digest");
    assert!(
        error.contains("policy.runner.image.digest is required"),
        "{error}"
    );
    let error = render(&["--set-json", "networkPolicy.nodeCIDRs=[]"]).expect_err("no CIDRs");
    assert!(
        error.contains("networkPolicy.nodeCIDRs is required"),
        "{error}"
    );
    let error = render(&["--set-json", r#"networkPolicy.nodeCIDRs=["0.0.0.0/0"]"#])
        .expect_err("any address");
    assert!(error.contains("would let node Jobs"), "{error}");
    let by_tag = render(&[
        "--set",
        "policy.runner.image.digest=",
        "--set",
        "policy.runner.image.allowTag=true",
    ])
    .expect("an explicit opt-in");
    let policy = installed_policy(&by_tag);
    assert_eq!(
        policy.runner.image,
        "ghcr.io/upchain-dev/upchain-runner:0.1.0"
    );
    assert!(!policy.runner.require_image_digest);
}

/// The policy the operator reads from the rendered chart.
fn installed_policy(objects: &[serde_json::Value]) -> upchain_core::policy::InstallPolicy {
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "upchain-policy")
        .expect("the policy ConfigMap");
    upchain_core::policy::InstallPolicy::parse(
        config_map["data"]["policy.json"]
            .as_str()
            .expect("policy.json"),
    )
    .unwrap_or_else(|e| panic!("the operator refuses the chart's policy: {e}"))
}

#[test]
fn the_policy_the_chart_renders_is_one_the_operator_starts_with() {
    let policy = installed_policy(&default_chart());
    assert!(upchain_core::policy::is_by_digest(&policy.runner.image));
    assert!(policy.runner.require_image_digest);
    assert_eq!(policy.runner.namespace, "upchain-system");
    assert_eq!(
        policy.runner.repository_urls,
        ["https://pkgs.k8s.io/core:/stable:"]
    );
    assert!(!policy.drain.allow_force);
    assert!(!policy.runner.allow_accept_new_host_keys);
    let full = render(&["-f", "tests/helm/full-values.yaml"]).expect("full values render");
    let policy = installed_policy(&full);
    assert_eq!(policy.runner.namespace, "node-upgrades");
    assert_eq!(policy.runner.ssh_secret.name, "node-upgrade-ssh");
    assert_eq!(policy.runner.script_config_map.name, "node-upgrade");
    assert_eq!(policy.runner.repository_urls.len(), 2);
    assert_eq!(policy.runner.repository_key_urls.len(), 2);
    assert_eq!(policy.runner.tolerations.len(), 2);
    assert!(policy.drain.allow_force);
    // The runner namespace the chart creates enforces restricted; hooks get an account
    // with no token.
    let namespace = full
        .iter()
        .find(|o| o["kind"] == "Namespace")
        .expect("the runner namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let hooks = full
        .iter()
        .find(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == "upchain-hooks")
        .expect("the hooks' account");
    assert_eq!(hooks["metadata"]["namespace"], "node-upgrades");
    assert_eq!(hooks["automountServiceAccountToken"], false);
    assert!(
        grants_to(&full, "node-upgrades", "upchain-hooks").is_empty(),
        "no RBAC for hooks"
    );
}
