//! What a finished upgrade Job leaves in the node's status record: exit code, times and
//! the tail of its log, bounded in size and with anything that looks like a secret removed.

use std::sync::LazyLock;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use regex::Regex;
use upchain_api::JobResult;

use crate::observe::JobState;

/// Log lines kept per failed Job: enough to see how it ended, small enough that a batch of
/// node records stays far below the API server's object size limit.
pub const LOG_LINES: usize = 10;
/// Log lines kept per Job that succeeded: how it ended. Every node of a batch carries its
/// record until the batch is done, and every status write carries them all.
pub const SUCCEEDED_LOG_LINES: usize = 3;
/// Characters kept per log line.
pub const LOG_LINE_CHARS: usize = 200;
/// Bytes of log the operator asks the API server for.
pub const LOG_BYTES: i64 = 16 * 1024;
const REDACTED: &str = "[redacted]";

/// What the operator read of a finished Job's Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvidence {
    /// The container's exit code.
    pub exit_code: Option<i32>,
    /// When the container started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Its termination message (the etcd check's and the snapshot's report).
    pub report: Option<String>,
    /// The end of its log, or why it could not be read.
    pub log: Result<String, String>,
}

/// The label the Job controller puts on its Pods, naming their Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// What the operator keeps of a Job's Pod: whether it succeeded, and what its evidence
/// reads. A run leaves a finished Pod per prepare check and per node until the Jobs' TTL,
/// and the cache holds every one: each is this, about a hundred bytes, not a `Pod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPod {
    /// The Pod's name, to read its log by.
    pub name: String,
    /// Its Job's name (its [`JOB_NAME_LABEL`]).
    pub job: String,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// Its phase is Succeeded.
    pub succeeded: bool,
    /// How the node Job's own container (not an injected sidecar) ended, once it has.
    pub runner_end: Option<ContainerEnd>,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEnd {
    /// Its exit code.
    pub exit_code: i32,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Its termination message: what the etcd check and the snapshot report, read from
    /// the Pod's status (no log needed).
    pub message: Option<String>,
}

impl JobPod {
    /// What is kept of `pod`.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let runner_end = status
            .and_then(|s| s.container_statuses.as_deref())
            .and_then(|c| c.iter().find(|c| c.name == crate::job::RUNNER_CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| ContainerEnd {
                exit_code: t.exit_code,
                started_at: t.started_at.as_ref().map(|t| t.0),
                finished_at: t.finished_at.as_ref().map(|t| t.0),
                message: t.message.clone().filter(|m| !m.is_empty()),
            });
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            job: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(JOB_NAME_LABEL))
                .cloned()
                .unwrap_or_default(),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            succeeded: status.and_then(|s| s.phase.as_deref()) == Some("Succeeded"),
            runner_end,
        }
    }
}

/// Of a finished Job's Pods, the one that decided how it ended: the last it ran.
pub fn deciding_pod(pods: impl IntoIterator<Item = JobPod>) -> Option<JobPod> {
    pods.into_iter().max_by_key(|p| p.created)
}

impl JobEvidence {
    /// What the node Job's own container left in `pod`, with its `log` as read.
    pub fn from_job_pod(pod: &JobPod, log: Result<String, String>) -> Self {
        let end = pod.runner_end.as_ref();
        Self {
            exit_code: end.map(|e| e.exit_code),
            started_at: end.and_then(|e| e.started_at),
            finished_at: end.and_then(|e| e.finished_at),
            report: end.and_then(|e| e.message.clone()),
            log,
        }
    }
}

/// `key=value` and `key: value` where the key names a secret.
static SECRET_ASSIGNMENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)((?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)s?[\x22']?\s*[:=]\s*)\S+",
    )
    .ok()
});
/// `Authorization: Bearer ...`, `Basic ...` and bare bearer tokens.
static BEARER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}").ok());
/// Long runs of base64 or hex: keys, tokens and certificates.
static OPAQUE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_-]{40,}={0,2}").ok());

