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
    /// The end of that Job's log once it succeeded, or why it could not be read.
    pub log: Option<Result<String, String>>,
}

/// How the snapshot Job's report line starts: `upchain-snapshot {json}`, its last such
/// line counting. The JSON holds `sizeBytes`, `location` and `status`, the output of
/// `etcdutl snapshot status -w json` (or etcdctl's, before etcd 3.5).
pub const REPORT_PREFIX: &str = "upchain-snapshot ";

/// A snapshot that passed the checks, as status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    /// The file's size in bytes.
    pub size_bytes: i64,
    /// `etcdutl snapshot status`'s hash.
    pub hash: String,
    /// The etcd revision it holds.
    pub revision: i64,
    /// The keys it holds.
    pub total_keys: i64,
    /// Where it was copied off the node.
    pub location: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    size_bytes: Option<i64>,
    location: Option<String>,
    status: Option<EtcdStatus>,
}

/// `etcdutl snapshot status -w json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EtcdStatus {
    hash: Option<u64>,
    revision: Option<i64>,
    total_key: Option<i64>,
}

/// Checks what the snapshot Job reported in `log`: a report line, a file of at least
/// `min_size_bytes`, a status etcdutl could read (hash, revision, keys), a location off
/// the node. Err says everything that is missing and what the Job must print.
pub fn verify_report(log: &str, min_size_bytes: i64) -> Result<VerifiedSnapshot, String> {
    let Some(line) = log
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(REPORT_PREFIX))
    else {
        return Err(format!(
            "its log has no `{}{{...}}` line: the Job must print one after saving the \
             snapshot, with sizeBytes, location and etcdutl's status (the chart's example \
             CronJob does; see docs/gates.md#the-etcd-snapshot)",
            REPORT_PREFIX
        ));
    };
    let report: Report = serde_json::from_str(line).map_err(|e| {
        format!(
            "its `{}` line is not the JSON expected: {e}",
            REPORT_PREFIX.trim_end()
        )
    })?;
    let mut problems = Vec::new();
    match report.size_bytes {
        Some(size) if size >= min_size_bytes => {}
        Some(size) => problems.push(format!(
            "the snapshot is {size} bytes, below spec.snapshot.minSizeBytes ({min_size_bytes}): \
             an etcd snapshot is never that small; check that the Job saved the right member"
        )),
        None => problems.push("it did not report the snapshot's sizeBytes".to_owned()),
    }
    let status = report.status.as_ref();
    let hash = status.and_then(|s| s.hash).filter(|h| *h != 0);
    let revision = status.and_then(|s| s.revision).filter(|r| *r > 0);
    let total_keys = status.and_then(|s| s.total_key).filter(|k| *k > 0);
    if hash.is_none() || revision.is_none() || total_keys.is_none() {
        problems.push(
            "it did not report `etcdutl snapshot status` with a hash, a revision and keys: \
             the file may not be a readable snapshot"
                .to_owned(),
        );
    }
    let location = report.location.filter(|l| !l.trim().is_empty());
    if location.is_none() {
        problems.push(
            "it did not report where the snapshot was copied off the node (location): a \
             snapshot left only on a control-plane node is lost with it"
                .to_owned(),
        );
    }
    match (report.size_bytes, hash, revision, total_keys, location) {
        (Some(size_bytes), Some(hash), Some(revision), Some(total_keys), Some(location))
            if problems.is_empty() =>
        {
            Ok(VerifiedSnapshot {
                size_bytes,
                hash: format!("{hash:x}"),
                revision,
                total_keys,
                location,
            })
        }
        _ => Err(problems.join("; ")),
    }
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

    fn report(json: &str) -> String {
        format!("Snapshot saved at /backup/snapshot.db\n{REPORT_PREFIX}{json}\n")
    }

    #[test]
    fn a_snapshot_is_verified_by_what_its_job_reports() {
        let good = report(
            r#"{"sizeBytes":2109440,"location":"pvc:etcd-backups/etcd-20261130.db","status":{"hash":3700725305,"revision":48213,"totalKey":1290,"totalSize":2109440}}"#,
        );
        assert_eq!(
            verify_report(&good, 1024),
            Ok(VerifiedSnapshot {
                size_bytes: 2_109_440,
                hash: "dc949639".to_owned(),
                revision: 48213,
                total_keys: 1290,
                location: "pvc:etcd-backups/etcd-20261130.db".to_owned(),
            })
        );
        let small = report(
            r#"{"sizeBytes":12,"location":"s3://b/k","status":{"hash":1,"revision":1,"totalKey":1}}"#,
        );
        let error = verify_report(&small, 1024).expect_err("too small");
        assert!(
            error.starts_with("the snapshot is 12 bytes, below spec.snapshot.minSizeBytes (1024)"),
            "{error}"
        );
        let no_status = report(r#"{"sizeBytes":2109440,"location":"s3://b/k"}"#);
        let error = verify_report(&no_status, 1024).expect_err("no status");
        assert!(
            error.contains("did not report `etcdutl snapshot status`"),
            "{error}"
        );
        let on_the_node = report(
            r#"{"sizeBytes":2109440,"location":"","status":{"hash":1,"revision":1,"totalKey":1}}"#,
        );
        let error = verify_report(&on_the_node, 1024).expect_err("no location");
        assert!(
            error.contains("where the snapshot was copied off the node"),
            "{error}"
        );
        let error = verify_report("Snapshot saved\n", 1024).expect_err("no report");
        assert!(
            error.starts_with("its log has no `upchain-snapshot {...}` line"),
            "{error}"
        );
        let error = verify_report(&report("{not json"), 1024).expect_err("bad json");
        assert!(error.contains("is not the JSON expected"), "{error}");
    }

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
