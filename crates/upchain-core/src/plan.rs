//! The upgrade plan, derived only from the observed nodes and the spec.
//!
//! It is recomputed at every reconcile, so a partial run (control plane ahead of the
//! workers) resumes without special cases: nodes already at the target drop out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};
use sha2::{Digest, Sha256};
use upchain_api::{NodeRole, NodesSpec, PlannedNode, UpgradeKind};

use crate::gates::ControlPlaneObservation;
use crate::observe::ObservedNode;
use crate::version::{KubeVersion, VersionError};

/// Kubelets may be at most this many minor versions older than the API server.
const MAX_KUBELET_MINOR_SKEW: u32 = 3;

/// Why no plan can be made. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The target is not a version.
    #[error("target version: {0}")]
    InvalidTarget(#[from] VersionError),
    /// No nodes were given.
    #[error("the node list is empty: there is nothing to upgrade")]
    NoNodes,
    /// Two nodes share a name.
    #[error("node `{0}` appears more than once in the node list; node names must be unique")]
    DuplicateNode(String),
    /// A node reports a kubelet version that cannot be read.
    #[error(
        "node `{node}` reports kubelet version `{reported}`, which is not a Kubernetes version; \
         check the kubelet on that node or add it to spec.nodes.skip"
    )]
    UnreadableKubelet {
        /// The node.
        node: String,
        /// What it reports.
        reported: String,
    },
    /// A label selector in the spec is malformed.
    #[error("spec.nodes.{field} is not a valid label selector: {reason}")]
    InvalidSelector {
        /// Which selector.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No node is a control-plane node.
    #[error(
        "no node matches spec.nodes.controlPlaneSelector; upchain upgrades the control plane \
         first, so it must find it: fix the selector to match your control-plane nodes' labels"
    )]
    NoControlPlane,
    /// A node is newer than the target.
    #[error(
        "node `{node}` runs {current}, newer than the target {target}: upchain never \
         downgrades a node, and no kubelet may be newer than the API server; choose a \
         target of {current} or later"
    )]
    Downgrade {
        /// The node.
        node: String,
        /// Its version.
        current: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
    /// A node would have to move more than one minor version.
    #[error(
        "node `{node}` runs {current} and the target {target} is more than one minor version \
         ahead; kubeadm upgrades one minor version at a time: upgrade to {next} first"
    )]
    SkipsMinor {
        /// The node.
        node: String,
        /// Its version.
        current: KubeVersion,
        /// The target.
        target: KubeVersion,
        /// The minor line to upgrade to first.
        next: String,
    },
    /// The target's major version differs from a node's.
    #[error(
        "node `{node}` runs {current} and the target {target} is another major version, which \
         kubeadm cannot upgrade to"
    )]
    MajorChange {
        /// The node.
        node: String,
        /// Its version.
        current: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
    /// A node left alone would fall too far behind the upgraded API server.
    #[error(
        "node `{node}` is left alone (skipped or not selected) at {current}, which would be more \
         than {MAX_KUBELET_MINOR_SKEW} minor versions behind an API server at {target}; \
         upgrade it or remove it from the cluster first"
    )]
    LeftTooFarBehind {
        /// The node.
        node: String,
        /// Its version.
        current: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
    /// A control-plane node is skipped below the target.
    #[error(
        "control-plane node `{node}` is in spec.nodes.skip at {current}: upgraded kubelets \
         would then be newer than its API server at {current}; every control-plane node must \
         reach {target}, so remove it from skip"
    )]
    SkippedControlPlaneBehind {
        /// The node.
        node: String,
        /// Its version.
        current: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
    /// A node to upgrade has no InternalIP to SSH into.
    #[error(
        "node `{0}` has no valid InternalIP address, which its upgrade Job connects to over SSH; \
         fix the node's addresses or add it to spec.nodes.skip"
    )]
    NoInternalIp(String),
    /// There is no other node for a node's Job to run on.
    #[error(
        "node `{0}` would have to be upgraded by a Job running on another node, and the cluster \
         has no other node; upchain cannot upgrade a single-node cluster"
    )]
    NoOtherNode(String),
}

/// Why a node is not in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// Its kubelet already runs the target.
    AtTarget,
    /// Named in spec.nodes.skip.
    Skipped,
    /// Matched by neither the control-plane nor the worker selector.
    NotSelected,
}

impl Exclusion {
    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Exclusion::AtTarget => "already at target",
            Exclusion::Skipped => "skipped (spec.nodes.skip)",
            Exclusion::NotSelected => "not selected by any selector",
        }
    }
}

