//! The upchain operator as a library: the controller that the `upchain` binary runs, and
//! that tests run in-process against the simulated cluster.
#![forbid(unsafe_code)]

pub mod controller;
pub mod gather;
pub mod install;
pub mod metrics;
pub mod notify;
mod paging;
pub mod serve;
pub mod silences;
pub mod startup;
