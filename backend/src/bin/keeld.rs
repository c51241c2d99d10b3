//! keeld: serves the disks of a config file as vhost-user-blk devices until SIGTERM or SIGINT.
//! SIGHUP does not reload the config (a restart applies it): keeld checks the file and logs
//! what a restart would change, and keeps serving.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keel_backend::config::Config;
use keel_backend::vhost::Daemon;
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Parser)]
#[command(name = "keeld", version, about = "Keel's vhost-user-blk server")]
struct Args {
    /// The config file (see docs/config.md).
    #[arg(short, long, default_value = "keel.toml")]
    config: PathBuf,
    /// Check the config file and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keeld: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.server.log_level.as_deref());
    if args.check {
        println!(
            "{}: {} disk(s), OK",
            args.config.display(),
            config.disks.len()
        );
        return ExitCode::SUCCESS;
    }
    // Register before starting: a signal that arrives during startup is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keeld: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match Daemon::start(&config) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            eprintln!("keeld: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in signals.forever() {
        if sig == SIGHUP {
            warn!(
                "SIGHUP: keeld does not reload its config (still serving as before); {}",
                what_a_restart_would_do(&args.config, &config)
            );
            continue;
        }
        info!("signal {sig}: shutting down");
        break;
    }
    match daemon.shutdown() {
        Ok(()) => {
            info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keeld: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config file as it is now, checked and compared with the one keeld serves.
fn what_a_restart_would_do(path: &std::path::Path, serving: &Config) -> String {
    match Config::load(path) {
        Err(e) => format!("a restart would refuse the file: {e}"),
        Ok(now) => {
            let changes = now.changes_from(serving);
            if changes.is_empty() {
                format!("{} is unchanged", path.display())
            } else {
                format!("a restart would apply: {}", changes.join(", "))
            }
        }
    }
}

/// `KEEL_LOG`, else `RUST_LOG`, else the config's `log_level`, else "info".
fn init_logging(config_level: Option<&str>) {
    let filter = std::env::var("KEEL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| config_level.unwrap_or("info").to_owned());
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format_timestamp_micros()
        .init();
}
