//! The `keel` commands that talk to a running keeld over its control socket.
//!
//! The daemon is found through `--control SOCKET`, else `KEEL_CONTROL`, else the
//! `[server] control_socket` of `--config FILE`.

use super::client::{ClientError, ControlClient};
use super::output::{Align, Table, format_size, format_time, print_json};
use crate::config::{Config, check_disk_name, check_name};
use crate::store::diff::{DiffReport, ExtentKind};
use keel_protocol::control::{
    CloneAnswer, CloneDisk, CreateSnapshot, DiskInfo, DiskStats, MirrorOpBody, ResizeAnswer,
    ResizeDisk, RevertSnapshot, SnapshotInfo,
};
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
        /// A mirrored disk keeld serves.
        disk: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take component N out (its writes are tracked for a later resync).
    Offline {
        /// A mirrored disk keeld serves.
        disk: String,
        /// The component's number (its place in the config's `mirror` list, from 0).
        n: usize,
    },
    /// Bring component N back: resync copies only what changed meanwhile.
    Online {
        /// A mirrored disk keeld serves.
        disk: String,
        /// The component's number (its place in the config's `mirror` list, from 0).
        n: usize,
    },
    /// Take component N down for service; a delta component takes its writes.
    Maintenance {
        /// A mirrored disk keeld serves.
        disk: String,
        /// The component's number (its place in the config's `mirror` list, from 0).
        n: usize,
        /// Where the delta component lives (default: beside the component).
        #[arg(long)]
        delta: Option<PathBuf>,
    },
    /// Replace component N by a full copy at PATH. keeld's config is not changed: name PATH
    /// in its `mirror` list before the next start.
    Replace {
        /// A mirrored disk keeld serves.
        disk: String,
        /// The component's number (its place in the config's `mirror` list, from 0).
        n: usize,
        /// Where the new component goes (opened, or created if missing).
        path: PathBuf,
    },
}

fn api(e: ClientError) -> String {
    e.to_string()
}

fn disk_path(disk: &str) -> String {
    format!("/v1/disks/{disk}")
}

/// The API path of a served disk, refusing a name no config can give a disk (it would
/// address another resource, or none).
fn served_disk(disk: &str) -> Result<String, String> {
    check_disk_name(disk).map_err(|m| format!("no such disk: {m}"))?;
    Ok(disk_path(disk))
}

/// The API path of one of a disk's snapshots.
fn snapshot_path(disk: &str, name: &str) -> Result<String, String> {
    check_name("snapshot", name)?;
    Ok(format!("{}/snapshots/{name}", served_disk(disk)?))
}

/// A store's snapshot as the API describes it, so offline and online output are one.
pub fn snapshot_info(s: crate::store::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        seq: s.id,
        created: s.created,
        owned_blocks: None,
        pause_us: None,
    }
}

pub fn list_disks(c: &ControlClient, json: bool) -> Result<(), String> {
    let disks: Vec<DiskInfo> = c.get("/v1/disks").map_err(api)?;
    if json {
        return print_json(&disks);
    }
    let mut t = Table::new(&[
        ("disk", Align::Left),
        ("engine", Align::Left),
        ("size", Align::Right),
        ("queues", Align::Right),
        ("attached", Align::Left),
        ("space", Align::Left),
        ("socket", Align::Left),
    ]);
    let mut failed = Vec::new();
    for d in disks {
        let space = d.space.as_ref().map_or("-".to_string(), |s| {
            format!("{} {:.0}%", s.state.as_str(), s.used_percent)
        });
        if let Some(e) = &d.error {
            failed.push(format!("{}: failed: {e}", d.name));
        }
        t.row([
            d.name,
            d.engine,
            format_size(d.size),
            d.queues.to_string(),
            if d.connected { "yes" } else { "no" }.into(),
            space,
            d.socket,
        ]);
    }
    t.print();
    for line in failed {
        println!("{line}");
    }
    Ok(())
}

