//! `keel-client verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use keel_client::verify::check::Rules;
use keel_client::verify::state::State;
use keel_client::verify::{self, VerifyConfig};

use super::ConnectArgs;
use super::units::{parse_duration, parse_size};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Write generations of blocks, flushing and recording them in the state file.
    Write,
    /// Read every block and compare with the state file.
    Check,
    /// Write, then check.
    Both,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The state file (created if missing, replaced atomically after each FLUSH).
    #[arg(long)]
    state: PathBuf,
    /// What to do: write, check, or both.
    #[arg(value_enum, default_value = "both")]
    mode: Mode,
    /// Blocks to use, from offset 0; default: the state file's, else the whole disk, at most
    /// 65536.
    #[arg(long)]
    blocks: Option<u64>,
    /// Block size; default: the state file's, else 4k.
    #[arg(long, value_parser = parse_size)]
    bs: Option<u64>,
    /// Run identity, stamped in every block; default: the state file's, else 1.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 32)]
    iodepth: usize,
    /// Writes between FLUSHes (one state-file update each).
    #[arg(long, default_value_t = 1024)]
    flush_every: usize,
    /// Passes over all blocks; 0 writes until --duration passes or the process is killed.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// Stop writing after this long (at an epoch boundary).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Accept torn blocks whose write was in flight (for devices without atomic block writes).
    #[arg(long)]
    allow_torn: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // A state file already records the geometry and seed: they need not be given again.
    let saved = State::load(&args.state)?;
    let bs_bytes = args
        .bs
        .or(saved.as_ref().map(|s| u64::from(s.block_size)))
        .unwrap_or(4096);
    let seed = args.seed.or(saved.as_ref().map(|s| s.seed)).unwrap_or(1);
    let bs = usize::try_from(bs_bytes)?;
    let buffer_memory = args.iodepth as u64 * bs_bytes.div_ceil(4096) * 4096 + (1 << 20);
    let mut disk = args.connect.connect(Some(1), buffer_memory)?;
    let capacity = disk.info().capacity();
    let config = VerifyConfig {
        block_size: bs,
        blocks: args
            .blocks
            .or(saved.as_ref().map(State::blocks))
            .unwrap_or((capacity / bs_bytes.max(1)).min(65536)),
        seed,
        iodepth: args.iodepth,
        flush_every: args.flush_every,
        rounds: args.rounds,
        duration: args.duration,
        rules: Rules {
            allow_torn_pending: args.allow_torn,
        },
    };
    config.validate(capacity)?;
    let mut queue = disk.take_queue(0).ok_or("the disk has no queue 0")?;
    let mut state = verify::open_state(&args.state, &config)?;
    let mut ok = true;
    let mut json = serde_json::Map::new();
    if matches!(args.mode, Mode::Write | Mode::Both) {
        let s = verify::write(&mut queue, &mut state, &args.state, &config)?;
        if args.json {
            json.insert("write".into(), serde_json::to_value(&s)?);
        } else {
            println!(
                "wrote {} blocks in {} passes, {} flushes, generation {}",
                s.writes, s.passes, s.flushes, s.last_generation
            );
        }
    }
    if matches!(args.mode, Mode::Check | Mode::Both) {
        let report = verify::check(&mut queue, &state, &config)?;
        ok = report.problems() == 0;
        if args.json {
            json.insert("check".into(), serde_json::to_value(&report)?);
        } else {
            print!("{}", report.to_text());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
