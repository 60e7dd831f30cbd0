//! Conformance of the simulated API server as kube-rs sees it.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config};
use serde_json::json;
use upchain_api::K8sUpgrade;
use upchain_sim::{Clock, Sim, SimConfig};

async fn start(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(config).await.expect("sim starts");
    let mut config = Config::new(sim.url().parse().expect("url"));
    // Answers reach the test as the server sent them (kube-rs would retry 429s itself).
    config.default_retry = false;
    let client = Client::try_from(config).expect("client");
    (sim, client)
}

fn bare() -> SimConfig {
    SimConfig {
        workloads: false,
        ..SimConfig::default()
    }
}

/// Waits (on the real clock, bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_conflicts_and_selectors() {
    let (_sim, client) = start(bare()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "a", "labels": {"app": "x"}}, "data": {"k": "v"}}),
    )
    .unwrap();
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let err = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 409),
        "{err}"
    );

    // A write carrying a stale resourceVersion is refused with 409.
    let mut fresh = created.clone();
    fresh.data = Some([("k".to_owned(), "w".to_owned())].into());
    cms.replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    let err = cms
        .replace("a", &PostParams::default(), &created)
        .await
        .expect_err("stale");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 409),
        "{err}"
    );

    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "t"}}})),
    )
    .await
    .expect("merge");
    let listed = cms
        .list(&ListParams::default().labels("app=x,tier in (t)"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let listed = cms
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .expect("list");
    assert!(listed.items.is_empty());
    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = cms.get("a").await.expect_err("gone");
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 404));
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_resources_and_server_side_apply_on_status() {
    let (_sim, client) = start(bare()).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "k8supgrades.upchain.dev",
        &PatchParams::apply("test").force(),
        &Patch::Apply(upchain_api::crd()),
    )
    .await
    .expect("crd applied");
    let upgrades: Api<K8sUpgrade> = Api::all(client.clone());
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "metadata": {"name": "u"}, "spec": {"targetVersion": "1.35.2"}});
    upgrades
        .patch("u", &PatchParams::apply("kubectl"), &Patch::Apply(&object))
        .await
        .expect("created by apply");
    let status = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "status": {"phase": "Preflight", "progress": "0/3"}});
    upgrades
        .patch_status(
            "u",
            &PatchParams::apply("upchain").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status applied");
    // A status past etcd's limit is refused, as a real cluster refuses it.
    let names: Vec<String> = (0..130_000).map(|i| format!("node-{i:06}")).collect();
    let huge = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade",
        "status": {"upgradedNodes": names}});
    match upgrades
        .patch_status(
            "u",
            &PatchParams::apply("upchain").force(),
            &Patch::Apply(&huge),
        )
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 500);
            assert!(e.message.contains("request is too large"), "{}", e.message);
        }
        Err(other) => panic!("a 1.7 MB status must be refused with 500, got {other}"),
        Ok(_) => panic!("a 1.7 MB status was stored"),
    }
    // A spec write does not touch status; a status write does not touch spec or generation.
    upgrades
        .patch(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}, "status": {"phase": "Failed"}})),
        )
        .await
        .expect("spec");
    let got = upgrades.get("u").await.expect("get");
    assert!(got.spec.paused);
    assert_eq!(got.metadata.generation, Some(2));
    let status = got.status.expect("status");
    assert_eq!(status.phase, Some(upchain_api::Phase::Preflight));
    assert_eq!(status.progress.as_deref(), Some("0/3"));
    // Re-applying status without a field removes it: the manager no longer owns it.
    let status = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "status": {"phase": "Workers"}});
    upgrades
        .patch_status(
            "u",
            &PatchParams::apply("upchain").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status applied");
    let status = upgrades
        .get("u")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.phase, Some(upchain_api::Phase::Workers));
    assert_eq!(status.progress, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_respects_disruption_budgets() {
    let (sim, client) = start(SimConfig::default()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    eventually("web pods running", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap();
            list.items.len() == 3
                && list
                    .items
                    .iter()
                    .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        }
    })
    .await;
    eventually("web PDB allows one disruption", || {
        let sim = &sim;
        async move {
            sim.objects("poddisruptionbudgets.policy")
                .iter()
                .any(|p| p["metadata"]["name"] == "web" && p["status"]["disruptionsAllowed"] == 1)
        }
    })
    .await;
    let web: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    pods.evict(&web[0], &Default::default())
        .await
        .expect("first eviction fits the budget");
    let web_budget = || {
        sim.objects("poddisruptionbudgets.policy")
            .into_iter()
            .find(|p| p["metadata"]["name"] == "web")
            .map(|p| p["status"]["disruptionsAllowed"].clone())
    };
    assert_eq!(
        web_budget(),
        Some(json!(0)),
        "the eviction spent the budget"
    );
    let err = pods
        .evict(&web[1], &Default::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 429 && e.message.contains("disruption budget web")),
        "{err}"
    );
    // The Deployment replaces the evicted Pod; once it runs, the budget allows one again.
    eventually("replacement running and budget restored", || async {
        web_budget() == Some(json!(1))
    })
    .await;
    pods.evict(&web[1], &Default::default())
        .await
        .expect("allowed again");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_pods_and_deleting_them_collects_the_pods() {
    let (sim, client) = start(SimConfig::default()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "hello"}, "spec": {"backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})).unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually("job pod scheduled and running", || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("job-name=hello"))
                .await
                .unwrap()
                .items
                .iter()
                .any(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
        }
    })
    .await;
    assert!(
        sim.placements()
            .iter()
            .any(|p| p.labels.get("job-name").map(String::as_str) == Some("hello"))
    );
    jobs.delete("hello", &DeleteParams::background())
        .await
        .expect("delete");
    eventually("pods garbage-collected", || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("job-name=hello"))
                .await
                .unwrap()
                .items
                .is_empty()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reflectors_see_every_change_through_dropped_watches_and_410() {
    let mut config = bare();
    config.history = 16;
    config.bookmark_interval = Duration::from_millis(200);
    let (sim, client) = start(config).await;
    sim.faults().drop_watches_after = Some(Duration::from_millis(300));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    // Small pages: every relist after a 410 spans changes made between its pages.
    let stream = watcher(cms.clone(), watcher::Config::default().page_size(7))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            event.expect("the watcher recovers from every fault");
        }
    });
    // More changes than the history keeps, across many dropped connections. Set
    // UPCHAIN_SIM_SOAK_SECONDS to keep the churn going for that long (docs/simulator.md).
    let soak = std::env::var("UPCHAIN_SIM_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let started = std::time::Instant::now();
    let mut i: u32 = 0;
    while i < 120 || soak.is_some_and(|s| started.elapsed() < s) {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
        if i.is_multiple_of(3) {
            cms.delete(&format!("c{}", i / 3), &DeleteParams::default())
                .await
                .expect("delete");
        }
        if i.is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        i += 1;
    }
    eprintln!(
        "{i} creates and {} deletes in {:?}",
        i.div_ceil(3),
        started.elapsed()
    );
    let expected = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    eventually("the reflector matches the server", || {
        let reader = reader.clone();
        async move { reader.state().len() == expected }
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_come_in_pages_that_together_hold_every_object() {
    let mut config = bare();
    config.history = 8;
    config.filler_pods_per_node = 3;
    let (sim, client) = start(config).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i:02}")}})).unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = ListParams::default().limit(10);
        params.continue_token = token.clone();
        let page = cms.list(&params).await.expect("page");
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(
        (pages, names),
        (3, expected),
        "three pages, in order, none twice"
    );

    // Pods selected by node come in pages too, and only that node's.
    assert!(sim.settled(Duration::from_secs(30)).await);
    let pods: Api<Pod> = Api::all(client.clone());
    let mut seen = 0;
    let mut params = ListParams::default()
        .fields("spec.nodeName=worker-1")
        .limit(2);
    loop {
        let page = pods.list(&params).await.expect("pods by node");
        assert!(page.items.len() <= 2);
        for pod in &page.items {
            assert_eq!(
                pod.spec.as_ref().unwrap().node_name.as_deref(),
                Some("worker-1")
            );
        }
        seen += page.items.len();
        params.continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
        if params.continue_token.is_none() {
            break;
        }
    }
    assert_eq!(seen, 3, "the three filler Pods on worker-1");
    // Metadata only, as a drain reads them: running Pods selected by node and phase.
    let running = pods
        .list_metadata(
            &ListParams::default()
                .fields("spec.nodeName=worker-1,status.phase!=Succeeded,status.phase!=Failed"),
        )
        .await
        .expect("metadata list");
    assert_eq!(running.items.len(), 3);
    assert_eq!(running.types.kind, "PartialObjectMetadataList");
    let finished = pods
        .list_metadata(
            &ListParams::default().fields("spec.nodeName=worker-1,status.phase=Succeeded"),
        )
        .await
        .expect("metadata list");
    assert!(finished.items.is_empty());

    // A token from before the kept history is refused as a real server refuses it.
    let first = cms.list(&ListParams::default().limit(5)).await.unwrap();
    let stale = first.metadata.continue_.unwrap();
    for i in 0..10 {
        cms.delete(&format!("c{i:02}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let mut params = ListParams::default().limit(5);
    params.continue_token = Some(stale);
    match cms.list(&params).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("a stale continue token must be 410 Gone, got {other:?}"),
    }
    let mut params = ListParams::default().limit(5);
    params.continue_token = Some("nonsense".into());
    match cms.list(&params).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 400);
            assert!(e.message.contains("list again without it"), "{}", e.message);
        }
        other => panic!("a foreign continue token must be 400, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_errors_and_latency() {
    let (sim, client) = start(bare()).await;
    let nodes: Api<Node> = Api::all(client.clone());
    sim.faults()
        .error_rate
        .insert(upchain_sim::server::Verb::List, 1.0);
    let err = nodes
        .list(&ListParams::default())
        .await
        .expect_err("injected");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 500),
        "{err}"
    );
    sim.faults().error_rate.clear();
    sim.faults()
        .latency
        .insert(upchain_sim::server::Verb::Get, Duration::from_millis(150));
    let started = std::time::Instant::now();
    nodes.get("cp-1").await.expect("get");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_upgrade_jobs_take_the_node_down_and_bring_it_back_at_the_target() {
    let clock = Clock::virtual_at(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let mut config = bare();
    config.clock = clock.clone();
    let (sim, client) = start(config).await;
    sim.behaviour().failing_jobs.insert("worker-2".into(), 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let upgrade_job = |name: &str, node: &str| -> Job {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [node]}]}]}}},
            "containers": [{"name": "upgrade", "image": "runner", "env": [
                {"name": "NODE_NAME", "value": node}, {"name": "TARGET_VERSION", "value": "1.35.2"}]}]}}}}))
        .unwrap()
    };
    jobs.create(&PostParams::default(), &upgrade_job("up-1", "worker-1"))
        .await
        .expect("job");
    jobs.create(&PostParams::default(), &upgrade_job("up-2", "worker-2"))
        .await
        .expect("job");
    let nodes: Api<Node> = Api::all(client.clone());
    let node_state = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get(name).await.unwrap();
            let status = node.status.unwrap();
            let ready = status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready, status.node_info.unwrap().kubelet_version)
        }
    };
    eventually("upgrade pods scheduled", || {
        let sim = &sim;
        async move { sim.placements().len() == 2 }
    })
    .await;
    clock.advance(Duration::from_secs(1));
    eventually("upgrade pods running", || {
        let sim = &sim;
        async move {
            sim.objects("pods")
                .iter()
                .all(|p| p["status"]["phase"] == "Running")
        }
    })
    .await;
    for placement in sim.placements() {
        assert_ne!(
            Some(&placement.node),
            placement.upgrades_node.as_ref(),
            "a Job ran on the node it upgrades"
        );
    }
    clock.advance(Duration::from_secs(2));
    eventually("worker-1 restarting", || async {
        !node_state("worker-1").await.0
    })
    .await;
    clock.advance(Duration::from_secs(2));
    eventually("worker-1 back at the target", || async {
        node_state("worker-1").await == (true, "v1.35.2".to_owned())
    })
    .await;
    let job_condition = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            jobs.get(name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
        }
    };
    eventually("up-1 complete", || async {
        job_condition("up-1").await == Some(("Complete".into(), "CompletionsReached".into()))
    })
    .await;
    eventually("up-2 failed", || async {
        job_condition("up-2").await == Some(("Failed".into(), "BackoffLimitExceeded".into()))
    })
    .await;
    assert_eq!(
        node_state("worker-2").await,
        (true, "v1.34.2".to_owned()),
        "a failed Job leaves its node alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn selector_watches_see_objects_leave_and_enter() {
    let (_sim, client) = start(bare()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"app": "x"}}})).unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = watcher(cms.clone(), watcher::Config::default().labels("app=x"))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    let selected = |want: usize| {
        let reader = reader.clone();
        async move { reader.state().len() == want }
    };
    eventually("selected", || selected(1)).await;
    let relabel = |app: &'static str| {
        let cms = cms.clone();
        async move {
            cms.patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": app}}})),
            )
            .await
            .expect("relabel");
        }
    };
    relabel("y").await;
    eventually("left the selection", || selected(0)).await;
    relabel("x").await;
    eventually("back in the selection", || selected(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_watches_get_bookmarks_and_410_for_a_too_old_version() {
    use kube::api::{WatchEvent, WatchParams};
    let mut config = bare();
    config.history = 4;
    config.bookmark_interval = Duration::from_millis(100);
    let (_sim, client) = start(config).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start_rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    for i in 0..10 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let mut old = cms
        .watch(&WatchParams::default(), &start_rv)
        .await
        .expect("watch")
        .boxed();
    match old.next().await.expect("an event").expect("decodes") {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    let now_rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut fresh = cms
        .watch(&WatchParams::default().timeout(5), &now_rv)
        .await
        .expect("watch")
        .boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let mut saw_added = false;
    let mut saw_bookmark = false;
    while !(saw_added && saw_bookmark) {
        match tokio::time::timeout(Duration::from_secs(5), fresh.next())
            .await
            .expect("events flow")
            .expect("open")
            .expect("decodes")
        {
            WatchEvent::Added(cm) => saw_added |= cm.metadata.name.as_deref() == Some("late"),
            WatchEvent::Bookmark(_) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_propagation_finalizers_and_patch_types() {
    let (_sim, client) = start(bare()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(
        json!({"metadata": {"name": "owner"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
    )
    .unwrap();
    let owner_of = |job: &Job| json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": job.metadata.uid.clone().unwrap()}]);
    // Orphan: dependents stay and lose the reference.
    let owner = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("job");
    let child: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "child", "ownerReferences": owner_of(&owner)}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &child)
        .await
        .expect("child");
    jobs.delete("owner", &DeleteParams::orphan())
        .await
        .expect("orphan delete");
    let kept = cms.get("child").await.expect("child kept");
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    cms.delete("child", &DeleteParams::default())
        .await
        .expect("cleanup");

    // Foreground: the owner waits, marked, until its dependents are gone; a finalizer on a
    // dependent holds both.
    let owner = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("job");
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "child", "finalizers": ["example.com/hold"], "ownerReferences": owner_of(&owner)}})).unwrap();
    cms.create(&PostParams::default(), &child)
        .await
        .expect("child");
    jobs.delete("owner", &DeleteParams::foreground())
        .await
        .expect("foreground delete");
    let marked = jobs.get("owner").await.expect("owner waits");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get("child")
            .await
            .expect("child held")
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // JSON patch removes the finalizer; both go.
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::<()>::Json(
            serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/hold"},
                {"op": "remove", "path": "/metadata/finalizers"}
            ]))
            .unwrap(),
        ),
    )
    .await
    .expect("json patch");
    assert!(matches!(cms.get("child").await, Err(kube::Error::Api(ref e)) if e.code == 404));
    assert!(matches!(jobs.get("owner").await, Err(kube::Error::Api(ref e)) if e.code == 404));

    // deletecollection with a selector; deleting a namespace empties it.
    for name in ["a", "b", "c"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"batch": if name == "c" { "2" } else { "1" }}}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.expect("cm");
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=1"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["c"]);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .delete("default", &DeleteParams::default())
        .await
        .expect("namespace delete");
    assert!(matches!(cms.get("c").await, Err(kube::Error::Api(ref e)) if e.code == 404));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_version_follows_the_control_plane() {
    let (_sim, client) = start(bare()).await;
    assert_eq!(
        client
            .apiserver_version()
            .await
            .expect("version")
            .git_version,
        "v1.34.2"
    );
    let nodes: Api<Node> = Api::all(client.clone());
    // A worker at a newer version does not move it; an upgraded control-plane node does.
    for (node, version) in [("worker-1", "v1.35.0"), ("cp-1", "v1.35.2")] {
        nodes
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"nodeInfo": {"kubeletVersion": version}}})),
            )
            .await
            .expect("status");
        let info = client.apiserver_version().await.expect("version");
        let want = if node == "cp-1" { "v1.35.2" } else { "v1.34.2" };
        assert_eq!(info.git_version, want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_a_node_that_never_returns_and_a_budget_that_never_allows() {
    let clock = Clock::virtual_at(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let config = SimConfig {
        clock: clock.clone(),
        ..SimConfig::default()
    };
    let (sim, client) = start(config).await;
    sim.behaviour().never_return.insert("worker-3".into());
    sim.store()
        .stubborn_pdbs
        .insert("kube-system/coredns".into());
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "up-3"}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": "worker-1"},
        "containers": [{"name": "upgrade", "image": "runner", "env": [
            {"name": "NODE_NAME", "value": "worker-3"}, {"name": "TARGET_VERSION", "value": "1.35.2"}]}]}}}}))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("job");
    // Each step on the virtual clock: the Pod starts, the node restarts and never returns.
    let nodes: Api<Node> = Api::all(client.clone());
    let worker_3 = || {
        let nodes = nodes.clone();
        async move {
            let status = nodes.get("worker-3").await.unwrap().status.unwrap();
            let ready = status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready, status.node_info.unwrap().kubelet_version)
        }
    };
    let upgrade_pod_running = || {
        let sim = &sim;
        async move {
            sim.objects("pods").iter().any(|p| {
                p["metadata"]["labels"]["job-name"] == "up-3" && p["status"]["phase"] == "Running"
            })
        }
    };
    eventually("upgrade Pod scheduled", || async {
        sim.placements()
            .iter()
            .any(|p| p.upgrades_node.as_deref() == Some("worker-3"))
    })
    .await;
    clock.advance(Duration::from_secs(1));
    eventually("upgrade Pod running", upgrade_pod_running).await;
    clock.advance(Duration::from_secs(2));
    eventually("worker-3 restarting", || async { !worker_3().await.0 }).await;
    clock.advance(Duration::from_secs(2));
    eventually("worker-3 reports the target", || async {
        worker_3().await.1 == "v1.35.2"
    })
    .await;
    clock.advance(Duration::from_secs(600));
    assert!(!worker_3().await.0, "worker-3 must stay down");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let coredns = pods
        .list(&ListParams::default().labels("app=coredns"))
        .await
        .expect("list");
    let name = coredns.items[0].metadata.name.clone().expect("name");
    let err = pods
        .evict(&name, &Default::default())
        .await
        .expect_err("never allowed");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 429),
        "{err}"
    );
}