pub fn stats(c: &ControlClient, disk: &str, json: bool) -> Result<(), String> {
    let s: DiskStats = c
        .get(&format!("{}/stats", served_disk(disk)?))
        .map_err(api)?;
    if json {
        return print_json(&s);
    }
    let bytes = |n: u64| format!("{} ({n} bytes)", format_size(n));
    let rows: [(&str, String); 15] = [
        ("reads", s.reads.to_string()),
        ("writes", s.writes.to_string()),
        ("flushes", s.flushes.to_string()),
        ("discards", s.discards.to_string()),
        ("write zeroes", s.write_zeroes.to_string()),
        ("bytes read", bytes(s.read_bytes)),
        ("bytes written", bytes(s.written_bytes)),
        ("I/O errors", s.errors.to_string()),
        ("refused requests", s.invalid_requests.to_string()),
        ("batches", s.batches.to_string()),
        ("metadata transactions", s.metadata_transactions.to_string()),
        ("device bytes written", bytes(s.device_bytes_written)),
        ("checksum errors", s.checksum_errors.to_string()),
        (
            "snapshots being deleted",
            s.snapshots_being_deleted.to_string(),
        ),
        ("get-id", s.get_ids.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<23} {v}");
    }
    for line in s.space.iter().flat_map(super::space_text::space_lines) {
        println!("{line}");
    }
    for line in s
        .cleaning
        .iter()
        .flat_map(super::cleaning_text::cleaning_lines)
    {
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
        .get(&format!("{}/snapshots", served_disk(disk)?))
        .map_err(api)?;
    print_snapshots(&l, json)
}

/// Snapshots as a table (seq, name, creation time) or as JSON; the same offline and online.
pub fn print_snapshots(l: &[SnapshotInfo], json: bool) -> Result<(), String> {
    if json {
        return print_json(l);
    }
    let mut t = Table::new(&[
        ("seq", Align::Right),
        ("name", Align::Left),
        ("created (UTC)", Align::Left),
    ]);
    for s in l {
        t.row([s.seq.to_string(), s.name.clone(), format_time(s.created)]);
    }
    t.print();
    Ok(())
}

/// The answer to a snapshot create, offline and online alike.
pub fn print_snapshot_created(disk: &str, s: &SnapshotInfo, json: bool) -> Result<(), String> {
    if json {
        return print_json(s);
    }
    println!("snapshot {} of {disk} created (seq {})", s.name, s.seq);
    Ok(())
}

pub fn snapshot_create(
    c: &ControlClient,
    disk: &str,
    name: &str,
    json: bool,
) -> Result<(), String> {
    check_name("snapshot", name)?;
    let s: SnapshotInfo = c
        .post(
            &format!("{}/snapshots", served_disk(disk)?),
            &CreateSnapshot { name: name.into() },
        )
        .map_err(api)?;
    print_snapshot_created(disk, &s, json)
}

pub fn snapshot_delete(c: &ControlClient, disk: &str, name: &str) -> Result<(), String> {
    let _: serde_json::Value = c.delete(&snapshot_path(disk, name)?).map_err(api)?;
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
            &format!("{}/revert", snapshot_path(disk, name)?),
            &RevertSnapshot { force },
        )
        .map_err(api)?;
    println!("{disk} reverted to snapshot {name}");
    Ok(())
}

pub fn clone(
    c: &ControlClient,
    disk: &str,
    snapshot: &str,
    new_disk: &str,
    json: bool,
) -> Result<(), String> {
    check_disk_name(new_disk)?;
    let path = format!("{}/clone", served_disk(disk)?);
    // keeld answers when the copy is done: a spinner (on a terminal) says it is under way.
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message(format!("cloning {disk}@{snapshot} into {new_disk}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let started = std::time::Instant::now();
    let answer: Result<CloneAnswer, _> = c.post(
        &path,
        &CloneDisk {
            snapshot: snapshot.into(),
            new_disk: new_disk.into(),
        },
    );
    spinner.finish_and_clear();
    let a = answer.map_err(api)?;
    if json {
        return print_json(&a);
    }
    println!(
        "{} cloned from {disk}@{snapshot} ({} copied in {:.1} s) into {}, serving on {}; add it \
         to keeld's config to serve it after a restart",
        a.disk,
        format_size(a.blocks * 4096),
        started.elapsed().as_secs_f64(),
        a.path,
        a.socket
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
            println!(
                "keeld's config still names the old path of component {n}: put {} in its \
                 `mirror` list before the next start, or the old path comes back there (failed)",
                super::output::absolute(&path)
            );
            resync_started(&disk, n, &status(&disk)?)
        }
    }
}

/// The components of a `GET /v1/disks/{name}/mirror` answer as a table.
fn mirror_table(s: &serde_json::Value) -> Table {
    let mut t = Table::new(&[
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
pub fn resize(c: &ControlClient, disk: &str, size: u64, json: bool) -> Result<(), String> {
    let a: ResizeAnswer = c
        .post(
            &format!("{}/resize", served_disk(disk)?),
            &ResizeDisk { size },
        )
        .map_err(api)?;
    if json {
        return print_json(&a);
    }
    let told = if a.frontend_notified {
        "the attached frontend was told"
    } else {
        "no attached frontend to tell"
    };
    println!(
        "{disk} holds {} ({} bytes; {told}); keeld serves the grown image at this size after a \
         restart too, whatever `size` its config names (set size = {} to keep them in step)",
        format_size(a.size),
        a.size,
        a.size
    );
    Ok(())
}

/// Prints a diff as a table of extents and a summary line, or as JSON.
pub fn print_diff(r: &DiffReport, json: bool) -> Result<(), String> {
    if json {
        return print_json(r);
    }
    let mut t = Table::new(&[
        ("offset", Align::Right),
        ("length", Align::Right),
        ("kind", Align::Left),
    ]);
    for e in &r.extents {
        let kind = match e.kind {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
        };
        t.row([e.offset.to_string(), format_size(e.length), kind.into()]);
    }
    t.print();
    println!(
        "{} to {}: {} extents, {} of data, {} zeroed ({} tree nodes opened, {} shared subtrees skipped)",
        r.from,
        r.to,
        r.extents.len(),
        format_size(r.data_bytes),
        format_size(r.zero_bytes),
        r.nodes_opened,
        r.shared_skipped
    );
    Ok(())
}

fn diff_query(disk: &str, what: &str, from: &str, to: &str) -> Result<String, String> {
    let side = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'@' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    Ok(format!(
        "{}/{what}?from={}&to={}",
        served_disk(disk)?,
        side(from),
        side(to)
    ))
}

/// `keel diff DISK FROM [TO]` on a served disk.
pub fn diff(c: &ControlClient, disk: &str, from: &str, to: &str, json: bool) -> Result<(), String> {
    let r: DiffReport = c.get(&diff_query(disk, "diff", from, to)?).map_err(api)?;
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
    c.download(&diff_query(disk, "export", from, to)?, out)
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
