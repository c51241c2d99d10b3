//! keeld: serves the disks of a config file as vhost-user-blk devices until SIGTERM or SIGINT.
//! SIGHUP reloads the config: disks added to the file start, disks removed from it stop; what
//! cannot change live is refused with a log line and served as before.

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
    let mut daemon = match Daemon::start(&config) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            eprintln!("keeld: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in signals.forever() {
        if sig == SIGHUP {
            reload(&mut daemon, &args.config);
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

/// SIGHUP: the config file is checked as at start, and its disk list applied.
fn reload(daemon: &mut Daemon, path: &std::path::Path) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            warn!("SIGHUP: not reloaded, serving as before: {e}");
            return;
        }
    };
    let r = daemon.reload(&new);
    if r.applied.is_empty() && r.refused.is_empty() {
        info!("SIGHUP: {} is unchanged", path.display());
    }
    for a in &r.applied {
        info!("SIGHUP: {a}");
    }
    for refused in &r.refused {
        warn!("SIGHUP: {refused}");
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
