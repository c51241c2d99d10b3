//! The `keel` commands that talk to a running keeld over its control socket.
//!
//! The daemon is found through `--control SOCKET`, else `KEEL_CONTROL`, else the
//! `[server] control_socket` of `--config FILE`.

use super::client::{ClientError, ControlClient};
use crate::config::Config;
use crate::store::diff::{DiffReport, ExtentKind};
use keel_protocol::control::{
    CloneAnswer, CloneDisk, CreateSnapshot, DiskInfo, DiskStats, MirrorOpBody, ResizeAnswer,
    ResizeDisk, RevertSnapshot, SnapshotInfo,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where the daemon's control socket is, from the command line and the environment.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DaemonArgs {
    /// The daemon's control socket (else $KEEL_CONTROL, else --config's control_socket).
    #[arg(long, global = true)]
    pub control: Option<PathBuf>,
    /// keeld's config file, to find its control socket.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

impl DaemonArgs {
    /// The control socket, if any source names one.
    pub fn socket(&self) -> Result<Option<PathBuf>, String> {
        if let Some(p) = &self.control {
            return Ok(Some(p.clone()));
        }
        if let Some(p) = std::env::var_os("KEEL_CONTROL") {
            return Ok(Some(PathBuf::from(p)));
        }
        if let Some(cfg) = &self.config {
            let c = Config::load(cfg).map_err(|e| e.to_string())?;
            return c
                .server
                .control_socket
                .map(Some)
                .ok_or_else(|| format!("{} has no [server] control_socket", cfg.display()));
        }
        Ok(None)
    }

    /// A client for the daemon, or an error saying how to name one.
    pub fn client(&self) -> Result<ControlClient, String> {
        match self.socket()? {
            Some(p) => Ok(ControlClient::new(&p)),
            None => Err(
                "which daemon? give --control SOCKET, set KEEL_CONTROL, or --config FILE".into(),
            ),
        }
    }
}

/// Mirror component operations.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum MirrorCmd {
    /// Each component's state, LSN, dirty chunks and resync progress.
    Status {
        disk: String,
        #[arg(long)]
        json: bool,
    },
    /// Take component N out (its writes are tracked for a later resync).
    Offline { disk: String, n: usize },
    /// Bring component N back: resync copies only what changed meanwhile.
    Online { disk: String, n: usize },
    /// Take component N down for service; a delta component takes its writes.
    Maintenance {
        disk: String,
        n: usize,
        /// Where the delta component lives (default: beside the component).
        #[arg(long)]
        delta: Option<PathBuf>,
    },
    /// Replace component N by a full copy at PATH.
    Replace {
        disk: String,
        n: usize,
        path: PathBuf,
    },
}

fn api(e: ClientError) -> String {
    e.to_string()
}

fn print_json<T: Serialize>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn disk_path(disk: &str) -> String {
    format!("/v1/disks/{disk}")
}

pub fn list_disks(c: &ControlClient, json: bool) -> Result<(), String> {
    let disks: Vec<DiskInfo> = c.get("/v1/disks").map_err(api)?;
    if json {
        return print_json(&disks);
    }
    println!(
        "{:<16} {:<6} {:>12} {:>6} {:<9} {:<14} socket",
        "disk", "engine", "size", "queues", "attached", "space"
    );
    for d in disks {
        let space = d.space.as_ref().map_or("-".to_string(), |s| {
            format!("{} {:.0}%", s.state.as_str(), s.used_percent)
        });
        println!(
            "{:<16} {:<6} {:>12} {:>6} {:<9} {:<14} {}",
            d.name,
            d.engine,
            d.size,
            d.queues,
            if d.connected { "yes" } else { "no" },
            space,
            d.socket
        );
    }
    Ok(())
}

