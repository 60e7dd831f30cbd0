use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{
    GatesSpec, HooksSpec, K8sUpgradeStatus, NotifySpec, SnapshotSpec, SnapshotWaiver, WindowSpec,
};

/// Label kubeadm puts on control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Upgrade a kubeadm cluster's Kubernetes version (kubeadm, kubelet, kubectl on every
/// node) to `targetVersion`, node by node: preflight checks, the control-plane nodes one
/// at a time, then the workers, then a postflight check.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "upchain.dev",
    version = "v1alpha1",
    kind = "K8sUpgrade",
    plural = "k8supgrades",
    shortname = "k8su",
    status = "K8sUpgradeStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.currentNode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    doc = "K8sUpgrade upgrades a kubeadm cluster's Kubernetes version node by node."
)]
#[serde(rename_all = "camelCase")]
pub struct K8sUpgradeSpec {
    /// Kubernetes version to upgrade every node to, such as `1.35.2` or `v1.35.2`. The
    /// control plane moves at most one minor version per run, and nodes are never
    /// downgraded. Changing it during a run takes effect at the next node boundary.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^v?[0-9]+\\\\.[0-9]+\\\\.[0-9]+$')").message("targetVersion must be MAJOR.MINOR.PATCH, such as 1.35.2 or v1.35.2"))]
    pub target_version: String,

    /// Finish the node in progress, then start nothing new until set back to false.
    #[serde(default)]
    pub paused: bool,

    /// Which nodes are upgraded, in what order, and how many workers at once.
    #[serde(default)]
    pub nodes: NodesSpec,

    /// How the per-node upgrade Job runs (it SSHes into the node and runs a script).
    #[serde(default)]
    pub runner: RunnerSpec,

    /// How a node is drained before its upgrade.
    #[serde(default)]
    pub drain: DrainSpec,

    /// How long a node must stay Ready at the target version before the next node starts.
    #[serde(default = "default_soak")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub soak: Duration,

    /// How long a node may take, after its upgrade Job succeeded, to come back Ready with
    /// its kubelet at the target version before the node is marked Failed.
    #[serde(default = "default_rejoin_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("rejoinTimeout must be at least 1m"))]
    pub rejoin_timeout: Duration,

    /// With no progress for this long, the upgrade reports Stalled (condition, Event and
    /// the `k8s_upgrade_stalled` gauge) so that an alert fires.
    #[serde(default = "default_stall_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("stallTimeout must be at least 1m"))]
    pub stall_timeout: Duration,

    /// Checks that must pass before the first node is touched (and, for nodes and
    /// alerts, before every node).
    #[serde(default)]
    pub gates: GatesSpec,

    /// An etcd snapshot to take before the first node is touched. A minor upgrade
    /// requires one unless snapshotWaiver says why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSpec>,

    /// Lets a minor upgrade run without spec.snapshot, for the reason given (recorded in
    /// status.snapshotWaived and a Warning Event). Ignored when spec.snapshot is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_waiver: Option<SnapshotWaiver>,

    /// A maintenance window: nodes are only started inside it. Any time when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,

    /// Notifications (started, blocked, stalled, failed, succeeded) to a Slack-compatible
    /// webhook. None when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,

    /// `Automatic` starts a run as soon as its checks pass. `Manual` shows the plan
    /// (`status.plan`, `status.planHash`, `status.gates`) and starts nothing until the
    /// `upchain.dev/approve` annotation carries the plan's hash. A new target needs a new
    /// approval; so does a node joining the plan mid-run (the run goes on with the nodes
    /// in progress and starts no other until then). A node leaving the plan (upgraded by
    /// hand, skipped, removed) only narrows what was approved and needs none.
    #[serde(default)]
    pub approval: Approval,

    /// Jobs run once before the first node (`pre`) and once after the postflight (`post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSpec>,
}

/// Whether a run waits for a person to approve its plan.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum Approval {
    /// Start as soon as the checks pass.
    #[default]
    Automatic,
    /// Wait for the `upchain.dev/approve` annotation to carry the plan's hash.
    Manual,
}

fn default_soak() -> Duration {
    Duration::from(std::time::Duration::from_secs(5 * 60))
}

