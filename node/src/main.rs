//! The `fedmesh` binary. See `fedmesh --help`.
#![forbid(unsafe_code)]

mod audit;
mod cli;
mod config;
mod dealer;
mod keys;
mod net;
mod node;
mod runtime;
mod train;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
