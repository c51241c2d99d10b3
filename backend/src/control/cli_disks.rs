//! The `keel` commands that add and remove served disks and set their I/O limits.

use std::path::PathBuf;

use keel_protocol::control::{DiskInfo, DiskLimits, LimitsUpdate, RemoveAnswer};
use keel_protocol::parse_size;

use super::cli::{api, served_disk};
use super::client::ControlClient;
use super::output::{format_size, print_json};
use crate::config::{absolute_paths, disk_table_from_file};

/// Disks added to and removed from a running keeld (not written to its config file).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum DiskCmd {
    /// Serve one more disk, described by a file holding one [[disk]] table or by flags.
    Add(AddArgs),
    /// Stop serving a disk: its writes are flushed and its socket removed.
    Remove {
        /// A disk keeld serves.
        disk: String,
        /// Remove it even while a guest is attached: the frontend is detached first (its
        /// requests in flight finish); the guest loses the disk.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keel disk add`: `--file`, or the common keys as flags (the file allows every key).
#[derive(Clone, Debug, clap::Args)]
pub struct AddArgs {
    /// A TOML file holding exactly one [[disk]] table, as in keeld's config (relative paths
    /// are taken from the file's directory).
    #[arg(long, conflicts_with_all = ["name", "socket", "engine", "path", "size", "queues"])]
    pub file: Option<PathBuf>,
    /// The disk's name.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Its vhost-user socket (relative to the current directory).
    #[arg(long, required_unless_present = "file")]
    pub socket: Option<PathBuf>,
    /// raw, keel or null.
    #[arg(long, required_unless_present = "file")]
    pub engine: Option<String>,
    /// The image, device or container (relative to the current directory).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Its size, e.g. 10G (created with it if missing).
    #[arg(long)]
    pub size: Option<String>,
    /// Number of virtqueues.
    #[arg(long)]
    pub queues: Option<u16>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keel limits DISK`: with no option, shows the limits; options change them (0 lifts one).
#[derive(Clone, Debug, clap::Args)]
pub struct LimitsArgs {
    /// A disk keeld serves.
    pub disk: String,
    /// Requests per second, reads and writes together.
    #[arg(long)]
    pub iops: Option<u64>,
    /// Reads per second.
    #[arg(long)]
    pub read_iops: Option<u64>,
    /// Writes (and discards, write-zeroes) per second.
    #[arg(long)]
    pub write_iops: Option<u64>,
    /// Bytes per second, reads and writes together, e.g. 100M.
    #[arg(long, value_parser = parse_size)]
    pub bps: Option<u64>,
    /// Bytes read per second.
    #[arg(long, value_parser = parse_size)]
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    #[arg(long, value_parser = parse_size)]
    pub write_bps: Option<u64>,
    /// Requests per second allowed for up to --burst-seconds after a quiet time.
    #[arg(long)]
    pub iops_burst: Option<u64>,
    /// How long a burst may last (1 to 3600).
    #[arg(long)]
    pub burst_seconds: Option<u64>,
    /// Bytes per second a mirror's resync copies, e.g. 50M.
    #[arg(long, value_parser = parse_size)]
    pub resync_bps: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl LimitsArgs {
    fn update(&self) -> LimitsUpdate {
        LimitsUpdate {
            iops_limit: self.iops,
            read_iops_limit: self.read_iops,
            write_iops_limit: self.write_iops,
            bps_limit: self.bps,
            read_bps_limit: self.read_bps,
            write_bps_limit: self.write_bps,
            iops_burst: self.iops_burst,
            burst_seconds: self.burst_seconds,
            resync_bps_limit: self.resync_bps,
        }
    }
}

pub fn disk(c: &ControlClient, cmd: DiskCmd) -> Result<(), String> {
    match cmd {
        DiskCmd::Add(a) => add(c, &a),
        DiskCmd::Remove { disk, force, json } => {
            let path = served_disk(&disk)?;
            let path = if force {
                format!("{path}?force=true")
            } else {
                path
            };
            let r: RemoveAnswer = c.delete(&path).map_err(api)?;
            if json {
                return print_json(&r);
            }
            let note = if r.detached {
                " (its frontend was detached)"
            } else {
                ""
            };
            println!("{} removed{note}", r.disk);
            Ok(())
        }
    }
}

fn add(c: &ControlClient, a: &AddArgs) -> Result<(), String> {
    let table = match &a.file {
        Some(file) => disk_table_from_file(file)?,
        None => {
            let mut t = serde_json::json!({
                "name": a.name,
                "socket": a.socket.as_ref().map(|p| p.display().to_string()),
                "engine": a.engine,
            });
            let extra = [
                (
                    "path",
                    a.path.as_ref().map(|p| p.display().to_string().into()),
                ),
                ("size", a.size.clone().map(Into::into)),
                ("queues", a.queues.map(Into::into)),
            ];
            for (key, value) in extra {
                if let Some(v) = value {
                    t[key] = v;
                }
            }
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            absolute_paths(&mut t, &cwd);
            t
        }
    };
    let d: DiskInfo = c.post("/v1/disks", &table).map_err(api)?;
    if a.json {
        return print_json(&d);
    }
    println!(
        "{} added ({} engine, {}), serving on {}; add it to keeld's config to serve it after a \
         restart",
        d.name,
        d.engine,
        format_size(d.size),
        d.socket
    );
    Ok(())
}

pub fn limits(c: &ControlClient, a: &LimitsArgs) -> Result<(), String> {
    let path = format!("{}/limits", served_disk(&a.disk)?);
    let update = a.update();
    let l: DiskLimits = if update == LimitsUpdate::default() {
        c.get(&path).map_err(api)?
    } else {
        c.call("PUT", &path, Some(&update)).map_err(api)?
    };
    if a.json {
        return print_json(&l);
    }
    let show = |n: u64, unit: &str| match n {
        0 => "unlimited".to_string(),
        n if unit == "B/s" => format!("{}/s ({n} bytes/s)", format_size(n)),
        n => format!("{n} {unit}"),
    };
    let rows = [
        ("iops", show(l.iops_limit, "/s")),
        ("read iops", show(l.read_iops_limit, "/s")),
        ("write iops", show(l.write_iops_limit, "/s")),
        ("bps", show(l.bps_limit, "B/s")),
        ("read bps", show(l.read_bps_limit, "B/s")),
        ("write bps", show(l.write_bps_limit, "B/s")),
        (
            "iops burst",
            match l.iops_burst {
                0 => "none".to_string(),
                n => format!("{n} /s for {} s", l.burst_seconds),
            },
        ),
        ("resync bps", show(l.resync_bps_limit, "B/s")),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
    Ok(())
}
