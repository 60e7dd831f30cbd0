//! `upchain plan`: what an upgrade would do, node by node, from a node list.

use std::io::Write;

use serde::Serialize;
use upchain_api::{NodeRole, NodesSpec};
use upchain_core::{KubeVersion, ObservedNode, Plan, plan};

use crate::cli::{OutputFormat, PlanArgs};
use crate::error::Error;
use crate::nodes_file;

/// Runs `upchain plan`, writing the plan to `out`.
pub fn run(args: &PlanArgs, out: &mut impl Write) -> Result<(), Error> {
    let target = KubeVersion::parse_target(&args.target).map_err(upchain_core::PlanError::from)?;
    let mut nodes_spec = match &args.spec {
        Some(path) => {
            nodes_file::parse_upgrade(path, &nodes_file::read(path)?)?
                .spec
                .nodes
        }
        None => NodesSpec::default(),
    };
    if let Some(max) = args.max_unavailable {
        nodes_spec.max_unavailable = max;
    }
    nodes_spec.skip.extend(args.skip.iter().cloned());

    let nodes: Vec<ObservedNode> =
        nodes_file::parse_nodes(&args.file, &nodes_file::read(&args.file)?)?
            .iter()
            .map(ObservedNode::from_node)
            .collect();
    // A node list has no kubeadm-config: the control-plane kubelets say whether
    // `kubeadm upgrade apply` has run.
    let plan = plan(target, &nodes_spec, &nodes, None)?;
    let report = Report::new(&plan, &nodes);
    let text = match args.output {
        OutputFormat::Table => report.table(),
        OutputFormat::Json => {
            serde_json::to_string_pretty(&report).map_err(Error::JsonRender)? + "\n"
        }
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

/// The plan as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    target: String,
    kind: &'static str,
    control_plane_version: String,
    from_version: String,
    hash: String,
    steps: Vec<ReportStep>,
    left_alone: Vec<ReportExcluded>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportStep {
    step: usize,
    batch: i32,
    node: String,
    role: &'static str,
    version: String,
    kind: &'static str,
    action: &'static str,
    /// Ready, schedulable nodes outside the batch: where the node's Job may run.
    job_may_run_on: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportExcluded {
    node: String,
    role: &'static str,
    version: String,
    reason: &'static str,
}

fn role_name(role: Option<NodeRole>) -> &'static str {
    role.map_or("-", NodeRole::as_str)
}

impl Report {
    fn new(plan: &Plan, nodes: &[ObservedNode]) -> Self {
        let steps = plan
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let batch: Vec<&str> = plan
                    .steps
                    .iter()
                    .filter(|s| s.batch == step.batch)
                    .map(|s| s.name.as_str())
                    .collect();
                ReportStep {
                    step: index + 1,
                    batch: step.batch + 1,
                    node: step.name.clone(),
                    role: step.role.as_str(),
                    version: step.version.to_string(),
                    kind: step.kind.as_str(),
                    action: if step.first_control_plane {
                        "kubeadm upgrade apply"
                    } else {
                        "kubeadm upgrade node"
                    },
                    job_may_run_on: nodes
                        .iter()
                        .filter(|n| {
                            n.ready && !n.unschedulable && !batch.contains(&n.name.as_str())
                        })
                        .map(|n| n.name.clone())
                        .collect(),
                }
            })
            .collect();
        Self {
            target: plan.target.to_string(),
            kind: plan.kind.as_str(),
            control_plane_version: plan.control_plane_version.to_string(),
            from_version: plan.from_version.to_string(),
            hash: plan.hash(),
            steps,
            left_alone: plan
                .excluded
                .iter()
                .map(|e| ReportExcluded {
                    node: e.name.clone(),
                    role: role_name(e.role),
                    version: e.version.clone(),
                    reason: e.reason.describe(),
                })
                .collect(),
        }
    }

    fn table(&self) -> String {
        let total = self.steps.len() + self.left_alone.len();
        let mut text = if self.steps.is_empty() {
            format!(
                "Nothing to do: every selected node already runs {} ({total} node(s)).\n",
                self.target
            )
        } else {
            format!(
                "Upgrade {} -> {} ({} upgrade; control plane at {}): {} of {total} node(s), plan {}\n\n",
                self.from_version,
                self.target,
                self.kind,
                self.control_plane_version,
                self.steps.len(),
                self.hash
            )
        };
        if !self.steps.is_empty() {
            let rows: Vec<Vec<String>> = self
                .steps
                .iter()
                .map(|s| {
                    vec![
                        s.step.to_string(),
                        s.batch.to_string(),
                        s.node.clone(),
                        s.role.to_owned(),
                        s.version.clone(),
                        s.kind.to_owned(),
                        s.action.to_owned(),
                        summarise(&s.job_may_run_on),
                    ]
                })
                .collect();
            text += &table(
                &[
                    "STEP",
                    "BATCH",
                    "NODE",
                    "ROLE",
                    "VERSION",
                    "KIND",
                    "ACTION",
                    "JOB MAY RUN ON",
                ],
                &rows,
            );
        }
        if !self.left_alone.is_empty() {
            text += "\nLeft alone:\n";
            let rows: Vec<Vec<String>> = self
                .left_alone
                .iter()
                .map(|e| {
                    vec![
                        e.node.clone(),
                        e.role.to_owned(),
                        e.version.clone(),
                        e.reason.to_owned(),
                    ]
                })
                .collect();
            text += &table(&["NODE", "ROLE", "VERSION", "REASON"], &rows);
        }
        text
    }
}

/// At most three names, then a count.
fn summarise(names: &[String]) -> String {
    match names.len() {
        0 => "none Ready and schedulable (the Job would wait)".to_owned(),
        1..=3 => names.join(", "),
        n => format!("{} +{} more", names[..3].join(", "), n - 3),
    }
}

/// Left-aligned columns separated by two spaces, as kubectl prints them.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                line += cell;
            } else {
                line += &format!("{cell:<width$}  ");
            }
        }
        line + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}
