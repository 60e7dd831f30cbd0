//! upchain-sim: a simulated Kubernetes API server and cluster that real clients (kube-rs,
//! kubectl) talk to over HTTP, for tests, benchmarks and `upchain demo`.
#![forbid(unsafe_code)]

pub mod clock;
pub mod patch;
pub mod registry;
pub mod selector;
pub mod store;
