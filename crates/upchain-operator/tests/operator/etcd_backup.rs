//! The chart's example etcd backup script, an independent schedule beside the run's own
//! snapshot, against a real etcd (the one `control-plane up` runs): its report names a
//! snapshot etcdutl could read, its retention keeps the newest snapshots, and its S3 upload
//! signs and sends the file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::real_api::ControlPlane;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// What the script's last `upchain-snapshot {...}` line reports.
#[derive(Debug)]
struct Reported {
    size_bytes: i64,
    revision: i64,
    total_keys: i64,
    location: String,
}

fn reported(stdout: &str) -> Reported {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("upchain-snapshot "))
        .unwrap_or_else(|| panic!("no report line: {stdout}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let number = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    assert!(number(&json["status"]["hash"]) != 0, "{json}");
    Reported {
        size_bytes: number(&json["sizeBytes"]),
        revision: number(&json["status"]["revision"]),
        total_keys: number(&json["status"]["totalKey"]),
        location: json["location"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Runs the chart's backup script against `etcd`, keeping snapshots in `backups`.
fn backup(etcd: &ControlPlane, backups: &Path, extra: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg(Path::new(REPO).join("charts/upchain/files/etcd-backup.sh"))
        .env(
            "ETCD_ENDPOINT",
            format!("http://127.0.0.1:{}", etcd.env("ETCD_PORT")),
        )
        .env("ETCD_PKI", backups.join("no-pki"))
        .env("BACKUP_DIR", backups)
        .env("KEEP", "2")
        .envs(extra.iter().copied())
        .output()
        .expect("sh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_backup_saves_a_snapshot_upchain_verifies_and_keeps_the_newest() {
    let Some(etcd) = ControlPlane::up(false) else {
        return;
    };
    let backups = tempfile::tempdir().expect("tempdir");
    for old in [
        "etcd-snapshot-20200101T000000Z.db",
        "etcd-snapshot-20210101T000000Z.db",
    ] {
        std::fs::write(backups.path().join(old), b"old").expect("old snapshot");
    }
    let (ok, stdout, stderr) = backup(&etcd, backups.path(), &[]);
    assert!(ok, "{stderr}");
    let snapshot = reported(&stdout);
    assert!(snapshot.size_bytes > 100 * 1024, "{snapshot:?}");
    assert!(
        snapshot.revision > 0 && snapshot.total_keys > 0,
        "{snapshot:?}"
    );
    let name = snapshot
        .location
        .strip_prefix("pvc:etcd-backups/")
        .expect("on the volume");
    let saved = backups.path().join(name);
    assert_eq!(
        std::fs::metadata(&saved).expect("saved").len(),
        u64::try_from(snapshot.size_bytes).expect("size")
    );
    let mut kept: Vec<String> = std::fs::read_dir(backups.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        ["etcd-snapshot-20210101T000000Z.db", name],
        "KEEP=2 keeps the newest two"
    );

    // Bad input says what to fix and saves nothing.
    let (ok, _, stderr) = backup(&etcd, backups.path(), &[("KEEP", "0")]);
    assert!(
        !ok && stderr.contains("KEEP must be a whole number of at least 1"),
        "{stderr}"
    );
    let (ok, _, stderr) = backup(&etcd, backups.path(), &[("S3_URL", "http://127.0.0.1:9/b")]);
    assert!(!ok && stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
}

#[test]
fn the_example_backup_uploads_to_an_s3_compatible_bucket_and_reports_it() {
    let Some(etcd) = ControlPlane::up(false) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bucket = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the upload");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let header = |name: &str| {
            head.iter()
                .find_map(|h| {
                    let (key, value) = h.split_once(':')?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let mut writer = stream;
        if header("expect").eq_ignore_ascii_case("100-continue") {
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .expect("continue");
        }
        let length: usize = header("content-length").parse().expect("length");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .expect("answer");
        (head[0].clone(), header("authorization"), body.len())
    });
    let backups = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{port}/etcd-backups");
    let (ok, stdout, stderr) = backup(
        &etcd,
        backups.path(),
        &[
            ("S3_URL", &url),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ],
    );
    assert!(ok, "{stderr}");
    let (request, authorization, uploaded) = bucket.join().expect("bucket");
    let snapshot = reported(&stdout);
    let name = snapshot
        .location
        .strip_prefix(&format!("{url}/"))
        .expect("the report names the bucket");
    assert_eq!(request, format!("PUT /etcd-backups/{name} HTTP/1.1"));
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{authorization}"
    );
    assert_eq!(
        uploaded,
        usize::try_from(snapshot.size_bytes).expect("size")
    );
}
