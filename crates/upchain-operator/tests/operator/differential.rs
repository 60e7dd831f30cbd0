//! Differential probes: the same requests against the simulator and a real kube-apiserver,
//! compared by status code. Each either agrees, or is in [`KNOWN`] with why it does not
//! matter (docs/simulator.md lists the same); a known difference that went away fails too,
//! so the list stays true.

use http::Request;
use kube::Client;
use serde_json::{Value, json};
use upchain_sim::SimConfig;

use crate::real_api::ControlPlane;

/// A request, sent as is to both servers.
struct Probe {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    content_type: &'static str,
    role: Role,
}

enum Role {
    /// Compared by status code, and by what `fields` picks from both answers.
    Compared { fields: Option<fn(&Value) -> Value> },
    /// Sets up the next probes: sent to both, its answers not compared.
    Setup,
    /// Sets up, then is sent again (a GET) until the answer satisfies `ready`, for what a
    /// controller does in its own time.
    SetupUntil { ready: fn(&Value) -> bool },
}

fn request(name: &'static str, method: &'static str, path: &str, body: Option<Value>) -> Probe {
    Probe {
        name,
        method,
        path: path.to_owned(),
        body,
        content_type: "application/json",
        role: Role::Compared { fields: None },
    }
}

fn get(name: &'static str, path: &str) -> Probe {
    request(name, "GET", path, None)
}

fn post(name: &'static str, path: &str, body: Value) -> Probe {
    request(name, "POST", path, Some(body))
}

fn delete(name: &'static str, path: &str, options: Option<Value>) -> Probe {
    request(name, "DELETE", path, options)
}

fn merge_patch(name: &'static str, path: &str, body: Value) -> Probe {
    Probe {
        content_type: "application/merge-patch+json",
        ..request(name, "PATCH", path, Some(body))
    }
}

fn apply(name: &'static str, path: &str, body: Value) -> Probe {
    Probe {
        content_type: "application/apply-patch+yaml",
        ..request(
            name,
            "PATCH",
            &format!("{path}?fieldManager=probe&force=true"),
            Some(body),
        )
    }
}

/// Sets Pod `pod` in `default` Running, its Ready condition `ready`, as a kubelet would.
fn running(name: &'static str, pod: &str, ready: &str) -> Probe {
    merge_patch(
        name,
        &format!("/api/v1/namespaces/default/pods/{pod}/status"),
        json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": ready}, {"type": "PodScheduled", "status": "True"}]}}),
    )
    .setup()
}

/// An eviction of Pod `pod` in `default`.
fn evict(name: &'static str, pod: &str) -> Probe {
    post(
        name,
        &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod}}),
    )
}

/// A binding of Pod `pod` in `default` to `node`, as a scheduler posts it.
fn bind(name: &'static str, pod: &str, node: &str) -> Probe {
    post(
        name,
        &format!("/api/v1/namespaces/default/pods/{pod}/binding"),
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}),
    )
}

/// A request that prepares the probes after it.
fn setup(name: &'static str, path: &str, body: Value) -> Probe {
    post(name, path, body).setup()
}

impl Probe {
    fn setup(self) -> Self {
        Self {
            role: Role::Setup,
            ..self
        }
    }

    /// Compares what `fields` picks from the answers too.
    fn fields(self, fields: fn(&Value) -> Value) -> Self {
        Self {
            role: Role::Compared {
                fields: Some(fields),
            },
            ..self
        }
    }

    /// Waits for a GET of the same path to satisfy `ready`.
    fn until(self, ready: fn(&Value) -> bool) -> Self {
        Self {
            role: Role::SetupUntil { ready },
            ..self
        }
    }
}

/// Which of `names` are among the `name`s of `items` in `answer[list]`.
fn present(answer: &Value, list: &str, names: &[&str]) -> Value {
    let listed: Vec<&str> = answer[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str())
        .collect();
    json!(
        names
            .iter()
            .map(|n| (*n, listed.contains(n)))
            .collect::<Vec<_>>()
    )
}

fn taint_keys(node: &Value) -> Value {
    json!(
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "node.kubernetes.io/unschedulable")
    )
}

