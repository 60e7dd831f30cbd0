//! `upchain demo`: a whole upgrade on the built-in simulated cluster, shown as it happens.

use std::io::Write;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;
use upchain_api::{K8sUpgrade, K8sUpgradeStatus, Phase};

use upchain_operator::controller::{self, Settings};
use upchain_operator::metrics::Metrics;
use upchain_sim::Sim;

use crate::cli::DemoArgs;
use crate::error::Error;
use crate::sim_cmd::sim_config;

const NAME: &str = "demo";

fn demo_error(what: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| Error::Demo(format!("{what}: {e}"))
}

/// Runs the demo; Ok when every node reached the target.
pub async fn run(args: &DemoArgs, out: &mut impl Write) -> Result<(), Error> {
    let (control_planes, workers) = args.nodes;
    let sim = Sim::start(sim_config(
        args.nodes,
        &args.from,
        args.bare,
        args.upgrade_seconds,
    ))
    .await
    .map_err(Error::Sim)?;
    // A freshly seeded cluster's workloads take a moment to start; the workloads gate
    // would rightly hold the run until they do.
    sim.settled(std::time::Duration::from_secs(30)).await;
    let kubeconfig =
        std::env::temp_dir().join(format!("upchain-demo-{}.kubeconfig", std::process::id()));
    sim.write_kubeconfig(&kubeconfig).map_err(Error::Sim)?;
    let write =
        |out: &mut dyn Write, line: String| out.write_all(line.as_bytes()).map_err(Error::Output);
    write(
        out,
        format!(
            "Simulated cluster: {control_planes} control-plane + {workers} worker node(s) at {}, API at {}\n\
             Follow along in another terminal: KUBECONFIG={} kubectl get k8su,nodes\n\n",
            args.from,
            sim.url(),
            kubeconfig.display()
        ),
    )?;

    let client = upchain_operator::install::simulated_cluster_client(&sim.url())
        .await
        .map_err(|e| Error::Demo(e.to_string()))?;

    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stop = stopped.clone();
    let metrics_addr = upchain_operator::serve::serve(
        ([127, 0, 0, 1], 0).into(),
        metrics.clone(),
        upchain_operator::serve::Endpoints::default(),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    )
    .await
    .map_err(|e| Error::Demo(format!("serving metrics: {e}")))?;
    write(
        out,
        format!("Operator metrics: curl -s http://{metrics_addr}/metrics | grep ^k8s_upgrade\n"),
    )?;
    let mut controller_stop = stopped.clone();
    let settings = Settings {
        api_server: Some(
            upchain_operator::install::simulated_cluster_config(&sim.url())
                .map_err(|e| Error::Demo(e.to_string()))?,
        ),
        ..Settings::default()
    };
    let controller = tokio::spawn(controller::run(
        client.clone(),
        settings,
        metrics,
        async move {
            let _ = controller_stop.wait_for(|s| *s).await;
        },
    ));
    let upgrades: Api<K8sUpgrade> = Api::all(client.clone());
    // The simulated cluster's Alertmanager takes the node silences, so the demo shows
    // them created, extended and expired.
    let silences =
        json!({"alertmanagerUrl": sim.alertmanager_url(), "extendBy": "2m", "maxDuration": "30m"});
    // Its etcd snapshot is taken through the node step, to the installation's claim.
    let snapshot = json!({});
    let object = json!({"apiVersion": "upchain.dev/v1alpha1", "kind": "K8sUpgrade", "metadata": {"name": NAME},
        "spec": {"targetVersion": args.target, "soak": format!("{}s", args.soak_seconds),
                 "snapshot": snapshot, "gates": {"silences": silences}}});
    upgrades
        .patch(
            NAME,
            &PatchParams::apply("upchain-demo"),
            &Patch::Apply(&object),
        )
        .await
        .map_err(demo_error("applying the K8sUpgrade"))?;
    write(
        out,
        format!(
            "Applied K8sUpgrade {NAME}: target {}\n\n{:>7}  {:<12} {:<8} {:<12} STEP\n",
            args.target, "TIME", "PHASE", "PROGRESS", "NODE"
        ),
    )?;

    let started = Instant::now();
    let mut last = String::new();
    let mut prepared = 0;
    let mut previewed = std::collections::BTreeSet::new();
    let mut snapshot_said = false;
    let mut silences_seen: Vec<(String, bool)> = Vec::new();
    let status = loop {
        let status = upgrades
            .get(NAME)
            .await
            .map_err(demo_error("reading the K8sUpgrade"))?
            .status
            .unwrap_or_default();
        let phase = status.phase.map_or("Pending", Phase::as_str);
        let line = format!(
            "{:<12} {:<8} {:<12} {}",
            phase,
            status.progress.as_deref().unwrap_or("-"),
            status.current_node.as_deref().unwrap_or("-"),
            status
                .current_step
                .map_or("-", upchain_api::NodeStep::as_str)
        );
        let elapsed = started.elapsed().as_secs_f64();
        if line != last {
            write(out, format!("{elapsed:>6.1}s  {line}\n"))?;
            last = line;
        }
        if let Some(snapshot) = status.snapshot.as_ref().filter(|s| s.verified)
            && !snapshot_said
        {
            snapshot_said = true;
            write(
                out,
                format!(
                    "{elapsed:>6.1}s    etcd snapshot verified: {}\n",
                    snapshot.message.as_deref().unwrap_or_default()
                ),
            )?;
        }
        if status.prepared_count > prepared {
            prepared = status.prepared_count;
            write(
                out,
                format!(
                    "{elapsed:>6.1}s    prepare check passed on {prepared} node(s) (OS, \
                     packages, disk); none cordoned yet\n"
                ),
            )?;
        }
        for node in &status.nodes {
            if let Some(preview) = node.drain_preview.as_ref()
                && previewed.insert(node.name.clone())
            {
                write(
                    out,
                    format!(
                        "{elapsed:>6.1}s    {}\n",
                        describe_preview(&node.name, preview)
                    ),
                )?;
            }
        }
        for silence in sim.surroundings().silences.iter() {
            let known = silences_seen.iter_mut().find(|(id, _)| *id == silence.id);
            let node = silence
                .matchers
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["value"].as_str())
                .unwrap_or("?");
            let said = match known {
                None => {
                    silences_seen.push((silence.id.clone(), silence.expired));
                    Some(format!(
                        "silence {} created in Alertmanager for {node}",
                        silence.id
                    ))
                }
                Some((_, expired)) if !*expired && silence.expired => {
                    *expired = true;
                    Some(format!(
                        "silence {} for {node} expired: the node is done",
                        silence.id
                    ))
                }
                Some(_) => None,
            };
            if let Some(said) = said {
                write(out, format!("{elapsed:>6.1}s    {said}\n"))?;
            }
        }
        if status.phase.is_some_and(Phase::is_finished) {
            break status;
        }
        if started.elapsed() > Duration::from_secs(args.timeout_seconds) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = stop.send(true);
    let _ = controller.await;
    summary(out, &status, started.elapsed())?;
    let _ = std::fs::remove_file(&kubeconfig);
    sim.shutdown().await;
    match status.phase {
        Some(Phase::Succeeded) => Ok(()),
        _ => Err(Error::Demo(
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map_or_else(
                    || {
                        format!(
                            "the upgrade did not finish within {}s",
                            args.timeout_seconds
                        )
                    },
                    |c| c.message.clone(),
                ),
        )),
    }
}

