//! Jobs from the user's templates: the pre- and post-run hooks, run once per run, and the
//! external etcd check, run before each control-plane node and the first worker.

use k8s_openapi::api::batch::v1::{Job, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use upchain_api::{
    HookKind, HookSpec, K8sUpgradeSpec, UPGRADE_ANNOTATION, UPGRADE_LABEL, UPGRADE_UID_ANNOTATION,
};

use crate::job::{Owner, bounded_name};
use crate::pod_security::{self, Level};

/// The label of hook Pods, which the chart's NetworkPolicy for hooks selects.
pub const HOOK_POD_LABEL: &str = "upchain.dev/hook";

/// The ServiceAccount every hook Pod runs as: the chart creates it in the runner namespace
/// with no RBAC and no token, so a hook holds no power over the cluster.
pub const HOOK_SERVICE_ACCOUNT: &str = "upchain-hooks";

/// The Job spec of `kind`, when the spec has one.
pub fn hook(spec: &K8sUpgradeSpec, kind: HookKind) -> Option<&HookSpec> {
    match kind {
        HookKind::Pre => spec.hooks.as_ref()?.pre.as_ref(),
        HookKind::Post => spec.hooks.as_ref()?.post.as_ref(),
        HookKind::EtcdCheck => spec.gates.external_etcd_check.as_ref(),
    }
}

/// Where the spec sets the hook, as a message names it.
pub fn field(kind: HookKind) -> String {
    match kind {
        HookKind::EtcdCheck => "spec.gates.externalEtcdCheck".to_owned(),
        _ => format!("spec.hooks.{}", kind.as_str()),
    }
}

/// The hook's Job template, or why the spec's is not one.
pub fn template(spec: &HookSpec, kind: HookKind) -> Result<JobTemplateSpec, String> {
    let field = format!("{}.template", field(kind));
    let template: JobTemplateSpec = serde_json::from_value(spec.template.clone()).map_err(|e| {
        format!(
            "{field} is not a batch/v1 JobTemplateSpec ({e}); give it the metadata and spec \
             of a Job, as in a CronJob's jobTemplate"
        )
    })?;
    if let Some(error) = crate::template::job_template_error(&template, &field) {
        return Err(error);
    }
    let mut template = template;
    if let Some(pod) = template
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        let found = powers(pod);
        if !found.is_empty() {
            return Err(format!(
                "{field}.spec.template.spec: hooks run with no power over the cluster or the \
                 nodes, and this one asks for some: {}; remove them (a hook that needs them \
                 is work for the installation, not for a K8sUpgrade: docs/install.md#the-trust-model)",
                found.join("; ")
            ));
        }
        pod.service_account_name = Some(HOOK_SERVICE_ACCOUNT.to_owned());
        pod.automount_service_account_token = Some(false);
    }
    if let Some(job) = template.spec.as_mut() {
        job.template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HOOK_POD_LABEL.to_owned(), "true".to_owned());
    }
    Ok(template)
}

/// What in a hook's Pod would give it power: a ServiceAccount or its token, a Secret,
/// the host, privilege; and whatever Pod Security `restricted` refuses, whatever the
/// runner namespace's label says.
fn powers(pod: &PodSpec) -> Vec<String> {
    let mut found = Vec::new();
    #[allow(deprecated)]
    let named = [&pod.service_account_name, &pod.service_account];
    if let Some(account) = named.into_iter().flatten().next() {
        found.push(format!(
            "serviceAccountName {account:?} (hooks run as {HOOK_SERVICE_ACCOUNT}, which holds no RBAC)"
        ));
    }
    if pod.automount_service_account_token == Some(true) {
        found.push("automountServiceAccountToken: true".to_owned());
    }
    for volume in pod.volumes.iter().flatten() {
        let name = &volume.name;
        if volume.secret.is_some() {
            found.push(format!("volume {name:?} mounts a Secret"));
        }
        let sources = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten());
        for source in sources {
            if source.secret.is_some() {
                found.push(format!("projected volume {name:?} holds a Secret"));
            }
            if source.service_account_token.is_some() {
                found.push(format!(
                    "projected volume {name:?} holds a ServiceAccount token"
                ));
            }
        }
    }
    let containers: Vec<&Container> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .collect();
    for container in containers {
        let name = &container.name;
        let from_secret = container.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .is_some_and(|v| v.secret_key_ref.is_some())
        }) || container
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.is_some());
        if from_secret {
            found.push(format!(
                "container {name:?} reads a Secret into its environment"
            ));
        }
        let added = container
            .security_context
            .as_ref()
            .and_then(|c| c.capabilities.as_ref())
            .and_then(|c| c.add.as_ref());
        if let Some(added) = added.filter(|a| !a.is_empty()) {
            found.push(format!(
                "container {name:?} adds capabilities {}",
                added.join(", ")
            ));
        }
    }
    found.extend(pod_security::violations(pod, Level::Restricted));
    found
}

/// The hook Job's name: one per run, kind and attempt.
pub fn job_name(
    upgrade: &str,
    kind: HookKind,
    before: Option<&str>,
    run_started: i64,
    attempt: i32,
) -> String {
    let run_started = run_started.to_string();
    let attempt = attempt.to_string();
    let mut parts = vec![upgrade, kind.as_str()];
    parts.extend(before);
    parts.extend([run_started.as_str(), attempt.as_str()]);
    bounded_name(&parts)
}

/// How messages name the Job of `kind`.
pub fn describe(kind: HookKind) -> &'static str {
    match kind {
        HookKind::Pre => "the pre-run hook Job",
        HookKind::Post => "the post-run hook Job",
        HookKind::EtcdCheck => "the external etcd check Job",
    }
}

