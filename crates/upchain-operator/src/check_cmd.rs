//! `upchain check`: every preflight gate once against the cluster, and one measurement of
//! each analysis check, with its evidence, changing nothing.

use std::io::Write;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use upchain_api::K8sUpgrade;
use upchain_core::{KubeVersion, Needs, ObservedNode, plan};

use crate::cli::CheckArgs;
use crate::error::Error;
use crate::nodes_file;
use crate::run_cmd::{connect_config, read_policy};
use upchain_core::policy::InstallPolicy;

/// Runs the gates; Ok(true) when every gate passes.
pub async fn run(args: &CheckArgs, out: &mut impl Write) -> Result<bool, Error> {
    let target = KubeVersion::parse_target(&args.target).map_err(upchain_core::PlanError::from)?;
    let mut upgrade = match &args.spec {
        Some(path) => nodes_file::parse_upgrade(path, &nodes_file::read(path)?)?,
        None => K8sUpgrade::new(
            "check",
            serde_json::from_value(serde_json::json!({"targetVersion": args.target}))
                .map_err(Error::JsonRender)?,
        ),
    };
    upgrade.spec.target_version = target.to_string();
    // Judged as the operator would: under the installation's policy where there is one.
    let (policy, judged_under) = if args.policy.exists() {
        (
            read_policy(&args.policy)?,
            args.policy.display().to_string(),
        )
    } else {
        (
            InstallPolicy::default(),
            format!(
                "the chart's default policy ({} does not exist; pass --policy with the \
                 ConfigMap upchain-policy's policy.json to judge under yours)",
                args.policy.display()
            ),
        )
    };
    let settled = policy.settle(&upgrade.spec);
    upgrade.spec = settled.spec;
    let config = connect_config(args.kubeconfig.as_deref()).await?;
    let client =
        kube::Client::try_from(config.clone()).map_err(|e| Error::Connect(e.to_string()))?;
    let nodes: Vec<ObservedNode> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Connect(format!("listing nodes: {e}")))?
        .items
        .iter()
        .map(ObservedNode::from_node)
        .collect();
    let inputs = upchain_operator::gather::gate_inputs(
        &client,
        &reqwest::Client::new(),
        &upgrade,
        &Needs {
            preflight: true,
            alerts: true,
            health_checks: true,
            control_plane: true,
            analysis: upgrade
                .spec
                .gates
                .analysis
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            ..Needs::default()
        },
        // Run as a person, who may create Jobs wherever their kubeconfig lets them.
        None,
        Some(&config),
    )
    .await;
    let inputs = upchain_core::gates::GateInputs {
        policy_refusals: settled.refusals,
        ..inputs
    };
    let control_plane = inputs.control_plane.as_ref().and_then(|c| c.as_ref().ok());
    let plan = plan(target, &upgrade.spec.nodes, &nodes, control_plane)?;
    let evaluation = upchain_core::gates::evaluate(
        &upgrade.spec,
        &nodes,
        &inputs,
        &plan,
        &[],
        jiff::Timestamp::now().as_second(),
        true,
    );
    // One measurement of each analysis check: a run needs its passes in a row.
    let analysis = upchain_core::analysis::verdicts(
        &upgrade.spec.gates.analysis,
        &inputs.analysis.clone().unwrap_or_default(),
    );
    let verdicts: Vec<_> = evaluation
        .gates
        .into_iter()
        .chain(
            evaluation
                .health_checks
                .into_iter()
                .map(|(verdict, _)| verdict),
        )
        .chain(analysis)
        .collect();
    let mut text = format!(
        "Gates for a {} upgrade from {} to {target} ({} node(s) to upgrade), under {judged_under}:\n",
        plan.kind.as_str(),
        plan.from_version,
        plan.steps.len()
    );
    for verdict in &verdicts {
        let mark = if verdict.passed() { "PASS " } else { "BLOCK" };
        text.push_str(&format!(
            "  {mark} {:<16} {}\n",
            verdict.gate, verdict.evidence
        ));
        for reason in &verdict.reasons {
            text.push_str(&format!("        - {reason}\n"));
        }
    }
    let passed = verdicts.iter().all(|v| v.passed());
    text.push_str(if passed {
        "Every gate passes: a K8sUpgrade to this target would start now.\n"
    } else {
        "Blocked: a K8sUpgrade to this target would wait, changing nothing, until the reasons above are fixed.\n"
    });
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    Ok(passed)
}