/// Differences that stay, and why they do not matter to upchain.
const KNOWN: &[(&str, &str)] = &[];

fn job(spec: Value, labels: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "probe-", "labels": labels},
        "spec": {"template": {"spec": spec}}})
}

fn job_named(name: &str, image: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": image}]}}}})
}

/// A K8sUpgrade named `analysed` with one analysis check.
fn analysed(check: Value) -> Value {
    json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "analysed"},
        "spec": {"targetVersion": "1.35.2", "gates": {"analysis": [check]}}})
}

/// The CRD as the repository ships it.
fn crd() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/k8supgrades.upchain.dev.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the CRD in crds/");
    serde_yaml::from_str(&text).expect("the CRD parses")
}

fn probes() -> Vec<Probe> {
    let container = json!([{"name": "c", "image": "registry.example.org/c:1"}]);
    vec![
        get("/version", "/version")
            .fields(|v| json!(v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))),
        get("core discovery", "/api/v1").fields(|v| {
            present(
                v,
                "resources",
                &[
                    "pods",
                    "pods/binding",
                    "pods/eviction",
                    "pods/log",
                    "pods/status",
                    "nodes",
                    "nodes/status",
                    "configmaps",
                    "secrets",
                    "events",
                    "namespaces",
                    "serviceaccounts",
                ],
            )
        }),
        get("API groups", "/apis").fields(|v| {
            present(
                v,
                "groups",
                &[
                    "apps",
                    "batch",
                    "policy",
                    "coordination.k8s.io",
                    "events.k8s.io",
                    "apiextensions.k8s.io",
                    "rbac.authorization.k8s.io",
                    "authorization.k8s.io",
                ],
            )
        }),
        post(
            "a SelfSubjectAccessReview",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": "list", "resource": "nodes"}}}),
        )
        .fields(|v| v["status"]["allowed"].clone()),
        post(
            "a ClusterRole",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "probe"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        ),
        get("list pods", "/api/v1/namespaces/default/pods"),
        get(
            "a label selector that does not parse",
            "/api/v1/namespaces/default/pods?labelSelector=a%20in%20(",
        ),
        get(
            "a field selector Pods do not support",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.foo%3Dbar",
        ),
        get(
            "Pods on a node and not finished (the drain's field selector)",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dworker-1%2Cstatus.phase!%3DSucceeded%2Cstatus.phase!%3DFailed",
        ),
        get(
            "a missing namespace's ConfigMap",
            "/api/v1/namespaces/nowhere/configmaps/x",
        ),
        post(
            "an Event whose note is over 1,024 bytes",
            "/apis/events.k8s.io/v1/namespaces/default/events",
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"generateName": "e-"}, "note": "x".repeat(1025),
                "reason": "Blocked", "action": "Blocked", "type": "Warning",
                "reportingController": "upchain", "reportingInstance": "upchain",
                "eventTime": "2026-11-30T00:00:00.000000Z"}),
        ),
        post(
            "a Job whose Pods restart Always",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Always", "containers": container}),
                json!({}),
            ),
        ),
        post(
            "a Job without containers",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Never", "containers": []}),
                json!({}),
            ),
        ),
        post(
            "a Job with a label value over 63 characters",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Never", "containers": container}),
                json!({"upchain.dev/node": "n".repeat(64)}),
            ),
        ),
        post(
            "a Job kept off two nodes by one node-field requirement",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Never", "containers": container,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name",
                            "operator": "NotIn", "values": ["worker-1", "worker-2"]}]}]}}}}),
                json!({}),
            ),
        ),
        post(
            "a Job kept off two nodes by a requirement each",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Never", "containers": container,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "NotIn", "values": ["worker-1"]},
                            {"key": "metadata.name", "operator": "NotIn", "values": ["worker-2"]}]}]}}}}),
                json!({}),
            ),
        ),
        post(
            "a good Job",
            "/apis/batch/v1/namespaces/default/jobs",
            job(
                json!({"restartPolicy": "Never", "containers": container}),
                json!({}),
            ),
        ),
        post(
            "a ConfigMap whose name is not a DNS name",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}),
        ),
        post(
            "a ConfigMap over 1 MiB",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
                "data": {"x": "x".repeat(1024 * 1024 + 1)}}),
        ),
        post(
            "a ConfigMap in another namespace than its path's",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "elsewhere", "namespace": "kube-system"}}),
        ),
        post(
            "a Lease of 0 seconds",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "zero"}, "spec": {"leaseDurationSeconds": 0}}),
        ),
        post(
            "a CronJob whose schedule does not parse",
            "/apis/batch/v1/namespaces/default/cronjobs",
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "bad"},
                "spec": {"schedule": "every night", "jobTemplate": {"spec": {"template": {"spec":
                    {"restartPolicy": "Never", "containers": container}}}}}}),
        ),
        setup(
            "the default ServiceAccount, which Pods need",
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        ),
        post(
            "a Pod with two containers that no node can run",
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
                "spec": {"nodeSelector": {"probe": "nowhere"}, "containers": [{"name": "a", "image": "registry.example.org/a:1"},
                                        {"name": "b", "image": "registry.example.org/b:1"}]}}),
        ),
        get(
            "the log of a Pod with two containers, naming none",
            "/api/v1/namespaces/default/pods/two/log",
        ),
        get(
            "the log of a Pod no node runs yet",
            "/api/v1/namespaces/default/pods/two/log?container=a",
        ),
        post(
            "a ConfigMap whose annotations are over 256 KiB",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "annotated",
                "annotations": {"x": "x".repeat(256 * 1024)}}}),
        ),
        setup(
            "a ConfigMap held by a finalizer",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "held", "finalizers": ["example.org/hold"]}}),
        ),
        delete(
            "deleting it with a uid precondition that does not hold",
            "/api/v1/namespaces/default/configmaps/held",
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})),
        ),
        delete(
            "deleting it",
            "/api/v1/namespaces/default/configmaps/held",
            None,
        )
        .fields(|v| json!(v["metadata"]["deletionTimestamp"].is_string())),
        merge_patch(
            "adding a finalizer to it while it is being deleted",
            "/api/v1/namespaces/default/configmaps/held",
            json!({"metadata": {"finalizers": ["example.org/hold", "example.org/another"]}}),
        ),
        setup(
            "a node with no kubelet",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "probe-kubelet"}}),
        ),
        merge_patch(
            "cordoning it",
            "/api/v1/nodes/probe-kubelet",
            json!({"spec": {"unschedulable": true}}),
        )
        .setup(),
        get("the cordoned node", "/api/v1/nodes/probe-kubelet")
            .until(|node| taint_keys(node) == json!(true)),
        get("the cordoned node's taints", "/api/v1/nodes/probe-kubelet").fields(taint_keys),
        setup(
            "a Pod bound to it",
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "guarded", "labels": {"app": "guarded"}},
                "spec": {"nodeName": "probe-kubelet", "containers": container}}),
        ),
        running("the Pod running and not Ready", "guarded", "False"),
        setup(
            "a budget for it with no margin",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "guarded"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}),
        ),
        get(
            "the budget, observed",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guarded",
        )
        .until(|pdb| pdb["status"]["observedGeneration"] == 1),
        evict(
            "evicting the Pod that is not Ready under that budget",
            "guarded",
        ),
        delete(
            "deleting a Pod bound to a node",
            "/api/v1/namespaces/default/pods/guarded",
            None,
        )
        .fields(|v| v["metadata"]["deletionGracePeriodSeconds"].clone()),
        get(
            "the Pod, terminating for its grace period",
            "/api/v1/namespaces/default/pods/guarded",
        )
        .fields(|v| json!(v["metadata"]["deletionTimestamp"].is_string())),
        evict("evicting the terminating Pod", "guarded"),
        setup(
            "a Pod no scheduler has bound",
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unbound"},
                "spec": {"nodeSelector": {"probe": "nowhere"}, "containers": container}}),
        ),
        bind("binding it", "unbound", "probe-kubelet"),
        bind("binding it again", "unbound", "probe-kubelet"),
        // A StatefulSet of two under `maxUnavailable: 1`: a terminating Pod is still
        // expected, so the second eviction is refused while the first Pod terminates. Its
        // Pods go on a node made just now: the node lifecycle controller marks the Pods of
        // a node that never heartbeats not Ready once its grace period is over.
        setup(
            "a node for the pair",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "probe-pair"}}),
        ),
        setup(
            "a StatefulSet of two",
            "/apis/apps/v1/namespaces/default/statefulsets",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "pair"},
                "spec": {"replicas": 2, "podManagementPolicy": "Parallel", "serviceName": "pair",
                    "selector": {"matchLabels": {"app": "pair"}},
                    "template": {"metadata": {"labels": {"app": "pair"}},
                        "spec": {"terminationGracePeriodSeconds": 3600, "containers": container}}}}),
        ),
        get(
            "the pair's second Pod",
            "/api/v1/namespaces/default/pods/pair-1",
        )
        .until(|pod| pod["metadata"]["name"] == "pair-1"),
        bind("binding the pair's first", "pair-0", "probe-pair").setup(),
        bind("binding the pair's second", "pair-1", "probe-pair").setup(),
        running("the pair's first Ready", "pair-0", "True"),
        running("the pair's second Ready", "pair-1", "True"),
        setup(
            "a budget of one unavailable for the pair",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "pair"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "pair"}}}}),
        ),
        get(
            "the pair's budget, both healthy",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/pair",
        )
        .until(|pdb| pdb["status"]["currentHealthy"] == 2 && pdb["status"]["expectedPods"] == 2),
        evict("evicting one of the pair", "pair-0"),
        evict("evicting the other while the first terminates", "pair-1"),
        get(
            "the pair's budget while one terminates",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/pair",
        )
        .fields(|pdb| {
            json!([
                pdb["status"]["expectedPods"],
                pdb["status"]["currentHealthy"],
                pdb["status"]["disruptionsAllowed"]
            ])
        }),
        apply(
            "a Job applied",
            "/apis/batch/v1/namespaces/default/jobs/applied",
            job_named("applied", "registry.example.org/c:1"),
        )
        .setup(),
        apply(
            "the same Job applied with another Pod template",
            "/apis/batch/v1/namespaces/default/jobs/applied",
            job_named("applied", "registry.example.org/c:2"),
        ),
        setup(
            "the K8sUpgrade CRD",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd(),
        ),
        get(
            "the CRD, established",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/k8supgrades.upchain.dev",
        )
        .until(|crd| {
            crd["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        }),
        apply(
            "a K8sUpgrade",
            "/apis/upchain.dev/v1alpha1/k8supgrades/probe",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "probe"}, "spec": {"targetVersion": "1.35.2"}}),
        )
        .setup(),
        post(
            "a K8sUpgrade whose hook runs as a ServiceAccount (a CEL rule inside a kept-as-given template)",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "hooked"},
                "spec": {"targetVersion": "1.35.2", "hooks": {"pre": {"namespace": "upchain-system",
                    "template": {"spec": {"template": {"spec": {"serviceAccountName": "upchain",
                        "containers": [{"name": "c", "image": "i"}]}}}}}}}}),
        ),
        post(
            "a K8sUpgrade whose hook mounts a Secret (a CEL rule on each volume)",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "hooked"},
                "spec": {"targetVersion": "1.35.2", "hooks": {"pre": {"namespace": "upchain-system",
                    "template": {"spec": {"template": {"spec": {
                        "volumes": [{"name": "k", "secret": {"secretName": "upchain-ssh"}}],
                        "containers": [{"name": "c", "image": "i"}]}}}}}}}}),
        ),
        post(
            "the same hook with an emptyDir, and unknown fields kept",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "hooked"},
                "spec": {"targetVersion": "1.35.2", "hooks": {"pre": {"namespace": "upchain-system",
                    "template": {"spec": {"backoffLimit": 1, "template": {"spec": {
                        "volumes": [{"name": "k", "emptyDir": {}}],
                        "containers": [{"name": "c", "image": "i"}]}}}}}}}}),
        ),
        post(
            "a K8sUpgrade with an analysis check and no Prometheus to ask (a CEL rule on gates)",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            analysed(json!({"name": "errors",
                    "query": "up", "threshold": {"operator": "LessThan", "value": 0.01},
                    "when": ["AfterBatch"]})),
        ),
        post(
            "the same with its own url, a fractional threshold and a CEL expression beside it",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            analysed(json!({"name": "errors",
                    "url": "http://thanos:9090", "query": "up",
                    "threshold": {"operator": "LessThan", "value": 0.01},
                    "expression": "true", "when": ["AfterBatch"]})),
        ),
        post(
            "an admitted analysis check",
            "/apis/upchain.dev/v1alpha1/k8supgrades",
            analysed(json!({"name": "errors",
                    "url": "http://thanos:9090", "query": "up",
                    "threshold": {"operator": "GreaterThanOrEqual", "value": 172800},
                    "when": ["BeforeRun", "BeforeBatch"], "onEmpty": "Wait"})),
        ),
        apply(
            "a status apply with an analysis record",
            "/apis/upchain.dev/v1alpha1/k8supgrades/probe/status",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "probe"}, "status": {"analysis": [{"name": "errors",
                    "stage": "AfterBatch", "verdict": "Failed", "passes": 0, "failures": 1,
                    "lastValue": "{service=\"checkout\"} 0.2",
                    "lastMeasuredAt": "2026-12-01T01:00:00Z"}]}}),
        ),
        apply(
            "a status apply with a field the CRD does not declare",
            "/apis/upchain.dev/v1alpha1/k8supgrades/probe/status",
            json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
                "metadata": {"name": "probe"}, "status": {"notInTheSchema": true}}),
        ),
        post(
            "a Node whose pod CIDR is not an address (10.244.256.0/24)",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "probe-cidr"},
                "spec": {"podCIDR": "10.244.256.0/24", "podCIDRs": ["10.244.256.0/24"]}}),
        ),
        post(
            "a Node with a taint effect that does not exist",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "probe-node"},
                "spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}}),
        ),
    ]
}