/// The refusal of `result`: its code and message, or a panic naming `what`.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        other => panic!("{what} must be refused as a real API server refuses it: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_a_real_api_server_refuses_in_events_and_jobs() {
    let (_sim, client) = start(bare()).await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let event = |note: String| -> k8s_openapi::api::events::v1::Event {
        serde_json::from_value(json!({"metadata": {"generateName": "e-"}, "note": note,
            "reason": "Blocked", "action": "Blocked", "type": "Warning", "reportingController": "upchain",
            "reportingInstance": "upchain", "eventTime": "2026-11-30T00:00:00.000000Z"}))
        .unwrap()
    };
    events
        .create(&PostParams::default(), &event("é".repeat(512)))
        .await
        .expect("a note of 1,024 bytes is taken");
    let (code, message) = refused(
        "a note of 1,025 bytes",
        events
            .create(
                &PostParams::default(),
                &event(format!("x{}", "é".repeat(512))),
            )
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("message: Invalid value: \"\": can have at most 1024 characters"),
        "{message}"
    );

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |restart_policy: Option<&str>, label: &str, image: &str| -> Job {
        let mut spec = json!({"containers": [{"name": "c", "image": image}]});
        if let Some(policy) = restart_policy {
            spec["restartPolicy"] = json!(policy);
        }
        serde_json::from_value(json!({"metadata": {"name": "j", "labels": {"run": label}},
            "spec": {"template": {"spec": spec}}}))
        .unwrap()
    };
    for (what, bad) in [
        ("a template without restartPolicy", job(None, "ok", "a")),
        ("restartPolicy Always", job(Some("Always"), "ok", "a")),
        (
            "a label value of 64 characters",
            job(Some("Never"), &"x".repeat(64), "a"),
        ),
    ] {
        let (code, message) = refused(what, jobs.create(&PostParams::default(), &bad).await);
        assert_eq!(code, 422, "{what}: {message}");
    }
    let mut on_failure = job(Some("OnFailure"), "ok", "a");
    on_failure.spec.as_mut().unwrap().pod_failure_policy =
        Some(serde_json::from_value(json!({"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]})).unwrap());
    let (_, message) = refused(
        "podFailurePolicy with OnFailure",
        jobs.create(&PostParams::default(), &on_failure).await,
    );
    assert!(
        message.contains("only \"Never\" is supported when podFailurePolicy"),
        "{message}"
    );

    // Applying the same Job again is fine; a changed Pod template is not.
    let apply = PatchParams::apply("upchain").force();
    jobs.patch("j", &apply, &Patch::Apply(job(Some("Never"), "ok", "a")))
        .await
        .expect("created");
    jobs.patch("j", &apply, &Patch::Apply(job(Some("Never"), "ok", "a")))
        .await
        .expect("the same again");
    let (code, message) = refused(
        "a changed Pod template",
        jobs.patch("j", &apply, &Patch::Apply(job(Some("Never"), "ok", "b")))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.template: Invalid value: field is immutable"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_two_containers_serves_its_log_only_by_container_name() {
    let (sim, client) = start(bare()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "upgrade", "image": "a"}, {"name": "istio-proxy", "image": "b"}]}}))
        .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    sim.store().append_log("default", "p", "done\n");
    let (code, message) = refused(
        "a log without a container name",
        pods.logs("p", &Default::default()).await,
    );
    assert_eq!(code, 400);
    assert!(
        message.contains(
            "a container name must be specified for pod p, choose one of: [upgrade istio-proxy]"
        ),
        "{message}"
    );
    let params = kube::api::LogParams {
        container: Some("upgrade".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs("p", &params).await.expect("by name"), "done\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_apply_with_a_field_the_installed_crd_lacks_fails_with_500() {
    let (_sim, client) = start(bare()).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "k8supgrades.upchain.dev",
        &PatchParams::apply("test"),
        &Patch::Apply(upchain_api::crd()),
    )
    .await
    .expect("CRD");
    let upgrades: Api<K8sUpgrade> = Api::all(client.clone());
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "metadata": {"name": "u"}, "spec": {"targetVersion": "1.35.2"}});
    upgrades
        .patch("u", &PatchParams::apply("kubectl"), &Patch::Apply(&object))
        .await
        .expect("created");
    let apply = PatchParams::apply("upchain").force();
    let status = |extra: serde_json::Value| json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "status": {"phase": "Preflight", "nodes": [], "fromAFutureRelease": extra}});
    let (code, message) = refused(
        "a status field the CRD does not declare",
        upgrades
            .patch_status("u", &apply, &Patch::Apply(status(json!(1))))
            .await,
    );
    assert_eq!(code, 500);
    assert!(
        message.contains(".status.fromAFutureRelease: field not declared in schema"),
        "{message}"
    );
    // A merge patch prunes it instead, as a real server does with a structural schema.
    upgrades
        .patch_status(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Preflight"}})),
        )
        .await
        .expect("declared fields only");
}
