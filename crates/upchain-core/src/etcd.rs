//! Stacked etcd as the node step reads it (`upgrade-node.sh etcd-check`): the member
//! list, every endpoint's status and health, the alarms, the quota, and a second status a
//! moment later. A member is judged by what etcd says of it, never by whether its Pod
//! looks Ready: a member added and never started, a learner, an alarm or a member that
//! lags all keep quorum from surviving the next node's upgrade.

use std::collections::{BTreeMap, BTreeSet};

/// How each line of the check's report starts (its termination message).
pub const REPORT_PREFIX: &str = "upchain-etcd ";

/// A member as `etcdctl member list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its ID (hexadecimal, as etcdctl prints it).
    pub id: u64,
    /// False for a member added and never started.
    pub started: bool,
    /// Its name: kubeadm names a member after its node.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// A learner holds no vote.
    pub learner: bool,
}

/// One endpoint's `etcdctl endpoint status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The client URL asked.
    pub endpoint: String,
    /// The member answering.
    pub member: u64,
    /// The leader it follows (0: none).
    pub leader: u64,
    /// Its database file's size.
    pub db_size: u64,
    /// Its raft index.
    pub raft_index: u64,
    /// Its applied index.
    pub applied_index: u64,
}

/// Everything the check reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdReport {
    /// The members.
    pub members: Vec<Member>,
    /// The first look at every endpoint.
    pub status: Vec<EndpointStatus>,
    /// The second look, two seconds later.
    pub later: Vec<EndpointStatus>,
    /// Each endpoint's health, with its error.
    pub health: Vec<(String, bool, String)>,
    /// Each alarm: member and kind (NOSPACE, CORRUPT).
    pub alarms: Vec<(u64, String)>,
    /// The backend quota in bytes (`--quota-backend-bytes`, etcd's default when unset).
    pub quota_bytes: Option<u64>,
    /// What etcdctl could not do.
    pub errors: Vec<String>,
}

impl EtcdReport {
    /// Reads the report's lines; Err when there is no member list in it.
    pub fn parse(report: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        for line in report.lines() {
            let Some(line) = line.trim().strip_prefix(REPORT_PREFIX) else {
                continue;
            };
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let fields: Vec<&str> = rest.split_whitespace().collect();
            match kind {
                "member" => parsed.members.extend(member(rest)),
                "status" => parsed.status.extend(status(&fields)),
                "later" => parsed.later.extend(status(&fields)),
                "health" if fields.len() >= 2 => parsed.health.push((
                    fields[0].to_owned(),
                    fields[1] == "true",
                    fields[2..].join(" "),
                )),
                "alarm" if fields.len() == 2 => {
                    if let Ok(id) = fields[0].parse() {
                        parsed.alarms.push((id, fields[1].to_owned()));
                    }
                }
                "quota" => parsed.quota_bytes = fields.first().and_then(|q| q.parse().ok()),
                "error" => parsed.errors.push(rest.to_owned()),
                _ => {}
            }
        }
        if parsed.members.is_empty() {
            return Err(
                "the etcd check reported no member list: read the check Job's log".to_owned(),
            );
        }
        Ok(parsed)
    }

    fn name_of(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.id == id && !m.name.is_empty())
            .map_or_else(|| format!("{id:x}"), |m| m.name.clone())
    }

    /// The voting members' names, as a short account of what passed.
    pub fn summary(&self) -> String {
        let voting: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.started && !m.learner)
            .map(|m| m.name.as_str())
            .collect();
        let leader = self
            .status
            .iter()
            .map(|s| s.leader)
            .find(|l| *l != 0)
            .map(|l| self.name_of(l))
            .unwrap_or_default();
        let largest = self.status.iter().map(|s| s.db_size).max().unwrap_or(0);
        format!(
            "{} voting member(s) ({}), leader {leader}, largest database {} MiB, no alarm",
            voting.len(),
            voting.join(", "),
            largest / (1024 * 1024)
        )
    }
}

