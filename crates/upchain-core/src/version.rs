//! Kubernetes versions: parsing, ordering and upgrade classification.

use std::fmt;
use std::str::FromStr;

use upchain_api::UpgradeKind;

/// A Kubernetes release `MAJOR.MINOR.PATCH`. Build suffixes that kubelets report
/// (`v1.34.2+k3s1`, `v1.34.2-eks-1234`) are dropped: only the release numbers order
/// versions and drive the skew policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    /// Major version (1 for every Kubernetes release so far).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

/// Why a string is not a Kubernetes version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a Kubernetes version: expected MAJOR.MINOR.PATCH such as 1.35.2 or v1.35.2"
)]
pub struct VersionError {
    /// The text that was given.
    pub input: String,
}

impl KubeVersion {
    /// A version from its three numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses a target version exactly: `1.35.2` or `v1.35.2`, nothing more.
    pub fn parse_target(input: &str) -> Result<Self, VersionError> {
        let error = || VersionError {
            input: input.to_owned(),
        };
        let numbers = input.strip_prefix('v').unwrap_or(input);
        let mut parts = numbers.split('.');
        let mut next = || -> Result<u32, VersionError> {
            let part = parts.next().ok_or_else(error)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error());
            }
            part.parse().map_err(|_| error())
        };
        let version = Self::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(version)
    }

    /// Parses a version as a kubelet reports it: `v1.34.2`, possibly followed by a
    /// pre-release or build suffix (`-rc.1`, `+k3s1`), which is ignored.
    pub fn parse_reported(input: &str) -> Result<Self, VersionError> {
        let release_end = input.find(['-', '+']).unwrap_or(input.len());
        Self::parse_target(&input[..release_end]).map_err(|_| VersionError {
            input: input.to_owned(),
        })
    }

    /// How a node at `self` reaches `target`: None when it is already there or the move
    /// is not an upgrade kubeadm supports (a downgrade, or more than one minor).
    pub fn upgrade_kind_to(self, target: KubeVersion) -> Option<UpgradeKind> {
        if self.major != target.major || target <= self {
            return None;
        }
        match target.minor.checked_sub(self.minor)? {
            0 => Some(UpgradeKind::Patch),
            1 => Some(UpgradeKind::Minor),
            _ => None,
        }
    }
}

impl fmt::Display for KubeVersion {
    /// Formats as Kubernetes does: `v1.35.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for KubeVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_target(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_targets_with_and_without_v() {
        assert_eq!(
            KubeVersion::parse_target("1.35.2"),
            Ok(KubeVersion::new(1, 35, 2))
        );
        assert_eq!(
            KubeVersion::parse_target("v1.35.2"),
            Ok(KubeVersion::new(1, 35, 2))
        );
    }

    #[test]
    fn refuses_malformed_targets() {
        for bad in [
            "",
            "v",
            "1",
            "1.35",
            "1.35.",
            "1..2",
            "1.35.2.1",
            "v1.35.x",
            "1.35.2-rc.1",
            "vv1.35.2",
            " 1.35.2",
            "1.35.2 ",
            "-1.35.2",
            "1.35.+2",
            "99999999999.1.1",
        ] {
            let err = KubeVersion::parse_target(bad).expect_err(bad);
            assert!(err.to_string().contains("such as 1.35.2"), "{err}");
        }
    }

    #[test]
    fn parses_kubelet_reported_versions() {
        for (reported, want) in [
            ("v1.34.2", KubeVersion::new(1, 34, 2)),
            ("v1.34.2+k3s1", KubeVersion::new(1, 34, 2)),
            ("v1.33.5-eks-113cf36", KubeVersion::new(1, 33, 5)),
            ("v1.36.0-rc.1", KubeVersion::new(1, 36, 0)),
        ] {
            assert_eq!(KubeVersion::parse_reported(reported), Ok(want));
        }
        assert!(KubeVersion::parse_reported("unknown").is_err());
    }

    #[test]
    fn classifies_upgrades() {
        let v = |s| KubeVersion::parse_target(s).expect("valid");
        let table = [
            ("1.34.1", "1.34.2", Some(UpgradeKind::Patch)),
            ("1.34.9", "1.35.0", Some(UpgradeKind::Minor)),
            ("1.34.2", "1.34.2", None),
            ("1.34.2", "1.34.1", None),
            ("1.35.0", "1.34.9", None),
            ("1.33.4", "1.35.2", None),
            ("1.34.2", "2.0.0", None),
        ];
        for (from, to, want) in table {
            assert_eq!(v(from).upgrade_kind_to(v(to)), want, "{from} -> {to}");
        }
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(KubeVersion::new(1, 9, 0) < KubeVersion::new(1, 10, 0));
        assert!(KubeVersion::new(1, 35, 10) > KubeVersion::new(1, 35, 9));
    }

    proptest! {
        #[test]
        fn display_round_trips(major in 0u32..5, minor in 0u32..100, patch in 0u32..100) {
            let version = KubeVersion::new(major, minor, patch);
            prop_assert_eq!(KubeVersion::parse_target(&version.to_string()), Ok(version));
            prop_assert_eq!(KubeVersion::parse_reported(&format!("{version}+build.7")), Ok(version));
        }

        #[test]
        fn parse_never_panics(input in ".{0,24}") {
            let _ = KubeVersion::parse_target(&input);
            let _ = KubeVersion::parse_reported(&input);
        }
    }
}