pub fn stats(c: &ControlClient, disk: &str, json: bool) -> Result<(), String> {
    let s: DiskStats = c.get(&format!("{}/stats", disk_path(disk))).map_err(api)?;
    if json {
        return print_json(&s);
    }
    let rows: [(&str, u64); 15] = [
        ("reads", s.reads),
        ("writes", s.writes),
        ("flushes", s.flushes),
        ("discards", s.discards),
        ("write zeroes", s.write_zeroes),
        ("bytes read", s.read_bytes),
        ("bytes written", s.written_bytes),
        ("I/O errors", s.errors),
        ("refused requests", s.invalid_requests),
        ("batches", s.batches),
        ("metadata transactions", s.metadata_transactions),
        ("device bytes written", s.device_bytes_written),
        ("checksum errors", s.checksum_errors),
        ("snapshots being deleted", s.snapshots_being_deleted),
        ("get-id", s.get_ids),
    ];
    for (k, v) in rows {
        println!("{k:<23} {v}");
    }
    for line in s.space.iter().flat_map(super::space_text::space_lines) {
        println!("{line}");
    }
    let guest = s.writes + s.discards + s.write_zeroes;
    if guest > 0 && s.metadata_transactions > 0 {
        println!(
            "{:<23} {:.4}",
            "metadata per write",
            s.metadata_transactions as f64 / guest as f64
        );
    }
    if let Some(total) = s.latency.last().map(|b| b.count).filter(|&n| n > 0) {
        for q in [0.5, 0.99, 0.999] {
            let want = (total as f64 * q).ceil() as u64;
            if let Some(b) = s.latency.iter().find(|b| b.count >= want) {
                println!(
                    "{:<23} <= {} us",
                    format!("latency p{}", q * 100.0),
                    b.le_us
                );
            }
        }
    }
    Ok(())
}

pub fn snapshot_list(c: &ControlClient, disk: &str, json: bool) -> Result<(), String> {
    let l: Vec<SnapshotInfo> = c
        .get(&format!("{}/snapshots", disk_path(disk)))
        .map_err(api)?;
    if json {
        return print_json(&l);
    }
    println!("{:<24} {:>8} {:>12}", "name", "seq", "created");
    for s in l {
        println!("{:<24} {:>8} {:>12}", s.name, s.seq, s.created);
    }
    Ok(())
}

pub fn snapshot_create(c: &ControlClient, disk: &str, name: &str) -> Result<(), String> {
    let s: SnapshotInfo = c
        .post(
            &format!("{}/snapshots", disk_path(disk)),
            &CreateSnapshot { name: name.into() },
        )
        .map_err(api)?;
    println!("snapshot {} of {disk} created (seq {})", s.name, s.seq);
    Ok(())
}

pub fn snapshot_delete(c: &ControlClient, disk: &str, name: &str) -> Result<(), String> {
    let _: serde_json::Value = c
        .delete(&format!("{}/snapshots/{name}", disk_path(disk)))
        .map_err(api)?;
    println!("snapshot {name} of {disk} deleted");
    Ok(())
}

pub fn snapshot_revert(
    c: &ControlClient,
    disk: &str,
    name: &str,
    force: bool,
) -> Result<(), String> {
    let _: serde_json::Value = c
        .post(
            &format!("{}/snapshots/{name}/revert", disk_path(disk)),
            &RevertSnapshot { force },
        )
        .map_err(api)?;
    println!("{disk} reverted to snapshot {name}");
    Ok(())
}

pub fn clone(c: &ControlClient, disk: &str, snapshot: &str, new_disk: &str) -> Result<(), String> {
    let a: CloneAnswer = c
        .post(
            &format!("{}/clone", disk_path(disk)),
            &CloneDisk {
                snapshot: snapshot.into(),
                new_disk: new_disk.into(),
            },
        )
        .map_err(api)?;
    println!(
        "{} cloned from {disk}@{snapshot} ({} blocks) into {}, serving on {}; add it to keeld's \
         config to serve it after a restart",
        a.disk, a.blocks, a.path, a.socket
    );
    Ok(())
}

