//! What a fresh simulated cluster contains: kubeadm-shaped nodes as large as real ones,
//! static control-plane Pods, CoreDNS, kube-proxy, and a few applications with PDBs.

use serde_json::{Value, json};

use crate::sim::SimConfig;
use crate::store::{ApiError, Store};

/// The label kubeadm puts on control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// Where a kube-apiserver mirror Pod says its API server answers (kubeadm's annotation).
pub const ADVERTISE_ANNOTATION: &str =
    "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint";

/// Names of the seeded nodes: `cp-1..` then `worker-1..`.
pub fn node_names(control_planes: usize, workers: usize) -> Vec<String> {
    (1..=control_planes)
        .map(|i| format!("cp-{i}"))
        .chain((1..=workers).map(|i| format!("worker-{i}")))
        .collect()
}

/// A Node as kubeadm and the kubelet leave it, sized like a real one.
pub fn node(name: &str, index: usize, control_plane: bool, version: &str, now: &str) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
    });
    let mut taints = Vec::new();
    if control_plane {
        labels[CONTROL_PLANE_LABEL] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
        taints.push(json!({"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}));
    }
    // The node's /24 of the pod network 10.64.0.0/10 (room for 16,384 nodes), as the
    // controller manager allocates it.
    let pod_cidr = format!("10.{}.{}.0/24", 64 + index / 256, index % 256);
    let images: Vec<Value> = (0..36)
        .map(|i| {
            json!({"names": [
                format!("registry.example.org/team-{}/service-{i}@sha256:{:064x}", i % 7, (index as u128 + 1) * 0x9e37_79b9_7f4a_7c15 + i as u128),
                format!("registry.example.org/team-{}/service-{i}:v{}.{}.{}", i % 7, i % 4, i % 11, i % 3),
            ], "sizeBytes": 12_000_000 + i * 1_733_017})
        })
        .collect();
    // The cluster has been up for a while: no condition changed in the last week.
    let settled = now
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| t.checked_sub(jiff::SignedDuration::from_hours(7 * 24)).ok())
        .map_or_else(
            || now.to_owned(),
            |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": settled})
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "labels": labels,
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                   "f:labels": {".": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:status": {}}},
                   "f:images": {}, "f:nodeInfo": {"f:kubeletVersion": {}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, format!("v:\"{pod_cidr}\""): {}}}}},
            ],
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
        "status": {
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 2)}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "8", "memory": "32853052Ki", "pods": "110", "ephemeral-storage": "203056560Ki", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "8", "memory": "32750652Ki", "pods": "110", "ephemeral-storage": "187136925387", "hugepages-2Mi": "0"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64", "bootID": format!("{index:08x}-0000-4000-8000-000000000000"),
                "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.1.0-27-amd64",
                "kubeProxyVersion": "", "kubeletVersion": version, "machineID": format!("{index:032x}"),
                "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": format!("{index:08x}-1111-4000-8000-000000000000"),
            },
        },
    })
}

fn deployment(namespace: &str, name: &str, replicas: i64, tolerate_control_plane: bool) -> Value {
    let mut pod_spec = json!({"containers": [{"name": name, "image": format!("registry.example.org/{name}:1.0"),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]});
    if tolerate_control_plane {
        pod_spec["tolerations"] =
            json!([{"key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule"}]);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}})
}

