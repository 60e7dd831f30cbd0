//! The spec of what keeps a run safe and visible: the gates, the etcd snapshot, the
//! maintenance window and notifications.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use kube::core::Duration;
use serde::{Deserialize, Serialize};

/// Checks that must pass before the first node is touched; the node and alert gates are
/// checked again before every node. A gate that refuses makes the run Blocked: nothing
/// is changed, every reason is listed in status, and the gates are rechecked until they
/// pass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.analysis) || has(self.prometheus) || self.analysis.all(c, has(c.url))").message("an analysis check needs a Prometheus to ask: set gates.prometheus.url, or the check's own url"))]
pub struct GatesSpec {
    /// No node (other than those this run upgraded) may have become Ready within this
    /// period: a node that just rebooted is not yet proven healthy. `0s` turns it off.
    #[serde(default = "default_quiet_period")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub quiet_period: Duration,

    /// How often a Blocked run checks its gates again.
    #[serde(default = "default_recheck_interval")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5s')").message("gates.recheckInterval must be at least 5s"))]
    pub recheck_interval: Duration,

    /// Refuse while Prometheus has firing alerts. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,

    /// Minor upgrades only: addons, deprecated APIs and containerd must support the
    /// target.
    #[serde(default)]
    pub compatibility: CompatibilityGate,

    /// Refuse while a Helm release is pending (pending-install, pending-upgrade or
    /// pending-rollback) or failed. Needs read access to Secrets (only their metadata is
    /// read), so it is off by default.
    #[serde(default)]
    pub helm: bool,

    /// What the Helm gate does with a failed release: `Block` (default), since a failed
    /// release is what a cluster change should not be stacked on, or `Warn` to only say
    /// so in the gate's evidence.
    #[serde(default)]
    pub helm_failed_releases: FailedReleasePolicy,

    /// Refuse while a Deployment is not reconciled (not Available, not Progressing, or
    /// with fewer updated replicas than available ones, 10% tolerance for autoscaling), or
    /// a StatefulSet or DaemonSet has a Pod unavailable or, unless it updates OnDelete,
    /// not at its current revision.
    #[serde(default = "default_true")]
    pub workloads: bool,

    /// Your own checks: a CEL expression over objects of any kind, evaluated before the
    /// run and again before every node. A check that fails for longer than its timeout
    /// blocks the run with its name, the object and what the expression returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("every health check needs its own name"))]
    pub health_checks: Vec<HealthCheck>,

    /// Measured verdicts: PromQL queries against Prometheus's HTTP API, judged before the
    /// run, before each batch, or while each batch soaks. A check that fails before a
    /// batch blocks the run (as the alert gate does); one that fails while a batch soaks
    /// stops the run as Failed, the batch left in service and the samples in the reason.
    /// Queries go to the check's `url`, else to `gates.prometheus.url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("every analysis check needs its own name"))]
    pub analysis: Vec<AnalysisCheck>,

    /// Alertmanager silences for the node in progress, so that its NotReady alerts do not
    /// page anyone while it is upgraded on purpose. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silences: Option<SilencesSpec>,

    /// For an external etcd, which has no static Pods to count: a Job of yours (etcdctl
    /// endpoint health against every member, say) run before each control-plane node and
    /// before the first worker. The node starts only once it succeeded; a failure blocks
    /// the run (retried every recheck interval). Stacked etcd is checked without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_etcd_check: Option<HookSpec>,

    /// Stacked etcd: the largest share of its backend quota a member's database may use
    /// before a node is started (an upgrade writes to it; at the quota etcd refuses
    /// writes with a NOSPACE alarm).
    #[serde(default = "default_etcd_database_quota_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub etcd_database_quota_percent: u32,
}

fn default_etcd_database_quota_percent() -> u32 {
    80
}

