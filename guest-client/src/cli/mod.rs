//! Command-line front end: argument parsing and printing; the work is done by the library.

mod bench;
mod info;
mod units;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keel_client::queue::Completions;
use keel_client::{Disk, DiskOptions};

#[derive(Parser, Debug)]
#[command(
    name = "keel-client",
    version,
    about = "A userspace vhost-user-blk driver: info, bench, verify"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show negotiated features, capacity, block size, queues and serial.
    Info(info::InfoArgs),
    /// Measure IOPS, bandwidth and latency, like fio.
    Bench(bench::BenchArgs),
    /// Write self-describing blocks and check them later (lost, stale, torn writes).
    Verify(verify::VerifyArgs),
}

/// How to connect, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The vhost-user-blk server's unix socket.
    pub socket: PathBuf,
    /// Entries per virtqueue (power of two).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Poll the used rings instead of sleeping on the call eventfd.
    #[arg(long)]
    pub poll: bool,
    /// Do not use indirect descriptors even if offered.
    #[arg(long)]
    pub no_indirect: bool,
    /// Do not use EVENT_IDX notification suppression even if offered.
    #[arg(long)]
    pub no_event_idx: bool,
    /// Turn the device's write cache off first (WCE = 0), as a guest with its cache off does.
    #[arg(long)]
    pub write_through: bool,
}

impl ConnectArgs {
    pub fn options(&self, queues: Option<u16>, buffer_memory: u64) -> DiskOptions {
        DiskOptions {
            queues,
            queue_size: self.queue_size,
            buffer_memory,
            completions: if self.poll {
                Completions::Poll
            } else {
                Completions::Interrupt
            },
            indirect: !self.no_indirect,
            event_idx: !self.no_event_idx,
            write_through: self.write_through,
            ..DiskOptions::default()
        }
    }

    pub fn connect(&self, queues: Option<u16>, buffer_memory: u64) -> keel_client::Result<Disk> {
        Disk::connect(&self.socket, &self.options(queues, buffer_memory))
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Verify(a) => verify::run(a),
    }
}
