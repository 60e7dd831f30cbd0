//! The etcd snapshot: a Job made from the cluster's own backup CronJob, run once before
//! the first node is touched.

use k8s_openapi::api::batch::v1::{Job, JobTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use upchain_api::{UPGRADE_ANNOTATION, UPGRADE_LABEL, UPGRADE_UID_ANNOTATION};

use crate::job::{Owner, bounded_name};
use crate::observe::ObservedJob;

/// What the snapshot needs from the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInputs {
    /// The CronJob's `spec.jobTemplate`, or why it could not be read.
    pub template: Result<JobTemplateSpec, String>,
    /// The Job named in `status.snapshot`, when it exists.
    pub job: Option<ObservedJob>,
}

impl Eq for SnapshotInputs {}

/// The snapshot Job's name: one per run and attempt.
pub fn snapshot_job_name(upgrade: &str, run_started: i64, attempt: i32) -> String {
    bounded_name(&[
        upgrade,
        "etcd-snapshot",
        &run_started.to_string(),
        &attempt.to_string(),
    ])
}

/// A Job made from a template (the snapshot CronJob's, a hook's), labelled as the run's.
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
    use k8s_openapi::api::batch::v1::JobSpec;

    #[test]
    fn the_snapshot_job_is_the_cronjobs_template_labelled_as_the_runs() {
        let template = JobTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_owned(), "etcd-backup".to_owned())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(JobSpec {
                backoff_limit: Some(2),
                ..JobSpec::default()
            }),
        };
        let name = snapshot_job_name("to-1-35", 1_790_000_000, 1);
        let job = job_from_template(
            &template,
            Owner {
                name: "to-1-35",
                uid: "uid-1",
            },
            "kube-system",
            &name,
        );
        assert_eq!(name, "to-1-35-etcd-snapshot-1790000000-1");
        let labels = job.metadata.labels.expect("labels");
        assert_eq!(labels["app"], "etcd-backup");
        assert_eq!(labels[UPGRADE_LABEL], "to-1-35");
        assert_eq!(job.spec.and_then(|s| s.backoff_limit), Some(2));
        assert!(job.metadata.owner_references.is_none());
    }
}
