//! Pod Security Standards, as the API server's admission enforces them on a namespace
//! labelled `pod-security.kubernetes.io/enforce`: a hook whose Pod the namespace would
//! refuse is named with every reason before its Job is created, instead of a Job whose
//! Pods never appear until the hook's timeout.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

/// The namespace label that admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Capabilities the baseline level allows a container to add (the container runtimes'
/// default set).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume kinds the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// A Pod Security level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are refused.
    Baseline,
    /// Current hardening practice.
    Restricted,
}

impl Level {
    /// The level a namespace's enforce label names; an absent label enforces nothing.
    /// An unknown value is read as restricted, as the API server reads it.
    pub fn enforced(label: Option<&str>) -> Self {
        match label {
            None | Some("privileged") => Self::Privileged,
            Some("baseline") => Self::Baseline,
            Some(_) => Self::Restricted,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// Why admission at `level` would refuse a Pod with this spec; empty when it admits it.
/// Each reason names the field to set.
pub fn violations(pod: &PodSpec, level: Level) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (set, field) in [
        (pod.host_network, "hostNetwork"),
        (pod.host_pid, "hostPID"),
        (pod.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            found.push(format!("{field} must not be true"));
        }
    }
    let volumes = pod.volumes.iter().flatten();
    for volume in volumes.clone().filter(|v| v.host_path.is_some()) {
        found.push(format!("volume {:?} must not be a hostPath", volume.name));
    }
    let containers: Vec<&Container> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .collect();
    let pod_context = pod.security_context.as_ref();
    let pod_seccomp = pod_context
        .and_then(|c| c.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    if pod_seccomp == Some("Unconfined") {
        found.push("securityContext.seccompProfile.type must not be Unconfined".to_owned());
    }
    for container in &containers {
        baseline(container, &mut found);
    }
    if level == Level::Restricted {
        for volume in volumes {
            let value = serde_json::to_value(volume).unwrap_or_default();
            let kind = value
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                .unwrap_or_default();
            // hostPath is named by the baseline check already.
            if kind != "hostPath" && !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
                found.push(format!(
                    "volume {:?} is a {kind} volume; restricted allows only {}",
                    volume.name,
                    RESTRICTED_VOLUMES.join(", ")
                ));
            }
        }
        let pod_non_root = pod_context.and_then(|c| c.run_as_non_root);
        if pod_context.and_then(|c| c.run_as_user) == Some(0) {
            found.push("securityContext.runAsUser must not be 0".to_owned());
        }
        for container in containers {
            restricted(container, pod_non_root, pod_seccomp, &mut found);
        }
    }
    found
}

fn baseline(container: &Container, found: &mut Vec<String>) {
    let name = &container.name;
    let context = container.security_context.as_ref();
    if context.and_then(|c| c.privileged) == Some(true) {
        found.push(format!(
            "container {name:?} must not set securityContext.privileged"
        ));
    }
    let added = context
        .and_then(|c| c.capabilities.as_ref())
        .and_then(|c| c.add.as_ref());
    for capability in added.into_iter().flatten() {
        if !BASELINE_CAPABILITIES.contains(&capability.as_str()) {
            found.push(format!(
                "container {name:?} must not add capability {capability}"
            ));
        }
    }
    if context
        .and_then(|c| c.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str())
        == Some("Unconfined")
    {
        found.push(format!(
            "container {name:?}: securityContext.seccompProfile.type must not be Unconfined"
        ));
    }
    let host_ports = container.ports.iter().flatten();
    if host_ports
        .clone()
        .any(|p| p.host_port.is_some_and(|h| h != 0))
    {
        found.push(format!("container {name:?} must not use hostPort"));
    }
}

fn restricted(
    container: &Container,
    pod_non_root: Option<bool>,
    pod_seccomp: Option<&str>,
    found: &mut Vec<String>,
) {
    let name = &container.name;
    let default = SecurityContext::default();
    let context = container.security_context.as_ref().unwrap_or(&default);
    if context.allow_privilege_escalation != Some(false) {
        found.push(format!(
            "container {name:?} must set securityContext.allowPrivilegeEscalation: false"
        ));
    }
    let capabilities = context.capabilities.as_ref();
    if !capabilities
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|c| c == "ALL"))
    {
        found.push(format!(
            "container {name:?} must set securityContext.capabilities.drop: [\"ALL\"]"
        ));
    }
    let added = capabilities
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten();
    for capability in added.filter(|c| *c != "NET_BIND_SERVICE") {
        found.push(format!(
            "container {name:?} may add only NET_BIND_SERVICE, not {capability}"
        ));
    }
    match context.run_as_non_root.or(pod_non_root) {
        Some(true) => {}
        Some(false) => found.push(format!(
            "container {name:?} must not set securityContext.runAsNonRoot: false"
        )),
        None => found.push(format!(
            "container {name:?} must set securityContext.runAsNonRoot: true (on the Pod or \
             the container)"
        )),
    }
    if context.run_as_user == Some(0) {
        found.push(format!(
            "container {name:?}: securityContext.runAsUser must not be 0"
        ));
    }
    let seccomp = context
        .seccomp_profile
        .as_ref()
        .map(|p| p.type_.as_str())
        .or(pod_seccomp);
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        found.push(format!(
            "container {name:?} must set securityContext.seccompProfile.type: RuntimeDefault \
             (on the Pod or the container)"
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_enforce_label_names_the_level_and_unknown_values_are_strictest() {
        assert_eq!(Level::enforced(None), Level::Privileged);
        assert_eq!(Level::enforced(Some("baseline")), Level::Baseline);
        assert_eq!(Level::enforced(Some("restricted")), Level::Restricted);
        assert_eq!(Level::enforced(Some("Restrictd")), Level::Restricted);
    }

    #[test]
    fn a_bare_container_passes_baseline_but_not_restricted_and_each_missing_field_is_named() {
        let bare = pod(serde_json::json!({"containers": [{"name": "check", "image": "busybox"}]}));
        assert!(violations(&bare, Level::Baseline).is_empty());
        let found = violations(&bare, Level::Restricted).join("\n");
        for field in [
            "allowPrivilegeEscalation: false",
            "capabilities.drop: [\"ALL\"]",
            "runAsNonRoot: true",
            "seccompProfile.type: RuntimeDefault",
        ] {
            assert!(found.contains(field), "{field}: {found}");
        }
    }

    #[test]
    fn a_hardened_pod_passes_restricted() {
        let hardened = pod(serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "check",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
                }
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "key", "secret": {"secretName": "k"}}]
        }));
        assert_eq!(
            violations(&hardened, Level::Restricted),
            Vec::<String>::new()
        );
    }

    #[test]
    fn host_access_and_privilege_fail_baseline() {
        let privileged = pod(serde_json::json!({
            "hostNetwork": true,
            "containers": [{
                "name": "check",
                "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}},
                "ports": [{"containerPort": 80, "hostPort": 80}]
            }],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]
        }));
        let found = violations(&privileged, Level::Baseline).join("\n");
        for what in [
            "hostNetwork",
            "privileged",
            "SYS_ADMIN",
            "hostPort",
            "hostPath",
        ] {
            assert!(found.contains(what), "{what}: {found}");
        }
        assert!(violations(&privileged, Level::Privileged).is_empty());
    }
}
