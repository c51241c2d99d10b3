//! `keel-client`: inspect, benchmark and verify a vhost-user-blk disk from userspace.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-client: {e}");
            ExitCode::FAILURE
        }
    }
}