/// Silences the operator keeps in Alertmanager while a node is worked on: created when the
/// node starts, extended in short steps while it is in progress (never past `maxDuration`
/// from the node's start), and expired when it is done. A silence the operator cannot
/// expire (it was stopped, Alertmanager was down) ends by itself within `extendBy`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.extendBy) <= duration(self.maxDuration)").message("silences.extendBy must not be longer than silences.maxDuration"))]
pub struct SilencesSpec {
    /// Base URL of Alertmanager, such as `http://alertmanager-operated.monitoring:9093`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("gates.silences.alertmanagerUrl must start with http:// or https://"))]
    pub alertmanager_url: String,
    /// Which alerts are silenced, besides the node matcher the operator adds. Default:
    /// `alertname=~KubeNodeNotReady|KubeNodeUnreachable|KubeNodeReadinessFlapping`.
    #[serde(default = "default_silence_matchers")]
    #[schemars(length(min = 1, max = 16))]
    pub matchers: Vec<SilenceMatcher>,
    /// The alert label that carries the node's name; the silence matches it exactly.
    #[serde(default = "default_node_label")]
    #[schemars(length(min = 1, max = 128))]
    pub node_label: String,
    /// How far ahead each extension reaches (and so how long a silence outlives an
    /// operator that stopped).
    #[serde(default = "default_extend_by")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("silences.extendBy must be at least 1m"))]
    pub extend_by: Duration,
    /// A node's silence never reaches past this long after the node started, however
    /// long the node takes.
    #[serde(default = "default_max_silence")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub max_duration: Duration,
}

/// One Alertmanager matcher.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SilenceMatcher {
    /// The label name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The value, or a regular expression when `isRegex`.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
    /// `value` is a regular expression.
    #[serde(default)]
    pub is_regex: bool,
}

fn default_silence_matchers() -> Vec<SilenceMatcher> {
    vec![SilenceMatcher {
        name: "alertname".to_owned(),
        value: "KubeNodeNotReady|KubeNodeUnreachable|KubeNodeReadinessFlapping".to_owned(),
        is_regex: true,
    }]
}

fn default_node_label() -> String {
    "node".to_owned()
}

fn default_extend_by() -> Duration {
    Duration::from(std::time::Duration::from_secs(15 * 60))
}

fn default_max_silence() -> Duration {
    Duration::from(std::time::Duration::from_secs(2 * 3600))
}

impl Default for GatesSpec {
    fn default() -> Self {
        Self {
            quiet_period: default_quiet_period(),
            recheck_interval: default_recheck_interval(),
            prometheus: None,
            compatibility: CompatibilityGate::default(),
            helm: false,
            helm_failed_releases: FailedReleasePolicy::default(),
            workloads: true,
            health_checks: Vec::new(),
            analysis: Vec::new(),
            silences: None,
            external_etcd_check: None,
            etcd_database_quota_percent: default_etcd_database_quota_percent(),
        }
    }
}

/// A check of your own: every object it selects must make `expression` true.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.objectName) && has(self.selector))").message("a health check selects by objectName or by selector, not both"))]
pub struct HealthCheck {
    /// The check's name, as status, Events and blocked reasons show it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// apiVersion of the objects, such as `v1`, `apps/v1` or `ceph.rook.io/v1`.
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// Kind of the objects, such as `Node`, `Deployment` or `CephCluster`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Namespace of the objects; every namespace when unset (ignored for cluster-scoped
    /// kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// One object by name. With neither this nor `selector`, every object of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub object_name: Option<String>,
    /// The objects whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// A CEL expression over the object, bound to `self`, that is true when it is
    /// healthy, such as `self.status.ceph.health == 'HEALTH_OK'`. At least one object
    /// must be selected.
    #[schemars(length(min = 1, max = 2048))]
    pub expression: String,
    /// How long the check may fail before the run is Blocked; until then the next node
    /// waits (a storage cluster recovering after a node came back, say).
    #[serde(default = "default_health_check_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub timeout: Duration,
}

fn default_health_check_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(10 * 60))
}

fn default_quiet_period() -> Duration {
    Duration::from(std::time::Duration::from_secs(24 * 3600))
}

fn default_recheck_interval() -> Duration {
    Duration::from(std::time::Duration::from_secs(60))
}

fn default_true() -> bool {
    true
}

/// Firing alerts from Prometheus's HTTP API (`/api/v1/alerts`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Base URL of Prometheus, such as `http://prometheus-operated.monitoring:9090`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("gates.prometheus.url must start with http:// or https://"))]
    pub url: String,

    /// Alerts whose name matches this regular expression do not count. The default
    /// ignores Prometheus's always-firing alerts and upchain's own.
    #[serde(default = "default_ignore_alerts")]
    #[schemars(length(max = 1024))]
    pub ignore_alerts: String,

    /// Before each node, firing alerts are waited out for at most this long (rechecked
    /// every recheckInterval); after that the run is Blocked.
    #[serde(default = "default_alert_wait")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub max_wait: Duration,
}

