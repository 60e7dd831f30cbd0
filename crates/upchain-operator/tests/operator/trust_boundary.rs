//! The trust boundary on a real kube-apiserver with the chart's RBAC, policy and
//! admission policy, the operator acting as the chart's ServiceAccount: a K8sUpgrade
//! asks, the installation decides. Hostile K8sUpgrades are refused at admission where
//! the CRD can say it, and otherwise Blocked by the operator, naming the field and the
//! policy, with no Pod created; the ServiceAccount may do exactly what the allow-list
//! says; and on Nodes it may cordon and keep its own annotations, nothing else.

use std::collections::BTreeSet;
use std::time::Duration;

use upchain_sim::player::PlayerConfig;

use crate::real_api::{RealRun, kubectl, try_kubectl, until};

/// A hook template around a Pod that Pod Security restricted admits, plus `extra` (which
/// may give the containers instead).
fn hook(extra: &str) -> String {
    let containers = if extra.contains("containers:") {
        String::new()
    } else {
        container(
            "                  securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n",
        )
    };
    format!(
        "  hooks:\n    pre:\n      namespace: upchain-system\n      template:\n        spec:\n          \
         template:\n            spec:\n              restartPolicy: Never\n              \
         securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}\n\
         {containers}{extra}"
    )
}

/// Pod fields of a hook, indented under its template's spec.
fn pod_field(yaml: &str) -> String {
    format!("              {yaml}\n")
}

