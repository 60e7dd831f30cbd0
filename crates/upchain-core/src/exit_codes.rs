//! What the node script's exit codes mean, and how each is retried
//! (charts/upchain/files/upgrade-node.sh and docs/node-script.md keep the same table).

use std::time::Duration;

/// The meaning of a node Job's exit code, for status and Events.
pub fn meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        0 => "succeeded",
        2 => "invalid input: a parameter or the node's role was refused before anything changed",
        10 => "unsupported OS: nothing was changed",
        11 => "a target package is not in the configured repository",
        12 => "the package manager's lock stayed taken by another process",
        13 => "the package manager failed",
        14 => "the package repository could not be configured (its key did not download)",
        15 => "kubeadm failed",
        16 => "the kubelet is not active after its restart",
        17 => "verification failed: the node does not run the target version",
        18 => "another upgrade run holds the node",
        19 => "not enough free disk space",
        20 => "kubeadm upgrade plan does not offer the target version",
        21 => "the upgrade on the node ended without a result (killed or rebooted)",
        22 => {
            "etcd could not be reached through the node (no etcd manifest, no etcdctl, or no answer)"
        }
        23 => {
            "the etcd snapshot failed: not saved, not readable, not restorable, or not copied off the node"
        }
        24 => "the node runs a newer version than the target: upchain does not downgrade a node",
        25 => {
            "the node's SSH host key is not confirmed yet: the Job's log shows it and the line \
             to add to the known hosts"
        }
        255 => {
            "SSH failed: the node was unreachable, refused the key, or showed an unknown host key"
        }
        _ => return None,
    })
}

/// How the operator follows a failed node Job, by the class of its exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The SSH session was lost (exit 255): a new Job attaches to the run on the node, which
    /// may well go on, and reports it. No attempt is spent.
    Reattach,
    /// Another process held the node (a package lock, exit 12, or another run, exit 18):
    /// tried again after a pause. No attempt is spent.
    AfterPause,
    /// The upgrade itself failed (kubeadm, the kubelet, verification, the package manager,
    /// or a run that ended without a result): a retry spends an attempt.
    SpendAttempt,
    /// Nothing changes until someone fixes the node, the repository or the spec
    /// (unsupported OS, missing package, bad input, no disk, an older target, a host key
    /// to confirm): never retried.
    Never,
}

/// Free re-attaches after lost sessions, per node and run.
pub const MAX_REATTACHES: i32 = 3;
/// Free retries after another process held the node, per node and run.
pub const MAX_PAUSED_RETRIES: i32 = 3;
/// How long the node is left to the other process before the next try.
pub const RETRY_PAUSE: Duration = Duration::from_secs(60);

/// The retry class of a node Job's exit code (`None`: its Pod could not be read).
pub fn retry(code: Option<i32>) -> Retry {
    match code {
        Some(255) => Retry::Reattach,
        Some(12 | 18) => Retry::AfterPause,
        Some(2 | 10 | 11 | 19 | 20 | 24 | 25) => Retry::Never,
        _ => Retry::SpendAttempt,
    }
}

/// "exit N: meaning" for a known code, "exit N" otherwise.
pub fn describe(code: i32) -> String {
    match meaning(code) {
        Some(meaning) => format!("exit {code}: {meaning}"),
        None => format!("exit {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's table and this one say the same.
    #[test]
    fn every_exit_code_the_script_declares_has_a_meaning() {
        let script = include_str!("../../../charts/upchain/files/upgrade-node.sh");
        let declared: Vec<i32> = script
            .lines()
            .filter(|l| l.starts_with("readonly E_"))
            .flat_map(|l| l.split_whitespace().skip(1))
            .filter_map(|pair| pair.split_once('=')?.1.parse().ok())
            .collect();
        assert_eq!(declared.len(), 16, "{declared:?}");
        for code in declared {
            assert!(meaning(code).is_some(), "exit {code} has no meaning");
        }
        assert_eq!(describe(99), "exit 99");
    }

    #[test]
    fn only_the_upgrade_itself_failing_spends_an_attempt() {
        assert_eq!(retry(Some(255)), Retry::Reattach);
        assert_eq!(retry(Some(12)), Retry::AfterPause);
        assert_eq!(retry(Some(18)), Retry::AfterPause);
        for code in [13, 14, 15, 16, 17, 21, 1] {
            assert_eq!(retry(Some(code)), Retry::SpendAttempt, "exit {code}");
        }
        assert_eq!(retry(None), Retry::SpendAttempt);
        for code in [2, 10, 11, 19, 20, 24, 25] {
            assert_eq!(retry(Some(code)), Retry::Never, "exit {code}");
        }
    }
}