/// The last [`LOG_LINES`] lines of `log`, each cut to [`LOG_LINE_CHARS`], with secrets
/// removed: PEM blocks entirely, values assigned to secret-sounding keys, bearer tokens and
/// long opaque strings. A pattern that failed to compile drops the whole log rather than
/// risk printing a secret.
pub fn log_tail(log: &str) -> Vec<String> {
    let (Some(assignment), Some(bearer), Some(opaque)) =
        (SECRET_ASSIGNMENT.as_ref(), BEARER.as_ref(), OPAQUE.as_ref())
    else {
        return vec![REDACTED.to_owned()];
    };
    let mut kept = Vec::new();
    let mut in_pem = false;
    for line in log.lines() {
        if line.contains("-----BEGIN ") {
            in_pem = !line.contains("-----END ");
            kept.push(REDACTED.to_owned());
            continue;
        }
        if in_pem {
            in_pem = !line.contains("-----END ");
            continue;
        }
        let line = assignment.replace_all(line, format!("${{1}}{REDACTED}"));
        let line = bearer.replace_all(&line, format!("${{1}} {REDACTED}"));
        let line = opaque.replace_all(&line, REDACTED);
        kept.push(line.chars().take(LOG_LINE_CHARS).collect());
    }
    let skip = kept.len().saturating_sub(LOG_LINES);
    kept.split_off(skip)
}

