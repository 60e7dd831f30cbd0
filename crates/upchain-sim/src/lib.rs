//! upchain-sim: a simulated Kubernetes API server and cluster that real clients (kube-rs,
//! kubectl) talk to over HTTP, for tests, benchmarks and `upchain demo`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod clock;
pub mod control_plane;
pub mod controllers;
pub mod node_step;
pub mod patch;
pub mod player;
pub mod registry;
pub mod seed;
pub mod selector;
pub mod server;
pub mod sim;
pub mod store;
pub mod table;
pub mod validation;

pub use clock::Clock;
pub use sim::{Sim, SimConfig, SimError};
