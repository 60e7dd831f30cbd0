//! Gathers what the gates, the snapshot and the postflight look at. Each source that
//! cannot be read becomes an `Err` with the reason, which the gate turns into a refusal:
//! nothing here decides.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, PodSpec, Secret,
};
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, LogParams};
use kube::core::Selector;
use kube::discovery::Scope;
use kube::{Client, ResourceExt};
use upchain_api::{HealthCheck, K8sUpgrade};
use upchain_core::Needs;
use upchain_core::analysis::Sample;
use upchain_core::evidence::{JOB_NAME_LABEL, JobPod, deciding_pod};
use upchain_core::gates::{
    AddonMatrix, AddonObservation, Alert, ControlPlaneObservation, DeprecatedApi, GateInputs,
    HelmRelease, ObservedDeployment, ObservedSet, PostflightInputs, RunnerFacts, Source,
};
use upchain_core::pod_security::{self, Level};

use crate::paging::list_paged;

/// How long a gate's HTTP source may take to answer.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Full Pods per page: 500 real Pods decode to about 6 MB, most of a large run's peak
/// memory, so the postflight reads them a hundred at a time.
const POD_PAGE_SIZE: u32 = 100;

/// Reads the gates' sources that `needs` asks for. `permitted_namespace` is the one
/// namespace this operator may create Jobs in, if it is confined to one; `api_server` is
/// how the operator reaches the API server, to ask each one for `/readyz` the same way.
pub async fn gate_inputs(
    client: &Client,
    http: &reqwest::Client,
    upgrade: &K8sUpgrade,
    needs: &Needs,
    permitted_namespace: Option<&str>,
    api_server: Option<&kube::Config>,
) -> GateInputs {
    let gates = &upgrade.spec.gates;
    let mut inputs = GateInputs::default();
    if needs.alerts
        && let Some(prometheus) = &gates.prometheus
    {
        inputs.alerts = Some(alerts(http, &prometheus.url).await);
    }
    if needs.health_checks && !gates.health_checks.is_empty() {
        let mut objects = BTreeMap::new();
        for check in &gates.health_checks {
            objects.insert(
                check.name.clone(),
                health_check_objects(client, check).await,
            );
        }
        inputs.health_checks = Some(objects);
    }
    if !needs.analysis.is_empty() {
        // At once: a Prometheus that hangs costs one timeout, not one per check.
        let queries = gates
            .analysis
            .iter()
            .filter(|c| needs.analysis.contains(&c.name))
            .map(|check| async { (check.name.clone(), analysis_query(http, gates, check).await) });
        inputs.analysis = Some(
            futures_util::future::join_all(queries)
                .await
                .into_iter()
                .collect(),
        );
    }
    if needs.control_plane {
        inputs.control_plane = Some(control_plane(client, api_server).await);
    }
    if !needs.preflight {
        return inputs;
    }
    inputs.runner = Some(runner_facts(client, upgrade, permitted_namespace).await);
    if gates.compatibility.deprecated_apis {
        inputs.deprecated_apis = Some(deprecated_apis(client).await);
    }
    if let Some(matrix) = &gates.compatibility.addon_matrix {
        inputs.addons = Some(addons(client, matrix).await);
    }
    if gates.helm {
        inputs.helm_releases = Some(helm_releases(client).await);
    }
    if gates.workloads {
        inputs.deployments = Some(deployments(client).await);
        inputs.sets = Some(stateful_and_daemon_sets(client).await);
    }
    inputs
}