/// The status code and the body (JSON, or null) of `probe` sent to `client`.
async fn send(client: &Client, probe: &Probe, method: &str) -> (u16, Value) {
    let body = probe
        .body
        .as_ref()
        .filter(|_| method != "GET")
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(&probe.path)
        .header("content-type", probe.content_type)
        .body(body)
        .expect("request");
    let response = client
        .send(request.map(Into::into))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", probe.name));
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// What `probe` shows of one server: its status code, and the fields it compares.
async fn answer(client: &Client, probe: &Probe) -> Option<(u16, Value)> {
    let (status, body) = send(client, probe, probe.method).await;
    match &probe.role {
        Role::Compared { fields } => Some((status, fields.map_or(Value::Null, |f| f(&body)))),
        Role::Setup => None,
        Role::SetupUntil { ready } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut body = body;
            while !ready(&body) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}: not ready after 30 s: {body}",
                    probe.name
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                body = send(client, probe, "GET").await.1;
            }
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_answers_as_a_real_api_server_does() {
    // With the controller manager: budgets' status and the cordon taint are its work.
    let Some(cluster) = ControlPlane::up(true) else {
        return;
    };
    // Each answer as it comes: a client that retries a 429 would wait out the budget.
    let mut config = cluster.config().await.expect("the admin kubeconfig");
    config.default_retry = false;
    let real = Client::try_from(config).expect("a client");
    let (_sim, simulated) = crate::harness::simulated(SimConfig {
        workloads: false,
        ..SimConfig::default()
    })
    .await;
    let mut differences = Vec::new();
    for probe in probes() {
        let (expected, got) = (
            answer(&real, &probe).await,
            answer(&simulated, &probe).await,
        );
        if expected != got {
            differences.push((probe.name, expected, got));
        }
    }
    let unexplained: Vec<_> = differences
        .iter()
        .filter(|(name, ..)| !KNOWN.iter().any(|(known, _)| known == name))
        .collect();
    let gone: Vec<_> = KNOWN
        .iter()
        .filter(|(known, _)| !differences.iter().any(|(name, ..)| name == known))
        .collect();
    assert!(
        unexplained.is_empty() && gone.is_empty(),
        "the simulator answers otherwise (probe, real, simulator): {unexplained:#?}\n\
         known differences that no longer differ: {gone:#?}"
    );
}