/// One analysis check: a PromQL instant query, and the condition its samples must meet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.threshold) != has(self.expression)").message("an analysis check needs exactly one of threshold and expression"))]
pub struct AnalysisCheck {
    /// The check's name, as status, Events and blocked reasons show it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// A PromQL expression, evaluated as an instant query (`/api/v1/query`). It must
    /// return a vector or a scalar: wrap a range selector in a function such as
    /// `max_over_time(...[10m])`.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,

    /// Base URL of the Prometheus-compatible API to ask (Thanos, Mimir, a fleet
    /// Prometheus). Default: `gates.prometheus.url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("an analysis check's url must start with http:// or https://"))]
    pub url: Option<String>,

    /// Every returned sample must meet this comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,

    /// A CEL expression over the returned samples, true when the check passes: `samples`
    /// is a list of `{labels: map(string, string), value: double}`, such as
    /// `samples.all(s, s.value < 0.01)` or `samples.exists(s, s.labels.cluster == 'a')`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub expression: Option<String>,

    /// When the check is measured: `BeforeRun` (before the first node), `BeforeBatch`
    /// (before every batch of nodes starts) and `AfterBatch` (while a batch soaks: a
    /// batch is done only once the check has passed).
    #[schemars(length(min = 1, max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub when: Vec<AnalysisStage>,

    /// Time between two measurements.
    #[serde(default = "default_analysis_interval")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("an analysis check's interval must be at least 1s"))]
    pub interval: Duration,

    /// Passing measurements in a row the check needs before it passes.
    #[serde(default = "default_consecutive_passes")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_passes: i32,

    /// Failing measurements the check tolerates; one more fails it.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub tolerated_failures: i32,

    /// What a query that returns no sample means: `Fail` (default: a series that went
    /// missing is not a healthy one), `Pass`, or `Wait` (neither: measure again, as when
    /// waiting for another cluster's run to appear).
    #[serde(default)]
    pub on_empty: EmptyResult,
}

/// When an analysis check is measured.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnalysisStage {
    /// Before the run's first node: a failure blocks the run.
    BeforeRun,
    /// Before every batch of nodes starts: a failure blocks the run.
    BeforeBatch,
    /// While each batch soaks: a failure stops the run as Failed.
    AfterBatch,
}

impl AnalysisStage {
    /// The stage as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeRun => "BeforeRun",
            Self::BeforeBatch => "BeforeBatch",
            Self::AfterBatch => "AfterBatch",
        }
    }
}

/// A comparison every sample of an analysis check must meet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// How the sample compares with `value`.
    pub operator: Comparison,
    /// The value compared with.
    pub value: f64,
}

/// A comparison of a sample with a threshold. NaN meets none.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Comparison {
    /// sample < value
    LessThan,
    /// sample <= value
    LessThanOrEqual,
    /// sample > value
    GreaterThan,
    /// sample >= value
    GreaterThanOrEqual,
    /// sample == value
    Equal,
    /// sample != value
    NotEqual,
}

impl Comparison {
    /// Whether `sample` meets the comparison with `value`.
    pub fn holds(self, sample: f64, value: f64) -> bool {
        if sample.is_nan() {
            return false;
        }
        match self {
            Self::LessThan => sample < value,
            Self::LessThanOrEqual => sample <= value,
            Self::GreaterThan => sample > value,
            Self::GreaterThanOrEqual => sample >= value,
            Self::Equal => sample == value,
            Self::NotEqual => sample != value,
        }
    }

    /// The comparison as an operator, such as `<`.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::LessThan => "<",
            Self::LessThanOrEqual => "<=",
            Self::GreaterThan => ">",
            Self::GreaterThanOrEqual => ">=",
            Self::Equal => "==",
            Self::NotEqual => "!=",
        }
    }
}

/// What a query that returns no sample means.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum EmptyResult {
    /// A failing measurement.
    #[default]
    Fail,
    /// A passing measurement.
    Pass,
    /// Neither: measured again at the next interval.
    Wait,
}