fn default_rejoin_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(30 * 60))
}

fn default_stall_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(90 * 60))
}

/// Which nodes are upgraded, in what order, and how many workers at once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.skip.all(n, !(n in self.order))").message("a node cannot be both in skip and in order"))]
pub struct NodesSpec {
    /// Selects the control-plane nodes. Default: nodes with the
    /// `node-role.kubernetes.io/control-plane` label.
    #[serde(default = "default_control_plane_selector")]
    pub control_plane_selector: LabelSelector,

    /// Selects the worker nodes among the nodes that are not control-plane nodes.
    /// Default: every node that is not a control-plane node. Nodes selected by neither
    /// selector are left alone and listed in the plan as not selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_selector: Option<LabelSelector>,

    /// Node names to upgrade first within their role, in this order. The remaining nodes
    /// follow in name order.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub order: Vec<String>,

    /// How many worker nodes may be cordoned and upgraded at the same time.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 100))]
    pub max_unavailable: i32,

    /// Node names left alone: never cordoned, drained or upgraded.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub skip: Vec<String>,
}

impl Default for NodesSpec {
    fn default() -> Self {
        Self {
            control_plane_selector: default_control_plane_selector(),
            worker_selector: None,
            order: Vec::new(),
            max_unavailable: default_max_unavailable(),
            skip: Vec::new(),
        }
    }
}

fn default_control_plane_selector() -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: CONTROL_PLANE_LABEL.to_owned(),
            operator: "Exists".to_owned(),
            values: None,
        }]),
        match_labels: None,
    }
}

fn default_max_unavailable() -> i32 {
    1
}

/// How the per-node Jobs run. A Job SSHes into its node's InternalIP, copies the script
/// from `scriptConfigMap` and the run's parameters to /var/lib/upchain there, and runs
/// it detached from the session (docs/node-script.md).
///
/// What amounts to root on the nodes (the namespace, image, script, SSH key, host keys,
/// repositories, placement) is the installation's to decide (the chart's `policy`
/// values): left unset, each takes the installation's value; set, it must be one the
/// installation allows, or the run is Blocked by the `policy` gate, which names the field
/// and the policy that refuses it (docs/install.md#the-trust-model).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    /// Namespace the upgrade Jobs are created in: the installation's runner namespace.
    /// Unset: that one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub namespace: String,

    /// Container image of the Job (it needs bash and an OpenSSH client): the one the
    /// installation pins. Unset: that one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub image: String,

    /// ConfigMap (in `namespace`) and key holding the node upgrade script: the
    /// installation's. Unset: that one.
    #[serde(default, skip_serializing_if = "KeyRef::is_unset")]
    pub script_config_map: KeyRef,

    /// Secret (in `namespace`) and key holding the SSH private key: the installation's.
    /// Unset: that one.
    #[serde(default, skip_serializing_if = "KeyRef::is_unset")]
    pub ssh_secret: KeyRef,

    /// User the Job logs in as over SSH. The script runs with sudo when it is not root.
    #[serde(default = "default_ssh_user")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z_][a-z0-9_-]*$')").message("sshUser must be a plain login name such as root or ubuntu"))]
    pub ssh_user: String,

    /// Compute resources of the Job's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// A node's Job is stopped and counted as failed after this many seconds.
    #[serde(default = "default_active_deadline_seconds")]
    #[schemars(range(min = 60, max = 86400))]
    pub active_deadline_seconds: i64,

    /// How many Jobs a node gets before the upgrade stops as Failed (1 means no retry).
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,

    /// Finished Jobs are deleted after this many seconds (default 7 days), so their logs
    /// stay readable for a week after a run; at least 60, so that upchain reads a Job's
    /// end before it goes.
    #[serde(default = "default_ttl_seconds_after_finished")]
    #[schemars(range(min = 60, max = 7776000))]
    pub ttl_seconds_after_finished: i32,

    /// Port of the nodes' SSH servers.
    #[serde(default = "default_ssh_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub ssh_port: i32,

    /// ConfigMap (in `namespace`) and key holding the nodes' SSH host keys as known_hosts
    /// lines, each naming a node by its Kubernetes name, or one `@cert-authority *` line
    /// for host certificates: the installation's. Unset: that one.
    #[serde(default, skip_serializing_if = "KeyRef::is_unset")]
    pub known_hosts: KeyRef,

    /// `Strict` (default) checks every node's host key against `knownHosts`. `AcceptNew`
    /// checks the keys `knownHosts` holds just as strictly; a node it has no line for is
    /// asked for its keys without a login, and the run stops with their fingerprints and
    /// the line to add, until a person confirms them. HostKeysVerified is False while it is
    /// chosen. Only where the installation allows it (`policy.runner.allowAcceptNewHostKeys`).
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,

    /// Where the node finds the Kubernetes packages: among the installation's allowed
    /// repositories.
    #[serde(default)]
    pub repository: RepositorySpec,

    /// Nodes the Jobs may run on (besides never on a node being upgraded), on top of the
    /// installation's `policy.runner.nodeSelector`, which it may not change. Unset: the
    /// control-plane nodes not being upgraded, or any node not being upgraded while the
    /// only control-plane node is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the Jobs' Pods, each one of the installation's
    /// `policy.runner.tolerations`. Unset: the control-plane taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// How long the node script waits for another process's package-manager lock before
    /// it fails with exit code 12.
    #[serde(default = "default_package_lock_timeout_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub package_lock_timeout_seconds: i32,

    /// How long a restarted kubelet must stay active, without restarting, before the node
    /// script calls the node upgraded: a kubelet that crashes a few seconds after its
    /// start fails the node here, not after its uncordon.
    #[serde(default = "default_kubelet_settle_seconds")]
    #[schemars(range(min = 0, max = 600))]
    pub kubelet_settle_seconds: i32,

    /// Free space /var/lib needs before a node is upgraded (control-plane nodes also need
    /// the size of /var/lib/etcd, which kubeadm backs up).
    #[serde(default = "default_min_free_disk_mib")]
    #[schemars(range(min = 0, max = 1048576))]
    pub min_free_disk_mib: i32,

    /// How many prepare Jobs (one per node, before any node is cordoned) run at once.
    #[serde(default = "default_prepare_concurrency")]
    #[schemars(range(min = 1, max = 100))]
    pub prepare_concurrency: i32,
}

