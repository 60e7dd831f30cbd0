//! The operator end to end, in one test binary (linking is paid once, not once per file):
//! the real `upchain` binary and the controller against the simulated cluster, chaos, the
//! CLI, the node script in a sandbox, and what ships to a cluster.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod binary_e2e;
mod chaos;
mod cli;
mod controller;
mod differential;
mod etcd_backup;
mod harness;
mod images;
mod node_script;
mod observability;
mod real_api;
mod real_cluster;
mod sim_kubectl;
mod trust_boundary;
