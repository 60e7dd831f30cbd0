//! The design's invariants, checked at every decision of every run, and property tests
//! over random clusters.

use super::*;

/// Idempotence: the same observation again yields the same status, no Event, and no
/// mutating action that the first decision did not already ask for.
pub(super) fn check_idempotent(
    upgrade: &K8sUpgrade,
    observed: &Observed,
    now: Timestamp,
    first: &Decision,
) {
    let mut again = upgrade.clone();
    again.status = Some(first.status.clone());
    let second = decide(&again, observed, now);
    assert_eq!(
        second.status, first.status,
        "a second decision changed the status"
    );
    for action in &second.actions {
        assert!(
            action.is_mutating(),
            "a second decision repeated an Event: {action:?}"
        );
        assert!(
            first.actions.contains(action),
            "new action on repeat: {action:?}"
        );
    }
}

pub(super) fn check_invariants(upgrade: &K8sUpgrade, world: &World, decision: &Decision) {
    let status = &decision.status;
    let before = upgrade.status.clone().unwrap_or_default();
    let active: Vec<_> = status.nodes.iter().filter(|n| n.step.is_active()).collect();
    let active_names: Vec<&str> = active.iter().map(|n| n.name.as_str()).collect();

    // What a person reads is written as prose: no run of spaces from a lost line
    // continuation.
    let texts = status
        .blocked_reasons
        .iter()
        .chain(status.conditions.iter().map(|c| &c.message))
        .chain(status.nodes.iter().filter_map(|n| n.message.as_ref()))
        .chain(decision.actions.iter().filter_map(|a| match a {
            Action::Event(event) => Some(&event.message),
            Action::Notify(notification) => Some(&notification.text),
            _ => None,
        }));
    for text in texts {
        assert!(!text.contains("  "), "a run of spaces in {text:?}");
    }

    for action in &decision.actions {
        let app = |job: &k8s_openapi::api::batch::v1::Job| {
            job.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/name").cloned())
                .unwrap_or_default()
        };
        let node_job = |job: &k8s_openapi::api::batch::v1::Job| app(job) == "upchain-node-upgrade";
        if let Action::CreateJob(job) = action
            && app(job) == "upchain-node-prepare"
        {
            // Prepare checks run before the first node, and never where they check.
            assert!(status.nodes.is_empty(), "a prepare Job once a node started");
            let node = &job.metadata.annotations.as_ref().expect("annotated")
                [upchain_api::NODE_ANNOTATION];
            assert!(excluded_nodes(job).contains(node));
            continue;
        }
        if let Action::CreateJob(job) = action
            && !node_job(job)
        {
            // The snapshot and hook Jobs come from the user's templates: they run only
            // while no node is out of service.
            assert!(
                active_names.is_empty(),
                "{:?} while {active_names:?} in progress",
                job.metadata.name
            );
        }
        if let Action::CreateJob(job) = action
            && node_job(job)
        {
            // Invariant 1: the Job avoids every node being drained or upgraded.
            let excluded = excluded_nodes(job);
            for name in &active_names {
                assert!(excluded.iter().any(|e| e == name), "Job may land on {name}");
            }
            // Invariant 10: a Job installs its node's pinned target.
            let node = job.metadata.annotations.as_ref().expect("annotated")
                [upchain_api::NODE_ANNOTATION]
                .clone();
            let record = status
                .nodes
                .iter()
                .find(|n| n.name == node)
                .expect("record");
            let labels = job.metadata.labels.as_ref().expect("labels");
            assert_eq!(labels[upchain_api::TARGET_LABEL], record.target_version);
            // Invariant 5: only a supported move, never a downgrade (a kubelet already at
            // the target may still need kubeadm's part).
            let target = KubeVersion::parse_target(&record.target_version).expect("target");
            let current = world.version(&node);
            assert!(
                current == target || current.upgrade_kind_to(target).is_some(),
                "unsupported move for {node}"
            );
        }
    }

    // Invariant 10: a node's pinned target changes only once the node reached the old one
    // (it finished, and a new target then took effect at the node boundary).
    for record in &active {
        if let Some(old) = before
            .nodes
            .iter()
            .find(|n| n.name == record.name && n.step.is_active())
            && old.target_version != record.target_version
        {
            let old_target = KubeVersion::parse_target(&old.target_version).expect("target");
            assert!(
                world.version(&record.name) >= old_target,
                "{} re-targeted mid-step",
                record.name
            );
        }
    }

    // Invariant 2: control-plane nodes one at a time and all before any worker; at most
    // maxUnavailable workers at once.
    let control_plane_active = active
        .iter()
        .filter(|n| n.role == upchain_api::NodeRole::ControlPlane)
        .count();
    let workers_active = active.len() - control_plane_active;
    assert!(control_plane_active <= 1, "two control-plane nodes at once");
    if workers_active > 0 {
        assert_eq!(
            control_plane_active, 0,
            "a worker alongside a control-plane node"
        );
        let target = KubeVersion::parse_target(&active[0].target_version).expect("target");
        for node in world
            .nodes
            .iter()
            .filter(|n| n.labels.contains_key(upchain_api::CONTROL_PLANE_LABEL))
        {
            if !upgrade.spec.nodes.skip.contains(&node.name) {
                assert!(
                    world.version(&node.name) >= target,
                    "worker started before {}",
                    node.name
                );
            }
        }
    }
    let max = usize::try_from(upgrade.spec.nodes.max_unavailable).expect("positive");
    assert!(
        workers_active <= max,
        "{workers_active} workers at once, max {max}"
    );

    // Invariant 3: a node is started only when every node before it is Done, Ready and at
    // its target.
    let newly_started: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| {
            n.step == NodeStep::Draining
                && !before
                    .nodes
                    .iter()
                    .any(|b| b.name == n.name && b.step.is_active())
        })
        .filter(|n| n.failures == 0 && n.attempts == 0)
        .map(|n| n.name.as_str())
        .collect();
    if !newly_started.is_empty() {
        for record in status
            .nodes
            .iter()
            .filter(|n| !newly_started.contains(&n.name.as_str()))
        {
            assert!(
                !record.step.is_active(),
                "{} still in progress when a node started",
                record.name
            );
            if record.step == NodeStep::Done && world.nodes.iter().any(|n| n.name == record.name) {
                let node = world
                    .nodes
                    .iter()
                    .find(|n| n.name == record.name)
                    .expect("node");
                assert!(
                    node.ready,
                    "{} not Ready when the next node started",
                    record.name
                );
                let target = KubeVersion::parse_target(&record.target_version).expect("target");
                assert!(world.version(&record.name) >= target);
            }
        }
    }

    // Invariant 5 (refusal side): an invalid spec or policy refusal mutates nothing.
    let refused = conditions::get(&status.conditions, types::READY).is_some_and(|c| {
        c.reason == Reason::InvalidSpec.as_str() || c.reason == Reason::VersionPolicy.as_str()
    });
    if refused && active.is_empty() {
        assert!(
            mutating(&decision.actions).is_empty(),
            "mutation despite a refusal"
        );
    }
}

