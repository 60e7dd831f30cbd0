//! What the node script's exit codes mean (charts/upchain/files/upgrade-node.sh and
//! docs/node-script.md keep the same table).

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
        255 => {
            "SSH failed: the node was unreachable, refused the key, or showed an unknown host key"
        }
        _ => return None,
    })
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
        assert_eq!(declared.len(), 15, "{declared:?}");
        for code in declared {
            assert!(meaning(code).is_some(), "exit {code} has no meaning");
        }
        assert_eq!(describe(99), "exit 99");
    }
}
