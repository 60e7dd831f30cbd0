//! Lists and watches: pages, reflectors through dropped watches and 410, selector moves,
//! bookmarks.

use crate::*;

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