/// The objects a health check selects, found through discovery so that any kind works,
/// custom resources included. A read that takes longer than [`SOURCE_TIMEOUT`] fails.
async fn health_check_objects(
    client: &Client,
    check: &HealthCheck,
) -> Source<Vec<serde_json::Value>> {
    let read = async {
        let (group, version) = check
            .api_version
            .split_once('/')
            .unwrap_or(("", check.api_version.as_str()));
        let kind = GroupVersionKind::gvk(group, version, &check.kind);
        let (resource, capabilities) =
            kube::discovery::pinned_kind(client, &kind)
                .await
                .map_err(|e| {
                    format!(
                        "{} {} is not served by this cluster ({})",
                        check.api_version,
                        check.kind,
                        describe(&e)
                    )
                })?;
        let api: Api<DynamicObject> = match (&capabilities.scope, &check.namespace) {
            (Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let objects = match &check.object_name {
            Some(name) => api
                .get_opt(name)
                .await
                .map_err(|e| describe(&e))?
                .into_iter()
                .collect(),
            None => {
                let mut params = ListParams::default();
                if let Some(selector) = &check.selector {
                    let selector = Selector::try_from(selector.clone())
                        .map_err(|e| format!("its selector is invalid: {e}"))?;
                    params = params.labels_from(&selector);
                }
                // One more than the core judges, so that it can say there are more.
                let cap = upchain_core::health::MAX_OBJECTS + 1;
                list_paged(&api, params, |objects: &mut Vec<_>, page| {
                    let room = cap.saturating_sub(objects.len());
                    objects.extend(page.into_iter().take(room));
                })
                .await
                .map_err(|e| describe(&e))?
            }
        };
        objects
            .iter()
            .map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
            .collect()
    };
    tokio::time::timeout(SOURCE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", SOURCE_TIMEOUT.as_secs())))
}

pub(crate) fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// Firing and pending alerts from Prometheus's `/api/v1/alerts`.
pub async fn alerts(http: &reqwest::Client, base: &str) -> Source<Vec<Alert>> {
    #[derive(serde::Deserialize)]
    struct Response {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        alerts: Vec<RawAlert>,
    }
    #[derive(serde::Deserialize)]
    struct RawAlert {
        labels: BTreeMap<String, String>,
        state: String,
    }
    let url = format!("{}/api/v1/alerts", base.trim_end_matches('/'));
    let response = http
        .get(&url)
        .timeout(SOURCE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let body: Response = response.json().await.map_err(|e| {
        format!(
            "GET {url}: not a Prometheus alerts response: {}",
            e.without_url()
        )
    })?;
    Ok(body
        .data
        .alerts
        .into_iter()
        .map(|alert| {
            let name = alert.labels.get("alertname").cloned().unwrap_or_default();
            let labels = alert
                .labels
                .iter()
                .filter(|(k, _)| *k != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            Alert {
                name,
                state: alert.state,
                labels,
            }
        })
        .collect())
}

/// An analysis check's instant query against Prometheus's `/api/v1/query`, at the check's
/// own URL or the alert gate's.
pub async fn analysis_query(
    http: &reqwest::Client,
    gates: &upchain_api::GatesSpec,
    check: &upchain_api::AnalysisCheck,
) -> Source<Vec<Sample>> {
    #[derive(serde::Deserialize)]
    struct Response {
        status: String,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        result_type: String,
        result: serde_json::Value,
    }
    #[derive(serde::Deserialize)]
    struct RawSample {
        #[serde(default)]
        metric: BTreeMap<String, String>,
        value: (f64, String),
    }
    let Some(base) = check
        .url
        .as_deref()
        .or(gates.prometheus.as_ref().map(|p| p.url.as_str()))
    else {
        return Err(
            "no Prometheus to ask: set spec.gates.prometheus.url or the check's url".into(),
        );
    };
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let response = http
        .get(&url)
        .query(&[("query", check.query.as_str())])
        .timeout(SOURCE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    let status = response.status();
    // Prometheus explains a bad query in the body of its 400 or 422.
    let body: Response = response.json().await.map_err(|e| {
        format!(
            "GET {url} answered {status}, not a Prometheus query response: {}",
            e.without_url()
        )
    })?;
    let data = match (body.status.as_str(), body.data) {
        ("success", Some(data)) => data,
        _ => {
            return Err(format!(
                "Prometheus refused the query ({status}): {}",
                body.error.as_deref().unwrap_or("no reason given")
            ));
        }
    };
    let not_a = |e: serde_json::Error| {
        format!(
            "GET {url}: a {} result that does not read: {e}",
            data.result_type
        )
    };
    match data.result_type.as_str() {
        "vector" => Ok(
            serde_json::from_value::<Vec<RawSample>>(data.result.clone())
                .map_err(not_a)?
                .into_iter()
                .map(|s| Sample {
                    labels: s.metric,
                    value: s.value.1,
                })
                .collect(),
        ),
        "scalar" => {
            let (_, value): (f64, String) =
                serde_json::from_value(data.result.clone()).map_err(not_a)?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value,
            }])
        }
        other => Err(format!(
            "the query returns a {other}; it must return a vector or a scalar: wrap a range \
             selector in a function such as max_over_time(...[10m])"
        )),
    }
}

/// The control plane's static Pods (kube-system, tier=control-plane), what the API
/// server's `/readyz` answers through the Service and each one's at its own address, and
/// what kubeadm-config records.
async fn control_plane(
    client: &Client,
    api_server: Option<&kube::Config>,
) -> Source<ControlPlaneObservation> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let (kubeadm_version, etcd_external) = match config_maps.get_opt("kubeadm-config").await {
        Ok(config_map) => (
            upchain_core::gates::kubeadm_config_version(config_map.as_ref()),
            upchain_core::gates::kubeadm_config_etcd_external(config_map.as_ref()),
        ),
        Err(e) => (
            Err(format!(
                "reading {}: {}",
                upchain_core::gates::KUBEADM_CONFIG,
                describe(&e)
            )),
            false,
        ),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let listed = pods
        .list(&ListParams::default().labels("tier=control-plane"))
        .await
        .map_err(|e| {
            format!(
                "listing kube-system Pods with tier=control-plane: {}",
                describe(&e)
            )
        })?;
    let asked = listed
        .items
        .iter()
        .filter_map(|pod| Some((pod, api_server?)))
        .filter_map(|(pod, config)| {
            let labels = pod.metadata.labels.as_ref()?;
            (labels.get("component").map(String::as_str) == Some("kube-apiserver")).then_some(())?;
            let node = pod.spec.as_ref()?.node_name.clone()?;
            let endpoint = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(upchain_core::gates::ADVERTISE_ANNOTATION))
                .cloned()
                .or_else(|| {
                    let ip = pod.status.as_ref()?.host_ip.clone()?;
                    Some(format!("{ip}:6443"))
                })?;
            Some(async move {
                let answer = readyz_at(config, &endpoint).await;
                upchain_core::gates::ApiServerReadyz {
                    node,
                    endpoint,
                    answer,
                }
            })
        });
    let api_servers = futures_util::future::join_all(asked).await;
    let mut observation = ControlPlaneObservation {
        static_pods: Vec::new(),
        readyz: readyz(client).await,
        kubeadm_version,
        etcd_external,
        api_servers,
    };
    for pod in &listed.items {
        observation.add(pod);
    }
    Ok(observation)
}

/// `/readyz` of the API server at `endpoint` (`host:port`), asked as the operator asks its
/// own: the same credentials, the same certificate authority, the server's name checked.
async fn readyz_at(config: &kube::Config, endpoint: &str) -> Source<()> {
    let scheme = config.cluster_url.scheme_str().unwrap_or("https");
    let mut config = config.clone();
    config.cluster_url = format!("{scheme}://{endpoint}")
        .parse()
        .map_err(|e| format!("{endpoint} is not an address: {e}"))?;
    // Whatever name the Service's address was checked under, this server is checked
    // under the address asked.
    config.tls_server_name = None;
    let client = Client::try_from(config).map_err(|e| describe(&e))?;
    tokio::time::timeout(SOURCE_TIMEOUT, readyz(&client))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", SOURCE_TIMEOUT.as_secs())))
}

/// `/readyz` passed, or what it answered.
async fn readyz(client: &Client) -> Source<()> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// The API server's `apiserver_requested_deprecated_apis` series.
pub async fn deprecated_apis(client: &Client) -> Source<Vec<DeprecatedApi>> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let failed = |e: String| format!("GET /metrics on the API server: {e}");
    let body = client
        .request_stream(request)
        .await
        .map_err(|e| failed(describe(&e)))?;
    // Streamed: only the series the gate reads are kept, not the whole exposition.
    let mut lines = std::pin::pin!(body.lines());
    let mut series = Vec::new();
    while let Some(line) = lines.try_next().await.map_err(|e| failed(e.to_string()))? {
        series.extend(upchain_core::gates::deprecated_api_series(&line));
    }
    Ok(series)
}

/// The addon matrix, and each addon's running image.
async fn addons(
    client: &Client,
    reference: &upchain_api::NamespacedKeyRef,
) -> Source<AddonObservation> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &reference.namespace);
    let config_map = config_maps.get(&reference.name).await.map_err(|e| {
        format!(
            "ConfigMap {}/{}: {}",
            reference.namespace,
            reference.name,
            describe(&e)
        )
    })?;
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .ok_or_else(|| {
            format!(
                "ConfigMap {}/{} has no key {}",
                reference.namespace, reference.name, reference.key
            )
        })?;
    let matrix = AddonMatrix::parse(text)?;
    let mut images = BTreeMap::new();
    for addon in &matrix.addons {
        let spec: Result<Option<PodSpec>, kube::Error> = match addon.kind.as_str() {
            "DaemonSet" => Api::<DaemonSet>::namespaced(client.clone(), &addon.namespace)
                .get(&addon.workload)
                .await
                .map(|d| d.spec.and_then(|s| s.template.spec)),
            "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), &addon.namespace)
                .get(&addon.workload)
                .await
                .map(|d| d.spec.and_then(|s| s.template.spec)),
            _ => Api::<Deployment>::namespaced(client.clone(), &addon.namespace)
                .get(&addon.workload)
                .await
                .map(|d| d.spec.and_then(|s| s.template.spec)),
        };
        let image = match spec {
            Err(e) => Err(describe(&e)),
            Ok(spec) => spec
                .and_then(|spec| {
                    spec.containers
                        .into_iter()
                        .find(|c| addon.container.as_ref().is_none_or(|want| &c.name == want))
                })
                .and_then(|c| c.image)
                .ok_or_else(|| "no such container".to_owned()),
        };
        images.insert(addon.name.clone(), image);
    }
    Ok(AddonObservation { matrix, images })
}