fn default_analysis_interval() -> Duration {
    Duration::from(std::time::Duration::from_secs(60))
}

fn default_consecutive_passes() -> i32 {
    1
}

/// The default `ignoreAlerts`.
pub const DEFAULT_IGNORE_ALERTS: &str = "^(Watchdog|InfoInhibitor|K8sUpgrade.*)$";

fn default_ignore_alerts() -> String {
    DEFAULT_IGNORE_ALERTS.to_owned()
}

fn default_alert_wait() -> Duration {
    Duration::from(std::time::Duration::from_secs(30 * 60))
}

/// The compatibility gate, for minor upgrades (a patch release removes no API and raises
/// no floor, and the running cluster proves its addons work at that minor).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompatibilityGate {
    /// A ConfigMap key holding the addon matrix (YAML): for each addon, where its running
    /// version is read from and the highest Kubernetes minor each of its versions
    /// supports. See docs/gates.md for the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon_matrix: Option<NamespacedKeyRef>,

    /// Refuse while the API server still serves requests to APIs that the target
    /// removes (from its `apiserver_requested_deprecated_apis` metric).
    #[serde(default = "default_true")]
    pub deprecated_apis: bool,

    /// The lowest containerd version each Kubernetes minor needs, by minor (`"1.36":
    /// "2.0.0"`). Replaces the built-in table when set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub containerd_floors: BTreeMap<String, String>,
}

impl Default for CompatibilityGate {
    fn default() -> Self {
        Self {
            addon_matrix: None,
            deprecated_apis: true,
            containerd_floors: BTreeMap::new(),
        }
    }
}

/// The built-in containerd floors: Kubernetes 1.36 drops containerd 1.x; earlier
/// minors need a containerd that is still maintained (1.7).
pub const DEFAULT_CONTAINERD_FLOORS: &[(&str, &str)] = &[
    ("1.33", "1.7.0"),
    ("1.34", "1.7.0"),
    ("1.35", "1.7.0"),
    ("1.36", "2.0.0"),
];

/// A key in a namespaced ConfigMap or Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedKeyRef {
    /// Namespace of the object.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the object's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// An etcd snapshot taken once before the first node is touched, through the node step
/// on a control-plane node: saved, read back, test-restored, copied to the installation's
/// destination and its checksum read back from there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The PersistentVolumeClaim (in the runner namespace) the snapshot is copied to, off
    /// the node. The installation decides it (policy.snapshot.persistentVolumeClaim);
    /// leave it unset, or give the same value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// How long the snapshot Job may run; past it the run is Blocked.
    #[serde(default = "default_snapshot_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub timeout: Duration,
    /// The smallest snapshot file accepted, in bytes: a snapshot of a live etcd is never
    /// smaller than a few kilobytes.
    #[serde(default = "default_min_snapshot_bytes")]
    #[schemars(range(min = 1))]
    pub min_size_bytes: i64,
}

fn default_min_snapshot_bytes() -> i64 {
    1024
}

/// Why a minor upgrade may run without an etcd snapshot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotWaiver {
    /// Why, in words the next person on call understands (for example "etcd is external
    /// and backed up hourly by the storage team").
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

fn default_snapshot_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(15 * 60))
}

/// Jobs run once per run: `pre` before the first node is touched (after the gates and
/// the snapshot), `post` after the postflight passed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HooksSpec {
    /// Runs before the first node. Its failure blocks the run (nothing was touched); it is
    /// retried every gates.recheckInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<HookSpec>,
    /// Runs after the postflight passed. Its failure fails the run with the hook's reason;
    /// a new value of the `upchain.dev/retry` annotation runs it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<HookSpec>,
}

/// A Job to run once, from a template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    /// Namespace the Job is created in: the runner namespace (spec.runner.namespace), the
    /// only one where upchain may create Jobs. Another one blocks the run, saying so.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// A batch/v1 JobTemplateSpec (`metadata` and `spec`, as in a CronJob's
    /// `jobTemplate`). Hooks run with no power: as the ServiceAccount upchain-hooks (no
    /// RBAC, no token), under Pod Security restricted, with no Secret, hostPath, host
    /// namespace or added capability. What the API server can check is refused at
    /// admission; the rest fails the spec with the reason before anything runs.
    #[schemars(schema_with = "hook_template")]
    pub template: serde_json::Value,
    /// How long the Job may run before it counts as failed.
    #[serde(default = "default_hook_timeout")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(30 * 60))
}

