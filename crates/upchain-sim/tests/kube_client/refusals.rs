//! What a real API server refuses, refused the same way.

use crate::*;

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