/// A node in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The node's name.
    pub name: String,
    /// ControlPlane or Worker.
    pub role: NodeRole,
    /// Its current kubelet version.
    pub version: KubeVersion,
    /// Patch or Minor for this node.
    pub kind: UpgradeKind,
    /// True for the node that runs `kubeadm upgrade apply`.
    pub first_control_plane: bool,
    /// Steps with the same batch are upgraded together.
    pub batch: i32,
    /// Where its Job connects.
    pub internal_ip: String,
}

impl Step {
    /// The step as `status.plan` shows it.
    pub fn to_status(&self) -> PlannedNode {
        PlannedNode {
            name: self.name.clone(),
            role: self.role,
            version: self.version.to_string(),
            kind: self.kind,
            first_control_plane: self.first_control_plane,
            batch: self.batch,
        }
    }
}

/// A node left out of the plan, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    /// The node's name.
    pub name: String,
    /// Its role, when it was selected.
    pub role: Option<NodeRole>,
    /// Its kubelet version as reported.
    pub version: String,
    /// Why it is left out.
    pub reason: Exclusion,
}

/// What an upgrade to `target` would do, node by node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The version every selected node ends at.
    pub target: KubeVersion,
    /// Minor when any node to upgrade crosses a minor line, else Patch.
    pub kind: UpgradeKind,
    /// The lowest control-plane kubelet version.
    pub control_plane_version: KubeVersion,
    /// The lowest kubelet version among selected nodes.
    pub from_version: KubeVersion,
    /// The nodes to upgrade, in order: control-plane nodes, then workers.
    pub steps: Vec<Step>,
    /// The nodes left alone, in name order.
    pub excluded: Vec<Excluded>,
}

impl Plan {
    /// True when every selected node already runs the target.
    pub fn is_complete(&self) -> bool {
        self.steps.is_empty()
    }

    /// A short stable hash of what the plan would do, for approvals and change detection.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.target.to_string());
        for step in &self.steps {
            hasher.update(format!(
                "\n{}|{:?}|{}|{:?}|{}|{}",
                step.name, step.role, step.version, step.kind, step.first_control_plane, step.batch
            ));
        }
        hex_prefix(&hasher.finalize(), 16)
    }

    /// The nodes of the first batch still to do.
    pub fn next_batch(&self) -> impl Iterator<Item = &Step> {
        let first = self.steps.first().map(|s| s.batch);
        self.steps
            .iter()
            .take_while(move |s| Some(s.batch) == first)
    }
}

pub(crate) fn hex_prefix(bytes: &[u8], len: usize) -> String {
    bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(len)
        .map(|nibble| char::from_digit(u32::from(nibble), 16).unwrap_or('0'))
        .collect()
}

fn selector(field: &'static str, selector: &LabelSelector) -> Result<Selector, PlanError> {
    Selector::try_from(selector.clone()).map_err(|e| PlanError::InvalidSelector {
        field,
        reason: e.to_string(),
    })
}