/// How the node Jobs check the nodes' SSH host keys.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum HostKeyPolicy {
    /// Only keys in `knownHosts` (or certified by its CA) are accepted.
    #[default]
    Strict,
    /// The first key a node shows is accepted.
    AcceptNew,
}

impl HostKeyPolicy {
    /// The value the node Job reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::AcceptNew => "AcceptNew",
        }
    }
}

/// Where nodes find the Kubernetes packages. Each field left unset takes the node
/// script's default, which the Helm chart's `nodeScript.repository` values set
/// cluster-wide (pkgs.k8s.io, Managed, when they are unset too).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// `Managed`: on a minor upgrade the node script points the node's apt or dnf
    /// repository at the target minor under `url`. `Unmanaged`: it never touches
    /// repository configuration; the target's packages must already be available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RepositoryMode>,

    /// Base of the per-minor repositories, laid out like pkgs.k8s.io:
    /// `<url>/v1.35/deb/` and `<url>/v1.35/rpm/`. Set it to a mirror for air-gapped
    /// clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^(https?|file)://[A-Za-z0-9._~:/@%+,=-]+$')").message("repository.url must be an http(s) or file URL without spaces or quotes"))]
    pub url: Option<String>,

    /// Where the repository's signing key is, when not where pkgs.k8s.io keeps it
    /// (`Release.key` for apt, `repodata/repomd.xml.key` for rpm). `{minor}` is replaced
    /// with the target minor, such as 1.35.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^(https?|file)://[A-Za-z0-9._~:/@%+,={}-]+$')").message("repository.keyUrl must be an http(s) or file URL without spaces or quotes"))]
    pub key_url: Option<String>,
}

/// Whether the node script configures the package repository.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepositoryMode {
    /// The script points the repository at the target minor.
    Managed,
    /// The node's own repository configuration is left alone.
    Unmanaged,
}

