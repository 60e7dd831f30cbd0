//! The etcd snapshot, taken through the node step before the first node is touched: the
//! node script saves it on a control-plane node, reads it back and restores it into a
//! scratch directory; the Job copies it to the installation's destination and reads its
//! checksum back from there. This module judges what the Job reported.

/// How the snapshot Job's report starts (its termination message, and its log's last
/// such line): `upchain-snapshot {json}`.
pub const REPORT_PREFIX: &str = "upchain-snapshot ";

/// A snapshot that passed the checks, as status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    /// The file's size in bytes.
    pub size_bytes: i64,
    /// `snapshot status`'s hash.
    pub hash: String,
    /// The etcd revision it holds.
    pub revision: i64,
    /// The keys it holds.
    pub total_keys: i64,
    /// Where it was copied off the node.
    pub location: String,
    /// Its SHA-256, as read back from there.
    pub sha256: String,
    /// What the test restore gave back.
    pub restore_check: String,
    /// The node it was taken on.
    pub node: String,
}

/// The report of a good snapshot of `node`'s member copied to `location`, as the snapshot
/// Job prints it: what the core's tests answer for the node step.
#[cfg(test)]
pub(crate) fn good_report(node: &str, location: &str) -> String {
    let sha = "5e3f0a7c1b9d2e4f6a8c0b2d4e6f8a0c2e4a6c8e0b2d4f6a8c0e2a4c6e8b0d2f";
    format!(
        r#"{REPORT_PREFIX}{{"sizeBytes":2109440,"sha256":"{sha}","readBack":"{sha}","location":"{location}","node":"{node}","status":{{"hash":3700725305,"revision":48213,"totalKey":1290,"totalSize":2109440}},"restored":{{"hash":2874310977,"revision":48213,"totalKey":1290,"totalSize":2109440}}}}"#
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    size_bytes: Option<i64>,
    sha256: Option<String>,
    read_back: Option<String>,
    location: Option<String>,
    node: Option<String>,
    status: Option<EtcdStatus>,
    restored: Option<EtcdStatus>,
}

/// `etcdutl snapshot status -w json` (or etcdctl's, before etcd 3.5).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EtcdStatus {
    hash: Option<u64>,
    revision: Option<i64>,
    total_key: Option<i64>,
}

