//! The Helm gate: no release mid-operation or failed.

use std::collections::BTreeMap;

use upchain_api::FailedReleasePolicy;

use super::{Source, Verdict, unreachable, verdict};

/// The latest revision of each release (Helm keeps one Secret per revision).
pub fn latest_revisions(revisions: impl IntoIterator<Item = HelmRelease>) -> Vec<HelmRelease> {
    let mut latest: BTreeMap<(String, String), HelmRelease> = BTreeMap::new();
    for release in revisions {
        let key = (release.namespace.clone(), release.name.clone());
        match latest.get(&key) {
            Some(kept) if kept.revision >= release.revision => {}
            _ => {
                latest.insert(key, release);
            }
        }
    }
    latest.into_values().collect()
}

/// A Helm release's latest revision, from its release Secret's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelmRelease {
    /// Namespace.
    pub namespace: String,
    /// Release name.
    pub name: String,
    /// Revision.
    pub revision: u32,
    /// Status, such as deployed, failed or pending-upgrade.
    pub status: String,
}

/// No Helm release is pending, and none failed unless `failed` says to only warn.
pub fn helm_gate(releases: &Source<Vec<HelmRelease>>, failed: FailedReleasePolicy) -> Verdict {
    let releases = match releases {
        Ok(releases) => releases,
        Err(error) => return unreachable("helm", "Helm's release Secrets", error),
    };
    let mut reasons: Vec<String> = releases
        .iter()
        .filter(|r| r.status.starts_with("pending-"))
        .map(|r| {
            format!(
                "Helm release {}/{} is {} at revision {}: an upgrade or install is in flight or \
                 was interrupted; let it finish, or roll it back (helm rollback {} -n {}) before \
                 the cluster is upgraded",
                r.namespace, r.name, r.status, r.revision, r.name, r.namespace
            )
        })
        .collect();
    let failed_releases: Vec<&HelmRelease> =
        releases.iter().filter(|r| r.status == "failed").collect();
    if failed == FailedReleasePolicy::Block {
        reasons.extend(failed_releases.iter().map(|r| {
            format!(
                "Helm release {}/{} failed at revision {}: fix it (helm history {} -n {}) or \
                 roll it back before the cluster is upgraded, or set \
                 spec.gates.helmFailedReleases to Warn",
                r.namespace, r.name, r.revision, r.name, r.namespace
            )
        }));
    }
    let warned = if failed == FailedReleasePolicy::Warn && !failed_releases.is_empty() {
        format!("; {} failed (a warning only)", failed_releases.len())
    } else {
        String::new()
    };
    verdict(
        "helm",
        format!(
            "{} release(s), none pending or failed{warned}",
            releases.len()
        ),
        reasons,
    )
}