/// The report of a healthy etcd whose members are `members` (name, address), as the node
/// script prints it: what the core's tests answer for the node step.
#[cfg(test)]
pub(crate) fn healthy_report(members: &[(&str, &str)]) -> String {
    let mut lines = Vec::new();
    for (i, (name, address)) in members.iter().enumerate() {
        let id = 0x1000 + i as u64;
        let url = format!("https://{address}:2379");
        lines.push(format!(
            "{REPORT_PREFIX}member {id:x}|started|{name}|https://{address}:2380|{url}|false"
        ));
        lines.push(format!(
            "{REPORT_PREFIX}status {url} {id} 4096 4194304 100 100 false"
        ));
        lines.push(format!("{REPORT_PREFIX}health {url} true "));
        lines.push(format!(
            "{REPORT_PREFIX}later {url} {id} 4096 4194304 104 104 false"
        ));
    }
    lines.push(format!("{REPORT_PREFIX}quota 2147483648"));
    lines.join("\n")
}

/// `id|started|name|peerURLs|clientURLs|isLearner`.
fn member(rest: &str) -> Option<Member> {
    let fields: Vec<&str> = rest.split('|').map(str::trim).collect();
    let [id, started, name, peers, clients, learner] = fields.as_slice() else {
        return None;
    };
    Some(Member {
        id: u64::from_str_radix(id, 16).ok()?,
        started: *started == "started",
        name: (*name).to_owned(),
        peer_urls: (*peers).to_owned(),
        client_urls: clients
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        learner: *learner == "true",
    })
}

/// `endpoint member leader dbSize raftIndex appliedIndex isLearner`.
fn status(fields: &[&str]) -> Option<EndpointStatus> {
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(EndpointStatus {
        endpoint: (*fields.first()?).to_owned(),
        member: number(1)?,
        leader: number(2)?,
        db_size: number(3)?,
        raft_index: number(4)?,
        applied_index: number(5)?,
    })
}

/// How far (in entries) a member may trail the leader's index of two seconds before.
const APPLY_SLACK: u64 = 5000;

