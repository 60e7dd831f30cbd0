//! The node gate and the quiet period: every node Ready, none under pressure or cordoned
//! by someone else, no Ready transition within the quiet period.

use std::collections::HashSet;
use std::time::Duration;

use upchain_api::NodeRecord;

use super::{Verdict, human, verdict};
use crate::observe::ObservedNode;

/// The node gate, checked before the first change and again before every batch: every
/// node Ready, none under Memory, Disk or PID pressure, none cordoned by someone else.
/// Nodes in `skip` are left out; a node upchain itself cordoned is not a reason.
pub fn nodes_gate(nodes: &[ObservedNode], skip: &[String], records: &[NodeRecord]) -> Verdict {
    let cordoned_by_us: HashSet<&str> = records
        .iter()
        .filter(|r| r.cordoned)
        .map(|r| r.name.as_str())
        .collect();
    let mut reasons = Vec::new();
    for node in nodes.iter().filter(|n| !skip.contains(&n.name)) {
        if !node.ready {
            reasons.push(format!(
                "node {} is not Ready: upchain takes no node out of service while another is \
                 down; repair it, or add it to spec.nodes.skip",
                node.name
            ));
        }
        if !node.pressure.is_empty() {
            reasons.push(format!(
                "node {} reports {}: free the resource first",
                node.name,
                node.pressure.join(", ")
            ));
        }
        if node.unschedulable && !cordoned_by_us.contains(node.name.as_str()) {
            reasons.push(format!(
                "node {} is cordoned, and not by upchain: uncordon it (kubectl uncordon {}) or \
                 add it to spec.nodes.skip",
                node.name, node.name
            ));
        }
    }
    verdict(
        "nodes",
        format!("{} node(s) Ready, no pressure, none cordoned", nodes.len()),
        reasons,
    )
}

/// No node became Ready within the quiet period, other than the nodes this run upgraded.
pub fn quiet_gate(
    nodes: &[ObservedNode],
    quiet_period: Duration,
    now: i64,
    upgraded: &[NodeRecord],
) -> Verdict {
    let period = i64::try_from(quiet_period.as_secs()).unwrap_or(i64::MAX);
    let upgraded: HashSet<&str> = upgraded.iter().map(|r| r.name.as_str()).collect();
    let mut reasons = Vec::new();
    for node in nodes {
        if upgraded.contains(node.name.as_str()) {
            continue;
        }
        let Some(since) = node.ready_since else {
            continue;
        };
        let ago = now.saturating_sub(since);
        if ago < period {
            reasons.push(format!(
                "node {} changed Ready {} ago, within the quiet period of {}: a node that just \
                 rebooted is not yet proven; the run starts once it has been stable for the \
                 whole period (or shorten spec.gates.quietPeriod)",
                node.name,
                human(ago),
                human(period)
            ));
        }
    }
    verdict(
        "quiet period",
        format!("no node changed Ready in the last {}", human(period)),
        reasons,
    )
}
