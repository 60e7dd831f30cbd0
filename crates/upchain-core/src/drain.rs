//! Which Pods a drain evicts, and which it is still waiting on.

use upchain_api::{DrainPreview, DrainSpec};

use crate::observe::{ObservedBudget, ObservedPod, PodRef, pod_names};

/// Pod names a drain preview lists; the count covers the rest.
pub const PREVIEW_NAMES: usize = 20;

/// What a drain does next on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Pods to evict now.
    pub evict: Vec<PodRef>,
    /// Pods to delete now rather than evict (namespace/name): single replicas that a
    /// PodDisruptionBudget would hold forever, with `deletePdbBlockedSingleReplicaPods`.
    pub delete: Vec<PodRef>,
    /// Pods the drain still waits for, evicted or not.
    pub waiting: Vec<PodRef>,
    /// PodDisruptionBudgets (namespace/name) that allow no disruption now and cover a Pod
    /// not yet leaving: the Eviction API refuses those Pods until the budget allows it.
    pub blocked_by: Vec<String>,
    /// Pods no controller manages, held back without `evictUnmanagedPods`.
    pub unmanaged: Vec<PodRef>,
    /// Pods with emptyDir data, held back without `deleteEmptyDirData`.
    pub with_empty_dir: Vec<PodRef>,
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
            evict: pod_names(&self.waiting[..self.waiting.len().min(PREVIEW_NAMES)]),
            blocked_by: self.blocked_by.clone(),
        }
    }

    /// Why the drain of `node` would lose what nothing brings back, each with the field
    /// that allows it; empty when the drain may go ahead.
    pub fn held_reasons(&self, node: &str) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.unmanaged.is_empty() {
            reasons.push(format!(
                "node {node} runs Pod(s) that no controller manages, which nothing would \
                 recreate once evicted: {}; move them, or set spec.drain.evictUnmanagedPods: \
                 true to evict them anyway",
                names(&self.unmanaged)
            ));
        }
        if !self.with_empty_dir.is_empty() {
            reasons.push(format!(
                "node {node} runs Pod(s) with emptyDir volumes, whose data an eviction \
                 deletes: {}; set spec.drain.deleteEmptyDirData: true to evict them anyway",
                names(&self.with_empty_dir)
            ));
        }
        reasons
    }
}

