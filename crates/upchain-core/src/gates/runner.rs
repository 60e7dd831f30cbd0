//! The runner gate: what the node Jobs need exists.

use upchain_api::{HookKind, HostKeyPolicy, K8sUpgradeSpec, RunnerSpec};

use super::{Source, Verdict, verdict};
use crate::pod_security::{self, Level};

/// What exists of what the node Jobs need, as the operator read it (the SSH Secret by
/// metadata only); each an error when it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerFacts {
    /// The runner namespace exists.
    pub namespace: Source<bool>,
    /// The data keys of the script ConfigMap; None when there is no such ConfigMap.
    pub script_keys: Source<Option<Vec<String>>>,
    /// The SSH Secret exists.
    pub ssh_secret: Source<bool>,
    /// The keys of the known-hosts ConfigMap that hold at least one line; None when there
    /// is no such ConfigMap.
    pub known_hosts_keys: Source<Option<Vec<String>>>,
    /// The one namespace this operator may create Jobs in (where its Role is: the chart's
    /// runnerNamespace), or None where it may create them anywhere.
    pub permitted_namespace: Option<String>,
    /// The Pod Security level the runner namespace enforces (its
    /// `pod-security.kubernetes.io/enforce` label).
    pub pod_security: Level,
    /// The etcd snapshot's PersistentVolumeClaim and whether it exists; None when the
    /// spec takes no snapshot.
    pub snapshot_claim: Option<(String, Source<bool>)>,
}

/// What the node Jobs need and is missing, each named as a person would create it.
pub(super) fn runner_missing(runner: &RunnerSpec, facts: &RunnerFacts) -> Vec<String> {
    let namespace = &runner.namespace;
    let unreadable = |what: String, error: &str| format!("{what} (could not be read: {error})");
    match &facts.namespace {
        Ok(true) => {}
        Ok(false) => return vec![format!("namespace {namespace}")],
        Err(error) => return vec![unreadable(format!("namespace {namespace}"), error)],
    }
    let mut missing = Vec::new();
    let script = &runner.script_config_map;
    let config_map = format!("ConfigMap {namespace}/{}", script.name);
    match &facts.script_keys {
        Ok(Some(keys)) if keys.contains(&script.key) => {}
        Ok(Some(_)) => missing.push(format!("key {} of {config_map}", script.key)),
        Ok(None) => missing.push(format!("{config_map} (the node script)")),
        Err(error) => missing.push(unreadable(config_map, error)),
    }
    let secret = format!("Secret {namespace}/{}", runner.ssh_secret.name);
    match &facts.ssh_secret {
        Ok(true) => {}
        Ok(false) => missing.push(format!("{secret} (the SSH key)")),
        Err(error) => missing.push(unreadable(secret, error)),
    }
    if runner.host_key_policy == HostKeyPolicy::Strict {
        let known = &runner.known_hosts;
        let config_map = format!("ConfigMap {namespace}/{}", known.name);
        let what = "the nodes' SSH host keys, or set spec.runner.hostKeyPolicy AcceptNew to \
                    be shown each node's key to confirm";
        match &facts.known_hosts_keys {
            Ok(Some(keys)) if keys.contains(&known.key) => {}
            Ok(Some(_)) => missing.push(format!("key {} of {config_map} ({what})", known.key)),
            Ok(None) => missing.push(format!("{config_map} ({what})")),
            Err(error) => missing.push(unreadable(config_map, error)),
        }
    }
    if let Some(claim) = runner_snapshot_claim(runner, facts) {
        missing.push(claim);
    }
    missing
}

/// The etcd snapshot's destination, when the spec takes a snapshot and it is missing.
fn runner_snapshot_claim(runner: &RunnerSpec, facts: &RunnerFacts) -> Option<String> {
    let (claim, exists) = facts.snapshot_claim.as_ref()?;
    let what = format!(
        "PersistentVolumeClaim {}/{claim} (the etcd snapshot's destination, \
         policy.snapshot; the chart creates it with policy.snapshot.createClaim)",
        runner.namespace
    );
    match exists {
        Ok(true) => None,
        Ok(false) => Some(what),
        Err(error) => Some(format!("{what} (could not be read: {error})")),
    }
}

/// Why Jobs of this spec would be created where they may not be: hooks run in the runner
/// namespace only, and that must be the one this operator may create Jobs in.
fn misplaced_jobs(spec: &K8sUpgradeSpec, permitted: Option<&str>) -> Vec<String> {
    let namespace = &spec.runner.namespace;
    if let Some(permitted) = permitted.filter(|p| p != namespace) {
        return vec![format!(
            "spec.runner.namespace is {namespace}, but this upchain may create Jobs only in {permitted} (its Role is there: the chart's runnerNamespace); set spec.runner.namespace to {permitted}, or install upchain with runnerNamespace={namespace}"
        )];
    }
    [HookKind::Pre, HookKind::Post, HookKind::EtcdCheck]
        .into_iter()
        .filter_map(|kind| Some((kind, crate::hooks::hook(spec, kind)?)))
        .filter(|(_, hook)| hook.namespace != *namespace)
        .map(|(kind, hook)| {
            format!(
                "{} runs its Job in namespace {}: hooks run in the runner namespace only, where upchain may create Jobs; set its namespace to {namespace}",
                crate::hooks::field(kind),
                hook.namespace
            )
        })
        .collect()
}

/// The runner namespace holds the SSH key: whoever may create Pods there could mount it
/// into a privileged one unless admission enforces `restricted` (the node Jobs meet it).
fn unguarded_namespace(namespace: &str, level: Level) -> Option<String> {
    (level != Level::Restricted).then(|| {
        format!(
            "namespace {namespace} enforces Pod Security {}, not restricted: a privileged Pod \
             there could mount the SSH key beside the node Jobs; label it with `kubectl label \
             namespace {namespace} {}=restricted` (the chart's runner namespace is)",
            level.as_str(),
            pod_security::ENFORCE_LABEL
        )
    })
}

/// What the node Jobs need exists, and every Job of the run goes where upchain may create
/// it.
pub fn runner_gate(spec: &K8sUpgradeSpec, facts: &RunnerFacts) -> Verdict {
    let runner = &spec.runner;
    let misplaced = misplaced_jobs(spec, facts.permitted_namespace.as_deref());
    let reasons = if misplaced.is_empty() {
        runner_missing(runner, facts)
            .iter()
            .map(|what| {
                format!("{what} is missing: the node Jobs need it (see spec.runner); create it")
            })
            .chain(
                (facts.namespace == Ok(true))
                    .then(|| unguarded_namespace(&runner.namespace, facts.pod_security))
                    .flatten(),
            )
            .collect()
    } else {
        misplaced
    };
    verdict(
        "runner",
        format!(
            "namespace {}, the script ConfigMap, the SSH Secret and the known host keys exist",
            runner.namespace
        ),
        reasons,
    )
}
