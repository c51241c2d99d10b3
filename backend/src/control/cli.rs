//! The `keel` commands that talk to a running keeld over its control socket.
//!
//! The daemon is found through `--control SOCKET`, else `KEEL_CONTROL`, else the
//! `[server] control_socket` of `--config FILE`.

use super::client::{ClientError, ControlClient};
use super::table::{Align, Table};
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
        if let Some(e) = &d.error {
            println!("  failed: {e}");
        }
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
        Ok(())
    };
    let status = |disk: &str| -> Result<serde_json::Value, String> {
        c.get(&format!("{}/mirror", disk_path(disk))).map_err(api)
    };
    match cmd {
        MirrorCmd::Status { disk, json } => {
            let s = status(&disk)?;
            if json {
                return print_json(&s);
            }
            print!("{}", mirror_table(&s).render());
            Ok(())
        }
        MirrorCmd::Offline { disk, n } => {
            op(&disk, n, "offline", None)?;
            println!("{disk}: component {n} is offline; its writes are tracked");
            Ok(())
        }
        MirrorCmd::Maintenance { disk, n, delta } => {
            op(&disk, n, "maintenance", delta.as_deref())?;
            println!("{disk}: component {n} is in maintenance; a delta component takes its writes");
            Ok(())
        }
        MirrorCmd::Online { disk, n } => {
            op(&disk, n, "online", None)?;
            resync_started(&disk, n, &status(&disk)?)
        }
        MirrorCmd::Replace { disk, n, path } => {
            op(&disk, n, "replace", Some(&path))?;
            resync_started(&disk, n, &status(&disk)?)
        }
    }
}

/// The components of a `GET /v1/disks/{name}/mirror` answer as a table.
fn mirror_table(s: &serde_json::Value) -> Table {
    let mut t = Table::new([
        ("n", Align::Right),
        ("state", Align::Left),
        ("last LSN", Align::Right),
        ("dirty", Align::Right),
        ("resync", Align::Right),
        ("bytes copied", Align::Right),
        ("path", Align::Left),
    ]);
    for comp in s["components"].as_array().into_iter().flatten() {
        let progress = comp["resync"]
            .as_object()
            .map(|r| {
                let total = r["total_chunks"].as_u64().unwrap_or(0).max(1);
                let done = r["done_chunks"].as_u64().unwrap_or(0);
                format!("{:.1}%", 100.0 * done as f64 / total as f64)
            })
            .unwrap_or_else(|| "-".into());
        let number = |k: &str| comp[k].as_u64().map_or("?".into(), |v| v.to_string());
        t.row([
            number("index"),
            comp["state"].as_str().unwrap_or("?").to_string(),
            number("last_lsn"),
            number("dirty_chunks"),
            progress,
            number("resync_bytes_copied"),
            comp["path"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    t
}

/// Chunks a catching-up component still needs: its plan's remainder, else its tracking bits.
fn chunks_to_copy(comp: &serde_json::Value) -> u64 {
    let r = &comp["resync"];
    match (r["total_chunks"].as_u64(), r["done_chunks"].as_u64()) {
        (Some(total), Some(done)) => total.saturating_sub(done),
        _ => comp["dirty_chunks"].as_u64().unwrap_or(0),
    }
}

/// After `online` or `replace`: the resync runs in the background, so say it started and how
/// to follow it; a resync that already failed is an error (non-zero exit).
fn resync_started(disk: &str, n: usize, s: &serde_json::Value) -> Result<(), String> {
    let comp = &s["components"][n];
    let state = comp["state"].as_str().unwrap_or("?");
    if state == "failed" {
        let why = s["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str())
            .rfind(|e| e.contains(&format!("component {n} ")))
            .unwrap_or("no event recorded");
        return Err(format!("{disk}: component {n}: the resync failed: {why}"));
    }
    match state {
        "in_sync" => println!("{disk}: component {n} is in sync"),
        _ => println!(
            "{disk}: component {n} is back ({state}); the resync copies {} chunks in the \
             background: follow it with `keel mirror status {disk}`",
            chunks_to_copy(comp)
        ),
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_status_rows_line_up_and_end_in_a_newline() {
        let status = serde_json::json!({
            "components": [
                {"index": 0, "state": "in_sync", "last_lsn": 67584, "dirty_chunks": 0,
                 "resync": null, "resync_bytes_copied": 0, "path": "/d/a.img"},
                {"index": 1, "state": "resyncing", "last_lsn": 7, "dirty_chunks": 128,
                 "resync": {"total_chunks": 128, "done_chunks": 64},
                 "resync_bytes_copied": 8388608, "path": "/d/b.img"}
            ],
            "events": []
        });
        let out = mirror_table(&status).render();
        assert_eq!(
            out,
            "n  state      last LSN  dirty  resync  bytes copied  path\n\
             0  in_sync       67584      0       -             0  /d/a.img\n\
             1  resyncing         7    128   50.0%       8388608  /d/b.img\n"
        );
    }

    #[test]
    fn a_resync_that_failed_at_once_is_an_error() {
        let status = |state: &str| {
            serde_json::json!({
                "components": [{}, {"state": state, "dirty_chunks": 3, "resync": null}],
                "events": ["component 1 failed: resync write error: Invalid argument (os error 22)"]
            })
        };
        let e = resync_started("d0", 1, &status("failed")).unwrap_err();
        assert!(e.contains("os error 22"), "{e}");
        assert!(resync_started("d0", 1, &status("stale")).is_ok());
        assert_eq!(chunks_to_copy(&status("stale")["components"][1]), 3);
    }
}