/// The first Pod names of a list, and how many more there are.
fn names(pods: &[PodRef]) -> String {
    let shown = pod_names(&pods[..pods.len().min(PREVIEW_NAMES)]).join(", ");
    match pods.len().saturating_sub(PREVIEW_NAMES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// DaemonSet Pods (they would come straight back), mirror Pods (the Eviction API cannot
/// remove them) and finished Pods stay; every other Pod must leave. As with `kubectl
/// drain`, a Pod no controller manages and a Pod with emptyDir data are evicted only when
/// `options` allow it; otherwise they hold the drain. The operator's own Pod is evicted
/// last, once nothing else is left, so it never dies before its work.
pub fn drain_progress(
    pods: &[ObservedPod],
    operator_pod: Option<&PodRef>,
    budgets: &[ObservedBudget],
    options: &DrainSpec,
) -> DrainProgress {
    let must_leave: Vec<&ObservedPod> = pods
        .iter()
        .filter(|p| !p.daemonset && !p.mirror && !p.finished)
        .collect();
    let is_operator = |p: &ObservedPod| operator_pod == Some(&p.reference());
    let others_left = must_leave.iter().any(|p| !is_operator(p));
    let leaving = |p: &&&ObservedPod| !p.terminating;
    let held_unmanaged = |p: &ObservedPod| p.unmanaged && !options.evict_unmanaged_pods;
    let held_empty_dir = |p: &ObservedPod| p.empty_dir && !options.delete_empty_dir_data;
    let keys = |filter: &dyn Fn(&ObservedPod) -> bool| -> Vec<PodRef> {
        sorted(
            must_leave
                .iter()
                .filter(leaving)
                .filter(|p| filter(p))
                .map(|p| p.reference())
                .collect(),
        )
    };
    // A single replica behind a budget that allows no disruption never leaves by eviction.
    let deletable = |p: &ObservedPod| {
        options.delete_pdb_blocked_single_replica_pods
            && !held_unmanaged(p)
            && !held_empty_dir(p)
            && budgets
                .iter()
                .any(|b| b.disruptions_allowed <= 0 && b.expected_pods <= 1 && b.covers(p))
    };
    let mut blocked_by: Vec<String> = budgets
        .iter()
        .filter(|b| b.disruptions_allowed <= 0)
        .filter(|b| must_leave.iter().any(|p| !p.terminating && b.covers(p)))
        .map(ObservedBudget::key)
        .collect();
    blocked_by.sort();
    let waiting = sorted(must_leave.iter().map(|p| p.reference()).collect());
    // As many Ready Pods behind each budget as it allows now: the Eviction API would refuse
    // the rest (429), and the drain is woken when a budget moves. A Pod that is not Ready
    // is always tried, as its budget's unhealthy-Pod policy may let it go.
    let mut room: Vec<i32> = budgets.iter().map(|b| b.disruptions_allowed).collect();
    let mut within_budgets = |p: &ObservedPod| {
        if !p.ready {
            return true;
        }
        let covering: Vec<usize> = (0..budgets.len())
            .filter(|i| budgets[*i].covers(p))
            .collect();
        if covering.iter().any(|i| room[*i] <= 0) {
            return false;
        }
        for i in covering {
            room[i] -= 1;
        }
        true
    };
    let mut evictable: Vec<&&ObservedPod> = must_leave
        .iter()
        .filter(leaving)
        .filter(|p| {
            !(held_unmanaged(p)
                || held_empty_dir(p)
                || deletable(p)
                || (others_left && is_operator(p)))
        })
        .collect();
    evictable.sort_by_cached_key(|p| p.reference().to_string());
    let evict = evictable
        .into_iter()
        .filter(|p| within_budgets(p))
        .map(|p| p.reference())
        .collect();
    DrainProgress {
        waiting,
        evict,
        delete: keys(&deletable),
        blocked_by,
        unmanaged: keys(&held_unmanaged),
        with_empty_dir: keys(&held_empty_dir),
    }
}

/// Pods in the order of their `namespace/name`, as status lists them.
fn sorted(mut pods: Vec<PodRef>) -> Vec<PodRef> {
    pods.sort_by_cached_key(ToString::to_string);
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObservedPod {
        ObservedPod {
            labels: [("app".to_owned(), name.to_owned())].into(),
            ..crate::testing::pod("apps", name)
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
        let progress = drain_progress(&pods, None, &[], &DrainSpec::default());
        assert_eq!(pod_names(&progress.evict), ["apps/web"]);
        assert_eq!(pod_names(&progress.waiting), ["apps/leaving", "apps/web"]);
        assert!(!progress.is_done());
    }

    #[test]
    fn evicts_the_operator_last() {
        let pods = vec![pod("upchain"), pod("web")];
        let upchain = pods[0].reference();
        let first = drain_progress(&pods, Some(&upchain), &[], &DrainSpec::default());
        assert_eq!(pod_names(&first.evict), ["apps/web"]);
        let last = drain_progress(&pods[..1], Some(&upchain), &[], &DrainSpec::default());
        assert_eq!(pod_names(&last.evict), ["apps/upchain"]);
    }

    #[test]
    fn unmanaged_pods_and_empty_dir_data_are_held_unless_allowed_as_kubectl_drain_does() {
        let pods = vec![
            ObservedPod {
                unmanaged: true,
                ..pod("debug")
            },
            ObservedPod {
                empty_dir: true,
                ..pod("cache")
            },
            pod("web"),
        ];
        let held = drain_progress(&pods, None, &[], &DrainSpec::default());
        assert_eq!(pod_names(&held.evict), ["apps/web"]);
        assert_eq!(pod_names(&held.unmanaged), ["apps/debug"]);
        assert_eq!(pod_names(&held.with_empty_dir), ["apps/cache"]);
        assert_eq!(held.waiting.len(), 3, "held Pods still hold the drain");
        let reasons = held.held_reasons("w-1");
        assert!(
            reasons[0].contains("apps/debug")
                && reasons[0].contains("spec.drain.evictUnmanagedPods: true")
        );
        assert!(
            reasons[1].contains("apps/cache")
                && reasons[1].contains("spec.drain.deleteEmptyDirData: true")
        );

        let allowed = DrainSpec {
            evict_unmanaged_pods: true,
            delete_empty_dir_data: true,
            ..DrainSpec::default()
        };
        let free = drain_progress(&pods, None, &[], &allowed);
        assert_eq!(
            pod_names(&free.evict),
            ["apps/cache", "apps/debug", "apps/web"]
        );
        assert!(free.held_reasons("w-1").is_empty());
    }

    #[test]
    fn a_single_replica_behind_a_budget_that_allows_nothing_is_deleted_only_when_allowed() {
        let single = ObservedBudget {
            expected_pods: 1,
            ..budget("apps", "db-pdb", "db", 0)
        };
        let pods = vec![pod("db"), pod("web")];
        let waits = drain_progress(
            &pods,
            None,
            std::slice::from_ref(&single),
            &DrainSpec::default(),
        );
        assert!(waits.delete.is_empty());
        assert_eq!(
            pod_names(&waits.evict),
            ["apps/web"],
            "db waits for its budget to move rather than be refused"
        );
        assert_eq!(waits.blocked_by, ["apps/db-pdb"]);
        let allowed = DrainSpec {
            delete_pdb_blocked_single_replica_pods: true,
            ..DrainSpec::default()
        };
        let deletes = drain_progress(&pods, None, std::slice::from_ref(&single), &allowed);
        assert_eq!(pod_names(&deletes.delete), ["apps/db"]);
        assert_eq!(pod_names(&deletes.evict), ["apps/web"]);
        // A budget over several replicas lets the drain wait for its room instead.
        let several = budget("apps", "db-pdb", "db", 0);
        assert!(
            drain_progress(&pods, None, &[several], &allowed)
                .delete
                .is_empty()
        );
    }

    #[test]
    fn only_as_many_ready_pods_as_their_budgets_allow_are_evicted_at_once() {
        let web = |name: &str| ObservedPod {
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ..crate::testing::pod("apps", name)
        };
        let pods = vec![
            web("web-1"),
            web("web-2"),
            web("web-3"),
            ObservedPod {
                ready: false,
                ..web("web-4")
            },
            pod("cache"),
        ];
        let one_at_a_time = budget("apps", "web-pdb", "web", 1);
        let progress = drain_progress(
            &pods,
            None,
            std::slice::from_ref(&one_at_a_time),
            &DrainSpec::default(),
        );
        // One Ready replica, the one that is not Ready (its budget's unhealthy-Pod policy
        // may let it go), and the Pod no budget covers.
        assert_eq!(
            pod_names(&progress.evict),
            ["apps/cache", "apps/web-1", "apps/web-4"]
        );
        assert_eq!(progress.waiting.len(), 5);
        // A second budget over the same Pods with no room holds them all back.
        let none_left = budget("apps", "web-strict", "web", 0);
        let held = drain_progress(
            &pods,
            None,
            &[one_at_a_time, none_left],
            &DrainSpec::default(),
        );
        assert_eq!(pod_names(&held.evict), ["apps/cache", "apps/web-4"]);
        assert_eq!(held.blocked_by, ["apps/web-strict"]);
    }

    #[test]
    fn empty_node_is_drained() {
        assert!(drain_progress(&[], None, &[], &DrainSpec::default()).is_done());
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
            expected_pods: 2,
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
        let progress = drain_progress(&pods, None, &budgets, &DrainSpec::default());
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
        let preview = drain_progress(&pods, None, &[], &DrainSpec::default()).preview();
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
