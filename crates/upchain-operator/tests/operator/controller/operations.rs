//! Alertmanager silences and hooks against the simulator.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_node_is_silenced_in_alertmanager_while_upgraded_even_across_an_operator_kill() {
    let mut cluster = cluster_with(1, 2, Duration::from_secs(2)).await;
    let silences = json!({"alertmanagerUrl": cluster.sim.alertmanager_url(),
        "extendBy": "1m", "maxDuration": "10m"});
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s", "gates": {"silences": silences}}),
    )
    .await;
    wait_for(&cluster, "a node upgrading under a silence", |s| {
        s.current_step == Some(upchain_api::NodeStep::Upgrading) && !s.silences.is_empty()
    })
    .await;
    cluster.kill_controller();
    let killed_at = jiff::Timestamp::now();
    let record = current_status(&cluster).await.silences[0].clone();
    {
        let held = cluster.sim.surroundings().silences.clone();
        let silence = held
            .iter()
            .find(|s| s.id == record.id)
            .expect("in Alertmanager");
        assert!(!silence.expired);
        let matchers = silence.matchers.to_string();
        assert!(
            matchers.contains(&format!(r#""value":"{}""#, record.node)),
            "{matchers}"
        );
        assert!(matchers.contains("KubeNodeNotReady"), "{matchers}");
        // What a dead operator leaves ends by itself within extendBy.
        assert!(silence.ends_at <= killed_at + jiff::SignedDuration::from_secs(61));
    }
    cluster.start_controller();
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert!(done.status.expect("status").silences.is_empty());
    let held = cluster.sim.surroundings().silences.clone();
    let mut silenced: Vec<String> = Vec::new();
    for silence in &held {
        assert!(silence.expired, "{silence:?} was not expired");
        for end in &silence.extensions {
            assert!(*end <= silence.created_at + jiff::SignedDuration::from_secs(10 * 60));
        }
        let node = silence
            .matchers
            .as_array()
            .and_then(|m| m.last())
            .expect("node matcher");
        silenced.push(node["value"].as_str().unwrap_or_default().to_owned());
    }
    silenced.sort();
    silenced.dedup();
    assert_eq!(silenced, ["cp-1", "worker-1", "worker-2"]);
    let reasons: Vec<String> = cluster
        .sim
        .objects("events.events.k8s.io")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(reasons.iter().any(|r| r == "Silenced"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "SilenceExpired"), "{reasons:?}");
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_before_and_after_and_a_failed_post_hook_fails_the_run_until_retried() {
    let cluster = cluster(1, 2).await;
    let spec = |post: &str| {
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "hooks": {"pre": hook("succeed"), "post": hook(post)}})
    };
    apply_upgrade(&cluster.client, spec("fail")).await;
    let failed = wait_for_phase(&cluster, Phase::Failed, Duration::from_secs(90)).await;
    let status = failed.status.expect("status");
    let ready = ready(&status);
    assert_eq!(ready.reason, "HookFailed");
    assert!(
        ready.message.contains("post-run hook Job upchain-system/"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("upchain.dev/retry"),
        "{}",
        ready.message
    );
    let pre = status
        .hooks
        .iter()
        .find(|h| h.kind == upchain_api::HookKind::Pre)
        .expect("pre hook");
    assert!(pre.succeeded);
    // The pre hook ran before any node was cordoned.
    let first_cordon = cluster
        .sim
        .cordons()
        .first()
        .map(|c| c.at)
        .expect("a cordon");
    let pre_done = pre.completed_at.as_ref().expect("done").0;
    assert!(
        pre_done.as_second() <= first_cordon.as_second(),
        "{pre_done} vs {first_cordon}"
    );
    assert_every_node_upgraded(&cluster);
    // Fixed and retried: the post hook runs again, as attempt 2, and the run succeeds.
    apply_upgrade(&cluster.client, spec("succeed")).await;
    annotate(&cluster, "upchain.dev/retry", "1").await;
    let done = wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(60)).await;
    let post = done
        .status
        .expect("status")
        .hooks
        .into_iter()
        .find(|h| h.kind == upchain_api::HookKind::Post)
        .expect("post hook");
    assert!(post.succeeded && post.attempt == 2, "{post:?}");
}
