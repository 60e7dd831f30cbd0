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
    /// A step that sets up the next probes: sent to both, its answers not compared.
    setup: bool,
}

fn post(name: &'static str, path: &str, body: Value) -> Probe {
    Probe {
        name,
        method: "POST",
        path: path.to_owned(),
        body: Some(body),
        setup: false,
    }
}

/// A request that prepares the probes after it.
fn setup(name: &'static str, path: &str, body: Value) -> Probe {
    Probe {
        setup: true,
        ..post(name, path, body)
    }
}

fn get(name: &'static str, path: &str) -> Probe {
    Probe {
        name,
        method: "GET",
        path: path.to_owned(),
        body: None,
        setup: false,
    }
}

/// Differences that stay, and why they do not matter to upchain.
const KNOWN: &[(&str, &str)] = &[];

fn job(spec: Value, labels: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "probe-", "labels": labels},
        "spec": {"template": {"spec": spec}}})
}

fn probes() -> Vec<Probe> {
    let container = json!([{"name": "c", "image": "registry.example.org/c:1"}]);
    vec![
        get("/version", "/version"),
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
            "a Node with a taint effect that does not exist",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "probe-node"},
                "spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}}),
        ),
    ]
}

async fn send(client: &Client, probe: &Probe) -> u16 {
    let body = probe
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let request = Request::builder()
        .method(probe.method)
        .uri(&probe.path)
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    match client.send(request.map(Into::into)).await {
        Ok(response) => response.status().as_u16(),
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("{}: {e}", probe.name),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_answers_as_a_real_api_server_does() {
    let Some(cluster) = ControlPlane::up(false) else {
        return;
    };
    let real = cluster.client().await;
    let (_sim, simulated) = crate::harness::simulated(SimConfig {
        workloads: false,
        ..SimConfig::default()
    })
    .await;
    let mut differences = Vec::new();
    for probe in probes() {
        let (expected, got) = (send(&real, &probe).await, send(&simulated, &probe).await);
        if expected != got && !probe.setup {
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
