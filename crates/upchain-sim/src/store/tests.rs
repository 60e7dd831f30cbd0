use super::*;

fn store() -> Store {
    let mut store = Store::new(Clock::virtual_at(jiff::Timestamp::UNIX_EPOCH), 8);
    store
        .create_own("v1", "Namespace", json!({"metadata": {"name": "default"}}))
        .expect("ns");
    store
}

fn rt(store: &Store, id: &str) -> ResourceType {
    store.type_by_id(id).expect("served")
}

#[test]
fn stale_updates_conflict_and_generation_tracks_spec() {
    let mut s = store();
    let deploys = rt(&s, "deployments.apps");
    let created = s
        .create(
            &deploys,
            "default",
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}}),
            false,
        )
        .expect("create");
    assert_eq!(created["metadata"]["generation"], 1);
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh["spec"]["replicas"] = json!(2);
    let updated = s
        .update(&deploys, "default", "web", fresh, false)
        .expect("update");
    assert_eq!(updated["metadata"]["generation"], 2);
    stale["spec"]["replicas"] = json!(3);
    assert_eq!(
        s.update(&deploys, "default", "web", stale, false)
            .expect_err("stale")
            .code(),
        409
    );
    // Status writes do not move generation; spec writes do not touch status.
    let mut status = updated.clone();
    status["status"] = json!({"readyReplicas": 2});
    let with_status = s
        .update(&deploys, "default", "web", status, true)
        .expect("status");
    assert_eq!(with_status["metadata"]["generation"], 2);
    let mut spec = with_status.clone();
    spec["status"] = json!({"readyReplicas": 0});
    let after = s
        .update(&deploys, "default", "web", spec, false)
        .expect("spec");
    assert_eq!(after["status"]["readyReplicas"], 2);
    assert_eq!(
        s.create(
            &deploys,
            "default",
            json!({"metadata": {"name": "web"}}),
            false
        )
        .expect_err("dup")
        .code(),
        409
    );
    assert_eq!(
        s.create(
            &deploys,
            "nowhere",
            json!({"metadata": {"name": "x"}}),
            false
        )
        .expect_err("no ns")
        .code(),
        404
    );
}

#[test]
fn finalizers_hold_deletion_and_garbage_collection_follows_owners() {
    let mut s = store();
    let jobs = rt(&s, "jobs.batch");
    let pods = rt(&s, "pods");
    let job = s
        .create(
            &jobs,
            "default",
            json!({"metadata": {"name": "j", "finalizers": ["x/y"]}, "spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
            false,
        )
        .expect("job");
    let uid = job["metadata"]["uid"].clone();
    s.create(&pods, "default", json!({"metadata": {"name": "j-1", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid}]}}), false).expect("pod");
    let marked = s
        .delete(&jobs, "default", "j", Propagation::Background)
        .expect("marked");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(
        s.get(&pods, "default", "j-1").is_ok(),
        "the owner still exists"
    );
    let mut release = s.get(&jobs, "default", "j").expect("still there");
    release["metadata"]["finalizers"] = json!([]);
    s.update(&jobs, "default", "j", release, false)
        .expect("finalizer removed");
    assert_eq!(s.get(&jobs, "default", "j").expect_err("gone").code(), 404);
    assert_eq!(
        s.get(&pods, "default", "j-1")
            .expect_err("collected")
            .code(),
        404
    );
}

#[test]
fn pod_logs_are_served_from_their_tail() {
    let mut s = store();
    let pods = rt(&s, "pods");
    s.create(
        &pods,
        "default",
        json!({"metadata": {"name": "job-pod"}}),
        true,
    )
    .expect("pod");
    s.append_log("default", "job-pod", "one\ntwo\nthree\n");
    let log = |tail, limit| {
        s.pod_log("default", "job-pod", None, tail, limit)
            .expect("log")
    };
    assert_eq!(log(None, None), "one\ntwo\nthree\n");
    assert_eq!(log(Some(2), None), "two\nthree\n");
    assert_eq!(log(Some(9), None), "one\ntwo\nthree\n");
    assert_eq!(log(Some(2), Some(7)), "\nthree\n");
    assert!(s.pod_log("default", "gone", None, None, None).is_err());
}