/// The record of a Job that ended in `state`, from what was read of its Pod.
pub fn job_result(job: &str, state: &JobState, evidence: Option<&JobEvidence>) -> JobResult {
    let succeeded = *state == JobState::Succeeded;
    let (log_tail, note) = match evidence.map(|e| &e.log) {
        Some(Ok(log)) => {
            let mut tail = self::log_tail(log);
            if succeeded {
                tail = tail.split_off(tail.len().saturating_sub(SUCCEEDED_LOG_LINES));
            }
            (tail, None)
        }
        Some(Err(error)) => (
            Vec::new(),
            Some(format!("the log could not be read: {error}")),
        ),
        None => (
            Vec::new(),
            Some("the Job's Pod was not found; its log is gone".to_owned()),
        ),
    };
    JobResult {
        job: job.to_owned(),
        succeeded,
        exit_code: evidence.and_then(|e| e.exit_code),
        started_at: evidence.and_then(|e| e.started_at).map(Time),
        finished_at: evidence.and_then(|e| e.finished_at).map(Time),
        log_tail,
        note,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_evidence_is_the_runner_containers_in_the_last_pod_the_job_ran() {
        let pod = |name: &str, created: &str, statuses: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "status": {"containerStatuses": statuses}}))
            .expect("pod")
        };
        let terminated = |name: &str, code: i32| {
            serde_json::json!({"name": name, "image": "i", "ready": false, "restartCount": 0,
                "imageID": "", "state": {"terminated": {"exitCode": code,
                "startedAt": "2026-11-30T00:00:00Z", "finishedAt": "2026-11-30T00:01:00Z"}}})
        };
        let first = pod(
            "j-1",
            "2026-11-30T00:00:00Z",
            serde_json::json!([terminated("upgrade", 1)]),
        );
        let last = pod(
            "j-2",
            "2026-11-30T00:05:00Z",
            serde_json::json!([terminated("istio-proxy", 137), terminated("upgrade", 0)]),
        );
        let running = pod(
            "j-3",
            "2026-11-30T00:05:00Z",
            serde_json::json!([{"name": "upgrade", "image": "i", "ready": true,
                "restartCount": 0, "imageID": "", "state": {"running": {}}}]),
        );
        assert!(
            JobPod::from_pod(&running).runner_end.is_none(),
            "a stale copy is read again"
        );
        let deciding = deciding_pod([JobPod::from_pod(&last), JobPod::from_pod(&first)]);
        let deciding = deciding.expect("a pod");
        assert_eq!(deciding.name, "j-2");
        let evidence = JobEvidence::from_job_pod(&deciding, Ok("done".into()));
        assert_eq!(
            evidence.exit_code,
            Some(0),
            "the runner's, not the sidecar's"
        );
        assert!(evidence.started_at.is_some() && evidence.finished_at.is_some());
    }

    use super::*;

    #[test]
    fn a_job_pod_is_named_by_its_job_and_succeeds_by_its_phase() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-1-abcde", "creationTimestamp": "2026-11-30T00:00:00Z",
                "labels": {JOB_NAME_LABEL: "j-1", "upchain.dev/upgrade": "to-1-35"}},
            "status": {"phase": "Succeeded"}}))
        .expect("pod");
        let kept = JobPod::from_pod(&pod);
        assert_eq!(
            (kept.name.as_str(), kept.job.as_str()),
            ("j-1-abcde", "j-1")
        );
        assert!(kept.succeeded && kept.created.is_some());
    }

    #[test]
    fn keeps_the_last_lines_cut_to_length() {
        let log: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log);
        assert_eq!(tail.len(), LOG_LINES);
        assert_eq!(tail[0], "line 20");
        assert_eq!(tail[LOG_LINES - 1], "line 29");
        let long = log_tail(&"x ".repeat(500));
        assert_eq!(long[0].chars().count(), LOG_LINE_CHARS);
    }

    #[test]
    fn a_job_that_succeeded_keeps_fewer_lines_than_one_that_failed() {
        let log: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let evidence = JobEvidence {
            exit_code: Some(0),
            started_at: None,
            finished_at: None,
            report: None,
            log: Ok(log),
        };
        let succeeded = job_result("j", &JobState::Succeeded, Some(&evidence));
        assert_eq!(succeeded.log_tail, ["line 27", "line 28", "line 29"]);
        let failed = JobState::Failed {
            reason: "BackoffLimitExceeded".to_owned(),
            message: String::new(),
        };
        assert_eq!(
            job_result("j", &failed, Some(&evidence)).log_tail.len(),
            LOG_LINES
        );
    }

    #[test]
    fn secrets_never_reach_the_record() {
        let log = "\
connecting to 10.0.0.7
export DB_PASSWORD=hunter2 and token: abc123
curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig'
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDdvPvG
-----END OPENSSH PRIVATE KEY-----
cert data MIIDXTCCAkWgAwIBAgIJAKoK/heBjcOuMA0GCSqGSIb3DQEBBQUAMEUxCzAJBgNV
E: Version '1.35.2-1.1' for 'kubeadm' was not found
";
        let tail = log_tail(log).join("\n");
        for secret in [
            "hunter2",
            "abc123",
            "eyJhbGci",
            "b3BlbnNzaC1rZXkt",
            "QyNTUxOQ",
            "MIIDXTCC",
        ] {
            assert!(!tail.contains(secret), "{secret} leaked into\n{tail}");
        }
        assert!(tail.contains("DB_PASSWORD=[redacted]"), "{tail}");
        assert!(tail.contains("connecting to 10.0.0.7"));
        assert!(
            tail.contains("for 'kubeadm' was not found"),
            "the cause survives"
        );
    }

    #[test]
    fn a_missing_pod_or_log_is_said() {
        let failed = JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "".into(),
        };
        let gone = job_result("j", &failed, None);
        assert!(!gone.succeeded && gone.exit_code.is_none());
        assert!(gone.note.is_some_and(|n| n.contains("not found")));
        let evidence = JobEvidence {
            exit_code: Some(1),
            started_at: None,
            finished_at: None,
            report: None,
            log: Err("403 Forbidden".into()),
        };
        let unread = job_result("j", &failed, Some(&evidence));
        assert_eq!(unread.exit_code, Some(1));
        assert!(unread.note.is_some_and(|n| n.contains("403")));
    }
}
