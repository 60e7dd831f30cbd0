use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an upgrade run is. The truth is the cluster's node versions, re-read at every
/// reconcile; the status is a summary of it plus what the operator intends to do next.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct K8sUpgradeStatus {
    /// Pending, Preflight, Snapshot, ControlPlane, Workers, Postflight, Succeeded,
    /// Blocked (a check refused; nothing was changed; rechecked automatically) or Failed
    /// (needs a person: see the Ready condition's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, Progressing, Blocked, Stalled and SnapshotTaken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The lowest kubelet version among the selected nodes when the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,

    /// The version this run installs (spec.targetVersion normalised, pinned at the start
    /// of the run and re-pinned only at a node boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,

    /// Minor when any node in the run crosses a minor line, else Patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_kind: Option<UpgradeKind>,

    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When a node last moved to its next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<Time>,

    /// When the run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// The node (or comma-separated worker batch) in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_node: Option<String>,

    /// The step of the node in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<NodeStep>,

    /// Nodes done out of nodes in this run, such as `3/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// One record per node this run has started, in the order they were started; of the
    /// nodes done, only the last 10 keep their record (see `upgradedWithoutRecord`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRecord>,

    /// How many nodes this run upgraded whose records were dropped, so that the status
    /// stays the same size whatever the cluster's. Their `NodeUpgraded` Events (for as
    /// long as the cluster keeps Events) and the nodes' kubelet versions remain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub upgraded_without_record: i32,

    /// Why the run is Blocked or waiting: every reason, each saying what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_reasons: Vec<String>,

    /// Since when firing alerts have held the next node back (they block the run once
    /// `gates.prometheus.maxWait` has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_waiting_since: Option<Time>,

    /// Since when a health check has been failing (each blocks the run once its own
    /// timeout has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks_failing_since: Option<Time>,

    /// The Alertmanager silences in force for the nodes in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silences: Vec<SilenceRecord>,

    /// When the maintenance window next opens, while the run waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_at: Option<Time>,

    /// The etcd snapshot taken before the first node was touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRecord>,

    /// Why this minor upgrade runs without an etcd snapshot (spec.snapshotWaiver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_waived: Option<String>,

    /// This run's hook Jobs (spec.hooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,

    /// The last check of stacked etcd through the node step: before the run, before each
    /// control-plane node and before the first worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdCheckRecord>,

    /// This run's prepare checks that run or failed: one Job per node, before any node
    /// is cordoned, that checks over SSH, changing nothing, that the node can be upgraded.
    /// A node that passed carries the `upchain.dev/prepared` annotation instead, and
    /// `preparedCount` counts them. Cleared once the first node starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepare: Vec<PrepareRecord>,

    /// How many nodes of the plan passed their prepare check in this run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prepared_count: i32,

    /// The first 20 nodes still to start, in order, as last computed from the cluster.
    /// `pendingNodes` counts them all; `kubectl get nodes -o yaml | upchain plan -f -`
    /// prints the whole plan and its hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedNode>,

    /// How many nodes of the plan are still to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_nodes: Option<i32>,

    /// With `spec.approval: Manual`, while a run is in progress: the names of the
    /// approved plan's nodes still to start, so that a node joining the plan mid-run is
    /// caught. Only names, about 20 bytes a node; empty with `approval: Automatic`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_nodes: Vec<String>,

    /// Hash of the plan (node names, order, versions and target), for approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<String>,

    /// The plan hash a person approved for this run (spec.approval Manual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_plan_hash: Option<String>,

    /// The checks as last evaluated: before the run every gate, between nodes the node
    /// gate, the alert gate and the health checks. Why one refuses is in blockedReasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateRecord>,

    /// The analysis checks (spec.gates.analysis) of the moment under way: each one's
    /// stage, verdict, passes in a row, failures and last samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisRecord>,

    /// The last few runs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,

    /// The value of the `upchain.dev/retry` annotation that was last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_retry: Option<String>,
}

/// The phase of an upgrade run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Not started: waiting for another upgrade, for a valid spec, or for the first check.
    Pending,
    /// Running the checks that must pass before anything is changed.
    Preflight,
    /// Taking the etcd snapshot.
    Snapshot,
    /// Upgrading control-plane nodes, one at a time.
    ControlPlane,
    /// Upgrading worker nodes.
    Workers,
    /// Checking the cluster after the last node.
    Postflight,
    /// Every selected node runs the target version.
    Succeeded,
    /// A check refused; nothing was changed. Rechecked and cleared automatically.
    Blocked,
    /// A step failed past its retries, or the spec is invalid. Needs a person.
    Failed,
}

