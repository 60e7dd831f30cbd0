//! Which Pods a drain evicts, and which it is still waiting on.

use crate::observe::ObservedPod;

/// What a drain does next on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Pods to evict now (namespace/name).
    pub evict: Vec<String>,
    /// Pods the drain still waits for (namespace/name), evicted or not.
    pub waiting: Vec<String>,
}

impl DrainProgress {
    /// True when no Pod that must leave is left on the node.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// DaemonSet Pods (they would come straight back), mirror Pods (the Eviction API cannot
/// remove them) and finished Pods stay; every other Pod must leave. The operator's own
/// Pod is evicted last, once nothing else is left, so it never dies before its work.
pub fn drain_progress(pods: &[ObservedPod], operator_pod: Option<&str>) -> DrainProgress {
    let must_leave: Vec<&ObservedPod> = pods
        .iter()
        .filter(|p| !p.daemonset && !p.mirror && !p.finished)
        .collect();
    let is_operator = |p: &ObservedPod| operator_pod == Some(p.key().as_str());
    let others_left = must_leave.iter().any(|p| !is_operator(p));
    let mut progress = DrainProgress {
        waiting: must_leave.iter().map(|p| p.key()).collect(),
        evict: must_leave
            .iter()
            .filter(|p| !(p.terminating || (others_left && is_operator(p))))
            .map(|p| p.key())
            .collect(),
    };
    progress.waiting.sort();
    progress.evict.sort();
    progress
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObservedPod {
        ObservedPod {
            namespace: "apps".into(),
            name: name.into(),
            daemonset: false,
            mirror: false,
            finished: false,
            terminating: false,
        }
    }

    #[test]
    fn skips_daemonset_mirror_and_finished_pods() {
        let pods = vec![
            ObservedPod {
                daemonset: true,
                ..pod("ds")
            },
            ObservedPod {
                mirror: true,
                ..pod("kube-apiserver-cp-0")
            },
            ObservedPod {
                finished: true,
                ..pod("done")
            },
            pod("web"),
            ObservedPod {
                terminating: true,
                ..pod("leaving")
            },
        ];
        let progress = drain_progress(&pods, None);
        assert_eq!(progress.evict, ["apps/web"]);
        assert_eq!(progress.waiting, ["apps/leaving", "apps/web"]);
        assert!(!progress.is_done());
    }

    #[test]
    fn evicts_the_operator_last() {
        let pods = vec![pod("upchain"), pod("web")];
        let first = drain_progress(&pods, Some("apps/upchain"));
        assert_eq!(first.evict, ["apps/web"]);
        let last = drain_progress(&pods[..1], Some("apps/upchain"));
        assert_eq!(last.evict, ["apps/upchain"]);
    }

    #[test]
    fn empty_node_is_drained() {
        assert!(drain_progress(&[], None).is_done());
    }
}