#[test]
fn eviction_honours_disruption_budgets() {
    let mut s = store();
    let pods = rt(&s, "pods");
    let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    for name in ["a", "b"] {
        database_pod(&mut s, name, ready.clone());
    }
    database_budget(&mut s, 1, 2);
    s.evict("default", "a", None)
        .expect("first eviction allowed");
    let refused = s.evict("default", "b", None).expect_err("budget spent");
    assert_eq!(refused.code(), 429);
    assert!(refused.to_string().contains("disruption budget db"));
    assert!(s.get(&pods, "default", "b").is_ok());
    let terminating = s
        .get(&pods, "default", "a")
        .expect("a terminates for its grace period");
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    s.evict("default", "a", None)
        .expect("evicting a terminating Pod again is allowed");
}

#[test]
fn a_pod_that_is_not_ready_is_evicted_only_while_its_budget_is_healthy() {
    for (healthy, allowed) in [(0, false), (1, true)] {
        let mut s = store();
        database_pod(&mut s, "a", json!({"phase": "Running"}));
        database_budget(&mut s, 0, healthy);
        let evicted = s.evict("default", "a", None);
        assert_eq!(evicted.is_ok(), allowed, "{healthy} healthy: {evicted:?}");
    }
}

/// A Pod labelled app=db on worker-1 with `status`.
fn database_pod(s: &mut Store, name: &str, status: Value) {
    let pods = rt(s, "pods");
    s.create(
        &pods,
        "default",
        json!({"metadata": {"name": name, "labels": {"app": "db"}},
            "spec": {"nodeName": "worker-1"}, "status": status}),
        true,
    )
    .expect("pod");
}

/// A budget of at least one app=db Pod, with `allowed` disruptions and `healthy` Pods.
fn database_budget(s: &mut Store, allowed: i64, healthy: i64) {
    s.create_own(
        "policy/v1",
        "PodDisruptionBudget",
        json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": healthy, "desiredHealthy": 1}}),
    )
    .expect("pdb");
}

#[test]
fn watch_history_is_bounded_and_older_versions_are_gone() {
    let mut s = store();
    let cms = rt(&s, "configmaps");
    let start = s.resource_version();
    for i in 0..20 {
        s.create(
            &cms,
            "default",
            json!({"metadata": {"name": format!("c{i}")}}),
            false,
        )
        .expect("cm");
    }
    assert_eq!(s.history_since(start).expect_err("too old").code(), 410);
    let recent = s.history_since(s.resource_version() - 3).expect("recent");
    assert_eq!(recent.len(), 3);
    assert!(
        s.history_since(s.resource_version())
            .expect("now")
            .is_empty()
    );
}

#[test]
fn crds_register_their_types() {
    let mut s = store();
    let crds = rt(&s, "customresourcedefinitions.apiextensions.k8s.io");
    let crd = serde_json::to_value(upchain_api::crd()).expect("crd");
    let created = s.create(&crds, "", crd, false).expect("crd");
    assert_eq!(created["status"]["conditions"][1]["type"], "Established");
    let upgrades = rt(&s, "k8supgrades.upchain.dev");
    s.create(
        &upgrades,
        "",
        json!({"metadata": {"name": "to-1-35"}, "spec": {"targetVersion": "1.35.2"}}),
        false,
    )
    .expect("cr");
    let applied = s
        .patch(
            &upgrades,
            "",
            "to-1-35",
            PatchType::Apply,
            &json!({"status": {"phase": "Pending"}}),
            true,
            "upchain",
            true,
        )
        .expect("status apply");
    assert_eq!(applied["status"]["phase"], "Pending");
    assert_eq!(applied["metadata"]["generation"], 1);
}
