//! `keel`: Keel's admin CLI. Works offline on a container nobody has open (it takes the
//! container's exclusive lock and says so when keeld holds it), and online on a running keeld
//! through its control socket (disks, stats, snapshots, mirrors).

use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_backend::control::cli::{self as online, DaemonArgs, MirrorCmd};
use keel_backend::control::space_text;
use keel_backend::device::FileDevice;
use keel_backend::device::lock::{LockMode, lock_file};
use keel_backend::store::diff::RUNNING;
use keel_backend::store::diff_file::{self, ApplyTarget, Exporter, Header, Totals};
use keel_backend::store::{CreateOptions, Op, Store, StoreError, StoreOptions};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel", version, about = "Administer Keel disk containers")]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty container.
    Create {
        path: PathBuf,
        #[command(flatten)]
        geometry: GeometryArgs,
    },
    /// Show size, space use, journal, checkpoint and snapshots.
    Info {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        /// Read a container another process (keeld) has open, without its lock and without
        /// writing: the figures are those on disk and may be slightly stale.
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Check every tree, the VBA map, the segment usage table and all checksums.
    Fsck {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy a raw image into a container (created with the image's size if missing).
    Import {
        raw: PathBuf,
        path: PathBuf,
        #[command(flatten)]
        geometry: GeometryArgs,
    },
    /// Copy a container's contents out to a raw image (sparse; must not exist).
    Export { path: PathBuf, raw: PathBuf },
    /// Snapshots: of a served disk (with a daemon named) or of a container file (without).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// The changed extents between two snapshots, or a snapshot and the disk as it is now;
    /// with --export, also their data, for incremental backup (`keel apply` restores it).
    Diff {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The older side: a snapshot name or id, or @empty (everything mapped: a full backup).
        from: String,
        /// The newer side: a snapshot name or id, or @running, the default (the disk now).
        to: Option<String>,
        #[arg(long)]
        json: bool,
        /// Write the changed extents with their data to FILE (it must not exist).
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// Replay an export file onto a raw image (created if missing) or a stopped keel container.
    Apply {
        file: PathBuf,
        target: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The disks a running keeld serves.
    Disks {
        #[arg(long)]
        json: bool,
    },
    /// A served disk's counters and latency.
    Stats {
        disk: String,
        #[arg(long)]
        json: bool,
    },
    /// Grow a disk to SIZE (e.g. 20G): a served disk (with a daemon named), else a stopped
    /// container, into the spare space it was created with. Shrinking is refused.
    Resize {
        target: String,
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Make a new served disk from a snapshot.
    Clone {
        disk: String,
        snapshot: String,
        new_disk: String,
    },
    /// Mirror components of a served disk.
    #[command(subcommand)]
    Mirror(MirrorCmd),
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Freeze the current contents under a name.
    Create { target: String, name: String },
    /// List snapshots, oldest first.
    List {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (by name, or by id offline), freeing the blocks only it held.
    Delete { target: String, name: String },
    /// Make the disk's contents those of a snapshot again.
    Revert {
        target: String,
        name: String,
        /// Revert a served disk even while a guest is attached (its view becomes stale).
        #[arg(long)]
        force: bool,
    },
}

/// A snapshot named by its name, or by its id when the argument is a number.
fn snapshot_id(store: &Store, name: &str) -> Result<u64, String> {
    let list = store.list_snapshots();
    list.iter()
        .find(|s| s.name == name)
        .or_else(|| {
            name.parse::<u64>()
                .ok()
                .and_then(|id| list.iter().find(|s| s.id == id))
        })
        .map(|s| s.id)
        .ok_or_else(|| format!("no snapshot {name:?}"))
}

#[derive(Args)]
struct GeometryArgs {
    /// Disk size as the guest sees it, e.g. 10G (import: defaults to the image's size).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Segment size, a power of two >= 64K.
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    segment_size: u64,
    /// Journal size (default: 1/64 of the disk, 2 to 16 segments).
    #[arg(long, value_parser = parse_size)]
    journal_size: Option<u64>,
    /// Spare data space for the cleaner, percent of the size.
    #[arg(long, default_value_t = 20)]
    overprovision: u64,
}

impl GeometryArgs {
    fn options(&self, size: u64) -> CreateOptions {
        CreateOptions {
            capacity: size,
            segment_bytes: self.segment_size,
            journal_bytes: self.journal_size,
            overprovision_percent: self.overprovision,
        }
    }
}

/// Parses sizes like `4096`, `512K`, `4M`, `10G`, `1T` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn open(path: &Path) -> Result<Store, String> {
    Store::open_path(path, StoreOptions::default()).map_err(|e| match e {
        StoreError::InUse(holder) => holder,
        e => format!("{}: {e}", path.display()),
    })
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

const CHUNK: usize = 1 << 20;

fn import(raw: &Path, path: &Path, geo: &GeometryArgs) -> Result<(), String> {
    let mut src = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let raw_len = src.metadata().map_err(|e| e.to_string())?.len();
    if !path.exists() {
        let opts = geo.options(geo.size.unwrap_or(raw_len));
        Store::create_path(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let store = open(path)?;
    if raw_len > store.capacity() {
        return Err(format!(
            "the image ({raw_len} bytes) is larger than the disk ({} bytes)",
            store.capacity()
        ));
    }
    let pb = progress(raw_len, "import");
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < raw_len {
        let n = (raw_len - off).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(|e| format!("{}: {e}", raw.display()))?;
        // Sector-align the image's tail with zeroes; all-zero chunks stay unallocated.
        let padded = n.div_ceil(512) * 512;
        buf[n..padded].fill(0);
        let op = if buf[..padded].iter().all(|b| *b == 0) {
            Op::WriteZeroes {
                offset: off,
                len: padded as u64,
            }
        } else {
            Op::Write {
                offset: off,
                data: &buf[..padded],
            }
        };
        store
            .write_batch(0, &[op])
            .map_err(|e| format!("writing at {off}: {e}"))?;
        off += n as u64;
        pb.set_position(off);
    }
    store.flush().map_err(|e| e.to_string())?;
    store.checkpoint().map_err(|e| e.to_string())?;
    pb.finish();
    Ok(())
}

fn export(path: &Path, raw: &Path) -> Result<(), String> {
    let store = open(path)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(raw)
        .map_err(|e| format!("{}: {e}", raw.display()))?;
    let cap = store.capacity();
    out.set_len(cap).map_err(|e| e.to_string())?;
    let pb = progress(cap, "export");
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < cap {
        let n = (cap - off).min(CHUNK as u64) as usize;
        store
            .read(off, &mut buf[..n])
            .map_err(|e| format!("reading at {off}: {e}"))?;
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], off)
                .map_err(|e| e.to_string())?;
        }
        off += n as u64;
        pb.set_position(off);
    }
    out.sync_all().map_err(|e| e.to_string())?;
    pb.finish();
    Ok(())
}

/// Writes an export file with `fill`, checks it by reading it back, and removes it on any
/// failure so no half-written backup is left behind.
fn write_export(
    file: &Path,
    fill: &mut dyn FnMut(&mut File) -> Result<(), String>,
) -> Result<Totals, String> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let result = fill(&mut out)
        .and_then(|_| out.sync_all().map_err(|e| e.to_string()))
        .and_then(|_| {
            let f = File::open(file).map_err(|e| e.to_string())?;
            diff_file::verify(std::io::BufReader::new(f))
                .map(|(_, t)| t)
                .map_err(|e| format!("the export does not read back: {e}"))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    result.map_err(|e| format!("{}: {e}", file.display()))
}

fn print_export(file: &Path, t: &Totals, json: bool) -> Result<(), String> {
    if json {
        return print_json(t);
    }
    println!(
        "wrote {}: {} records, {} of data, {} zeroed",
        file.display(),
        t.records,
        human(t.data_bytes),
        human(t.zero_bytes)
    );
    Ok(())
}

/// `keel diff` on a container file.
fn diff_offline(
    path: &Path,
    from: &str,
    to: &str,
    json: bool,
    export: Option<&Path>,
) -> Result<(), String> {
    let store = open(path)?;
    let side = |n: &str| store.tree_ref(n).map_err(|e| e.to_string());
    let d = store
        .diff(side(from)?, side(to)?)
        .map_err(|e| e.to_string())?;
    let Some(file) = export else {
        return online::print_diff(&d.report(from, to, store.capacity()), json);
    };
    let header = Header {
        disk_size: store.capacity(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
        from: from.to_string(),
        to: to.to_string(),
    };
    let mut ex = Some(Exporter::new(&store, &header, d));
    let t = write_export(file, &mut |out| {
        let mut w = std::io::BufWriter::with_capacity(CHUNK, out);
        if let Some(mut ex) = ex.take() {
            std::io::copy(&mut ex, &mut w).map_err(|e| e.to_string())?;
        }
        w.flush().map_err(|e| e.to_string())
    })?;
    print_export(file, &t, json)
}

/// A raw image (file or block device) as the target of `keel apply`.
struct RawTarget {
    file: File,
    size: u64,
}

impl ApplyTarget for RawTarget {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> keel_backend::store::Result<()> {
        Ok(self.file.write_all_at(data, offset)?)
    }

    fn zero(&mut self, offset: u64, len: u64) -> keel_backend::store::Result<()> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.file`.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // Block devices and some filesystems cannot punch holes: write the zeroes.
        let zeroes = vec![0u8; CHUNK];
        let mut off = offset;
        while off < offset + len {
            let n = (offset + len - off).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeroes[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    fn finish(&mut self) -> keel_backend::store::Result<()> {
        Ok(self.file.sync_all()?)
    }
}

/// True when `path` starts with a keel superblock (either copy).
fn is_container(path: &Path) -> Result<bool, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut b = vec![0u8; 8192];
    let n = f.read_at(&mut b, 0).map_err(|e| e.to_string())?;
    Ok(diff_file::is_container_start(&b[..n]))
}

fn apply(file: &Path, target: &Path, json: bool) -> Result<(), String> {
    let reader = || -> Result<std::io::BufReader<File>, String> {
        File::open(file)
            .map(|f| std::io::BufReader::with_capacity(CHUNK, f))
            .map_err(|e| format!("{}: {e}", file.display()))
    };
    // The whole file is checked before anything is written.
    let (header, _) =
        diff_file::verify(reader()?).map_err(|e| format!("{}: {e}", file.display()))?;
    let totals = if target.exists() && is_container(target)? {
        let mut store = open(target)?;
        diff_file::apply(reader()?, &mut store)
    } else {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
        // The image may be one keeld or QEMU serves: take its lock as they do.
        lock_file(&f, LockMode::Exclusive).map_err(|e| format!("{}: {e}", target.display()))?;
        let mut end = &f;
        let mut size =
            std::io::Seek::seek(&mut end, std::io::SeekFrom::End(0)).map_err(|e| e.to_string())?;
        if size == 0 && f.metadata().is_ok_and(|m| m.is_file()) {
            f.set_len(header.disk_size).map_err(|e| e.to_string())?;
            size = header.disk_size;
        }
        diff_file::apply(reader()?, &mut RawTarget { file: f, size })
    }
    .map_err(|e| format!("{}: {e}", target.display()))?;
    if json {
        return print_json(&totals);
    }
    println!(
        "applied {} ({} to {}) onto {}: {} records, {} of data, {} zeroed",
        file.display(),
        header.from,
        header.to,
        target.display(),
        totals.records,
        human(totals.data_bytes),
        human(totals.zero_bytes)
    );
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Opens `path` read-only without taking its lock, for a look at a container in use. A read
/// that met a checkpoint being written is retried.
fn open_shared(path: &Path) -> Result<Store, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let opened = FileDevice::open(path, true, true)
            .or_else(|_| FileDevice::open(path, true, false))
            .map_err(StoreError::from)
            .and_then(|dev| {
                let opts = StoreOptions {
                    read_only: true,
                    ..StoreOptions::default()
                };
                Store::open(std::sync::Arc::new(dev), opts)
            });
        match opened {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Err(last)
}

fn info(path: &Path, json: bool, force_share: bool) -> Result<(), String> {
    let mut i = if force_share {
        open_shared(path)?.info()
    } else {
        open(path)?.info()
    };
    i.space.stale = force_share;
    if json {
        return print_json(&i);
    }
    println!("container        {}", path.display());
    println!(
        "disk size        {} ({} bytes)",
        human(i.capacity),
        i.capacity
    );
    println!("container size   {}", human(i.container_bytes));
    println!("mapped           {}", human(i.mapped_bytes));
    println!(
        "data in use      {} (incl. snapshots)",
        human(i.used_data_bytes)
    );
    println!(
        "segments         {} x {}: {} free, {} awaiting checkpoint, {} reserved",
        i.data_segments,
        human(i.segment_bytes),
        i.free_segments,
        i.pending_segments,
        i.reserved_segments
    );
    println!(
        "journal          {} of {} in use, next lsn {}",
        human(i.journal_used_bytes),
        human(i.journal_bytes),
        i.next_lsn
    );
    println!(
        "checkpoint       generation {}",
        i.recovery.superblock_generation
    );
    println!(
        "recovery         {} records replayed in {} us ({})",
        i.recovery.records_replayed, i.recovery.elapsed_micros, i.recovery.stopped_because
    );
    if let Some(o) = &i.recovery.other_superblock {
        println!("warning          {o}");
    }
    println!("snapshots        {}", i.snapshots.len());
    for s in &i.snapshots {
        println!("  {:>4}  {}  created {}", s.id, s.name, s.created);
    }
    if i.deleting_snapshots > 0 {
        println!(
            "being deleted    {} (blocks given back when keeld next serves the disk)",
            i.deleting_snapshots
        );
    }
    for line in space_text::space_lines(&i.space) {
        println!("{line}");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let daemon = cli.daemon;
    match cli.cmd {
        Cmd::Disks { json } => online::list_disks(&daemon.client()?, json)?,
        Cmd::Stats { disk, json } => online::stats(&daemon.client()?, &disk, json)?,
        Cmd::Clone {
            disk,
            snapshot,
            new_disk,
        } => online::clone(&daemon.client()?, &disk, &snapshot, &new_disk)?,
        Cmd::Mirror(m) => online::mirror(&daemon.client()?, m)?,
        Cmd::Resize { target, size } => {
            if daemon.socket()?.is_some() && !Path::new(&target).exists() {
                online::resize(&daemon.client()?, &target, size)?
            } else {
                let store = open(Path::new(&target))?;
                let old = store.capacity();
                let new = store.grow_in_place(size).map_err(|e| e.to_string())?;
                println!("{target}: disk grown from {old} to {new} bytes");
            }
        }
        Cmd::Diff {
            target,
            from,
            to,
            json,
            export,
        } => {
            let to = to.unwrap_or_else(|| RUNNING.to_string());
            if daemon.socket()?.is_some() && !Path::new(&target).exists() {
                let c = daemon.client()?;
                match export {
                    None => online::diff(&c, &target, &from, &to, json)?,
                    Some(file) => {
                        let t = write_export(&file, &mut |out| {
                            let mut w = std::io::BufWriter::with_capacity(CHUNK, out);
                            online::diff_export(&c, &target, &from, &to, &mut w)?;
                            w.flush().map_err(|e| e.to_string())
                        })?;
                        print_export(&file, &t, json)?;
                    }
                }
            } else {
                diff_offline(Path::new(&target), &from, &to, json, export.as_deref())?;
            }
        }
        Cmd::Apply { file, target, json } => apply(&file, &target, json)?,
        Cmd::Snapshot(s) if daemon.socket()?.is_some() => {
            let c = daemon.client()?;
            match s {
                SnapshotCmd::Create { target, name } => {
                    online::snapshot_create(&c, &target, &name)?
                }
                SnapshotCmd::List { target, json } => online::snapshot_list(&c, &target, json)?,
                SnapshotCmd::Delete { target, name } => {
                    online::snapshot_delete(&c, &target, &name)?
                }
                SnapshotCmd::Revert {
                    target,
                    name,
                    force,
                } => online::snapshot_revert(&c, &target, &name, force)?,
            }
        }
        Cmd::Create { path, geometry } => {
            let size = geometry.size.ok_or("--size is required")?;
            let g = Store::create_path(&path, &geometry.options(size))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "created {}: {} disk in a {} container ({} segments of {})",
                path.display(),
                human(g.capacity),
                human(g.container_bytes()),
                g.segments,
                human(g.seg_blocks * 4096)
            );
        }
        Cmd::Info {
            path,
            json,
            force_share,
        } => info(&path, json, force_share)?,
        Cmd::Fsck { path, json } => {
            let r = open(&path)?.fsck();
            if json {
                print_json(&r)?;
            } else {
                for p in &r.problems {
                    println!("PROBLEM: {p}");
                }
                println!(
                    "{}: {} trees ({} tree nodes walked, {} shared ones met again), {} mapped blocks, {} VBAs, {} nodes and {} data blocks verified, {} problems",
                    path.display(),
                    r.trees,
                    r.tree_nodes_walked,
                    r.shared_nodes_skipped,
                    r.lba_entries,
                    r.vbas,
                    r.nodes_verified,
                    r.data_blocks_verified,
                    r.problems.len()
                );
            }
            if !r.is_clean() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Import {
            raw,
            path,
            geometry,
        } => import(&raw, &path, &geometry)?,
        Cmd::Export { path, raw } => export(&path, &raw)?,
        Cmd::Snapshot(s) => match s {
            SnapshotCmd::Create { target, name } => {
                let id = open(Path::new(&target))?
                    .create_snapshot(&name)
                    .map_err(|e| e.to_string())?;
                println!("snapshot {id} created");
            }
            SnapshotCmd::List { target, json } => {
                let l = open(Path::new(&target))?.list_snapshots();
                if json {
                    print_json(&l)?;
                } else {
                    for s in l {
                        println!("{:>4}  {}  created {}", s.id, s.name, s.created);
                    }
                }
            }
            SnapshotCmd::Delete { target, name } => {
                let store = open(Path::new(&target))?;
                let id = snapshot_id(&store, &name)?;
                // No cleaner runs offline: give the blocks back before the container closes.
                store
                    .delete_snapshot(id)
                    .and_then(|()| store.reclaim_all())
                    .and_then(|()| store.flush())
                    .map_err(|e| e.to_string())?
            }
            SnapshotCmd::Revert { target, name, .. } => {
                let store = open(Path::new(&target))?;
                let id = snapshot_id(&store, &name)?;
                store.revert_to_snapshot(id).map_err(|e| e.to_string())?
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    if let Some(code) = keel_backend::cli_docs::generate_if_asked(&argv, Cli::command) {
        return code;
    }
    match run(Cli::parse_from(argv)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
