//! What a drain waits on, watched rather than polled. While nodes drain (or are about to),
//! a watch on each one's Pods and one on every PodDisruptionBudget keep the caches the
//! decisions read, so no reconcile lists Pods, and wake the K8sUpgrade draining them on
//! each change: a refused eviction is tried again as soon as a Pod leaves or a budget
//! moves, not at the next poll. Wakes from budgets alone are spaced out, more and more
//! while no Pod leaves, so a budget that flaps cannot keep the operator busy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;
use upchain_api::K8sUpgrade;
use upchain_core::{ObservedBudget, ObservedPod};

use super::Error;

/// The first spacing of wakes from budget changes; it doubles with each such wake while
/// no Pod leaves, up to `MAX_GAP`.
const FIRST_GAP: Duration = Duration::from_millis(250);
const MAX_GAP: Duration = Duration::from_secs(4);
/// How long a new watch may take to list what it watches before the reconcile fails.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The drains' watches, shared by the reconciles.
pub(super) struct DrainWatch {
    client: Client,
    wake: UnboundedSender<ObjectRef<K8sUpgrade>>,
    watched: Arc<Mutex<Watched>>,
}

#[derive(Default)]
struct Watched {
    /// By node.
    nodes: HashMap<String, NodeWatch>,
    budgets: Option<(Store<PodDisruptionBudget>, Task)>,
    /// By K8sUpgrade: how wakes from budget changes are spaced.
    pacing: HashMap<String, Pacing>,
    /// The last error of each watch (by what it watches), for the reconcile that waits on
    /// it in vain.
    failures: HashMap<String, String>,
}

struct NodeWatch {
    upgrade: String,
    pods: Store<Pod>,
    _task: Task,
}

#[derive(Default)]
struct Pacing {
    gap: Duration,
    not_before: Option<Instant>,
    /// A wake is already scheduled for `not_before`.
    pending: bool,
}

/// A watch's task, stopped when the watch is no longer wanted.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DrainWatch {
    pub(super) fn new(client: Client, wake: UnboundedSender<ObjectRef<K8sUpgrade>>) -> Self {
        Self {
            client,
            wake,
            watched: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unfinished Pods on each of `nodes`, which `upgrade` drains or is about to, from
    /// watches started for them now or before. Its other nodes' watches stop.
    pub(super) async fn pods(
        &self,
        upgrade: &str,
        nodes: &[String],
    ) -> Result<BTreeMap<String, Vec<ObservedPod>>, Error> {
        let stores: Vec<(String, Store<Pod>)> = {
            let mut watched = self.lock();
            watched
                .nodes
                .retain(|node, watch| watch.upgrade != upgrade || nodes.contains(node));
            nodes
                .iter()
                .map(|node| {
                    let watch = watched
                        .nodes
                        .entry(node.clone())
                        .or_insert_with(|| self.watch_node(upgrade, node));
                    watch.upgrade = upgrade.to_owned();
                    (node.clone(), watch.pods.clone())
                })
                .collect()
        };
        let mut pods = BTreeMap::new();
        for (node, store) in stores {
            self.ready(&store, &pods_on(&node)).await?;
            let unfinished = store
                .state()
                .iter()
                .filter(|pod| {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    !matches!(phase, Some("Succeeded" | "Failed"))
                })
                .map(|pod| ObservedPod::from_pod(pod))
                .collect();
            pods.insert(node, unfinished);
        }
        Ok(pods)
    }

    /// Every PodDisruptionBudget, from a watch that runs while any node is watched.
    pub(super) async fn budgets(&self) -> Result<Vec<ObservedBudget>, Error> {
        let store = {
            let mut watched = self.lock();
            let (store, _) = watched.budgets.get_or_insert_with(|| self.watch_budgets());
            store.clone()
        };
        self.ready(&store, BUDGETS).await?;
        Ok(store
            .state()
            .iter()
            .map(|budget| ObservedBudget::from_budget(budget))
            .collect())
    }

    /// `upgrade` drains nothing now: its watches stop, and the budgets' once no drain is
    /// left.
    pub(super) fn release(&self, upgrade: &str) {
        let mut watched = self.lock();
        watched.nodes.retain(|_, watch| watch.upgrade != upgrade);
        watched.pacing.remove(upgrade);
        if watched.nodes.is_empty() {
            watched.budgets = None;
        }
    }

    fn watch_node(&self, upgrade: &str, node: &str) -> NodeWatch {
        let (pods, writer) = reflector::store();
        let api: Api<Pod> = Api::all(self.client.clone());
        // In pages: a node can hold thousands of finished Job Pods, and a page being
        // decoded is this watch's peak memory.
        let config = watcher::Config::default()
            .fields(&format!("spec.nodeName={node}"))
            .page_size(100);
        let (watched, wake, node) = (self.watched.clone(), self.wake.clone(), node.to_owned());
        let stream = watcher(api, config)
            .default_backoff()
            .modify(ObservedPod::prune)
            .reflect(writer)
            .for_each(move |event| {
                // Only a Pod leaving moves the drain along: one that starts terminating, or
                // that lands on the cordoned node (a DaemonSet's), does not.
                let pod_left = match &event {
                    Ok(watcher::Event::Delete(_)) => true,
                    Ok(_) => false,
                    Err(error) => {
                        warn!(%error, node, "watching the Pods of a draining node failed; retrying");
                        failed(&watched, &pods_on(&node), error);
                        false
                    }
                };
                if pod_left {
                    let upgrade = watched
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .nodes
                        .get(&node)
                        .map(|w| w.upgrade.clone());
                    if let Some(upgrade) = upgrade {
                        paced_wake(&watched, &wake, &upgrade, true);
                    }
                }
                std::future::ready(())
            });
        NodeWatch {
            upgrade: upgrade.to_owned(),
            pods,
            _task: Task(tokio::spawn(stream)),
        }
    }

    fn watch_budgets(&self) -> (Store<PodDisruptionBudget>, Task) {
        let (budgets, writer) = reflector::store();
        let api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
        let (watched, wake) = (self.watched.clone(), self.wake.clone());
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|budget| budget.metadata.managed_fields = None)
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                        let mut draining: Vec<String> = watched
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .nodes
                            .values()
                            .map(|w| w.upgrade.clone())
                            .collect();
                        draining.sort();
                        draining.dedup();
                        for upgrade in draining {
                            paced_wake(&watched, &wake, &upgrade, false);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        warn!(%error, "watching PodDisruptionBudgets failed; retrying");
                        failed(&watched, BUDGETS, &error);
                    }
                }
                std::future::ready(())
            });
        (budgets, Task(tokio::spawn(stream)))
    }
}

