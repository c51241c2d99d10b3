//! `keel`: Keel's admin CLI. Works offline on a container nobody has open (it takes the
//! container's exclusive lock and says so when keeld holds it).

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_backend::store::{CreateOptions, Op, Store, StoreError, StoreOptions};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel", version, about = "Administer Keel disk containers")]
struct Cli {
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
    /// Snapshots of a container.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Freeze the current contents under a name.
    Create { path: PathBuf, name: String },
    /// List snapshots, oldest first.
    List {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot, freeing the blocks only it held.
    Delete { path: PathBuf, id: u64 },
    /// Make the disk's contents those of a snapshot again.
    Revert { path: PathBuf, id: u64 },
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
        StoreError::InUse => format!(
            "{} is in use: keeld or another keel has it open",
            path.display()
        ),
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

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn info(path: &Path, json: bool) -> Result<(), String> {
    let i = open(path)?.info();
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
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
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
        Cmd::Info { path, json } => info(&path, json)?,
        Cmd::Fsck { path, json } => {
            let r = open(&path)?.fsck();
            if json {
                print_json(&r)?;
            } else {
                for p in &r.problems {
                    println!("PROBLEM: {p}");
                }
                println!(
                    "{}: {} trees, {} mapped blocks, {} VBAs, {} nodes and {} data blocks verified, {} problems",
                    path.display(),
                    r.trees,
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
            SnapshotCmd::Create { path, name } => {
                let id = open(&path)?
                    .create_snapshot(&name)
                    .map_err(|e| e.to_string())?;
                println!("snapshot {id} created");
            }
            SnapshotCmd::List { path, json } => {
                let l = open(&path)?.list_snapshots();
                if json {
                    print_json(&l)?;
                } else {
                    for s in l {
                        println!("{:>4}  {}  created {}", s.id, s.name, s.created);
                    }
                }
            }
            SnapshotCmd::Delete { path, id } => open(&path)?
                .delete_snapshot(id)
                .map_err(|e| e.to_string())?,
            SnapshotCmd::Revert { path, id } => open(&path)?
                .revert_to_snapshot(id)
                .map_err(|e| e.to_string())?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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