pub fn mirror(c: &ControlClient, cmd: MirrorCmd) -> Result<(), String> {
    let op = |disk: &str, n: usize, op: &str, path: Option<&Path>| -> Result<(), String> {
        let body = MirrorOpBody {
            path: path.map(|p| p.display().to_string()),
        };
        let _: serde_json::Value = c
            .post(&format!("{}/mirror/{n}/{op}", disk_path(disk)), &body)
            .map_err(api)?;
        println!("{disk}: component {n}: {op} done");
        Ok(())
    };
    match cmd {
        MirrorCmd::Status { disk, json } => {
            let s: serde_json::Value = c
                .get(&format!("{}/mirror", disk_path(&disk)))
                .map_err(api)?;
            if json {
                return print_json(&s);
            }
            println!(
                "{:>3} {:<11} {:>10} {:>8} {:>9} {:>14}  path",
                "n", "state", "last LSN", "dirty", "resync", "bytes copied"
            );
            for comp in s["components"].as_array().into_iter().flatten() {
                let progress = comp["resync"]
                    .as_object()
                    .map(|r| {
                        let total = r["total_chunks"].as_u64().unwrap_or(0).max(1);
                        let done = r["done_chunks"].as_u64().unwrap_or(0);
                        format!("{:.1}%", 100.0 * done as f64 / total as f64)
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:>3} {:<11} {:>10} {:>8} {:>9} {:>14}  {}",
                    comp["index"],
                    comp["state"].as_str().unwrap_or("?"),
                    comp["last_lsn"],
                    comp["dirty_chunks"],
                    progress,
                    comp["resync_bytes_copied"],
                    comp["path"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        MirrorCmd::Offline { disk, n } => op(&disk, n, "offline", None),
        MirrorCmd::Online { disk, n } => op(&disk, n, "online", None),
        MirrorCmd::Maintenance { disk, n, delta } => op(&disk, n, "maintenance", delta.as_deref()),
        MirrorCmd::Replace { disk, n, path } => op(&disk, n, "replace", Some(&path)),
    }
}

/// `keel resize DISK SIZE`: grow a served disk (shrinking is refused by the daemon).
pub fn resize(c: &ControlClient, disk: &str, size: u64) -> Result<(), String> {
    let a: ResizeAnswer = c
        .post(&format!("{}/resize", disk_path(disk)), &ResizeDisk { size })
        .map_err(api)?;
    let told = if a.frontend_notified {
        "the attached frontend was told"
    } else {
        "no attached frontend to tell"
    };
    println!(
        "{disk} holds {} bytes ({told}); keeld's config must say size = {} before its next start",
        a.size, a.size
    );
    Ok(())
}

/// Prints a diff as a table of extents and a summary line, or as JSON.
pub fn print_diff(r: &DiffReport, json: bool) -> Result<(), String> {
    if json {
        return print_json(r);
    }
    println!("{:>16} {:>14}  kind", "offset", "length");
    for e in &r.extents {
        let kind = match e.kind {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
        };
        println!("{:>16} {:>14}  {kind}", e.offset, e.length);
    }
    println!(
        "{} to {}: {} extents, {} bytes of data, {} bytes zeroed ({} tree nodes opened, {} shared subtrees skipped)",
        r.from,
        r.to,
        r.extents.len(),
        r.data_bytes,
        r.zero_bytes,
        r.nodes_opened,
        r.shared_skipped
    );
    Ok(())
}

fn diff_query(disk: &str, what: &str, from: &str, to: &str) -> String {
    format!("{}/{what}?from={from}&to={to}", disk_path(disk))
}

/// `keel diff DISK FROM [TO]` on a served disk.
pub fn diff(c: &ControlClient, disk: &str, from: &str, to: &str, json: bool) -> Result<(), String> {
    let r: DiffReport = c.get(&diff_query(disk, "diff", from, to)).map_err(api)?;
    print_diff(&r, json)
}

/// `keel diff DISK FROM [TO] --export FILE` on a served disk: streams the export into `out`.
pub fn diff_export(
    c: &ControlClient,
    disk: &str,
    from: &str,
    to: &str,
    out: &mut dyn std::io::Write,
) -> Result<u64, String> {
    c.download(&diff_query(disk, "export", from, to), out)
        .map_err(api)
}
