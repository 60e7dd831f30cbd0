//! Lists read in pages: a cluster-wide list holds one page in memory at a time, and a page
//! whose continue token expired starts the list again.

use kube::api::{Api, ListParams};

/// Objects per page of a cluster-wide list (client-go's pager uses the same).
const PAGE_SIZE: u32 = 500;

/// Lists in pages (of `params.limit`, else [`PAGE_SIZE`]), folding each page into `T`: a
/// cluster-wide list of Pods holds one page in memory at a time, not the whole cluster.
/// A continue token that expired (410 Gone: etcd compacted past the list's version) starts
/// the list again from a fresh `T`, as client-go's pager does, at most
/// [`LIST_RESTARTS`] times.
pub(crate) async fn list_paged<K, T: Default>(
    api: &Api<K>,
    params: ListParams,
    mut fold: impl FnMut(&mut T, Vec<K>),
) -> Result<T, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let first = if params.limit.is_some() {
        params
    } else {
        params.limit(PAGE_SIZE)
    };
    let mut restarts = 0;
    let mut params = first.clone();
    let mut folded = T::default();
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(kube::Error::Api(status))
                if status.code == 410
                    && params.continue_token.is_some()
                    && restarts < LIST_RESTARTS =>
            {
                restarts += 1;
                params = first.clone();
                folded = T::default();
                continue;
            }
            Err(error) => return Err(error),
        };
        fold(&mut folded, page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(folded),
        }
    }
}

/// How often a paged list starts again after its continue token expired.
const LIST_RESTARTS: u32 = 3;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::api::PostParams;
    use serde_json::json;
    use upchain_sim::{Sim, SimConfig};

    use super::*;
    use kube::Client;

    fn config_map(name: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default"}})
    }

    /// A continue token that expires mid-list (the simulator keeps 8 changes here, as etcd
    /// compacts) starts the list again: every object once, none twice.
    #[tokio::test]
    async fn a_list_whose_continue_token_expired_starts_again() {
        let sim = Sim::start(SimConfig {
            workers: 0,
            workloads: false,
            history: 8,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let client = Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        for i in 0..6 {
            let object = serde_json::from_value(config_map(&format!("before-{i}"))).unwrap();
            api.create(&PostParams::default(), &object).await.unwrap();
        }
        let mut pages = 0;
        let names = list_paged(
            &api,
            ListParams::default().limit(2),
            |names: &mut Vec<String>, page| {
                pages += 1;
                if pages == 1 {
                    // Churn past the kept history between the first and second page.
                    for i in 0..20 {
                        let object = config_map(&format!("churn-{i}"));
                        sim.store().create_own("v1", "ConfigMap", object).unwrap();
                    }
                }
                names.extend(page.iter().map(|c| c.name_any()));
            },
        )
        .await
        .unwrap();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "listed twice: {names:?}");
        assert!(pages > 13, "the list did not start again: {pages} pages");
        assert_eq!(
            names.len(),
            26 + usize::from(names.iter().any(|n| n == "kube-root-ca.crt"))
        );
    }
}