pub(super) fn arb_cluster() -> impl Strategy<Value = (Vec<ObservedNode>, i32, bool)> {
    (
        1usize..=3,
        0usize..=8,
        1i32..=4,
        any::<bool>(),
        proptest::collection::vec(0u8..3, 11),
    )
        .prop_map(
            |(control_planes, workers, max_unavailable, zero_soak, versions)| {
                let version = |i: usize| match versions[i] {
                    0 => "v1.34.2",
                    1 => "v1.35.0",
                    _ => "v1.35.1",
                };
                let mut nodes = Vec::new();
                for i in 0..control_planes {
                    nodes.push(
                        NodeFixture::control_plane(&format!("cp-{i}"))
                            .kubelet(version(i))
                            .build(),
                    );
                }
                for i in 0..workers {
                    nodes.push(
                        NodeFixture::worker(&format!("w-{i}"))
                            .kubelet(version(control_planes + i))
                            .build(),
                    );
                }
                (nodes, max_unavailable, zero_soak)
            },
        )
}

proptest! {
    /// Invariants 1, 2, 3, 5 and 10 and idempotence hold at every decision of a run, and
    /// the run converges with every node at the target and none left cordoned.
    #[test]
    fn runs_keep_the_invariants_and_converge(
        (nodes, max_unavailable, zero_soak) in arb_cluster(),
        failures in proptest::collection::btree_map(0usize..11, 1u32..2, 0..3),
        retarget_at in proptest::option::of(1usize..40),
    ) {
        let mut world = World::new(nodes.clone());
        for (index, count) in failures {
            if let Some(node) = nodes.get(index) {
                world.failing.insert(node.name.clone(), count);
            }
        }
        let mut upgrade = quick("1.35.1");
        upgrade.spec.nodes.max_unavailable = max_unavailable;
        if zero_soak {
            upgrade.spec.soak = std::time::Duration::ZERO.into();
        }
        let refused = crate::plan::plan(
            KubeVersion::new(1, 35, 1),
            &upgrade.spec.nodes,
            &nodes,
            None,
        )
        .is_err();
        let mut run = Run::new(upgrade, world);
        if refused {
            let decision = run.decide_once();
            prop_assert_eq!(decision.status.phase, Some(Phase::Failed));
            prop_assert!(mutating(&decision.actions).is_empty());
            return Ok(());
        }
        for step in 0..600 {
            if Some(step) == retarget_at {
                run.upgrade.spec.target_version = "1.35.2".into();
            }
            let decision = run.decide_once();
            if decision.status.phase == Some(Phase::Succeeded)
                && retarget_at.is_none_or(|r| step > r)
            {
                break;
            }
            let wait = decision.requeue.map_or(30, |r| r.as_secs().clamp(1, 600));
            run.world.tick(i64::try_from(wait).expect("small"));
        }
        let target = if retarget_at.is_some() { "v1.35.2" } else { "v1.35.1" };
        let want = KubeVersion::parse_target(target).expect("target");
        if crate::plan::plan(want, &run.upgrade.spec.nodes, &nodes, None).is_err() {
            // The new target is refused at the boundary: the run stops, nothing cordoned.
            prop_assert_eq!(run.status().phase, Some(Phase::Failed));
            prop_assert!(run.world.nodes.iter().all(|n| !n.unschedulable));
            return Ok(());
        }
        prop_assert_eq!(run.status().phase, Some(Phase::Succeeded));
        for node in &run.world.nodes {
            prop_assert!(run.world.version(&node.name) >= want, "{} not upgraded", node.name);
            prop_assert!(!node.unschedulable, "{} left cordoned", node.name);
        }
    }

    /// A node that fails its prepare check keeps every node uncordoned, the run Blocked
    /// naming it; once it passes, the run converges.
    #[test]
    fn a_failed_prepare_check_touches_no_node(
        (nodes, max_unavailable, _) in arb_cluster(),
        unprepared in proptest::collection::btree_set(0usize..11, 1..3),
    ) {
        let mut world = World::new(nodes.clone());
        for index in unprepared {
            if let Some(node) = nodes.get(index) {
                world.unprepared.insert(node.name.clone());
            }
        }
        let mut upgrade = quick("1.35.1");
        upgrade.spec.nodes.max_unavailable = max_unavailable;
        let target = KubeVersion::parse_target("1.35.1").expect("target");
        let Ok(plan) = crate::plan::plan(target, &upgrade.spec.nodes, &nodes, None) else {
            return Ok(());
        };
        let checked = world
            .unprepared
            .iter()
            .any(|n| plan.steps.iter().any(|s| &s.name == n));
        let mut run = Run::new(upgrade, world);
        for _ in 0..12 {
            let decision = run.decide_once();
            if checked {
                let cordons = decision.actions.iter().any(|a| matches!(a, Action::Cordon { .. }));
                prop_assert!(!cordons, "a node was cordoned although a check failed");
            }
            run.wait_as_asked(&decision, 600);
        }
        if checked {
            prop_assert_eq!(run.status().phase, Some(Phase::Blocked));
            prop_assert!(run.status().nodes.is_empty());
        }
        run.world.unprepared.clear();
        prop_assert_eq!(run.until(400, &[Phase::Succeeded, Phase::Failed]), Phase::Succeeded);
    }

    /// Invariant 5: any target the policy refuses is refused without a mutation.
    #[test]
    fn refused_targets_mutate_nothing(major in 0u32..3, minor in 30u32..40, patch in 0u32..5, garbage in "[0-9a-z.v]{0,8}") {
        for target in [format!("{major}.{minor}.{patch}"), garbage.clone()] {
            let world = World::new(small_cluster());
            let refused = KubeVersion::parse_target(&target).map_or(true, |t| {
                crate::plan::plan(t, &upchain_api::NodesSpec::default(), &world.nodes, None).is_err()
            });
            let mut run = Run::new(quick(&target), world);
            let decision = run.decide_once();
            if refused {
                prop_assert_eq!(decision.status.phase, Some(Phase::Failed));
                prop_assert!(mutating(&decision.actions).is_empty());
            }
        }
    }
}
