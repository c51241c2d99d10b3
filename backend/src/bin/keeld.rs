//! keeld: serves the disks of a config file as vhost-user-blk devices until SIGTERM or SIGINT.
//! SIGHUP reloads the config: disks added to the file start, disks removed from it stop; what
//! cannot change live is refused with a log line and served as before.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use keel_backend::cli_docs;
use keel_backend::config::Config;
use keel_backend::service::{Activation, Notifier, Watchdog, logging, notify};
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
    let argv: Vec<_> = std::env::args_os().collect();
    if let Some(code) = cli_docs::generate_if_asked(&argv, Args::command) {
        return code;
    }
    let args = Args::parse_from(argv);
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keeld: {e}");
            return ExitCode::from(2);
        }
    };
    let log_target = logging::init(config.server.log_level.as_deref(), config.server.log_format);
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
    info!(
        "keeld {} logging to {log_target}",
        env!("CARGO_PKG_VERSION")
    );
    let notifier = match Notifier::from_env() {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            warn!("NOTIFY_SOCKET: {e}; the service manager is not told of readiness");
            None
        }
        None => None,
    };
    let tell = |state: &str| {
        if let Some(n) = &notifier
            && let Err(e) = n.notify(state)
        {
            warn!("notifying the service manager: {e}");
        }
    };
    let mut activation = match Activation::from_env() {
        Ok(a) => a,
        Err(e) => {
            error!("socket activation: {e}");
            eprintln!("keeld: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut daemon = match Daemon::start_with(&config, &mut activation) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            eprintln!("keeld: {e}");
            tell(&format!("STATUS=failed: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if !activation.is_empty() {
        warn!(
            "sockets passed for no configured disk (FileDescriptorName= must be a disk's name), \
             closed: {}",
            activation.remaining().join(", ")
        );
    }
    drop(activation);
    tell(&format!("READY=1\nSTATUS={}", status_line(&daemon)));
    let watchdog = match (&notifier, notify::watchdog_interval()) {
        (Some(n), Some(interval)) => Watchdog::start(n, interval)
            .map_err(|e| warn!("cannot start the watchdog thread: {e}"))
            .ok(),
        _ => None,
    };
    for sig in signals.forever() {
        if sig == SIGHUP {
            reload(&mut daemon, &args.config);
            tell(&format!("STATUS={}", status_line(&daemon)));
            continue;
        }
        info!("signal {sig}: shutting down");
        break;
    }
    tell("STOPPING=1\nSTATUS=stopping: finishing in-flight I/O and flushing");
    drop(watchdog);
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

/// The `STATUS=` line once every disk listens.
fn status_line(daemon: &Daemon) -> String {
    let served = daemon.stats().len();
    match daemon.failed().as_slice() {
        [] => format!("serving {served} disk(s)"),
        failed => format!(
            "serving {served} disk(s); failed to open: {}",
            failed.join(", ")
        ),
    }
}