/// A container of a hook with `security` and `env` lines.
fn container(lines: &str) -> String {
    format!(
        "              containers:\n                - name: smoke\n                  image: registry.example.org/smoke:1\n{lines}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_k8supgrade_asks_and_the_installation_decides_on_a_real_api_server() {
    let Some(mut run) = RealRun::start(PlayerConfig {
        control_planes: 1,
        workers: 1,
        ..PlayerConfig::default()
    })
    .await
    else {
        return;
    };
    tokio::task::block_in_place(|| {
        refused_at_admission(&run);
        run.run_operator();
        blocked_by_the_operator(&run);
        node_writes_are_cordons_and_upchain_annotations_only(&run);
    });
}

/// What the CRD can say of a hook is refused before the object exists.
fn refused_at_admission(run: &RealRun) {
    let cases = [
        (
            pod_field("serviceAccountName: upchain"),
            "a hook runs as the ServiceAccount upchain-hooks",
        ),
        (
            pod_field("serviceAccount: upchain"),
            "a hook runs as the ServiceAccount upchain-hooks",
        ),
        (
            pod_field("automountServiceAccountToken: true"),
            "a hook runs as the ServiceAccount upchain-hooks",
        ),
        (
            pod_field("hostPID: true"),
            "may not use the host's network, PID or IPC namespace",
        ),
        (
            pod_field("hostNetwork: true"),
            "may not use the host's network, PID or IPC namespace",
        ),
        (
            pod_field("volumes: [{name: key, secret: {secretName: upchain-ssh}}]"),
            "may not mount a Secret or a hostPath",
        ),
        (
            pod_field("volumes: [{name: root, hostPath: {path: /}}]"),
            "may not mount a Secret or a hostPath",
        ),
    ];
    let runner_fields_gone = [
        // Once the spec's, now the installation's: kubectl's strict field validation names them.
        (
            "  runner: {namespace: kube-system, allowSystemNamespace: true}\n",
            "unknown field \"spec.runner.allowSystemNamespace\"",
        ),
        (
            "  runner: {requireImageDigest: false}\n",
            "unknown field \"spec.runner.requireImageDigest\"",
        ),
    ];
    for (extra, expected) in runner_fields_gone {
        let refused = try_kubectl(
            run.admin(),
            &["apply", "-f", "-"],
            Some(&upgrade("hostile", extra)),
        )
        .expect_err("refused");
        assert!(refused.contains(expected), "{extra}: {refused}");
    }
    for (extra, expected) in cases {
        let manifest = upgrade("hostile", &hook(&extra));
        let refused = try_kubectl(run.admin(), &["apply", "-f", "-"], Some(&manifest))
            .expect_err("admission refuses it");
        assert!(refused.contains(expected), "{extra}: {refused}");
        assert!(
            try_kubectl(run.admin(), &["get", "k8su", "hostile"], None).is_err(),
            "{extra}: nothing was stored"
        );
    }
}

/// What only the installation knows is refused by the operator: Blocked (or, for a hook
/// with powers admission cannot see, Failed as an invalid spec), naming the field and the
/// policy, and no Job or Pod is created.
fn blocked_by_the_operator(run: &RealRun) {
    let runner = |line: &str| format!("  runner:\n    {line}\n");
    let cases = [
        (
            runner("image: registry.example.org/evil:latest"),
            "spec.runner.image is registry.example.org/evil:latest, but the installation's policy.runner.image",
        ),
        (
            runner("namespace: default"),
            "spec.runner.namespace is default",
        ),
        (
            runner("sshSecret: {name: fleet-root, key: id}"),
            "spec.runner.sshSecret is fleet-root/id",
        ),
        (
            runner("scriptConfigMap: {name: mine, key: run.sh}"),
            "spec.runner.scriptConfigMap is mine/run.sh",
        ),
        (
            runner("knownHosts: {name: mine, key: hosts}"),
            "spec.runner.knownHosts is mine/hosts",
        ),
        (
            runner("hostKeyPolicy: AcceptNew"),
            "policy.runner.allowAcceptNewHostKeys",
        ),
        (
            runner("repository: {url: 'https://evil.example.org/k8s'}"),
            "spec.runner.repository.url is https://evil.example.org/k8s, which is not in the installation's policy.runner.repositoryUrls",
        ),
        (
            runner("repository: {keyUrl: 'https://evil.example.org/key'}"),
            "policy.runner.repositoryKeyUrls",
        ),
        (
            runner("tolerations: [{operator: Exists}]"),
            "spec.runner.tolerations has",
        ),
        (
            "  drain: {onTimeout: Force}\n".to_owned(),
            "spec.drain.onTimeout is Force",
        ),
        (
            "  drain: {deletePdbBlockedSingleReplicaPods: true}\n".to_owned(),
            "policy.drain.allowForce",
        ),
    ];
    for (extra, expected) in &cases {
        blocked_with(run, extra, "Blocked", expected);
    }
    let hook_cases = [
        (
            container(
                "                  env: [{name: K, valueFrom: {secretKeyRef: {name: upchain-ssh, key: ssh-privatekey}}}]\n                  securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n",
            ),
            "reads a Secret into its environment",
        ),
        (
            container(
                "                  securityContext: {privileged: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n",
            ),
            "must not set securityContext.privileged",
        ),
        (
            container(
                "                  securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}\n",
            ),
            "adds capabilities NET_BIND_SERVICE",
        ),
        (
            pod_field(
                "volumes: [{name: t, projected: {sources: [{serviceAccountToken: {path: t}}]}}]",
            ),
            "holds a ServiceAccount token",
        ),
    ];
    for (extra, expected) in &hook_cases {
        blocked_with(run, &hook(extra), "Failed", expected);
    }
}

/// Applies K8sUpgrade `hostile` with `extra`, waits for `phase` and the reason, checks
/// that nothing ran, and deletes it.
fn blocked_with(run: &RealRun, extra: &str, phase: &str, expected: &str) {
    run.kubectl(&["apply", "-f", "-"], Some(&upgrade("hostile", extra)));
    let field = |path: &str| {
        run.kubectl(
            &[
                "get",
                "k8su",
                "hostile",
                "-o",
                &format!("jsonpath={{{path}}}"),
            ],
            None,
        )
    };
    until(
        &format!("{phase} naming {expected}"),
        Duration::from_secs(60),
        || {
            field(".status.phase") == phase
                && (field(".status.blockedReasons").contains(expected)
                    || field(".status.conditions").contains(expected))
        },
    );
    let jobs = run.kubectl(&["get", "jobs,pods", "-A", "-o", "name"], None);
    assert!(
        !jobs.contains("job.batch/") && !jobs.contains("hostile"),
        "{extra}: nothing ran: {jobs}"
    );
    run.kubectl(&["delete", "k8su", "hostile", "--wait=true"], None);
}

/// A K8sUpgrade named `name` to 1.35.2 with `extra` spec lines.
fn upgrade(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: upchain.dev/v1alpha1\nkind: K8sUpgrade\nmetadata: {{name: {name}}}\n\
         spec:\n  targetVersion: 1.35.2\n  gates: {{quietPeriod: 0s, recheckInterval: 5s}}\n  \
         snapshotWaiver: {{reason: the test control plane's etcd is disposable}}\n{extra}"
    )
}

/// The admission policy: the ServiceAccount cordons and keeps upchain.dev/ annotations,
/// and may change nothing else of a Node.
fn node_writes_are_cordons_and_upchain_annotations_only(run: &RealRun) {
    let sa = &run.operator_kubeconfig;
    let as_upchain = |args: &[&str]| try_kubectl(sa, args, None);
    let refusals = [
        (
            &["label", "node", "worker-1", "pool=stolen"][..],
            "may not change a Node's labels",
        ),
        (
            &["annotate", "node", "worker-1", "other.example.org/x=y"][..],
            "may change only the upchain.dev/ annotations",
        ),
        (
            &["taint", "node", "worker-1", "k=v:NoSchedule"][..],
            "may change only spec.unschedulable",
        ),
    ];
    for (args, expected) in refusals {
        let error = as_upchain(args).expect_err("refused");
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    as_upchain(&["cordon", "worker-1"]).expect("a cordon is admitted");
    as_upchain(&["annotate", "node", "worker-1", "upchain.dev/note=kept"])
        .expect("its own annotation");
    as_upchain(&["uncordon", "worker-1"]).expect("an uncordon is admitted");
    let grants = granted(sa);
    let allowed = allow_list();
    let missing: Vec<_> = allowed.difference(&grants).collect();
    let extra: Vec<_> = grants.difference(&allowed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the ServiceAccount's grants differ from the allow-list (docs/install.md):\n\
         missing (a feature would fail with 403): {missing:#?}\nbeyond it: {extra:#?}"
    );
}

/// One grant: namespace ("" for the cluster-wide view), resource or URL, name, verb.
type Grant = (String, String, String, String);

/// The runner, system, node-lease and an unrelated namespace.
const NAMESPACES: [&str; 4] = [
    "upchain-system",
    "kube-system",
    "kube-node-lease",
    "default",
];

/// What `kubectl auth can-i --list` says the ServiceAccount may do in [`NAMESPACES`].
fn granted(kubeconfig: &std::path::Path) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for namespace in NAMESPACES {
        let listed = kubectl(
            kubeconfig,
            &["auth", "can-i", "--list", "-n", namespace],
            None,
        );
        for line in listed.lines().skip(1) {
            let columns: Vec<&str> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            let (resource, name, verbs) = match columns.as_slice() {
                [url, "[]", verbs] if url.starts_with('[') => {
                    (url.trim_matches(['[', ']']), "[]", *verbs)
                }
                [resource, "[]", name, verbs] => (*resource, *name, *verbs),
                _ => panic!("unexpected can-i line: {line:?}"),
            };
            for verb in verbs.trim_matches(['[', ']']).split(' ') {
                grants.insert((
                    namespace.to_owned(),
                    resource.to_owned(),
                    name.trim_matches(['[', ']']).to_owned(),
                    verb.to_owned(),
                ));
            }
        }
    }
    grants
}

/// Everything the operator needs, in each namespace can-i was asked about: what
/// docs/install.md lists, plus what Kubernetes grants every authenticated user.
fn allow_list() -> BTreeSet<Grant> {
    let everywhere: &[(&str, &str, &[&str])] = &[
        (
            "k8supgrades.upchain.dev",
            "",
            &["get", "list", "watch", "patch"],
        ),
        ("k8supgrades.upchain.dev/status", "", &["patch"]),
        (
            "customresourcedefinitions.apiextensions.k8s.io",
            "k8supgrades.upchain.dev",
            &["get"],
        ),
        ("nodes", "", &["get", "list", "watch", "patch"]),
        ("pods", "", &["list", "watch"]),
        ("pods/eviction", "", &["create"]),
        ("poddisruptionbudgets.policy", "", &["list", "watch"]),
        ("namespaces", "", &["get"]),
        ("deployments.apps", "", &["get", "list"]),
        ("daemonsets.apps", "", &["get", "list"]),
        ("statefulsets.apps", "", &["get", "list"]),
        ("events.events.k8s.io", "", &["create", "patch"]),
        ("tokenreviews.authentication.k8s.io", "", &["create"]),
        ("subjectaccessreviews.authorization.k8s.io", "", &["create"]),
        ("/readyz", "", &["get"]),
        ("/metrics", "", &["get"]),
        // Every authenticated user's (system:basic-user, system:discovery,
        // system:public-info-viewer, system:service-account-issuer-discovery).
        ("selfsubjectreviews.authentication.k8s.io", "", &["create"]),
        (
            "selfsubjectaccessreviews.authorization.k8s.io",
            "",
            &["create"],
        ),
        (
            "selfsubjectrulesreviews.authorization.k8s.io",
            "",
            &["create"],
        ),
    ];
    let discovery = [
        "/.well-known/*",
        "/.well-known/openid-configuration/",
        "/.well-known/openid-configuration",
        "/.well-known",
        "/api/*",
        "/api",
        "/apis/*",
        "/apis",
        "/healthz",
        "/livez",
        "/openapi/*",
        "/openapi",
        "/openid/v1/jwks/",
        "/openid/v1/jwks",
        "/version/",
        "/version",
    ];
    let runner: &[(&str, &str, &[&str])] = &[
        (
            "jobs.batch",
            "",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("pods/log", "", &["get"]),
        ("configmaps", "", &["get"]),
        ("secrets", "upchain-ssh", &["get"]),
        ("persistentvolumeclaims", "upchain-etcd-snapshots", &["get"]),
        (
            "leases.coordination.k8s.io",
            "",
            &["get", "list", "watch", "create", "update", "patch"],
        ),
    ];
    // In kube-system, only reading: the etcd check and the snapshot go through the node
    // step, in the runner namespace.
    let system: &[(&str, &str, &[&str])] = &[("configmaps", "kubeadm-config", &["get"])];
    // In kube-node-lease, reading the kubelets' heartbeats.
    let node_leases: &[(&str, &str, &[&str])] = &[("leases.coordination.k8s.io", "", &["get"])];
    let mut allowed = BTreeSet::new();
    for namespace in NAMESPACES {
        let mut add = |rules: &[(&str, &str, &[&str])]| {
            for (resource, name, verbs) in rules {
                for verb in *verbs {
                    allowed.insert((
                        namespace.to_owned(),
                        (*resource).to_owned(),
                        (*name).to_owned(),
                        (*verb).to_owned(),
                    ));
                }
            }
        };
        add(everywhere);
        for url in discovery {
            add(&[(url, "", &["get"])]);
        }
        match namespace {
            "upchain-system" => add(runner),
            "kube-system" => add(system),
            "kube-node-lease" => add(node_leases),
            _ => {}
        }
    }
    allowed
}
