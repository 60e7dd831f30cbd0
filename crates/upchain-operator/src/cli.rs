//! Command-line interface: parsed once at the edge into typed arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// upchain upgrades a kubeadm cluster's Kubernetes version node by node, safely.
#[derive(Debug, Parser)]
#[command(name = "upchain", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "UPCHAIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (such as `info` or `upchain=debug`).
    #[arg(long, env = "UPCHAIN_LOG", default_value = "warn", global = true)]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// upchain's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the K8sUpgrade CustomResourceDefinition as YAML.
    Crd {
        /// Print the API reference (Markdown, every field) instead.
        #[arg(long)]
        reference: bool,
    },
    /// Show what an upgrade would do to a list of nodes, without touching any cluster.
    Plan(PlanArgs),
    /// Serve a simulated cluster that kubectl and other clients can talk to.
    Sim(SimArgs),
    /// Run the controller against a cluster (a kubeconfig, or in-cluster configuration).
    Run(RunArgs),
    /// Upgrade the built-in simulated cluster end to end, showing each step as it happens.
    Demo(DemoArgs),
    /// Run every preflight gate once against a cluster and explain each verdict, changing
    /// nothing (exit 0: all pass, 1: blocked, 2: bad input).
    Check(CheckArgs),
}

/// Arguments of `upchain check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Version the upgrade would go to, such as 1.35.2.
    #[arg(long)]
    pub target: String,

    /// A K8sUpgrade manifest whose gates, nodes and runner settings to check with.
    #[arg(long)]
    pub spec: Option<PathBuf>,

    /// Kubeconfig to use; without it, KUBECONFIG, ~/.kube/config or in-cluster.
    #[arg(long, env = "UPCHAIN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The installation policy to judge the spec under, as `upchain run` reads it (in the
    /// operator's Pod, where `kubectl exec deploy/upchain -- upchain check` finds it).
    /// Without the file: the chart's defaults, and the output says so.
    #[arg(
        long,
        env = "UPCHAIN_POLICY",
        default_value = "/etc/upchain/policy/policy.json"
    )]
    pub policy: PathBuf,
}

/// Arguments of `upchain demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Control-plane and worker nodes, as `CONTROL_PLANES+WORKERS`.
    #[arg(long, default_value = "1+6", value_parser = parse_topology)]
    pub nodes: (usize, usize),

    /// Version the simulated nodes start at.
    #[arg(long, default_value = "1.34.2")]
    pub from: String,

    /// Version to upgrade to.
    #[arg(long, default_value = "1.35.2")]
    pub target: String,

    /// Seconds a node's upgrade Job runs, and seconds the node is then NotReady.
    #[arg(long, default_value_t = 1)]
    pub upgrade_seconds: u64,

    /// Seconds each node must stay Ready at the target before the next starts.
    #[arg(long, default_value_t = 2)]
    pub soak_seconds: u64,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,

    /// Nodes only: no workloads or PodDisruptionBudgets to drain around.
    #[arg(long)]
    pub bare: bool,
}

/// Arguments of `upchain run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig to use; without it, KUBECONFIG, ~/.kube/config or the in-cluster
    /// service account.
    #[arg(long, env = "UPCHAIN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the operator's own Pod (set from the downward API in the chart).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Name of the operator's own Pod, evicted last when its node is drained.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Compete for a Lease and act only while holding it, so that replicas can run side by
    /// side (`--leader-election false` for a single replica).
    #[arg(long, env = "UPCHAIN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the leader Lease (default: the Pod's namespace, else upchain-system).
    #[arg(long, env = "UPCHAIN_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Seconds the leader's Lease is valid without renewal: how long the replicas go without
    /// a leader when the leader dies without releasing it.
    #[arg(long, env = "UPCHAIN_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_seconds: u64,

    /// Address of /metrics, /healthz and /readyz, as IP:PORT; an IPv6 address may go
    /// without brackets (the chart passes the Pod's IP), the port after its last colon.
    #[arg(long, env = "UPCHAIN_METRICS_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen_addr)]
    pub metrics_addr: std::net::SocketAddr,

    /// Who may read /metrics: anyone who reaches it, or only bearer tokens that the API
    /// server authenticates and allows `get` on the non-resource URL /metrics (a
    /// TokenReview and a SubjectAccessReview per token a minute). /healthz and /readyz
    /// stay open for the kubelet.
    #[arg(long, env = "UPCHAIN_METRICS_AUTH", value_enum, default_value_t = MetricsAuth::None)]
    pub metrics_auth: MetricsAuth,

    /// Serve the endpoints over TLS: with a certificate made at start-up, or with tls.crt
    /// and tls.key from --metrics-tls-dir (read again every five minutes).
    #[arg(long, env = "UPCHAIN_METRICS_TLS", value_enum, default_value_t = MetricsTls::None)]
    pub metrics_tls: MetricsTls,

    /// Where --metrics-tls files finds tls.crt and tls.key (a kubernetes.io/tls Secret's
    /// mount).
    #[arg(
        long,
        env = "UPCHAIN_METRICS_TLS_DIR",
        default_value = "/etc/upchain/metrics-tls"
    )]
    pub metrics_tls_dir: PathBuf,

    /// The installation's policy (the chart's `policy` values, rendered as JSON into the
    /// ConfigMap <release>-policy): the runner namespace, image, node script, SSH key,
    /// host keys, repositories and placement, and what drains and hooks may do. Every
    /// K8sUpgrade chooses within it (docs/install.md#the-trust-model).
    #[arg(
        long,
        env = "UPCHAIN_POLICY",
        default_value = "/etc/upchain/policy/policy.json"
    )]
    pub policy: PathBuf,
}

