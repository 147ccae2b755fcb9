//! The `fedmesh` binary. See `fedmesh --help`.
// `unsafe` only in `memory` (two glibc calls); denied everywhere else.
#![deny(unsafe_code)]

mod attack;
mod audit;
mod bench;
mod cli;
mod config;
mod control;
mod dealer;
mod drill;
mod flood;
mod join;
mod keys;
#[allow(unsafe_code)]
mod memory;
mod net;
mod node;
mod privacy;
mod runtime;
mod train;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        // `fedmesh audit show | head` closes the pipe early: not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
