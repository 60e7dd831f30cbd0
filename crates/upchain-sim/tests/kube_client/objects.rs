//! Objects: CRUD, conflicts, selectors, custom resources and server-side apply, deletion
//! and its propagation, patch types, the version.

use crate::*;

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
        "status": {"approvedNodes": names}});
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
