//! Jobs from the user's templates: the pre- and post-run hooks, run once per run, and the
//! external etcd check, run before each control-plane node and the first worker.

use k8s_openapi::api::batch::v1::JobTemplateSpec;
use upchain_api::{HookKind, HookSpec, K8sUpgradeSpec};

use crate::job::bounded_name;

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
    Ok(template)
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
        let good = spec(serde_json::json!({"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "check", "image": "busybox"}]}}}}));
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