const BUDGETS: &str = "PodDisruptionBudgets";

fn pods_on(node: &str) -> String {
    format!("the Pods on {node}")
}

fn failed(watched: &Mutex<Watched>, what: &str, error: &impl std::fmt::Display) {
    watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .failures
        .insert(what.to_owned(), error.to_string());
}

impl DrainWatch {
    /// Waits for a new watch's first list; past `READY_WITHIN`, fails with the watch's
    /// last error, which is usually a missing permission.
    async fn ready<K>(&self, store: &Store<K>, what: &str) -> Result<(), Error>
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        if let Ok(Ok(())) = tokio::time::timeout(READY_WITHIN, store.wait_until_ready()).await {
            return Ok(());
        }
        let last = self.lock().failures.get(what).cloned();
        Err(Error::Gather(format!(
            "watching {what} did not list them within {}s{}; upchain needs list and watch on \
             Pods and PodDisruptionBudgets cluster-wide (docs/install.md)",
            READY_WITHIN.as_secs(),
            last.map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        )))
    }
}

/// When to wake a K8sUpgrade for a change its drain's watches saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Now,
    /// Once, at this instant.
    At(Instant),
    /// A wake is already scheduled, and covers this change too.
    Coalesced,
}

impl Pacing {
    /// A Pod leaving wakes at once and spaces the next wakes as at first; any other change
    /// wakes at once or once the spacing allows, coalesced, the spacing doubling with each
    /// such wake up to `MAX_GAP`, stretched by `jitter` (a fraction, at most 0.2).
    fn wake(&mut self, now: Instant, pod_left: bool, jitter: f64) -> Wake {
        if pod_left {
            self.gap = Duration::ZERO;
        }
        let due = self.not_before.filter(|at| *at > now && !pod_left);
        if due.is_some() && self.pending {
            return Wake::Coalesced;
        }
        self.gap = (self.gap * 2).clamp(FIRST_GAP, MAX_GAP);
        let gap = self.gap.mul_f64(1.0 + jitter);
        match due {
            None => {
                self.not_before = Some(now + gap);
                Wake::Now
            }
            Some(at) => {
                self.pending = true;
                self.not_before = Some(at + gap);
                Wake::At(at)
            }
        }
    }
}

/// Wakes `upgrade` as its pacing says (see [`Pacing::wake`]).
fn paced_wake(
    watched: &Arc<Mutex<Watched>>,
    wake: &UnboundedSender<ObjectRef<K8sUpgrade>>,
    upgrade: &str,
    pod_left: bool,
) {
    let jitter = fastrand::f64() * 0.2;
    let decided = watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pacing
        .entry(upgrade.to_owned())
        .or_default()
        .wake(Instant::now(), pod_left, jitter);
    match decided {
        Wake::Now => {
            wake.send(ObjectRef::new(upgrade)).ok();
        }
        Wake::Coalesced => {}
        Wake::At(at) => {
            let (watched, wake, upgrade) = (watched.clone(), wake.clone(), upgrade.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                if let Some(pacing) = watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pacing
                    .get_mut(&upgrade)
                {
                    pacing.pending = false;
                }
                wake.send(ObjectRef::new(&upgrade)).ok();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_changes_wake_spaced_ever_wider_and_a_pod_leaving_wakes_at_once() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut pacing = Pacing::default();
        assert_eq!(pacing.wake(at(0), false, 0.0), Wake::Now);
        // Within the first 250 ms: one wake, when they end; more changes ride on it.
        assert_eq!(pacing.wake(at(10), false, 0.0), Wake::At(at(250)));
        assert_eq!(pacing.wake(at(20), false, 0.0), Wake::Coalesced);
        pacing.pending = false;
        // The spacing doubled: the next wake from a budget waits 500 ms more.
        assert_eq!(pacing.wake(at(260), false, 0.0), Wake::At(at(750)));
        pacing.pending = false;
        // A budget that keeps flapping: the spacing stops growing at MAX_GAP.
        let mut now = 800;
        for _ in 0..10 {
            if let Wake::At(when) = pacing.wake(at(now), false, 0.0) {
                now = u64::try_from(when.duration_since(start).as_millis()).unwrap_or(0) + 1;
            }
            pacing.pending = false;
        }
        assert_eq!(pacing.gap, MAX_GAP);
        // A Pod leaving wakes at once and starts the spacing over.
        assert_eq!(pacing.wake(at(now), true, 0.0), Wake::Now);
        assert_eq!(pacing.gap, FIRST_GAP);
    }
}