fn pdb(namespace: &str, name: &str, budget: Value) -> Value {
    let mut spec = json!({"selector": {"matchLabels": {"app": name}}});
    if let Some(map) = budget.as_object() {
        for (k, v) in map {
            spec[k] = v.clone();
        }
    }
    json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// kubeadm's ClusterConfiguration, as `kubeadm init` and `kubeadm upgrade apply` upload it.
pub fn cluster_configuration(version: &str) -> String {
    format!(
        "apiServer: {{}}\napiVersion: kubeadm.k8s.io/v1beta4\ncertificatesDir: /etc/kubernetes/pki\n\
         clusterName: kubernetes\ncontrollerManager: {{}}\ndns: {{}}\n\
         etcd:\n  local:\n    dataDir: /var/lib/etcd\nimageRepository: registry.k8s.io\n\
         kind: ClusterConfiguration\nkubernetesVersion: {version}\nnetworking:\n  \
         dnsDomain: cluster.local\n  serviceSubnet: 10.96.0.0/12\nscheduler: {{}}\n"
    )
}

/// Fills a new store with the cluster `config` describes.
pub fn cluster(
    store: &mut Store,
    config: &SimConfig,
    version: &str,
    api_server: std::net::SocketAddr,
) -> Result<(), ApiError> {
    let now = store.clock().rfc3339();
    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        store.create_own("v1", "Namespace", json!({"metadata": {"name": namespace}}))?;
    }
    for (index, name) in node_names(config.control_planes, config.workers)
        .iter()
        .enumerate()
    {
        let control_plane = index < config.control_planes;
        let created = store.create_own(
            "v1",
            "Node",
            node(name, index, control_plane, version, &now),
        )?;
        // The kubelet's Lease, made when it registers its node; its heartbeats renew it.
        store.create_own(
            "coordination.k8s.io/v1",
            "Lease",
            json!({"metadata": {"name": name, "namespace": "kube-node-lease"},
                   "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}}),
        )?;
        // Every kubeadm control-plane node runs these, workloads or not.
        if control_plane {
            let uid = created["metadata"]["uid"].clone();
            for component in [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                let image = if component == "etcd" {
                    "registry.k8s.io/etcd:3.5.21-0".to_owned()
                } else {
                    format!("registry.k8s.io/{component}:{version}")
                };
                let mut annotations = json!({"kubernetes.io/config.mirror": format!("{index:032x}"), "kubernetes.io/config.source": "file"});
                if component == "kube-apiserver" {
                    annotations[ADVERTISE_ANNOTATION] = json!(api_server.to_string());
                }
                store.create_own("v1", "Pod", json!({
                    "metadata": {"name": format!("{component}-{name}"), "namespace": "kube-system",
                        "labels": {"component": component, "tier": "control-plane"},
                        "annotations": annotations,
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid, "controller": true}]},
                    "spec": {"nodeName": name, "priorityClassName": "system-node-critical",
                        "containers": [{"name": component, "image": image}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
                }))?;
            }
        }
    }
    store.create_own(
        "v1",
        "ConfigMap",
        json!({"metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": {"ClusterConfiguration": cluster_configuration(version)}}),
    )?;
    if config.filler_pods_per_node > 0 {
        // One Deployment per worker's worth of Pods, as a large cluster has many
        // workloads rather than one huge one.
        store.create_own("v1", "Namespace", json!({"metadata": {"name": "filler"}}))?;
        for index in 1..=config.workers {
            store.create_own(
                "apps/v1",
                "Deployment",
                deployment(
                    "filler",
                    &format!("filler-{index}"),
                    config.filler_pods_per_node as i64,
                    false,
                ),
            )?;
        }
    }
    if !config.workloads {
        return Ok(());
    }
    store.create_own("v1", "Namespace", json!({"metadata": {"name": "apps"}}))?;
    store.create_own(
        "apps/v1",
        "Deployment",
        deployment("kube-system", "coredns", 2, true),
    )?;
    store.create_own(
        "policy/v1",
        "PodDisruptionBudget",
        pdb("kube-system", "coredns", json!({"maxUnavailable": 1})),
    )?;
    store.create_own("apps/v1", "DaemonSet", json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
        "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
            "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                "spec": {"tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "kube-proxy", "image": format!("registry.k8s.io/kube-proxy:{version}")}]}}}}))?;
    store.create_own("apps/v1", "Deployment", deployment("apps", "web", 3, false))?;
    store.create_own(
        "policy/v1",
        "PodDisruptionBudget",
        pdb("apps", "web", json!({"minAvailable": 2})),
    )?;
    store.create_own("apps/v1", "Deployment", deployment("apps", "api", 2, false))?;
    store.create_own(
        "policy/v1",
        "PodDisruptionBudget",
        pdb("apps", "api", json!({"maxUnavailable": "50%"})),
    )?;
    store.create_own(
        "apps/v1",
        "StatefulSet",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "apps", "labels": {"app": "db"}},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "registry.example.org/db:15"}]}}}}),
    )?;
    store.create_own(
        "policy/v1",
        "PodDisruptionBudget",
        pdb("apps", "db", json!({"maxUnavailable": 1})),
    )?;
    Ok(())
}
