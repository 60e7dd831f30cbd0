//! What the simulated cluster does: evictions and budgets, Jobs and their Pods, node
//! upgrades.

use crate::*;

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

/// A Job's podFailurePolicy, as the real Job controller applies it: an ignored exit code
/// starts another Pod without counting a failure; a FailJob exit code fails the Job at
/// once, whatever its backoffLimit.
#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_pod_failure_policy_ignores_or_fails_the_job_as_its_rules_say() {
    let (_sim, client) = start(SimConfig::default()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "policed"}, "spec": {
        "backoffLimit": 6,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}}]},
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("job-name=policed"))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        }
    };
    let fail = |code: i32| {
        let pods = pods.clone();
        async move {
            let mut pod = None;
            for _ in 0..400 {
                pod = running().await;
                if pod.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let pod = pod.expect("a running Pod of the Job");
            let status = json!({"status": {"phase": "Failed", "containerStatuses": [{"name": "c",
                "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}});
            pods.patch_status(
                pod.metadata.name.as_deref().expect("a name"),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .expect("the Pod failed");
        }
    };
    fail(7).await;
    eventually("an ignored failure starts another Pod, uncounted", || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            let listed = pods
                .list(&ListParams::default().labels("job-name=policed"))
                .await
                .unwrap();
            let job = jobs.get("policed").await.unwrap();
            listed.items.len() == 2 && job.status.and_then(|s| s.failed).unwrap_or(0) == 0
        }
    })
    .await;
    fail(42).await;
    eventually("a FailJob exit code fails the Job", || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("policed").await.unwrap();
            job.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("PodFailurePolicy"))
        }
    })
    .await;
}
