//! `upchain`: the operator and its command-line tools.
#![forbid(unsafe_code)]

mod check_cmd;
mod cli;
mod demo_cmd;
mod error;
mod nodes_file;
mod plan_cmd;
mod run_cmd;
mod sim_cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Error;

/// jemalloc, returning freed pages to the system within a second (.cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.init_logging();
    if let Command::Check(args) = &cli.command {
        let mut stdout = std::io::stdout().lock();
        return match runtime().and_then(|rt| rt.block_on(check_cmd::run(args, &mut stdout))) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(error.exit_code())
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Crd { reference: true } => stdout
            .write_all(upchain_api::api_reference().as_bytes())
            .map_err(Error::Output),
        Command::Crd { reference: false } => {
            let yaml = upchain_api::crd_yaml().map_err(Error::CrdRender)?;
            stdout.write_all(yaml.as_bytes()).map_err(Error::Output)
        }
        Command::Plan(args) => plan_cmd::run(&args, &mut stdout),
        Command::Sim(args) => runtime()?.block_on(sim_cmd::run(&args)),
        Command::Run(args) => operator_runtime()?.block_on(run_cmd::run(&args)),
        Command::Demo(args) => runtime()?.block_on(demo_cmd::run(&args, &mut stdout)),
        Command::Check(_) => Ok(()), // handled in main: its verdict is the exit code
    }
}

/// The operator waits on the API server far more than it computes (about 10 ms of CPU per
/// node upgraded), so one thread serves it. It also keeps its memory in one allocator arena:
/// with a thread per core, glibc's per-thread arenas held freed memory and the resident set
/// grew well past the live heap.
fn operator_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}
