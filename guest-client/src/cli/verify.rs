//! `keel-client verify`.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {}

pub fn run(_args: VerifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Ok(ExitCode::FAILURE)
}