/// The latest revision of every Helm release, from the labels of Helm's release Secrets
/// (metadata only: the release payload is never read).
async fn helm_releases(client: &Client) -> Source<Vec<HelmRelease>> {
    let secrets: Api<Secret> = Api::all(client.clone());
    let list = secrets
        .list_metadata(&ListParams::default().labels("owner=helm"))
        .await
        .map_err(|e| format!("listing Helm's release Secrets: {}", describe(&e)))?;
    let revisions = list.items.iter().filter_map(|secret| {
        let labels = secret.labels();
        Some(HelmRelease {
            namespace: secret.namespace().unwrap_or_default(),
            name: labels.get("name")?.clone(),
            revision: labels
                .get("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            status: labels.get("status")?.clone(),
        })
    });
    Ok(upchain_core::gates::latest_revisions(revisions))
}

async fn deployments(client: &Client) -> Source<Vec<ObservedDeployment>> {
    let api: Api<Deployment> = Api::all(client.clone());
    list_paged(
        &api,
        ListParams::default(),
        |deployments: &mut Vec<_>, page| {
            deployments.extend(page.iter().map(ObservedDeployment::from_deployment));
        },
    )
    .await
    .map_err(|e| format!("listing Deployments: {}", describe(&e)))
}

async fn stateful_and_daemon_sets(client: &Client) -> Source<Vec<ObservedSet>> {
    let stateful: Api<StatefulSet> = Api::all(client.clone());
    let mut sets = list_paged(
        &stateful,
        ListParams::default(),
        |sets: &mut Vec<_>, page| {
            sets.extend(page.iter().map(ObservedSet::from_stateful_set));
        },
    )
    .await
    .map_err(|e| format!("listing StatefulSets: {}", describe(&e)))?;
    let daemon: Api<DaemonSet> = Api::all(client.clone());
    let daemon_sets = list_paged(&daemon, ListParams::default(), |sets: &mut Vec<_>, page| {
        sets.extend(page.iter().map(ObservedSet::from_daemon_set));
    })
    .await
    .map_err(|e| format!("listing DaemonSets: {}", describe(&e)))?;
    sets.extend(daemon_sets);
    Ok(sets)
}

/// What exists of the runner's namespace, script ConfigMap and SSH Secret (the Secret by
/// metadata only: its key is never read).
async fn runner_facts(
    client: &Client,
    upgrade: &K8sUpgrade,
    permitted_namespace: Option<&str>,
) -> RunnerFacts {
    let runner = &upgrade.spec.runner;
    let permitted_namespace = permitted_namespace.map(str::to_owned);
    if permitted_namespace
        .as_ref()
        .is_some_and(|permitted| *permitted != runner.namespace)
    {
        // Nothing there is upchain's to read; the core names the namespace to use.
        return RunnerFacts {
            namespace: Ok(false),
            script_keys: Ok(None),
            ssh_secret: Ok(false),
            known_hosts_keys: Ok(None),
            permitted_namespace,
            pod_security: Level::Privileged,
            snapshot_claim: None,
        };
    }
    let found = Api::<Namespace>::all(client.clone())
        .get_metadata_opt(&runner.namespace)
        .await
        .map_err(|e| describe(&e));
    let pod_security = Level::enforced(
        found
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|labels| labels.get(pod_security::ENFORCE_LABEL))
            .map(String::as_str),
    );
    let namespace = found.map(|n| n.is_some());
    if namespace != Ok(true) {
        // Nothing else can exist in it; the core names the namespace alone.
        return RunnerFacts {
            namespace,
            script_keys: Ok(None),
            ssh_secret: Ok(false),
            known_hosts_keys: Ok(None),
            permitted_namespace,
            pod_security: Level::Privileged,
            snapshot_claim: None,
        };
    }
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &runner.namespace);
    // The keys whose value holds something.
    let keys_of = |name: String| {
        let config_maps = config_maps.clone();
        async move {
            config_maps
                .get_opt(&name)
                .await
                .map(|c| {
                    c.map(|c| {
                        c.data
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|(_, value)| !value.trim().is_empty())
                            .map(|(key, _)| key)
                            .collect()
                    })
                })
                .map_err(|e| describe(&e))
        }
    };
    let script_keys = keys_of(runner.script_config_map.name.clone()).await;
    let known_hosts_keys = keys_of(runner.known_hosts.name.clone()).await;
    let ssh_secret = Api::<Secret>::namespaced(client.clone(), &runner.namespace)
        .get_metadata_opt(&runner.ssh_secret.name)
        .await
        .map(|s| s.is_some())
        .map_err(|e| describe(&e));
    let claim = upgrade
        .spec
        .snapshot
        .as_ref()
        .and_then(|s| s.persistent_volume_claim.clone());
    let snapshot_claim = match claim {
        Some(claim) => {
            let exists =
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), &runner.namespace)
                    .get_metadata_opt(&claim)
                    .await
                    .map(|c| c.is_some())
                    .map_err(|e| describe(&e));
            Some((claim, exists))
        }
        None => None,
    };
    RunnerFacts {
        namespace,
        script_keys,
        ssh_secret,
        known_hosts_keys,
        permitted_namespace,
        pod_security,
        snapshot_claim,
    }
}

