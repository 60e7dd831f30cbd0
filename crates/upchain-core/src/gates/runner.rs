//! The runner gate: what the node Jobs need exists.

use super::*;

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
                    trust any key";
        match &facts.known_hosts_keys {
            Ok(Some(keys)) if keys.contains(&known.key) => {}
            Ok(Some(_)) => missing.push(format!("key {} of {config_map} ({what})", known.key)),
            Ok(None) => missing.push(format!("{config_map} ({what})")),
            Err(error) => missing.push(unreadable(config_map, error)),
        }
    }
    missing
}

/// What the node Jobs need exists.
pub fn runner_gate(runner: &RunnerSpec, facts: &RunnerFacts) -> Verdict {
    let reasons = runner_missing(runner, facts)
        .iter()
        .map(|what| {
            format!("{what} is missing: the node Jobs need it (see spec.runner); create it")
        })
        .collect();
    verdict(
        "runner",
        format!(
            "namespace {}, the script ConfigMap, the SSH Secret and the known host keys exist",
            runner.namespace
        ),
        reasons,
    )
}
