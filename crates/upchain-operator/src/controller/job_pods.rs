//! The Pods of the operator's Jobs, watched where it runs Jobs. A Pod that Succeeded ends
//! its Job at once (`ObservedJob::from_job_and_pods`) rather than when the Job controller
//! gets to it, and a finished Job's Pod is read from this cache rather than listed.

use futures_util::Stream;

use super::*;

/// The cached Pods of the operator's Jobs.
pub(super) struct JobPods {
    /// Each watched namespace (None: all of them) and its cache.
    stores: Vec<(Option<String>, Store<Pod>)>,
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
        let scopes: Vec<Option<String>> = match namespaces {
            Some(namespaces) => namespaces.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let mut stores = Vec::new();
        let mut wakes = Vec::new();
        for scope in scopes {
            let api: Api<Pod> = match &scope {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            stores.push((scope, store));
            let wake = watcher(api, watcher::Config::default().labels(UPGRADE_LABEL))
                .default_backoff()
                // A run leaves a finished Pod per prepare check and per node until the
                // Jobs' TTL: the cache keeps of each only what is read of it.
                .modify(upchain_core::evidence::prune_job_pod)
                .reflect(writer)
                .applied_objects()
                .filter_map(|pod| {
                    if let Err(error) = &pod {
                        warn!(%error, "watching the Jobs' Pods failed; retrying");
                    }
                    let succeeded = pod.ok().filter(|pod| {
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                    });
                    std::future::ready(succeeded.and_then(|pod| {
                        pod.annotations()
                            .get(UPGRADE_ANNOTATION)
                            .map(|name| ObjectRef::<K8sUpgrade>::new(name))
                    }))
                });
            wakes.push(wake.boxed());
        }
        (Self { stores }, futures_util::stream::select_all(wakes))
    }

    /// The cached Pods in `namespace`.
    pub(super) fn of_namespace(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.stores
            .iter()
            .filter(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .flat_map(|(_, store)| store.state())
            .filter(|pod| pod.namespace().as_deref() == Some(namespace))
            .collect()
    }
}
