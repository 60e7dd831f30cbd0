//! How long one decision takes as a run of N nodes goes on: the pure phase machine alone,
//! driven through a whole run by a model in which every action takes effect at once.
//!
//!     cargo bench -p upchain-core --bench decide              # 1,000 and 5,000 nodes
//!     cargo bench -p upchain-core --bench decide -- 20000     # any sizes

// A benchmark binary: failing loudly is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use upchain_api::{CONTROL_PLANE_LABEL, K8sUpgrade, NODE_ANNOTATION, Phase};
use upchain_core::gates::{COMPONENTS, ControlPlaneObservation, StaticPod};
use upchain_core::{Action, JobState, Observed, ObservedJob, ObservedNode, decide};

fn node(name: String, control_plane: bool) -> ObservedNode {
    let labels = if control_plane {
        [(CONTROL_PLANE_LABEL.to_owned(), String::new())].into()
    } else {
        BTreeMap::new()
    };
    ObservedNode {
        internal_ip: Some("10.0.0.1".to_owned()),
        name,
        labels,
        kubelet_version: "v1.34.2".to_owned(),
        ready: true,
        unschedulable: false,
        pressure: Vec::new(),
        ready_since: Some(0),
        container_runtime: "containerd://1.7.22".to_owned(),
        prepared: None,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    };
    println!("| nodes | decisions | decide p50 / p99 / max | whole run | largest status |");
    println!("| --- | --- | --- | --- | --- |");
    for size in sizes {
        run(size);
    }
}

fn run(size: usize) {
    let mut upgrade: K8sUpgrade = serde_json::from_value(serde_json::json!({
        "apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "metadata": {"name": "bench", "uid": "uid-1", "generation": 1},
        "spec": {"targetVersion": "1.35.2", "soak": "0s",
                 "snapshotWaiver": {"reason": "the benchmark measures decisions"},
                 "nodes": {"maxUnavailable": (size / 100).max(1)}},
    }))
    .unwrap();
    let mut observed = Observed {
        nodes: (0..size)
            .map(|i| node(format!("node-{i:05}"), i < 3))
            .collect::<Vec<_>>()
            .into(),
        postflight: Some(Default::default()),
        ..Observed::default()
    };
    let mut now = Timestamp::from_second(1_800_000_000).unwrap();
    let mut jobs: BTreeMap<String, String> = BTreeMap::new();
    let mut timings = Vec::new();
    let mut largest = 0;
    let started = Instant::now();
    loop {
        // What the operator reads: the Pods of draining nodes (none left) and the Jobs of
        // the nodes in flight.
        observed.pods = upgrade
            .status
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|n| (n.name.clone(), Vec::new()))
            .collect();
        let in_flight = match upchain_core::needs(&upgrade, &observed.nodes).jobs {
            upchain_core::JobsToRead::OfNodes(nodes) => nodes,
            upchain_core::JobsToRead::All => Vec::new(),
        };
        observed.jobs = jobs
            .iter()
            .filter(|(_, node)| in_flight.contains(node))
            .map(|(name, _)| ObservedJob {
                name: name.clone(),
                state: JobState::Succeeded,
                evidence: None,
                report: None,
            })
            .collect();
        // The control plane's static Pods follow their node's kubelet, all Ready;
        // kubeadm-config moves with the first control-plane node.
        let kubeadm_version = observed
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(CONTROL_PLANE_LABEL))
            .filter_map(|n| upchain_core::KubeVersion::parse_reported(&n.kubelet_version).ok())
            .max()
            .ok_or_else(|| "no control-plane node".to_owned());
        observed.gates.control_plane = Some(Ok(ControlPlaneObservation {
            kubeadm_version,
            // The etcd check's Jobs are not played here: the decisions measured are the
            // nodes'.
            etcd_external: true,
            api_servers: Vec::new(),
            static_pods: observed
                .nodes
                .iter()
                .filter(|n| n.labels.contains_key(CONTROL_PLANE_LABEL))
                .flat_map(|n| {
                    COMPONENTS
                        .into_iter()
                        .chain(["etcd"])
                        .map(|component| StaticPod {
                            node: n.name.clone(),
                            component: component.to_owned(),
                            image: format!("registry.k8s.io/{component}:{}", n.kubelet_version),
                            running: true,
                            restarts: 0,
                        })
                })
                .collect(),
            readyz: Ok(()),
        }));
        let before = Instant::now();
        let decision = decide(&upgrade, &observed, now);
        timings.push(before.elapsed());
        let done = matches!(
            decision.status.phase,
            Some(Phase::Succeeded | Phase::Failed)
        );
        assert_ne!(
            decision.status.phase,
            Some(Phase::Failed),
            "{:?}",
            decision.status
        );
        let body = serde_json::to_vec(&decision.status).unwrap();
        if body.len() > largest {
            largest = body.len();
            if let Ok(path) = std::env::var("UPCHAIN_BENCH_LARGEST_STATUS") {
                std::fs::write(path, &body).unwrap();
            }
        }
        upgrade.status = Some(decision.status);
        for action in &decision.actions {
            let set = |observed: &mut Observed, name: &str, f: &dyn Fn(&mut ObservedNode)| {
                if let Some(n) = std::sync::Arc::make_mut(&mut observed.nodes)
                    .iter_mut()
                    .find(|n| n.name == name)
                {
                    f(n);
                }
            };
            match action {
                Action::Cordon { node } => set(&mut observed, node, &|n| n.unschedulable = true),
                Action::Uncordon { node } => set(&mut observed, node, &|n| n.unschedulable = false),
                Action::MarkPrepared { node, run } => {
                    set(&mut observed, node, &|n| n.prepared = Some(run.clone()))
                }
                // Every Job succeeds at once; an upgrade Job's node is back at the target.
                Action::CreateJob(job) => {
                    let node = job.metadata.annotations.as_ref().unwrap()[NODE_ANNOTATION].clone();
                    let app = &job.metadata.labels.as_ref().unwrap()["app.kubernetes.io/name"];
                    if app == "upchain-node-upgrade" {
                        set(&mut observed, &node, &|n| {
                            n.kubelet_version = "v1.35.2".to_owned()
                        });
                    }
                    jobs.insert(job.metadata.name.clone().unwrap(), node);
                }
                _ => {}
            }
        }
        if done {
            break;
        }
        now += Duration::from_secs(1);
        assert!(timings.len() < size * 20, "the run never ends");
    }
    let whole = started.elapsed();
    timings.sort();
    let at = |q: f64| timings[((timings.len() - 1) as f64 * q).round() as usize];
    println!(
        "| {size} | {} | {:?} / {:?} / {:?} | {:?} | {} kB |",
        timings.len(),
        at(0.5),
        at(0.99),
        timings[timings.len() - 1],
        whole,
        largest / 1000
    );
}
