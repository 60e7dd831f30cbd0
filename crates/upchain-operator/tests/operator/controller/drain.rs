//! Drains against the simulator: the preview and its budgets, Force on timeout.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_preview_names_the_budget_a_drain_waits_on() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let cluster = cluster(1, 2).await;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), "apps");
    let set_min_available = |n: i32| {
        let budgets = budgets.clone();
        async move {
            budgets
                .patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"minAvailable": n}})),
                )
                .await
                .expect("budget patched");
        }
    };
    // Every web replica must stay: the budget allows no disruption.
    set_min_available(3).await;
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s"}),
    )
    .await;
    wait_for(&cluster, "a drain waiting on apps/web", |s| {
        s.nodes.iter().any(|n| {
            n.waiting_for_budgets == ["apps/web"]
                && n.drain_preview
                    .as_ref()
                    .is_some_and(|p| p.blocked_by == ["apps/web"] && p.evict_count > 0)
                && n.message.as_deref().is_some_and(|m| m.contains("apps/web"))
        })
    })
    .await;
    let status = current_status(&cluster).await;
    let control_plane = &status.nodes[0];
    let preview = control_plane
        .drain_preview
        .as_ref()
        .expect("every node gets a preview");
    assert!(preview.blocked_by.is_empty(), "{preview:?}");
    // Events follow the status write that carries their transition.
    let blocked_preview = || {
        cluster.sim.objects("events.events.k8s.io").iter().any(|e| {
            e["reason"] == "DrainPreview"
                && e["type"] == "Warning"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("apps/web allow no disruption"))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !blocked_preview() {
        assert!(
            std::time::Instant::now() < deadline,
            "no DrainPreview Event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_min_available(2).await;
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_times_out_with_force_deletes_what_would_not_leave_and_retries_a_failed_delete()
 {
    let mut cluster = cluster(1, 2).await;
    // Force is the installation's to allow (and it grants pods delete).
    cluster.install_with(&["--set", "policy.drain.allowForce=true"]);
    // CoreDNS's budget never allows an eviction, and every delete fails for a while.
    cluster
        .sim
        .store()
        .stubborn_pdbs
        .insert("kube-system/coredns".into());
    cluster
        .sim
        .faults()
        .error_rate
        .insert(upchain_sim::server::Verb::Delete, 1.0);
    apply_upgrade(
        &cluster.client,
        json!({"targetVersion": "1.35.2", "soak": "0s",
            "drain": {"timeout": "10s", "onTimeout": "Force"}}),
    )
    .await;
    // A failed delete is an error of the reconcile, counted and retried, not swallowed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = cluster.operator.as_ref().expect("operator").metrics();
        if metrics
            .lines()
            .any(|l| l.starts_with("upchain_reconcile_errors_total{") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed delete was counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.sim.faults().error_rate.clear();
    wait_for_phase(&cluster, Phase::Succeeded, Duration::from_secs(90)).await;
    assert_every_node_upgraded(&cluster);
    assert_no_job_ran_on_its_node(&cluster);
}
