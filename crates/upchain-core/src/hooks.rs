//! Pre- and post-run hooks: Jobs from the user's templates, run once per run.

use k8s_openapi::api::batch::v1::JobTemplateSpec;
use upchain_api::{HookKind, HookSpec, HooksSpec};

use crate::job::bounded_name;

/// The hook of `kind`, when the spec has one.
pub fn hook(hooks: Option<&HooksSpec>, kind: HookKind) -> Option<&HookSpec> {
    let hooks = hooks?;
    match kind {
        HookKind::Pre => hooks.pre.as_ref(),
        HookKind::Post => hooks.post.as_ref(),
    }
}

/// The hook's Job template, or why the spec's is not one.
pub fn template(spec: &HookSpec, kind: HookKind) -> Result<JobTemplateSpec, String> {
    let template: JobTemplateSpec = serde_json::from_value(spec.template.clone()).map_err(|e| {
        format!(
            "spec.hooks.{}.template is not a batch/v1 JobTemplateSpec ({e}); give it the \
             metadata and spec of a Job, as in a CronJob's jobTemplate",
            kind.as_str()
        )
    })?;
    let field = format!("spec.hooks.{}.template", kind.as_str());
    if let Some(error) = crate::template::job_template_error(&template, &field) {
        return Err(error);
    }
    Ok(template)
}

/// The hook Job's name: one per run, kind and attempt.
pub fn job_name(upgrade: &str, kind: HookKind, run_started: i64, attempt: i32) -> String {
    bounded_name(&[
        upgrade,
        kind.as_str(),
        &run_started.to_string(),
        &attempt.to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: serde_json::Value) -> HookSpec {
        serde_json::from_value(serde_json::json!({"namespace": "ops", "template": template}))
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
            job_name("u", HookKind::Pre, 1, 1),
            job_name("u", HookKind::Post, 1, 1)
        );
        assert_ne!(
            job_name("u", HookKind::Pre, 1, 1),
            job_name("u", HookKind::Pre, 1, 2)
        );
        assert!(job_name(&"x".repeat(300), HookKind::Pre, 1, 1).len() <= 63);
    }
}
