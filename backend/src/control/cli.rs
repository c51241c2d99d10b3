//! The `keel` commands that talk to a running keeld over its control socket.
//!
//! The daemon is found through `--control SOCKET`, else `KEEL_CONTROL`, else the
//! `[server] control_socket` of `--config FILE`.

pub use super::cli_mirror::mirror;
use super::client::{ClientError, ControlClient};
use super::output::{Align, Table, format_size, format_time, print_json};
use crate::config::{Config, check_disk_name, check_name};
use crate::store::diff::{DiffReport, ExtentKind};
use keel_protocol::control::{
    CloneAnswer, CloneDisk, CreateSnapshot, DiskInfo, DiskState, DiskStats, ResizeAnswer,
    ResizeDisk, RevertSnapshot, SnapshotInfo,
};
use std::path::PathBuf;

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

pub(super) fn api(e: ClientError) -> String {
    e.to_string()
}

pub(super) fn disk_path(disk: &str) -> String {
    format!("/v1/disks/{disk}")
}

/// The API path of a served disk, refusing a name no config can give a disk (it would
/// address another resource, or none).
pub(super) fn served_disk(disk: &str) -> Result<String, String> {
    check_disk_name(disk).map_err(|m| format!("no such disk: {m}"))?;
    Ok(disk_path(disk))
}

/// The API path of one of a disk's snapshots.
fn snapshot_path(disk: &str, name: &str) -> Result<String, String> {
    check_name("snapshot", name)?;
    Ok(format!("{}/snapshots/{name}", served_disk(disk)?))
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
    let mut notes = Vec::new();
    for d in disks {
        let space = d.space.as_ref().map_or("-".to_string(), |s| {
            format!("{} {:.0}%", s.state.as_str(), s.used_percent)
        });
        if let Some(note) = handover_note(&d) {
            notes.push(note);
        } else if let Some(e) = &d.error {
            notes.push(format!("{}: failed: {e}", d.name));
        } else if let (DiskState::Cloning, Some(p)) = (d.state, &d.clone) {
            notes.push(format!(
                "{}: cloning from {}, {} of {} copied",
                d.name,
                p.source,
                format_size(p.copied_bytes),
                format_size(p.total_bytes)
            ));
        }
        if let Some(i) = &d.import {
            notes.push(format!("{}: {}", d.name, import_line(i)));
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
    for line in notes {
        println!("{line}");
    }
    Ok(())
}

/// One line on a live import: `import copying 42% (1.0 GiB of 2.4 GiB, 180.0 MiB/s)`.
fn import_line(i: &keel_protocol::control::ImportReport) -> String {
    use keel_protocol::control::ImportState;
    let state = match i.state {
        ImportState::Copying => "copying",
        ImportState::Paused => "paused",
        ImportState::Done => "done",
    };
    let percent = if i.total_bytes == 0 {
        100.0
    } else {
        i.copied_bytes as f64 * 100.0 / i.total_bytes as f64
    };
    let mut line = format!(
        "import {state} {percent:.0}% ({} of {}",
        format_size(i.copied_bytes),
        format_size(i.total_bytes)
    );
    if i.rate_bytes_per_s > 0 {
        line += &format!(", {}/s", format_size(i.rate_bytes_per_s));
    }
    line.push(')');
    if let Some(e) = &i.error {
        line += &format!(": {e}");
    }
    line
}

/// The line `keel disks` prints under a handover disk that this keeld does not serve now.
fn handover_note(d: &DiskInfo) -> Option<String> {
    let what = match d.state {
        DiskState::Standby => {
            "standby: another keeld holds it; taken when the frontend starts its rings"
        }
        DiskState::Released => {
            "released to another keeld; taken back if the frontend restarts its rings"
        }
        _ => return None,
    };
    let why = d
        .error
        .as_ref()
        .map_or(String::new(), |e| format!(" (last take failed: {e})"));
    Some(format!("{}: {what}{why}", d.name))
}

pub fn stats(c: &ControlClient, disk: &str, json: bool) -> Result<(), String> {
    let s: DiskStats = c
        .get(&format!("{}/stats", served_disk(disk)?))
        .map_err(api)?;
    if json {
        return print_json(&s);
    }
    let bytes = |n: u64| format!("{} ({n} bytes)", format_size(n));
    let rows: [(&str, String); 17] = [
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
        ("throttled time", format!("{:.3} s", s.throttled_seconds)),
        ("throttled requests", s.throttled_requests.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<23} {v}");
    }
    if let (Some(logical), Some(stored)) = (s.data_bytes_logical, s.data_bytes_stored) {
        println!("{:<23} {}", "data mapped", bytes(logical));
        println!(
            "{:<23} {} (ratio {:.2})",
            "data stored",
            bytes(stored),
            s.compression_ratio.unwrap_or(1.0)
        );
    }
    if let Some(d) = s.dictionary_bytes {
        println!("{:<23} {}", "dictionary", bytes(d));
    }
    for line in s.space.iter().flat_map(super::space_text::space_lines) {
        println!("{line}");
    }
    if let Some(i) = &s.import {
        println!("{:<23} {}", "import", import_line(i));
    }
    if let Some(h) = &s.handover {
        println!("{:<23} {h}", "handover");
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
    let started = std::time::Instant::now();
    let a: CloneAnswer = c
        .post(
            &path,
            &CloneDisk {
                snapshot: snapshot.into(),
                new_disk: new_disk.into(),
            },
        )
        .map_err(api)?;
    // keeld copies in the background: follow the new disk until it is served or failed,
    // with a progress bar on a terminal.
    let bar = indicatif::ProgressBar::new(a.blocks * 4096)
        .with_message(format!("cloning {disk}@{snapshot} into {new_disk}"));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let info = loop {
        let info: DiskInfo = c.get(&served_disk(new_disk)?).map_err(api)?;
        if let Some(p) = &info.clone {
            bar.set_position(p.copied_bytes);
        }
        if info.state != DiskState::Cloning {
            break info;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    bar.finish_and_clear();
    if info.state == DiskState::Failed {
        return Err(format!(
            "clone of {disk}@{snapshot} into {new_disk} failed: {}",
            info.error.unwrap_or_default()
        ));
    }
    if json {
        return print_json(&CloneAnswer {
            state: info.state,
            ..a
        });
    }
    if a.state == DiskState::Serving {
        // Made at once by the storage (an RBD layered clone): nothing was copied.
        println!(
            "{} cloned from {disk}@{snapshot} into {} (copy-on-write), serving on {}; add it to \
             keeld's config to serve it after a restart",
            a.disk, a.path, a.socket
        );
        return Ok(());
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

/// `keel apply FILE DISK` on a served disk: keeld reads FILE (an absolute path is sent) and
/// replays it onto the disk.
pub fn apply(
    c: &ControlClient,
    disk: &str,
    file: &std::path::Path,
    force: bool,
    json: bool,
) -> Result<(), String> {
    let file = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let body = keel_protocol::control::ApplyDiff {
        file: file.display().to_string(),
        force,
    };
    let a: keel_protocol::control::ApplyAnswer = c
        .post(&format!("{}/apply", served_disk(disk)?), &body)
        .map_err(api)?;
    if json {
        return print_json(&a);
    }
    println!(
        "applied {} ({} to {}) onto {disk}: {} records, {} of data, {} zeroed{}",
        file.display(),
        a.from,
        a.to,
        a.records,
        format_size(a.data_bytes),
        format_size(a.zero_bytes),
        a.snapshot
            .map(|s| format!("; snapshot {s} taken"))
            .unwrap_or_default()
    );
    Ok(())
}
