//! `keel-client bench`.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Ok(ExitCode::FAILURE)
}