/// Plans an upgrade of `nodes` to `target` under the node selection in `spec`.
///
/// `observed`, the control plane when read, says whether `kubeadm upgrade apply` already brought the
/// cluster to the target (kubeadm-config and the API servers' image tags) and which API
/// servers lag their kubelet; unread, the control-plane kubelets stand in for both.
pub fn plan(
    target: KubeVersion,
    spec: &NodesSpec,
    nodes: &[ObservedNode],
    observed: Option<&ControlPlaneObservation>,
) -> Result<Plan, PlanError> {
    if nodes.is_empty() {
        return Err(PlanError::NoNodes);
    }
    let mut seen = BTreeSet::new();
    let mut versions = BTreeMap::new();
    for node in nodes {
        if !seen.insert(node.name.as_str()) {
            return Err(PlanError::DuplicateNode(node.name.clone()));
        }
        let version = KubeVersion::parse_reported(&node.kubelet_version).map_err(|_| {
            PlanError::UnreadableKubelet {
                node: node.name.clone(),
                reported: node.kubelet_version.clone(),
            }
        })?;
        versions.insert(node.name.as_str(), version);
    }

    let control_plane = selector("controlPlaneSelector", &spec.control_plane_selector)?;
    let workers = spec
        .worker_selector
        .as_ref()
        .map(|s| selector("workerSelector", s))
        .transpose()?;
    let role_of = |node: &ObservedNode| {
        if control_plane.matches(&node.labels) {
            Some(NodeRole::ControlPlane)
        } else if workers.as_ref().is_none_or(|w| w.matches(&node.labels)) {
            Some(NodeRole::Worker)
        } else {
            None
        }
    };

    let control_plane_version = nodes
        .iter()
        .filter(|n| role_of(n) == Some(NodeRole::ControlPlane))
        .map(|n| versions[n.name.as_str()])
        .min()
        .ok_or(PlanError::NoControlPlane)?;

    // Version policy, checked for every node before anything is planned.
    for node in nodes {
        let current = versions[node.name.as_str()];
        let left_alone = role_of(node).is_none() || spec.skip.contains(&node.name);
        let name = || node.name.clone();
        if current.major != target.major {
            return Err(PlanError::MajorChange {
                node: name(),
                current,
                target,
            });
        }
        if current > target {
            return Err(PlanError::Downgrade {
                node: name(),
                current,
                target,
            });
        }
        if role_of(node) == Some(NodeRole::ControlPlane)
            && spec.skip.contains(&node.name)
            && current < target
        {
            return Err(PlanError::SkippedControlPlaneBehind {
                node: name(),
                current,
                target,
            });
        }
        if left_alone {
            if target.minor - current.minor > MAX_KUBELET_MINOR_SKEW {
                return Err(PlanError::LeftTooFarBehind {
                    node: name(),
                    current,
                    target,
                });
            }
        } else if target.minor - current.minor > 1 {
            return Err(PlanError::SkipsMinor {
                node: name(),
                current,
                target,
                next: format!("{}.{}.x", current.major, current.minor + 1),
            });
        }
    }

    let rank = |name: &str| {
        spec.order
            .iter()
            .position(|o| o == name)
            .unwrap_or(usize::MAX)
    };
    // Whether `kubeadm upgrade apply` has brought the cluster to the target: as the
    // cluster records it when read, else as the control-plane kubelets suggest.
    let apply_done = match observed.and_then(ControlPlaneObservation::kubeadm_applied) {
        Some(applied) => applied >= target,
        None => nodes.iter().any(|n| {
            role_of(n) == Some(NodeRole::ControlPlane) && versions[n.name.as_str()] >= target
        }),
    };
    // A control-plane node whose kubelet was moved by hand still needs kubeadm to move
    // its static Pods.
    let api_server_behind = |node: &ObservedNode| {
        role_of(node) == Some(NodeRole::ControlPlane)
            && observed
                .and_then(|c| c.api_server_version(&node.name))
                .is_some_and(|v| v < target)
    };
    let mut candidates: Vec<(&ObservedNode, NodeRole)> = Vec::new();
    let mut excluded = Vec::new();
    for node in nodes {
        let role = role_of(node);
        let reason = match role {
            None => Some(Exclusion::NotSelected),
            Some(_) if spec.skip.contains(&node.name) => Some(Exclusion::Skipped),
            Some(_) if versions[node.name.as_str()] == target && !api_server_behind(node) => {
                Some(Exclusion::AtTarget)
            }
            Some(_) => None,
        };
        match (reason, role) {
            (Some(reason), _) => excluded.push(Excluded {
                name: node.name.clone(),
                role,
                version: node.kubelet_version.clone(),
                reason,
            }),
            (None, Some(role)) => candidates.push((node, role)),
            (None, None) => {}
        }
    }
    // Every control-plane node at the target but kubeadm-config behind: the first of them
    // runs `kubeadm upgrade apply` again, so the cluster's configuration catches up.
    if !apply_done && !candidates.iter().any(|(_, r)| *r == NodeRole::ControlPlane) {
        let first = excluded
            .iter()
            .filter(|e| e.role == Some(NodeRole::ControlPlane) && e.reason == Exclusion::AtTarget)
            .min_by_key(|e| (rank(&e.name), e.name.clone()))
            .map(|e| e.name.clone());
        if let Some(first) = first {
            excluded.retain(|e| e.name != first);
            let node = nodes.iter().find(|n| n.name == first);
            candidates.extend(node.map(|n| (n, NodeRole::ControlPlane)));
        }
    }
    excluded.sort_by(|a, b| a.name.cmp(&b.name));
    // Control-plane nodes first, then workers; within a role, spec.order then name.
    candidates.sort_by(|(a, ra), (b, rb)| {
        (*rb == NodeRole::ControlPlane)
            .cmp(&(*ra == NodeRole::ControlPlane))
            .then(rank(&a.name).cmp(&rank(&b.name)))
            .then(a.name.cmp(&b.name))
    });

    // Each Job runs on a node outside its batch, so a batch never covers every node.
    let worker_batch = usize::try_from(spec.max_unavailable)
        .unwrap_or(1)
        .clamp(1, nodes.len().saturating_sub(1).max(1));

    let mut steps = Vec::with_capacity(candidates.len());
    let mut batch: i32 = 0;
    let mut in_worker_batch = 0;
    if let (Some((node, _)), 1) = (candidates.first(), nodes.len()) {
        return Err(PlanError::NoOtherNode(node.name.clone()));
    }
    for (node, role) in candidates {
        // Only a real address is handed to the Job's ssh command line.
        let internal_ip = node
            .internal_ip
            .clone()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .ok_or_else(|| PlanError::NoInternalIp(node.name.clone()))?;
        // A control-plane node is as old as the older of its kubelet and its API server:
        // after a kubelet moved by hand, kubeadm still crosses the API server's minor line.
        let api_server = observed
            .filter(|_| role == NodeRole::ControlPlane)
            .and_then(|c| c.api_server_version(&node.name));
        let version = versions[node.name.as_str()].min(api_server.unwrap_or(target));
        // The policy loop above guarantees a supported move for every candidate.
        let kind = version
            .upgrade_kind_to(target)
            .unwrap_or(UpgradeKind::Patch);
        if let Some(previous) = steps.last().map(|s: &Step| s.role) {
            let starts_new_batch = role == NodeRole::ControlPlane
                || previous == NodeRole::ControlPlane
                || in_worker_batch == worker_batch;
            if starts_new_batch {
                batch += 1;
                in_worker_batch = 0;
            }
        }
        if role == NodeRole::Worker {
            in_worker_batch += 1;
        }
        steps.push(Step {
            first_control_plane: role == NodeRole::ControlPlane && !apply_done && steps.is_empty(),
            name: node.name.clone(),
            role,
            version,
            kind,
            batch,
            internal_ip,
        });
    }

    let from_version = nodes
        .iter()
        .filter(|n| role_of(n).is_some() && !spec.skip.contains(&n.name))
        .map(|n| versions[n.name.as_str()])
        .min()
        .unwrap_or(control_plane_version);
    Ok(Plan {
        target,
        // Minor when any node still crosses a minor line (its package repository moves).
        kind: if target.minor > from_version.minor {
            UpgradeKind::Minor
        } else {
            UpgradeKind::Patch
        },
        control_plane_version,
        from_version,
        steps,
        excluded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeFixture, nodes_spec};

    fn v(s: &str) -> KubeVersion {
        KubeVersion::parse_target(s).expect("valid version")
    }

    fn cluster() -> Vec<ObservedNode> {
        vec![
            NodeFixture::control_plane("cp-0")
                .kubelet("v1.34.2")
                .build(),
            NodeFixture::worker("w-1").kubelet("v1.34.2").build(),
            NodeFixture::worker("w-2").kubelet("v1.35.2").build(),
            NodeFixture::worker("w-3").kubelet("v1.34.2").build(),
            NodeFixture::worker("w-4").kubelet("v1.34.1").build(),
            NodeFixture::worker("w-5").kubelet("v1.34.2").build(),
            NodeFixture::worker("w-6").kubelet("v1.35.2").build(),
        ]
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    /// Control-plane nodes whose API servers run these versions, kubeadm-config at `kubeadm`.
    fn observed(api_servers: &[(&str, &str)], kubeadm: &str) -> ControlPlaneObservation {
        ControlPlaneObservation {
            static_pods: api_servers
                .iter()
                .map(|(node, version)| crate::gates::StaticPod {
                    node: (*node).to_owned(),
                    component: "kube-apiserver".to_owned(),
                    image: format!("registry.k8s.io/kube-apiserver:{version}"),
                    running: true,
                    restarts: 0,
                })
                .collect(),
            readyz: Ok(()),
            kubeadm_version: Ok(v(kubeadm)),
            etcd_external: false,
            api_servers: Vec::new(),
        }
    }

    /// cp-0's kubelet at 1.35.2, the rest at 1.34.2.
    fn partial_cluster() -> Vec<ObservedNode> {
        vec![
            NodeFixture::control_plane("cp-0")
                .kubelet("v1.35.2")
                .build(),
            NodeFixture::control_plane("cp-1")
                .kubelet("v1.34.2")
                .build(),
            NodeFixture::worker("w-1").kubelet("v1.34.2").build(),
        ]
    }

    #[test]
    fn kubeadm_config_and_the_api_servers_say_whether_apply_has_run() {
        let nodes = partial_cluster();
        let first = |plan: &Plan| -> Vec<(String, bool)> {
            plan.steps
                .iter()
                .map(|s| (s.name.clone(), s.first_control_plane))
                .collect()
        };
        let step = |name: &str, first: bool| (name.to_owned(), first);
        // cp-0's kubelet was moved by hand: its API server and kubeadm-config are behind,
        // so cp-0 runs apply, crossing the minor line from its API server's version.
        let by_hand = observed(&[("cp-0", "v1.34.2"), ("cp-1", "v1.34.2")], "v1.34.2");
        let planned = plan(v("1.35.2"), &nodes_spec(), &nodes, Some(&by_hand)).expect("plan");
        assert_eq!(
            first(&planned),
            [step("cp-0", true), step("cp-1", false), step("w-1", false)]
        );
        assert_eq!(planned.steps[0].kind, UpgradeKind::Minor);
        // Without the cluster's word, the kubelets would have said apply had run.
        let guessed = plan(v("1.35.2"), &nodes_spec(), &nodes, None).expect("plan");
        assert_eq!(first(&guessed), [step("cp-1", false), step("w-1", false)]);
        // Applied: cp-0 is done; cp-1 runs `kubeadm upgrade node`.
        let applied = observed(&[("cp-0", "v1.35.2"), ("cp-1", "v1.34.2")], "v1.35.2");
        let planned = plan(v("1.35.2"), &nodes_spec(), &nodes, Some(&applied)).expect("plan");
        assert_eq!(first(&planned), [step("cp-1", false), step("w-1", false)]);
        // Every control-plane node at the target, yet kubeadm-config behind: the first
        // runs apply again so the cluster's configuration catches up.
        let mut upgraded = nodes.clone();
        upgraded[1].kubelet_version = "v1.35.2".into();
        let stale = observed(&[("cp-0", "v1.35.2"), ("cp-1", "v1.35.2")], "v1.34.2");
        let planned = plan(v("1.35.2"), &nodes_spec(), &upgraded, Some(&stale)).expect("plan");
        assert_eq!(first(&planned), [step("cp-0", true), step("w-1", false)]);
    }

    #[test]
    fn control_plane_first_then_workers_and_at_target_excluded() {
        let plan = plan(v("1.35.2"), &nodes_spec(), &cluster(), None).expect("plan");
        assert_eq!(names(&plan), ["cp-0", "w-1", "w-3", "w-4", "w-5"]);
        assert_eq!(plan.kind, UpgradeKind::Minor);
        assert!(plan.steps[0].first_control_plane);
        assert!(plan.steps[1..].iter().all(|s| !s.first_control_plane));
        let batches: Vec<i32> = plan.steps.iter().map(|s| s.batch).collect();
        assert_eq!(batches, [0, 1, 2, 3, 4]);
        let at_target: Vec<&str> = plan
            .excluded
            .iter()
            .filter(|e| e.reason == Exclusion::AtTarget)
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(at_target, ["w-2", "w-6"]);
        assert_eq!(plan.from_version, v("1.34.1"));
    }

    #[test]
    fn workers_are_batched_by_max_unavailable() {
        let mut spec = nodes_spec();
        spec.max_unavailable = 2;
        let plan = plan(v("1.35.2"), &spec, &cluster(), None).expect("plan");
        let batches: Vec<i32> = plan.steps.iter().map(|s| s.batch).collect();
        assert_eq!(batches, [0, 1, 1, 2, 2]);
    }

    #[test]
    fn a_batch_never_covers_every_node() {
        let nodes = vec![
            NodeFixture::control_plane("cp-0")
                .kubelet("v1.35.2")
                .build(),
            NodeFixture::worker("w-1").kubelet("v1.35.1").build(),
            NodeFixture::worker("w-2").kubelet("v1.35.1").build(),
        ];
        let mut spec = nodes_spec();
        spec.max_unavailable = 10;
        let plan = plan(v("1.35.2"), &spec, &nodes, None).expect("plan");
        assert_eq!(
            plan.steps.iter().map(|s| s.batch).collect::<Vec<_>>(),
            [0, 0]
        );
        assert_eq!(plan.kind, UpgradeKind::Patch);
    }

    #[test]
    fn order_and_skip_are_honoured() {
        let mut spec = nodes_spec();
        spec.order = vec!["w-5".into(), "w-3".into()];
        spec.skip = vec!["w-4".into()];
        let plan = plan(v("1.35.2"), &spec, &cluster(), None).expect("plan");
        assert_eq!(names(&plan), ["cp-0", "w-5", "w-3", "w-1"]);
        assert!(
            plan.excluded
                .iter()
                .any(|e| e.name == "w-4" && e.reason == Exclusion::Skipped)
        );
    }

    #[test]
    fn partial_run_resumes_without_a_second_kubeadm_apply() {
        let nodes = partial_cluster();
        let plan = plan(v("1.35.2"), &nodes_spec(), &nodes, None).expect("plan");
        assert_eq!(names(&plan), ["cp-1", "w-1"]);
        assert!(plan.steps.iter().all(|s| !s.first_control_plane));
        assert_eq!(plan.control_plane_version, v("1.34.2"));
        assert_eq!(plan.kind, UpgradeKind::Minor);
    }

    #[test]
    fn worker_selector_leaves_unselected_nodes_alone() {
        let mut spec = nodes_spec();
        spec.worker_selector = Some(LabelSelector {
            match_labels: Some([("pool".to_owned(), "general".to_owned())].into()),
            match_expressions: None,
        });
        let nodes = vec![
            NodeFixture::control_plane("cp-0")
                .kubelet("v1.34.2")
                .build(),
            NodeFixture::worker("w-1")
                .kubelet("v1.34.2")
                .label("pool", "general")
                .build(),
            NodeFixture::worker("gpu-1").kubelet("v1.34.2").build(),
        ];
        let plan = plan(v("1.34.3"), &spec, &nodes, None).expect("plan");
        assert_eq!(names(&plan), ["cp-0", "w-1"]);
        assert_eq!(plan.excluded[0].reason, Exclusion::NotSelected);
    }

    #[test]
    fn refusals_name_the_node_and_the_fix() {
        let spec = nodes_spec();
        let table: Vec<(Vec<ObservedNode>, &str, &str)> = vec![
            (vec![], "1.35.2", "node list is empty"),
            (cluster(), "1.34.9", "never downgrades"),
            (cluster(), "1.36.0", "upgrade to 1.35.x first"),
            (cluster(), "2.0.0", "another major version"),
            (
                vec![NodeFixture::worker("w-1").kubelet("v1.34.2").build()],
                "1.34.3",
                "controlPlaneSelector",
            ),
            (
                vec![
                    NodeFixture::control_plane("cp-0")
                        .kubelet("v1.34.2")
                        .build(),
                    NodeFixture::worker("cp-0").kubelet("v1.34.2").build(),
                ],
                "1.34.3",
                "more than once",
            ),
            (
                vec![
                    NodeFixture::control_plane("cp-0")
                        .kubelet("v1.34.2")
                        .build(),
                    NodeFixture::worker("w-1").kubelet("garbage").build(),
                ],
                "1.34.3",
                "`garbage`",
            ),
            (
                vec![
                    NodeFixture::control_plane("cp-0")
                        .kubelet("v1.34.2")
                        .build(),
                    NodeFixture::worker("w-1")
                        .kubelet("v1.34.2")
                        .no_ip()
                        .build(),
                ],
                "1.34.3",
                "valid InternalIP",
            ),
            (
                vec![
                    NodeFixture::control_plane("cp-0")
                        .kubelet("v1.34.2")
                        .build(),
                ],
                "1.34.3",
                "single-node",
            ),
        ];
        for (nodes, target, expected) in table {
            let err = plan(v(target), &spec, &nodes, None).expect_err(expected);
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn skipped_nodes_may_lag_but_not_beyond_kubelet_skew() {
        let mut spec = nodes_spec();
        spec.skip = vec!["old".into()];
        let nodes = |old: &str| {
            vec![
                NodeFixture::control_plane("cp-0")
                    .kubelet("v1.35.2")
                    .build(),
                NodeFixture::worker("old").kubelet(old).build(),
            ]
        };
        assert!(plan(v("1.36.0"), &spec, &nodes("v1.33.0"), None).is_ok());
        let err = plan(v("1.36.0"), &spec, &nodes("v1.32.0"), None).expect_err("too far behind");
        assert!(matches!(err, PlanError::LeftTooFarBehind { .. }));
    }

    #[test]
    fn hash_changes_with_the_plan() {
        let a = plan(v("1.35.2"), &nodes_spec(), &cluster(), None).expect("plan");
        let b = plan(v("1.35.3"), &nodes_spec(), &cluster(), None).expect("plan");
        assert_eq!(a.hash(), a.clone().hash());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }
}
