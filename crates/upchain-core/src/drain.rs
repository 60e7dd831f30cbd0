//! Which Pods a drain evicts, and which it is still waiting on.

use upchain_api::DrainPreview;

use crate::observe::{ObservedBudget, ObservedPod};

/// Pod names a drain preview lists; the count covers the rest.
pub const PREVIEW_NAMES: usize = 20;

/// What a drain does next on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Pods to evict now (namespace/name).
    pub evict: Vec<String>,
    /// Pods the drain still waits for (namespace/name), evicted or not.
    pub waiting: Vec<String>,
    /// PodDisruptionBudgets (namespace/name) that allow no disruption now and cover a Pod
    /// not yet leaving: the Eviction API refuses those Pods until the budget allows it.
    pub blocked_by: Vec<String>,
}

impl DrainProgress {
    /// True when no Pod that must leave is left on the node.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The preview recorded before the node is cordoned.
    pub fn preview(&self) -> DrainPreview {
        DrainPreview {
            evict_count: i32::try_from(self.waiting.len()).unwrap_or(i32::MAX),
            evict: self.waiting.iter().take(PREVIEW_NAMES).cloned().collect(),
            blocked_by: self.blocked_by.clone(),
        }
    }
}

/// DaemonSet Pods (they would come straight back), mirror Pods (the Eviction API cannot
/// remove them) and finished Pods stay; every other Pod must leave. The operator's own
/// Pod is evicted last, once nothing else is left, so it never dies before its work.
pub fn drain_progress(
    pods: &[ObservedPod],
    operator_pod: Option<&str>,
    budgets: &[ObservedBudget],
) -> DrainProgress {
    let must_leave: Vec<&ObservedPod> = pods
        .iter()
        .filter(|p| !p.daemonset && !p.mirror && !p.finished)
        .collect();
    let is_operator = |p: &ObservedPod| operator_pod == Some(p.key().as_str());
    let others_left = must_leave.iter().any(|p| !is_operator(p));
    let mut blocked_by: Vec<String> = budgets
        .iter()
        .filter(|b| b.disruptions_allowed <= 0)
        .filter(|b| must_leave.iter().any(|p| !p.terminating && b.covers(p)))
        .map(ObservedBudget::key)
        .collect();
    blocked_by.sort();
    let mut progress = DrainProgress {
        waiting: must_leave.iter().map(|p| p.key()).collect(),
        evict: must_leave
            .iter()
            .filter(|p| !(p.terminating || (others_left && is_operator(p))))
            .map(|p| p.key())
            .collect(),
        blocked_by,
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
            labels: [("app".to_owned(), name.to_owned())].into(),
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
        let progress = drain_progress(&pods, None, &[]);
        assert_eq!(progress.evict, ["apps/web"]);
        assert_eq!(progress.waiting, ["apps/leaving", "apps/web"]);
        assert!(!progress.is_done());
    }

    #[test]
    fn evicts_the_operator_last() {
        let pods = vec![pod("upchain"), pod("web")];
        let first = drain_progress(&pods, Some("apps/upchain"), &[]);
        assert_eq!(first.evict, ["apps/web"]);
        let last = drain_progress(&pods[..1], Some("apps/upchain"), &[]);
        assert_eq!(last.evict, ["apps/upchain"]);
    }

    #[test]
    fn empty_node_is_drained() {
        assert!(drain_progress(&[], None, &[]).is_done());
    }

    fn budget(namespace: &str, name: &str, app: &str, allowed: i32) -> ObservedBudget {
        let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some([("app".to_owned(), app.to_owned())].into()),
            match_expressions: None,
        };
        ObservedBudget {
            namespace: namespace.into(),
            name: name.into(),
            selector: kube_core::Selector::try_from(selector).ok(),
            disruptions_allowed: allowed,
        }
    }

    #[test]
    fn names_the_budgets_that_allow_no_disruption_for_a_pod_still_to_leave() {
        let pods = vec![
            pod("web"),
            pod("db"),
            ObservedPod {
                terminating: true,
                ..pod("cache")
            },
        ];
        let budgets = vec![
            budget("apps", "web-pdb", "web", 1),
            budget("apps", "db-pdb", "db", 0),
            budget("other", "db-pdb", "db", 0),
            budget("apps", "cache-pdb", "cache", 0),
        ];
        let progress = drain_progress(&pods, None, &budgets);
        assert_eq!(
            progress.blocked_by,
            ["apps/db-pdb"],
            "a budget with room, one in another namespace, and one whose Pod is already \
             leaving do not block"
        );
        let preview = progress.preview();
        assert_eq!(preview.evict_count, 3);
        assert_eq!(preview.evict, ["apps/cache", "apps/db", "apps/web"]);
    }

    #[test]
    fn a_preview_lists_a_bounded_number_of_pods() {
        let pods: Vec<ObservedPod> = (0..50).map(|i| pod(&format!("p{i:02}"))).collect();
        let preview = drain_progress(&pods, None, &[]).preview();
        assert_eq!(preview.evict_count, 50);
        assert_eq!(preview.evict.len(), PREVIEW_NAMES);
    }

    #[test]
    fn an_empty_selector_covers_its_namespace_and_a_missing_one_nothing() {
        let mut all = budget("apps", "all", "x", 0);
        all.selector = kube_core::Selector::try_from(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default(),
        )
        .ok();
        assert!(all.covers(&pod("web")));
        let none = ObservedBudget {
            selector: None,
            ..budget("apps", "none", "x", 0)
        };
        assert!(!none.covers(&pod("web")));
    }
}