/// A drain preview in a line: how many Pods it evicts, and what would hold it.
fn describe_preview(node: &str, preview: &upchain_api::DrainPreview) -> String {
    let blocked = if preview.blocked_by.is_empty() {
        "no PodDisruptionBudget blocks it".to_owned()
    } else {
        format!("blocked by {}", preview.blocked_by.join(", "))
    };
    format!(
        "drain preview for {node}: evicts {} Pod(s){}; {blocked}",
        preview.evict_count,
        if preview.evict.is_empty() {
            String::new()
        } else {
            format!(" ({})", preview.evict.join(", "))
        }
    )
}

fn summary(out: &mut impl Write, status: &K8sUpgradeStatus, took: Duration) -> Result<(), Error> {
    let mut text = format!(
        "\n{:<14} {:<14} {:<9} {:<9} {:<9} {:<6} {:<5} LAST LOG LINE\n",
        "NODE", "ROLE", "BEFORE", "AFTER", "RESULT", "TOOK", "EXIT"
    );
    for node in &status.nodes {
        let seconds = node
            .finished_at
            .as_ref()
            .map(|end| end.0.duration_since(node.started_at.0).as_secs())
            .map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
        let result = node.job_result.as_ref();
        text += &format!(
            "{:<14} {:<14} {:<9} {:<9} {:<9} {seconds:<6} {:<5} {}\n",
            node.name,
            node.role.as_str(),
            node.version_before,
            node.version_after.as_deref().unwrap_or("-"),
            node.step.as_str(),
            result
                .and_then(|r| r.exit_code)
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            result
                .and_then(|r| r.log_tail.last())
                .map_or("-", String::as_str),
        );
    }
    let phase = status.phase.map_or("Pending", Phase::as_str);
    text += &format!(
        "\n{phase} in {:.1}s: {} node(s) upgraded.\n",
        took.as_secs_f64(),
        status.progress.as_deref().unwrap_or("0")
    );
    out.write_all(text.as_bytes()).map_err(Error::Output)
}