/// The Pod that decided how `job` ended (among `known`, from a cache, when the cached copy
/// shows its end; or else listed),
/// and the end of `container`'s log in it (or why it could not be read); Err when no such
/// Pod could be found.
pub(crate) async fn finished_job_log(
    client: &Client,
    namespace: &str,
    job: &str,
    container: &str,
    known: Vec<JobPod>,
) -> Result<(JobPod, Result<String, String>), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let cached = deciding_pod(known).filter(|pod| pod.runner_end.is_some());
    let pod = match cached {
        Some(pod) => pod,
        None => {
            let listed = pods
                .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job}")))
                .await
                .map_err(|e| {
                    format!(
                        "listing the Pods of Job {namespace}/{job}: {}",
                        describe(&e)
                    )
                })?
                .items;
            deciding_pod(listed.iter().map(JobPod::from_pod))
                .ok_or_else(|| format!("Job {namespace}/{job} has no Pod left to read"))?
        }
    };
    let params = LogParams {
        container: Some(container.to_owned()),
        tail_lines: Some(i64::try_from(upchain_core::evidence::LOG_LINES * 4).unwrap_or(40)),
        limit_bytes: Some(upchain_core::evidence::LOG_BYTES),
        ..LogParams::default()
    };
    let log = pods
        .logs(&pod.name, &params)
        .await
        .map_err(|e| describe(&e));
    Ok((pod, log))
}

/// The control-plane static Pods and the cluster's Pod readiness, read once when the
/// run reaches its postflight.
pub async fn postflight_inputs(client: &Client) -> Result<PostflightInputs, String> {
    let pods: Api<Pod> = Api::all(client.clone());
    list_paged(
        &pods,
        ListParams::default().limit(POD_PAGE_SIZE),
        |inputs: &mut PostflightInputs, page| {
            for pod in &page {
                inputs.count(pod);
            }
        },
    )
    .await
    .map_err(|e| format!("listing Pods for the postflight: {}", describe(&e)))
}