impl RepositoryMode {
    /// The value the node script reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Managed => "managed",
            Self::Unmanaged => "unmanaged",
        }
    }
}

fn default_ssh_port() -> i32 {
    22
}

fn default_package_lock_timeout_seconds() -> i32 {
    300
}

fn default_kubelet_settle_seconds() -> i32 {
    30
}

fn default_min_free_disk_mib() -> i32 {
    1024
}

fn default_prepare_concurrency() -> i32 {
    5
}

impl Default for RunnerSpec {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            image: String::new(),
            script_config_map: KeyRef::default(),
            ssh_secret: KeyRef::default(),
            ssh_user: default_ssh_user(),
            resources: None,
            active_deadline_seconds: default_active_deadline_seconds(),
            attempts: default_attempts(),
            ttl_seconds_after_finished: default_ttl_seconds_after_finished(),
            ssh_port: default_ssh_port(),
            known_hosts: KeyRef::default(),
            host_key_policy: HostKeyPolicy::default(),
            repository: RepositorySpec::default(),
            node_selector: None,
            tolerations: None,
            package_lock_timeout_seconds: default_package_lock_timeout_seconds(),
            kubelet_settle_seconds: default_kubelet_settle_seconds(),
            min_free_disk_mib: default_min_free_disk_mib(),
            prepare_concurrency: default_prepare_concurrency(),
        }
    }
}

fn default_ssh_user() -> String {
    "root".to_owned()
}

fn default_active_deadline_seconds() -> i64 {
    3600
}

fn default_attempts() -> i32 {
    2
}

fn default_ttl_seconds_after_finished() -> i32 {
    7 * 24 * 3600
}

/// A key in a ConfigMap or Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the object's data.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("key may contain only letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

impl KeyRef {
    /// Left unset in a spec: the installation's applies.
    pub fn is_unset(&self) -> bool {
        self.name.is_empty() && self.key.is_empty()
    }
}

/// How a node is drained before its upgrade. The operator evicts Pods through the
/// Eviction API, so PodDisruptionBudgets are respected; DaemonSet and mirror Pods stay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long a drain may take before `onTimeout` applies.
    #[serde(default = "default_drain_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("drain.timeout must be at least 10s"))]
    pub timeout: Duration,

    /// Grace period given to each evicted Pod, in seconds. Default: the Pod's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub grace_period_seconds: Option<i64>,

    /// Evict Pods that use emptyDir volumes, losing that data. Off by default, as with
    /// `kubectl drain`: such a Pod blocks the run before its node is cordoned, named in
    /// status.blockedReasons, until it is moved or this is set.
    #[serde(default)]
    pub delete_empty_dir_data: bool,

    /// Evict Pods that no controller (ReplicaSet, StatefulSet, Job...) manages: nothing
    /// recreates them. Off by default, as `kubectl drain` without `--force`: such a Pod
    /// blocks the run before its node is cordoned, named in status.blockedReasons.
    #[serde(default)]
    pub evict_unmanaged_pods: bool,

    /// What happens when the drain times out: `Fail` stops the upgrade with the names
    /// of the Pods that would not leave; `Force` deletes them without the Eviction API,
    /// ignoring their PodDisruptionBudgets, and carries on.
    #[serde(default)]
    pub on_timeout: DrainTimeoutAction,

    /// Delete (rather than evict) a Pod whose PodDisruptionBudget allows no disruption
    /// and expects a single Pod, which no eviction can ever move: the drain deletes it at
    /// once, with a Warning Event, instead of waiting for the timeout. Off by default.
    #[serde(default)]
    pub delete_pdb_blocked_single_replica_pods: bool,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout: default_drain_timeout(),
            grace_period_seconds: None,
            delete_empty_dir_data: false,
            evict_unmanaged_pods: false,
            on_timeout: DrainTimeoutAction::default(),
            delete_pdb_blocked_single_replica_pods: false,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(15 * 60))
}

/// What a drain does when it times out.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DrainTimeoutAction {
    /// Stop the upgrade as Failed, naming the Pods that would not leave.
    #[default]
    Fail,
    /// Delete the remaining Pods without the Eviction API and carry on.
    Force,
}