/// Checks what the snapshot Job reported: a file of at least `min_size_bytes`, a status
/// etcd could read (hash, revision, keys), a test restore that gave back the same revision
/// and keys, and a copy off the node whose checksum read back equals the node's. Err says
/// everything that is missing.
pub fn verify_report(report: &str, min_size_bytes: i64) -> Result<VerifiedSnapshot, String> {
    let Some(line) = report
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(REPORT_PREFIX))
    else {
        return Err(format!(
            "it reported no `{}{{...}}` line: read the Job's log for where it stopped",
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
             an etcd snapshot is never that small; check that the right member was saved"
        )),
        None => problems.push("it did not report the snapshot's sizeBytes".to_owned()),
    }
    let status = report.status.as_ref();
    let hash = status.and_then(|s| s.hash).filter(|h| *h != 0);
    let revision = status.and_then(|s| s.revision).filter(|r| *r > 0);
    let total_keys = status.and_then(|s| s.total_key).filter(|k| *k > 0);
    if hash.is_none() || revision.is_none() || total_keys.is_none() {
        problems.push(
            "it did not report `snapshot status` with a hash, a revision and keys: the file \
             may not be a readable snapshot"
                .to_owned(),
        );
    }
    let restored = report.restored.as_ref();
    let restore_check = match (
        restored.and_then(|r| r.revision),
        restored.and_then(|r| r.total_key),
    ) {
        (Some(r), Some(k)) if Some(r) == revision && Some(k) == total_keys => Some(format!(
            "restored into a scratch directory: revision {r} and {k} keys, as in the snapshot"
        )),
        (Some(r), Some(k)) => {
            problems.push(format!(
                "the test restore gave back revision {r} and {k} keys, not the snapshot's \
                 revision {} and {} keys: the snapshot does not restore to what it holds",
                revision.unwrap_or_default(),
                total_keys.unwrap_or_default()
            ));
            None
        }
        _ => {
            problems.push("it did not report a test restore".to_owned());
            None
        }
    };
    let sha256 = report.sha256.filter(|s| s.len() == 64);
    match (&sha256, &report.read_back) {
        (Some(sha), Some(read)) if sha == read => {}
        (Some(sha), Some(read)) => problems.push(format!(
            "the copy off the node reads back as sha256 {read}, not the node's {sha}"
        )),
        _ => problems.push("it did not report the copy's checksum as read back".to_owned()),
    }
    let location = report.location.filter(|l| !l.trim().is_empty());
    if location.is_none() {
        problems.push(
            "it did not report where the snapshot was copied off the node: a snapshot left \
             only on a control-plane node is lost with it"
                .to_owned(),
        );
    }
    match (
        report.size_bytes,
        hash,
        revision,
        total_keys,
        location,
        sha256,
        restore_check,
    ) {
        (
            Some(size_bytes),
            Some(hash),
            Some(revision),
            Some(total_keys),
            Some(location),
            Some(sha256),
            Some(restore_check),
        ) if problems.is_empty() => Ok(VerifiedSnapshot {
            size_bytes,
            hash: format!("{hash:x}"),
            revision,
            total_keys,
            location,
            sha256,
            restore_check,
            node: report.node.unwrap_or_default(),
        }),
        _ => Err(problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn report(json: &str) -> String {
        format!("upchain: etcd-snapshot control-plane node cp-1\n{REPORT_PREFIX}{json}\n")
    }

    fn good() -> String {
        format!(
            r#"{{"sizeBytes":2109440,"sha256":"{SHA}","readBack":"{SHA}","location":"pvc/upchain-system/snapshots/etcd-cp-1.db","node":"cp-1","status":{{"hash":3700725305,"revision":48213,"totalKey":1290,"totalSize":2109440}},"restored":{{"hash":1,"revision":48213,"totalKey":1290}}}}"#
        )
    }

    #[test]
    fn a_snapshot_is_verified_by_what_its_job_reports() {
        assert_eq!(
            verify_report(&report(&good()), 1024),
            Ok(VerifiedSnapshot {
                size_bytes: 2_109_440,
                hash: "dc949639".to_owned(),
                revision: 48213,
                total_keys: 1290,
                location: "pvc/upchain-system/snapshots/etcd-cp-1.db".to_owned(),
                sha256: SHA.to_owned(),
                restore_check: "restored into a scratch directory: revision 48213 and 1290 \
                                keys, as in the snapshot"
                    .to_owned(),
                node: "cp-1".to_owned(),
            })
        );
        let error = verify_report(&report(&good()), 4_000_000).expect_err("too small");
        assert!(
            error.starts_with("the snapshot is 2109440 bytes, below"),
            "{error}"
        );
    }

    #[test]
    fn a_snapshot_that_does_not_restore_or_read_back_is_refused() {
        let restore = good().replace(
            r#""restored":{"hash":1,"revision":48213"#,
            r#""restored":{"hash":1,"revision":48000"#,
        );
        let error = verify_report(&report(&restore), 1024).expect_err("restore differs");
        assert!(
            error.contains("the test restore gave back revision 48000"),
            "{error}"
        );
        let copy = good().replace(&format!(r#""readBack":"{SHA}""#), r#""readBack":"00""#);
        let error = verify_report(&report(&copy), 1024).expect_err("copy differs");
        assert!(error.contains("reads back as sha256 00"), "{error}");
        let on_the_node = good().replace("pvc/upchain-system/snapshots/etcd-cp-1.db", "");
        let error = verify_report(&report(&on_the_node), 1024).expect_err("no location");
        assert!(
            error.contains("where the snapshot was copied off the node"),
            "{error}"
        );
        let no_status = report(r#"{"sizeBytes":2109440}"#);
        let error = verify_report(&no_status, 1024).expect_err("no status");
        assert!(
            error.contains("did not report `snapshot status`"),
            "{error}"
        );
        assert!(error.contains("did not report a test restore"), "{error}");
        let error = verify_report("Snapshot saved\n", 1024).expect_err("no report");
        assert!(
            error.starts_with("it reported no `upchain-snapshot {...}` line"),
            "{error}"
        );
        let error = verify_report(&report("{not json"), 1024).expect_err("bad json");
        assert!(error.contains("is not the JSON expected"), "{error}");
    }
}