/// What keeps etcd from surviving one member's upgrade, each naming the member and what
/// to do; empty when it passes: the voting members are exactly the control-plane nodes,
/// every one healthy and agreeing on one leader, no alarm, every database under
/// `max_db_percent` of its quota, and every member keeping up with the leader.
pub fn judge(report: &EtcdReport, control_planes: &[&str], max_db_percent: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let voting: Vec<&Member> = report
        .members
        .iter()
        .filter(|m| m.started && !m.learner)
        .collect();
    if report.members.len() != control_planes.len() {
        problems.push(format!(
            "etcd has {} members, {} control-plane nodes: every member must be a \
             control-plane node's, and every control-plane node must have one",
            report.members.len(),
            control_planes.len()
        ));
    }
    for member in &report.members {
        if !member.started || member.name.is_empty() {
            problems.push(format!(
                "etcd member {:x} (peer {}{}) was added but never started: it counts toward \
                 quorum without voting; remove it with `etcdctl member remove {:x}`, or \
                 start it",
                member.id,
                member.peer_urls,
                if member.learner { ", a learner" } else { "" },
                member.id
            ));
        } else if member.learner {
            problems.push(format!(
                "etcd member {} is a learner, not a voting member: promote it (`etcdctl \
                 member promote {:x}`) once it caught up, or remove it",
                member.name, member.id
            ));
        }
    }
    let names: BTreeSet<&str> = voting.iter().map(|m| m.name.as_str()).collect();
    for member in &voting {
        if !control_planes.contains(&member.name.as_str()) {
            problems.push(format!(
                "etcd member {} ({:x}) belongs to no control-plane node: a node removed \
                 without `etcdctl member remove`; remove the member",
                member.name, member.id
            ));
        }
    }
    for node in control_planes {
        if !names.contains(node) {
            problems.push(format!(
                "control-plane node {node} has no voting etcd member: its member is missing \
                 or not started; see `kubectl -n kube-system logs etcd-{node}`"
            ));
        }
    }
    let status: BTreeMap<u64, &EndpointStatus> =
        report.status.iter().map(|s| (s.member, s)).collect();
    let member_of_endpoint = |endpoint: &str| {
        report
            .status
            .iter()
            .find(|s| s.endpoint == endpoint)
            .map(|s| s.member)
            .or_else(|| {
                report
                    .members
                    .iter()
                    .find(|m| m.client_urls.iter().any(|c| c == endpoint))
                    .map(|m| m.id)
            })
    };
    for member in &voting {
        if !status.contains_key(&member.id) {
            problems.push(format!(
                "etcd member {} did not answer `endpoint status` at {}",
                member.name,
                member.client_urls.join(",")
            ));
        }
        let health = report
            .health
            .iter()
            .find(|(endpoint, _, _)| member_of_endpoint(endpoint) == Some(member.id));
        match health {
            Some((_, true, _)) => {}
            Some((endpoint, false, error)) => problems.push(format!(
                "etcd member {} ({endpoint}) is unhealthy: {}",
                member.name,
                if error.is_empty() {
                    "no reason given"
                } else {
                    error
                }
            )),
            None => problems.push(format!(
                "etcd member {} was not reported by `endpoint health`",
                member.name
            )),
        }
    }
    let leaders: BTreeSet<u64> = report.status.iter().map(|s| s.leader).collect();
    let leader = match leaders.iter().copied().collect::<Vec<_>>().as_slice() {
        [] => None,
        [0] => {
            problems.push("etcd has no leader: no member can take writes".to_owned());
            None
        }
        [one] => {
            if !voting.iter().any(|m| m.id == *one) {
                problems.push(format!(
                    "etcd's leader {one:x} is not a voting member of the member list"
                ));
            }
            Some(*one)
        }
        several => {
            problems.push(format!(
                "etcd members disagree on the leader ({}): the cluster is split or electing",
                several
                    .iter()
                    .map(|l| report.name_of(*l))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    };
    for (member, alarm) in &report.alarms {
        let what = match alarm.as_str() {
            "NOSPACE" => {
                "its database reached its quota and etcd refuses writes: compact, `etcdctl \
                 defrag`, then `etcdctl alarm disarm`"
            }
            "CORRUPT" => "its data is corrupt: replace the member from a healthy one",
            _ => "see `etcdctl alarm list`",
        };
        problems.push(format!(
            "etcd member {} has alarm {alarm}: {what}",
            report.name_of(*member)
        ));
    }
    let quota = report.quota_bytes.unwrap_or(2 * 1024 * 1024 * 1024);
    for s in &report.status {
        if u128::from(s.db_size) * 100 > u128::from(quota) * u128::from(max_db_percent) {
            problems.push(format!(
                "etcd member {}'s database is {} MiB, over {max_db_percent}% of its quota of \
                 {} MiB (spec.gates.etcdDatabaseQuotaPercent): compact and `etcdctl defrag` \
                 it first, since an upgrade writes to it",
                report.name_of(s.member),
                s.db_size / (1024 * 1024),
                quota / (1024 * 1024)
            ));
        }
    }
    if let Some(before) = leader.and_then(|l| status.get(&l)).map(|s| s.raft_index) {
        for member in &voting {
            match report.later.iter().find(|s| s.member == member.id) {
                Some(later) if later.raft_index >= before => {
                    if later.applied_index + APPLY_SLACK < later.raft_index {
                        problems.push(format!(
                            "etcd member {} has applied {} of {} raft entries: it falls \
                             behind applying them",
                            member.name, later.applied_index, later.raft_index
                        ));
                    }
                }
                Some(later) => problems.push(format!(
                    "etcd member {} is not keeping up: its raft index is {}, the leader was \
                     at {before} two seconds earlier",
                    member.name, later.raft_index
                )),
                None => problems.push(format!(
                    "etcd member {} did not answer the second `endpoint status`",
                    member.name
                )),
            }
        }
    }
    problems.extend(
        report
            .errors
            .iter()
            .map(|e| format!("etcdctl reported: {e}")),
    );
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONTROL_PLANES: [&str; 3] = ["cp-1", "cp-2", "cp-3"];

    /// A healthy three-member report, as the node script prints it.
    fn healthy() -> String {
        healthy_report(&[
            ("cp-1", "10.0.0.1"),
            ("cp-2", "10.0.0.2"),
            ("cp-3", "10.0.0.3"),
        ])
    }

    fn judged(report: &str) -> Vec<String> {
        judge(
            &EtcdReport::parse(report).expect("parses"),
            &CONTROL_PLANES,
            80,
        )
    }

    /// Whether judging `report` finds a problem that says `text`.
    fn finds(report: &str, text: &str) -> bool {
        judged(report).iter().any(|p| p.contains(text))
    }

    #[test]
    fn a_healthy_cluster_passes() {
        assert_eq!(judged(&healthy()), Vec::<String>::new());
        let report = EtcdReport::parse(&healthy()).expect("parses");
        assert!(
            report
                .summary()
                .starts_with("3 voting member(s) (cp-1, cp-2, cp-3), leader cp-1")
        );
    }

    #[test]
    fn a_member_added_and_never_started_blocks() {
        let report = format!(
            "{}\nupchain-etcd member c25d1bfb7c59b8d2|unstarted||https://10.0.0.9:2380||false",
            healthy()
        );
        let problems = judged(&report);
        assert!(
            problems[0].contains("4 members, 3 control-plane nodes"),
            "{problems:?}"
        );
        assert!(problems[1].contains("c25d1bfb7c59b8d2") && problems[1].contains("never started"));
    }

    #[test]
    fn a_member_of_a_deleted_node_and_a_node_without_a_member_block() {
        let report = healthy().replace("|cp-3|", "|old-cp|");
        let problems = judged(&report);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("old-cp") && p.contains("no control-plane node"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("cp-3 has no voting etcd member"))
        );
    }

    #[test]
    fn a_learner_an_alarm_a_full_database_and_a_lagging_member_block() {
        let learner = healthy().replace(
            "|cp-2|https://10.0.0.2:2380|https://10.0.0.2:2379|false",
            "|cp-2|https://10.0.0.2:2380|https://10.0.0.2:2379|true",
        );
        assert!(finds(&learner, "cp-2 is a learner"));
        let alarm = format!("{}\nupchain-etcd alarm 4097 NOSPACE", healthy());
        assert!(finds(&alarm, "cp-2 has alarm NOSPACE"));
        let full = healthy().replace("quota 2147483648", "quota 5000000");
        assert!(finds(&full, "over 80% of its quota"));
        let lagging = healthy().replace(
            "later https://10.0.0.3:2379 4098 4096 4194304 104",
            "later https://10.0.0.3:2379 4098 4096 4194304 90",
        );
        assert!(finds(&lagging, "cp-3 is not keeping up"));
    }

    #[test]
    fn an_unhealthy_member_and_a_split_leader_block() {
        let unhealthy = healthy().replace(
            "health https://10.0.0.2:2379 true ",
            "health https://10.0.0.2:2379 false context deadline exceeded",
        );
        assert!(finds(
            &unhealthy,
            "cp-2 (https://10.0.0.2:2379) is unhealthy: context deadline"
        ));
        let split = healthy().replace(
            "status https://10.0.0.3:2379 4098 4096",
            "status https://10.0.0.3:2379 4098 4098",
        );
        assert!(finds(&split, "disagree on the leader"));
    }

    #[test]
    fn a_report_without_members_is_refused() {
        assert!(EtcdReport::parse("upchain-etcd quota 1").is_err());
    }

    proptest! {
        /// Whatever the member list, the check passes only when the voting members are
        /// exactly the control-plane nodes and none is unstarted or a learner.
        #[test]
        fn passes_only_with_one_voting_member_per_control_plane_node(
            extra in 0usize..3, learners in proptest::collection::vec(any::<bool>(), 3),
            drop in proptest::option::of(0usize..3),
        ) {
            let mut report = EtcdReport::parse(&healthy()).expect("parses");
            for (member, learner) in report.members.iter_mut().zip(&learners) {
                member.learner = *learner;
            }
            for i in 0..extra {
                report.members.push(Member {
                    id: 0x100 + i as u64, started: false, name: String::new(),
                    peer_urls: "https://10.0.0.9:2380".to_owned(), client_urls: Vec::new(), learner: false,
                });
            }
            if let Some(i) = drop {
                report.members.remove(i);
            }
            let passes = judge(&report, &CONTROL_PLANES, 80).is_empty();
            prop_assert_eq!(passes, extra == 0 && drop.is_none() && learners.iter().all(|l| !l));
        }
    }
}