impl Phase {
    /// Every phase, in the order a run passes through them, then the two that stop it.
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Preflight,
        Phase::Snapshot,
        Phase::ControlPlane,
        Phase::Workers,
        Phase::Postflight,
        Phase::Succeeded,
        Phase::Blocked,
        Phase::Failed,
    ];

    /// A run is working: checking, snapshotting, upgrading nodes or checking after them.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Phase::Preflight
                | Phase::Snapshot
                | Phase::ControlPlane
                | Phase::Workers
                | Phase::Postflight
        )
    }

    /// The run ended, well or not: nothing moves until the spec or an annotation changes.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// The phase's name as it appears in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Preflight => "Preflight",
            Phase::Snapshot => "Snapshot",
            Phase::ControlPlane => "ControlPlane",
            Phase::Workers => "Workers",
            Phase::Postflight => "Postflight",
            Phase::Succeeded => "Succeeded",
            Phase::Blocked => "Blocked",
            Phase::Failed => "Failed",
        }
    }
}

/// Patch (same minor version) or Minor (the next minor version).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum UpgradeKind {
    /// Same minor version: only the patch number changes.
    Patch,
    /// The next minor version: the node's package repository is switched too.
    Minor,
}

impl UpgradeKind {
    /// The value passed to the node script as UPGRADE_KIND.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeKind::Patch => "patch",
            UpgradeKind::Minor => "minor",
        }
    }
}

/// The role a node plays in the upgrade order.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodeRole {
    /// A kubeadm control-plane node.
    ControlPlane,
    /// Any other selected node.
    Worker,
}

impl NodeRole {
    /// The value passed to the node script as NODE_ROLE.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::ControlPlane => "control-plane",
            NodeRole::Worker => "worker",
        }
    }
}

/// The step a node is at.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodeStep {
    /// Cordoned by the operator; its Pods are being evicted.
    Draining,
    /// Its upgrade Job is running.
    Upgrading,
    /// Uncordoned; waiting for it to be Ready with its kubelet at the target.
    Rejoining,
    /// Ready at the target; waiting out the soak time.
    Soaking,
    /// Upgraded and soaked.
    Done,
    /// Failed past its retries: see the record's message.
    Failed,
}

impl NodeStep {
    /// True for the steps in which the node is taken out of service by the operator.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            NodeStep::Draining | NodeStep::Upgrading | NodeStep::Rejoining | NodeStep::Soaking
        )
    }

    /// The step's name as it appears in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStep::Draining => "Draining",
            NodeStep::Upgrading => "Upgrading",
            NodeStep::Rejoining => "Rejoining",
            NodeStep::Soaking => "Soaking",
            NodeStep::Done => "Done",
            NodeStep::Failed => "Failed",
        }
    }
}

/// What happened to one node in this run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// ControlPlane or Worker.
    pub role: NodeRole,
    /// True for the control-plane node that runs `kubeadm upgrade apply`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_control_plane: bool,
    /// Patch or Minor, judged from this node's own kubelet version.
    pub kind: UpgradeKind,
    /// The version this node is being upgraded to.
    pub target_version: String,
    /// The kubelet version when the node was started.
    pub version_before: String,
    /// The kubelet version when the node was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_after: Option<String>,
    /// Where the node is.
    pub step: NodeStep,
    /// When the node entered its current step.
    pub step_started_at: Time,
    /// True while the node is cordoned by the operator (it is uncordoned by the operator
    /// when done, or when the K8sUpgrade is deleted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Upgrade Jobs created for this node in this run.
    #[serde(default)]
    pub attempts: i32,
    /// Upgrade Jobs that failed since the run started or was last retried, and spent an
    /// attempt (of spec.runner.attempts).
    #[serde(default)]
    pub failures: i32,
    /// Jobs sent again after a lost SSH session (exit 255), which spend no attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reattaches: i32,
    /// Jobs tried again after a pause because another process held the node (a package
    /// lock, another run), which spend no attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub paused_retries: i32,
    /// The node's current (or last) upgrade Job, in runner.namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the node was started.
    pub started_at: Time,
    /// When the node was done or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// What is happening, or what went wrong and how to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// While draining: the Pods still to leave the node (namespace/name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_pods: Vec<String>,
    /// While draining: the PodDisruptionBudgets (namespace/name) that allow no disruption
    /// now and cover a Pod still to leave, which is what the drain waits on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_budgets: Vec<String>,
    /// What the drain was going to do, computed before the node was cordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_preview: Option<DrainPreview>,
    /// How the node's last upgrade Job ended, kept after the Job itself is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_result: Option<JobResult>,
}

/// How an upgrade Job ended: the evidence that outlives the Job's TTL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// The Job's name.
    pub job: String,
    /// True when it succeeded.
    pub succeeded: bool,
    /// The container's exit code, when its Pod could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When the container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The last lines of its log (at most 10 lines of 200 characters for a Job that failed,
    /// 3 for one that succeeded), with anything that looks like a secret replaced by
    /// `[redacted]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Why the Pod or its log could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a drain will do, computed before the node is cordoned.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainPreview {
    /// How many Pods are to be evicted (DaemonSet, mirror and finished Pods stay).
    pub evict_count: i32,
    /// The first of them (namespace/name), at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evict: Vec<String>,
    /// PodDisruptionBudgets (namespace/name) covering a Pod to evict that allow no
    /// disruption now: the drain waits on them (and fails or forces at drain.timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<String>,
}