/// A Job template kept as given, except for the Pod fields that would give a hook power,
/// which admission refuses (the rest is checked by upchain, crates/upchain-core/src/hooks.rs).
fn hook_template(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let kept = |properties: serde_json::Value| {
        serde_json::json!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": properties,
        })
    };
    let mut pod = kept(serde_json::json!({
        "serviceAccountName": {"type": "string"},
        "serviceAccount": {"type": "string"},
        "automountServiceAccountToken": {"type": "boolean"},
        "hostNetwork": {"type": "boolean"},
        "hostPID": {"type": "boolean"},
        "hostIPC": {"type": "boolean"},
        "volumes": {
            "type": "array",
            "maxItems": 64,
            "items": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "secret": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "hostPath": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                },
                "x-kubernetes-validations": [{
                    "rule": "!has(self.secret) && !has(self.hostPath)",
                    "message": "a hook may not mount a Secret or a hostPath: the runner namespace holds the SSH key that is root on every node",
                }],
            },
        },
    }));
    pod["x-kubernetes-validations"] = serde_json::json!([
        {
            "rule": "!has(self.serviceAccountName) && !has(self.serviceAccount) && !(has(self.automountServiceAccountToken) && self.automountServiceAccountToken)",
            "message": "a hook runs as the ServiceAccount upchain-hooks, which holds no RBAC and no token: remove serviceAccountName and automountServiceAccountToken from its template",
        },
        {
            "rule": "!(has(self.hostNetwork) && self.hostNetwork) && !(has(self.hostPID) && self.hostPID) && !(has(self.hostIPC) && self.hostIPC)",
            "message": "a hook may not use the host's network, PID or IPC namespace: remove hostNetwork, hostPID and hostIPC from its template",
        },
    ]);
    let template = kept(serde_json::json!({
        "spec": kept(serde_json::json!({
            "template": kept(serde_json::json!({"spec": pod})),
        })),
    }));
    schemars::Schema::try_from(template).unwrap_or_default()
}

/// When nodes may be started. A node already in progress is finished outside it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowSpec {
    /// Days on which the window opens; every day when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// Local time the window opens, `HH:MM` (24-hour clock). Default `00:00`.
    #[serde(default = "default_window_start")]
    #[schemars(length(max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// How long the window stays open (at most a week). Default 24h: with the default
    /// start and no days, always open outside the blackouts.
    #[serde(default = "default_window_duration")]
    #[schemars(
        with = "String",
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("window.duration must be between 1m and 168h"))]
    pub duration: Duration,
    /// IANA time zone of `start` and `days`, such as `Europe/London`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Date ranges, in `timeZone`, during which no node is started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub blackouts: Vec<Blackout>,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_window_start() -> String {
    "00:00".to_owned()
}

fn default_window_duration() -> Duration {
    Duration::from(std::time::Duration::from_secs(24 * 3600))
}

/// Dates on which no node is started, whatever the window says (a change freeze, a
/// holiday). A node already in progress is finished.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.end >= self.start").message("a blackout's end must not be before its start"))]
pub struct Blackout {
    /// First day of the blackout, `YYYY-MM-DD`, from 00:00 in the window's time zone.
    #[schemars(length(max = 10), regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub start: String,
    /// Last day of the blackout, `YYYY-MM-DD`, until 24:00 in the window's time zone.
    #[schemars(length(max = 10), regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub end: String,
    /// Why, shown while the run waits (such as `year-end change freeze`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

/// A day of the week.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Where notifications go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    /// The Secret key holding a Slack-compatible incoming-webhook URL. The URL is never
    /// logged or shown in status.
    pub webhook_secret: NamespacedKeyRef,
}

/// What the Helm gate does with a release whose latest revision failed.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum FailedReleasePolicy {
    /// The run is Blocked until the release is fixed or rolled back.
    #[default]
    Block,
    /// The run goes on; the gate's evidence names the failed releases.
    Warn,
}