/// A Job made from a hook's template, labelled as the run's.
pub fn job_from_template(
    template: &JobTemplateSpec,
    owner: Owner<'_>,
    namespace: &str,
    name: &str,
) -> Job {
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(UPGRADE_LABEL.to_owned(), bounded_name(&[owner.name]));
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(UPGRADE_ANNOTATION.to_owned(), owner.name.to_owned());
    annotations.insert(UPGRADE_UID_ANNOTATION.to_owned(), owner.uid.to_owned());
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: serde_json::Value) -> HookSpec {
        serde_json::from_value(
            serde_json::json!({"namespace": "upchain-system", "template": template}),
        )
        .expect("hook")
    }

    #[test]
    fn a_template_needs_a_container_and_a_bad_one_is_explained() {
        let good = spec(crate::testing::hook_template(
            serde_json::json!({"name": "check", "image": "busybox"}),
        ));
        assert!(template(&good, HookKind::Pre).is_ok());
        let empty = spec(serde_json::json!({"spec": {"template": {"spec": {"containers": []}}}}));
        let error = template(&empty, HookKind::Post).expect_err("no containers");
        assert!(
            error.starts_with("spec.hooks.post.template has no containers"),
            "{error}"
        );
        let wrong = spec(serde_json::json!({"spec": {"template": "nope"}}));
        let error = template(&wrong, HookKind::Pre).expect_err("not a template");
        assert!(
            error.contains("is not a batch/v1 JobTemplateSpec"),
            "{error}"
        );
    }

    /// A container that Pod Security `restricted` admits.
    fn restricted_pod(extra: serde_json::Value) -> serde_json::Value {
        let mut pod = serde_json::json!({
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "smoke", "image": "curl", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        });
        for (key, value) in extra.as_object().expect("object") {
            pod[key] = value.clone();
        }
        serde_json::json!({"spec": {"template": {"spec": pod}}})
    }

    #[test]
    fn a_powerless_hook_runs_as_the_hook_account_without_a_token() {
        let hook = spec(restricted_pod(serde_json::json!({})));
        let template = template(&hook, HookKind::Pre).expect("powerless");
        let pod = template
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some(HOOK_SERVICE_ACCOUNT)
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let labels = template
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels);
        assert_eq!(
            labels
                .and_then(|l| l.get(HOOK_POD_LABEL).cloned())
                .as_deref(),
            Some("true")
        );
    }

    #[test]
    fn every_way_to_power_a_hook_is_refused_by_name() {
        let secret_env = serde_json::json!([{"name": "smoke", "image": "curl",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "upchain-ssh", "key": "ssh-privatekey"}}}],
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]);
        let secret_env_from = serde_json::json!([{"name": "smoke", "image": "curl",
            "envFrom": [{"secretRef": {"name": "upchain-ssh"}}],
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]);
        let privileged = serde_json::json!([{"name": "smoke", "image": "curl",
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]);
        let capability = serde_json::json!([{"name": "smoke", "image": "curl",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]);
        let cases = [
            (
                serde_json::json!({"serviceAccountName": "upchain"}),
                "serviceAccountName \"upchain\"",
            ),
            (
                serde_json::json!({"serviceAccount": "upchain"}),
                "serviceAccountName \"upchain\"",
            ),
            (
                serde_json::json!({"automountServiceAccountToken": true}),
                "automountServiceAccountToken: true",
            ),
            (
                serde_json::json!({"volumes": [{"name": "key", "secret": {"secretName": "upchain-ssh"}}]}),
                "volume \"key\" mounts a Secret",
            ),
            (
                serde_json::json!({"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "upchain-ssh"}}]}}]}),
                "projected volume \"p\" holds a Secret",
            ),
            (
                serde_json::json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "holds a ServiceAccount token",
            ),
            (
                serde_json::json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                "volume \"root\" must not be a hostPath",
            ),
            (
                serde_json::json!({"hostPID": true}),
                "hostPID must not be true",
            ),
            (
                serde_json::json!({"hostNetwork": true}),
                "hostNetwork must not be true",
            ),
            (
                serde_json::json!({"hostIPC": true}),
                "hostIPC must not be true",
            ),
            (
                serde_json::json!({"containers": secret_env}),
                "reads a Secret into its environment",
            ),
            (
                serde_json::json!({"containers": secret_env_from}),
                "reads a Secret into its environment",
            ),
            (
                serde_json::json!({"containers": privileged}),
                "must not set securityContext.privileged",
            ),
            (
                serde_json::json!({"containers": capability}),
                "adds capabilities NET_BIND_SERVICE",
            ),
            (serde_json::json!({"securityContext": {}}), "runAsNonRoot"),
        ];
        for (extra, expected) in cases {
            for kind in [HookKind::Pre, HookKind::Post, HookKind::EtcdCheck] {
                let error =
                    template(&spec(restricted_pod(extra.clone())), kind).expect_err("refused");
                assert!(
                    error.contains("hooks run with no power"),
                    "{extra}: {error}"
                );
                assert!(error.contains(expected), "{extra}: {error}");
            }
        }
    }

    #[test]
    fn names_are_per_run_kind_and_attempt() {
        assert_ne!(
            job_name("u", HookKind::Pre, None, 1, 1),
            job_name("u", HookKind::Post, None, 1, 1)
        );
        assert_ne!(
            job_name("u", HookKind::Pre, None, 1, 1),
            job_name("u", HookKind::Pre, None, 1, 2)
        );
        assert!(job_name(&"x".repeat(300), HookKind::Pre, None, 1, 1).len() <= 63);
    }
}
