//! Gate verdicts: pure functions over observations, each reason saying what to fix.

use upchain_api::NodeRecord;

use crate::observe::ObservedNode;

/// The node gate, checked before the first change and again before every batch: every
/// node Ready, none under Memory, Disk or PID pressure, none cordoned by someone else.
/// Nodes in `skip` are left out; a node upchain itself cordoned is not a reason.
pub fn nodes_gate(nodes: &[ObservedNode], skip: &[String], records: &[NodeRecord]) -> Vec<String> {
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
        let cordoned_by_us = records.iter().any(|r| r.name == node.name && r.cordoned);
        if node.unschedulable && !cordoned_by_us {
            reasons.push(format!(
                "node {} is cordoned, and not by upchain: uncordon it (kubectl uncordon {}) or \
                 add it to spec.nodes.skip",
                node.name, node.name
            ));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::NodeFixture;

    #[test]
    fn lists_every_reason_and_ignores_skipped_nodes() {
        let mut pressured = NodeFixture::worker("w-3").build();
        pressured.pressure = vec!["DiskPressure".into()];
        let nodes = vec![
            NodeFixture::control_plane("cp-0").build(),
            NodeFixture::worker("w-1").not_ready().build(),
            NodeFixture::worker("w-2").cordoned().build(),
            pressured,
            NodeFixture::worker("w-4").not_ready().build(),
        ];
        let reasons = nodes_gate(&nodes, &["w-4".to_owned()], &[]);
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("w-1 is not Ready"));
        assert!(reasons[1].contains("kubectl uncordon w-2"));
        assert!(reasons[2].contains("DiskPressure"));
    }

    #[test]
    fn healthy_cluster_passes() {
        let nodes = vec![
            NodeFixture::control_plane("cp-0").build(),
            NodeFixture::worker("w-1").build(),
        ];
        assert!(nodes_gate(&nodes, &[], &[]).is_empty());
    }
}