/// Arguments of `upchain sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Control-plane and worker nodes, as `CONTROL_PLANES+WORKERS`.
    #[arg(long, default_value = "1+6", value_parser = parse_topology)]
    pub nodes: (usize, usize),

    /// Kubernetes version every node starts at.
    #[arg(long, default_value = "1.34.2")]
    pub version: String,

    /// Address to serve the API on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,

    /// Where to write a kubeconfig that points at the simulated cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Seconds an upgrade Job runs before its node restarts, and the node stays NotReady.
    #[arg(long, default_value_t = 2)]
    pub upgrade_seconds: u64,

    /// Start with nodes only: no static Pods, CoreDNS, kube-proxy or applications.
    #[arg(long)]
    pub bare: bool,
}

/// Who may read `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsAuth {
    /// Anyone who can reach the address.
    None,
    /// Bearer tokens the API server authenticates and authorizes.
    Kubernetes,
}

/// How the endpoints are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsTls {
    /// Plain HTTP.
    None,
    /// A certificate made at start-up.
    SelfSigned,
    /// tls.crt and tls.key from --metrics-tls-dir.
    Files,
}

/// `IP:PORT`, where an IPv6 address may also go without brackets: the port follows the
/// last colon, so `$(POD_IP):8080` works for both families.
fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let error = || {
        format!("`{text}` is not IP:PORT, such as 10.0.0.7:8080, [fd00::7]:8080 or fd00::7:8080")
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(error)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| error())?;
    let port: u16 = port.parse().map_err(|_| error())?;
    Ok((ip, port).into())
}

fn parse_topology(text: &str) -> Result<(usize, usize), String> {
    let error = || format!("`{text}` is not CONTROL_PLANES+WORKERS, such as 1+6 or 3+20");
    let (control_planes, workers) = text.split_once('+').ok_or_else(error)?;
    let control_planes: usize = control_planes.trim().parse().map_err(|_| error())?;
    let workers: usize = workers.trim().parse().map_err(|_| error())?;
    if control_planes == 0 || control_planes + workers > 10_000 {
        return Err(format!(
            "`{text}`: need at least one control-plane node and at most 10000 nodes"
        ));
    }
    Ok((control_planes, workers))
}

/// Arguments of `upchain plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Target Kubernetes version, such as 1.35.2 or v1.35.2.
    #[arg(long)]
    pub target: String,

    /// Nodes as `kubectl get nodes -o yaml` (or `-o json`) prints them; `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,

    /// A K8sUpgrade manifest whose spec.nodes (selectors, order, skip, maxUnavailable)
    /// the plan follows. Its targetVersion is replaced by --target.
    #[arg(long)]
    pub spec: Option<PathBuf>,

    /// Workers upgraded at the same time (overrides the spec's nodes.maxUnavailable).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_unavailable: Option<i32>,

    /// Node to leave alone; repeat for more (added to the spec's nodes.skip).
    #[arg(long = "skip", value_name = "NODE")]
    pub skip: Vec<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Output formats of `upchain plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

impl Cli {
    /// Sends logs to stderr in the chosen format; a bad filter falls back to `warn`.
    pub fn init_logging(&self) {
        let filter = EnvFilter::try_new(&self.log).unwrap_or_else(|_| EnvFilter::new("warn"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_listen_address_takes_either_family_with_the_port_after_the_last_colon() {
        let parsed = |text| parse_listen_addr(text).map(|a| a.to_string());
        assert_eq!(parsed("10.0.0.7:8080").unwrap(), "10.0.0.7:8080");
        assert_eq!(parsed("[fd00::7]:8080").unwrap(), "[fd00::7]:8080");
        assert_eq!(parsed("fd00::7:8080").unwrap(), "[fd00::7]:8080");
        assert_eq!(parsed("::1:9000").unwrap(), "[::1]:9000");
        for bad in ["10.0.0.7", "pod:8080", "10.0.0.7:99999", "", "fd00::7"] {
            let error = parsed(bad).unwrap_err();
            assert!(error.contains("IP:PORT"), "{bad}: {error}");
        }
    }
}
