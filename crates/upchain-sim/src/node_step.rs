//! What the node step reports from a healthy cluster, as the node script and the runner
//! print it (charts/upchain/files/upgrade-node.sh, `etcd-check` and `etcd-snapshot`):
//! written here apart from upchain-core's reader, so that the simulator checks the format
//! rather than sharing it.

/// The etcd check's report for a healthy member per (node name, address).
pub fn etcd_report(members: &[(String, String)]) -> String {
    let mut lines = Vec::new();
    for (i, (name, address)) in members.iter().enumerate() {
        let id = 0x8e9e_05c5_2164_0000_u64 + i as u64;
        let client = format!("https://{address}:2379");
        lines.push(format!(
            "upchain-etcd member {id:x}|started|{name}|https://{address}:2380|{client}|false"
        ));
        let leader = 0x8e9e_05c5_2164_0000_u64;
        lines.push(format!(
            "upchain-etcd status {client} {id} {leader} 5242880 2310 2310 false"
        ));
        lines.push(format!("upchain-etcd health {client} true "));
        lines.push(format!(
            "upchain-etcd later {client} {id} {leader} 5242880 2318 2318 false"
        ));
    }
    lines.push("upchain-etcd quota 2147483648".to_owned());
    lines.join("\n")
}

/// The snapshot Job's report for a good snapshot of `node`'s member, copied to `location`.
pub fn snapshot_report(node: &str, location: &str) -> String {
    let sha = "b1946ac92492d2347c6235b4d2611184b1946ac92492d2347c6235b4d2611184";
    format!(
        "upchain-snapshot {{\"sizeBytes\":5242880,\"sha256\":\"{sha}\",\"readBack\":\"{sha}\",\
         \"location\":\"{location}/etcd-{node}.db\",\"node\":\"{node}\",\
         \"status\":{{\"hash\":2876543210,\"revision\":91234,\"totalKey\":2210,\"totalSize\":5242880}},\
         \"restored\":{{\"hash\":1234567890,\"revision\":91234,\"totalKey\":2210,\"totalSize\":5242880}}}}"
    )
}
