//! The Pods of the operator's Jobs, watched where it runs Jobs. A Pod that Succeeded ends
//! its Job at once (`ObservedJob::from_job_and_pods`) rather than when the Job controller
//! gets to it, and a finished Job's Pod is read from this cache rather than listed.
//!
//! Not a reflector's `Store<Pod>`: a run leaves a finished Pod per prepare check and per
//! node until the Jobs' TTL, thousands at 5,000 nodes, and even pruned a `Pod` is kilobytes
//! of empty fields and maps. The cache keeps a `JobPod` of each, by namespace and Job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::warn;
use upchain_api::{K8sUpgrade, UPGRADE_ANNOTATION, UPGRADE_LABEL};
use upchain_core::evidence::{JOB_NAME_LABEL, JobPod};

use super::apis_in;

/// Pods by namespace and Job name.
type PodsByJob = HashMap<(String, String), Vec<JobPod>>;

/// The cached Pods of the operator's Jobs.
pub(super) struct JobPods {
    /// Each watch's cache; the namespaces do not overlap.
    caches: Vec<Arc<Mutex<PodsByJob>>>,
}

impl JobPods {
    /// Starts the watches: one per namespace of `namespaces`, or one cluster-wide. Returns
    /// the caches and the stream of K8sUpgrades to wake, one per Pod that Succeeded, after
    /// the cache holds it.
    pub(super) fn watch(
        client: &Client,
        namespaces: Option<&[String]>,
    ) -> (
        Self,
        impl Stream<Item = ObjectRef<K8sUpgrade>> + Send + 'static,
    ) {
        let apis: Vec<Api<Pod>> = apis_in(client, namespaces);
        let mut caches = Vec::new();
        let mut wakes = Vec::new();
        for api in apis {
            let cache = Arc::new(Mutex::new(PodsByJob::new()));
            caches.push(cache.clone());
            // What a relist gathers, until it is complete and replaces the cache.
            let mut relisted: Option<PodsByJob> = None;
            let wake = watcher(api, watcher::Config::default().labels(UPGRADE_LABEL))
                .default_backoff()
                .filter_map(move |event| {
                    let woken = match event {
                        Ok(event) => remember(&cache, &mut relisted, event),
                        Err(error) => {
                            warn!(%error, "watching the Jobs' Pods failed; retrying");
                            None
                        }
                    };
                    std::future::ready(woken)
                });
            wakes.push(wake.boxed());
        }
        (Self { caches }, futures_util::stream::select_all(wakes))
    }

    /// The cached Pods of Job `job` in `namespace`.
    pub(super) fn of_job(&self, namespace: &str, job: &str) -> Vec<JobPod> {
        let key = (namespace.to_owned(), job.to_owned());
        self.caches
            .iter()
            .flat_map(|cache| lock(cache).get(&key).cloned().unwrap_or_default())
            .collect()
    }
}

fn lock(cache: &Mutex<PodsByJob>) -> std::sync::MutexGuard<'_, PodsByJob> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `event` to the cache (or to the relist under way); returns the K8sUpgrade to
/// wake when a Pod Succeeded.
fn remember(
    cache: &Mutex<PodsByJob>,
    relisted: &mut Option<PodsByJob>,
    event: watcher::Event<Pod>,
) -> Option<ObjectRef<K8sUpgrade>> {
    match event {
        watcher::Event::Init => {
            *relisted = Some(PodsByJob::new());
            None
        }
        watcher::Event::InitApply(pod) => {
            if let Some(relisted) = relisted.as_mut() {
                upsert(relisted, &pod);
            }
            None
        }
        watcher::Event::InitDone => {
            if let Some(relisted) = relisted.take() {
                *lock(cache) = relisted;
            }
            None
        }
        watcher::Event::Apply(pod) => {
            let kept = upsert(&mut lock(cache), &pod);
            let upgrade = pod.annotations().get(UPGRADE_ANNOTATION);
            upgrade
                .filter(|_| kept.succeeded)
                .map(|name| ObjectRef::<K8sUpgrade>::new(name))
        }
        watcher::Event::Delete(pod) => {
            let key = key_of(&pod);
            let mut cache = lock(cache);
            if let Some(pods) = cache.get_mut(&key) {
                pods.retain(|p| Some(p.name.as_str()) != pod.metadata.name.as_deref());
                if pods.is_empty() {
                    cache.remove(&key);
                }
            }
            None
        }
    }
}

fn key_of(pod: &Pod) -> (String, String) {
    let job = pod
        .labels()
        .get(JOB_NAME_LABEL)
        .cloned()
        .unwrap_or_default();
    (pod.namespace().unwrap_or_default(), job)
}

/// Puts what is kept of `pod` in `cache`, in place of an earlier copy; returns it.
fn upsert(cache: &mut PodsByJob, pod: &Pod) -> JobPod {
    let kept = JobPod::from_pod(pod);
    let pods = cache.entry(key_of(pod)).or_default();
    match pods.iter_mut().find(|p| p.name == kept.name) {
        Some(earlier) => *earlier = kept.clone(),
        None => pods.push(kept.clone()),
    }
    kept
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "upchain-system",
                "labels": {JOB_NAME_LABEL: "j"},
                "annotations": {UPGRADE_ANNOTATION: "to-1-35"}},
            "status": {"phase": phase}}))
        .expect("a Pod")
    }

    #[test]
    fn the_cache_follows_applies_deletes_and_relists() {
        let cache = Mutex::new(PodsByJob::new());
        let mut relisted = None;
        let mut apply = |event| remember(&cache, &mut relisted, event);
        assert_eq!(apply(watcher::Event::Apply(pod("j-1", "Running"))), None);
        let woken = apply(watcher::Event::Apply(pod("j-1", "Succeeded")));
        assert_eq!(woken, Some(ObjectRef::new("to-1-35")));
        let key = ("upchain-system".to_owned(), "j".to_owned());
        let pods = lock(&cache).get(&key).cloned().unwrap_or_default();
        assert_eq!(pods.len(), 1, "the later copy replaces the earlier");
        assert!(pods[0].succeeded);
        // A relist replaces the cache only once it is whole.
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(pod("j-2", "Running")));
        assert!(lock(&cache).get(&key).is_some_and(|p| p[0].name == "j-1"));
        apply(watcher::Event::InitDone);
        let pods = lock(&cache).get(&key).cloned().unwrap_or_default();
        assert_eq!(
            pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["j-2"]
        );
        apply(watcher::Event::Delete(pod("j-2", "Running")));
        assert!(lock(&cache).is_empty());
    }
}