/// A node still to be upgraded, as planned from the cluster's current state.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedNode {
    /// The node's name.
    pub name: String,
    /// ControlPlane or Worker.
    pub role: NodeRole,
    /// Its current kubelet version.
    pub version: String,
    /// Patch or Minor for this node.
    pub kind: UpgradeKind,
    /// True for the node that runs `kubeadm upgrade apply`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_control_plane: bool,
    /// Nodes with the same batch number are upgraded together (workers only).
    pub batch: i32,
}

/// The etcd snapshot taken before the first node was touched.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// The snapshot Job's name (in the runner namespace).
    pub job: String,
    /// When it started.
    pub started_at: Time,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// True once the snapshot Job succeeded and reported a snapshot that passed the
    /// checks: large enough, read back by `etcdutl snapshot status`, test-restored, copied
    /// off the node and its checksum read back there.
    #[serde(default)]
    pub verified: bool,
    /// The snapshot file's size in bytes, as the Job reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// `etcdutl snapshot status`: the snapshot's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// `etcdutl snapshot status`: the etcd revision it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `etcdutl snapshot status`: the number of keys it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_keys: Option<i64>,
    /// Where the Job copied it, off the node (`pvc/<namespace>/<claim>/<file>`), and
    /// read its checksum back from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The file's SHA-256, as read back from the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The test restore: what `snapshot restore` into a scratch directory gave back,
    /// compared with the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_check: Option<String>,
    /// The control-plane node whose etcd member it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// 1 for the run's first snapshot Job; a failed one is retried after the gates'
    /// recheck interval under the next number.
    #[serde(default)]
    pub attempt: i32,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One check of stacked etcd's members through the node step.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdCheckRecord {
    /// The node it was checked before.
    pub before: String,
    /// The control-plane node whose member was asked.
    pub node: String,
    /// The check Job's name (in the runner namespace).
    pub job: String,
    /// Counts the run's etcd check Jobs: each check and each retry takes the next.
    pub attempt: i32,
    /// When it started.
    pub started_at: Time,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// True once etcd passed.
    #[serde(default)]
    pub passed: bool,
    /// What it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Which hook.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum HookKind {
    /// Before the first node.
    Pre,
    /// After the postflight.
    Post,
    /// spec.gates.externalEtcdCheck, before each control-plane node and the first worker.
    EtcdCheck,
}

impl HookKind {
    /// Lowercase name, as in Job names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Pre => "pre",
            HookKind::Post => "post",
            HookKind::EtcdCheck => "etcd-check",
        }
    }
}

/// A hook Job of this run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// Pre, Post or EtcdCheck.
    pub kind: HookKind,
    /// For EtcdCheck: the node it ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The Job (namespace/name).
    pub job: String,
    /// 1 for the first Job; a retried hook runs under the next number.
    pub attempt: i32,
    /// When it started.
    pub started_at: Time,
    /// When it finished (or was given up on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// True once the Job succeeded.
    #[serde(default)]
    pub succeeded: bool,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A node's prepare check in this run, while it runs or after it failed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepareRecord {
    /// The node checked.
    pub node: String,
    /// The Job's name (in the runner namespace).
    pub job: String,
    /// 1 for the first Job; a failed check is retried every recheck interval under the
    /// next number.
    pub attempt: i32,
    /// When it started.
    pub started_at: Time,
    /// When it finished (or was given up on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// True once the node passed.
    #[serde(default)]
    pub succeeded: bool,
    /// What the check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A silence the operator keeps in Alertmanager for a node in progress.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SilenceRecord {
    /// The node it silences.
    pub node: String,
    /// Alertmanager's silence ID.
    pub id: String,
    /// When it ends unless extended.
    pub ends_at: Time,
}

/// One check's verdict, as last evaluated.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateRecord {
    /// The check: a gate's name (nodes, quiet, alerts, ...) or `healthCheck/<name>`.
    pub name: String,
    /// True when it lets the run through.
    pub passed: bool,
    /// What it looked at, in a few words.
    pub evidence: String,
}

/// One analysis check's measurements at the moment under way (before the run, before a
/// batch, or while a batch soaks).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRecord {
    /// The check's name (spec.gates.analysis).
    pub name: String,
    /// The moment it measures.
    pub stage: crate::AnalysisStage,
    /// Measuring, Passed or Failed.
    pub verdict: AnalysisVerdict,
    /// Passing measurements in a row.
    pub passes: i32,
    /// Failing measurements at this moment.
    pub failures: i32,
    /// The last measurement's samples, such as `{code="500"} 0.031`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<String>,
    /// When it was last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measured_at: Option<Time>,
    /// What the last measurement found, or why the check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where an analysis check stands at its moment.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisVerdict {
    /// Not yet the passes it needs, nor more failures than it tolerates.
    Measuring,
    /// The passes it needs, in a row.
    Passed,
    /// More failures than it tolerates.
    Failed,
}

/// A finished run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The version the run started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// The version the run installed.
    pub target_version: String,
    /// Succeeded or Failed.
    pub result: Phase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The node that failed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_node: Option<String>,
    /// Why it ended that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
