//! `keel` on a container file nobody has open: create, info, fsck, snapshots, resize.

use crate::args::GeometryArgs;
use keel_backend::config::KEEL_BLOCK;
use keel_backend::control::cli as online;
use keel_backend::control::output::{absolute, format_size as human, format_time, print_json};
use keel_backend::control::space_text;
use keel_backend::device::FileDevice;
use keel_backend::store::peek::{Peeked, peek};
use keel_backend::store::seal::{Key, KeySource};
use keel_backend::store::{CreateOptions, Store, StoreError, StoreOptions};
use serde::Serialize;
use std::path::Path;
use std::sync::OnceLock;

/// The key `--key-file` named, read once at start.
static KEY: OnceLock<Option<Key>> = OnceLock::new();

/// Reads the key `--key-file` names (if any) for every command that opens or makes a
/// container.
pub fn load_key(source: Option<&str>) -> Result<(), String> {
    let key = match source {
        Some(s) => Some(
            KeySource::parse(s)
                .and_then(|src| src.load())
                .map_err(|e| format!("--key-file: {e}"))?,
        ),
        None => None,
    };
    KEY.set(key)
        .map_err(|_| "the key was read twice".to_string())
}

fn key() -> Option<Key> {
    KEY.get().cloned().flatten()
}

/// The options every offline command opens a container with: the defaults and the key.
pub fn store_options() -> StoreOptions {
    StoreOptions {
        key: key(),
        ..StoreOptions::default()
    }
}

/// Opens a container, saying plainly when the file is none or keeld has it.
pub fn open(path: &Path) -> Result<Store, String> {
    must_be_container(path)?;
    Store::open_path(path, store_options()).map_err(|e| open_error(path, e))
}

/// [`open`], letting the container file grow up to `max_bytes` as it fills (an import whose
/// views become snapshots may need more than the disk's size).
pub fn open_growing(path: &Path, max_bytes: u64) -> Result<Store, String> {
    must_be_container(path)?;
    let mut opts = store_options();
    opts.space.max_container_bytes = Some(max_bytes);
    Store::open_path(path, opts).map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, e: StoreError) -> String {
    match e {
        StoreError::InUse(holder) => {
            format!("{holder} (`keel info -U` reads a container in use without its lock)")
        }
        e => format!("{}: {e}", path.display()),
    }
}

/// Opens `path` read-only without taking its lock, for a look at a container in use. A read
/// that met a checkpoint being written is retried.
fn open_shared(path: &Path) -> Result<Store, String> {
    must_be_container(path)?;
    let mut last = String::new();
    for _ in 0..3 {
        let opened = FileDevice::open(path, true, true)
            .or_else(|_| FileDevice::open(path, true, false))
            .map_err(StoreError::from)
            .and_then(|dev| {
                let opts = StoreOptions {
                    read_only: true,
                    ..store_options()
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

/// Refuses a file without a Keel superblock before the store calls it corrupt.
fn must_be_container(path: &Path) -> Result<(), String> {
    match peek(path).map_err(|e| format!("{}: {e}", path.display()))? {
        Peeked::NotAContainer => Err(format!(
            "{} is not a Keel container (no Keel superblock at byte 0 or 4096); a raw image is \
             copied into one with `keel import`",
            path.display()
        )),
        Peeked::Container { .. } | Peeked::Damaged => Ok(()),
    }
}

impl GeometryArgs {
    /// The options for a container of a `size`-byte disk, refusing sizes the store would round.
    pub fn options(&self, size: u64) -> Result<CreateOptions, String> {
        if size == 0 || !size.is_multiple_of(KEEL_BLOCK) {
            return Err(format!(
                "--size {size}: a keel disk's size is a positive multiple of 4K (4096 bytes)"
            ));
        }
        let encryption = match (&self.encryption, key()) {
            (Some(_), Some(k)) => Some(k),
            (Some(c), None) => return Err(format!("--encryption {c} needs --key-file")),
            (None, Some(_)) => {
                return Err(
                    "--key-file names the key of an encrypted container; to make one, add \
                     --encryption aes-xts-256"
                        .into(),
                );
            }
            (None, None) => None,
        };
        Ok(CreateOptions {
            capacity: size,
            segment_bytes: self.segment_size,
            journal_bytes: self.journal_size,
            overprovision_percent: self.spare.percent_of(size)?,
            encryption,
            compression: keel_backend::store::compress::Codec::parse(&self.compression)?,
        })
    }
}

/// What `keel create` made.
#[derive(Serialize)]
struct Created {
    path: String,
    size: u64,
    container_bytes: u64,
    segments: u64,
    segment_bytes: u64,
    spare_percent: u64,
}

pub fn create(path: &Path, geometry: &GeometryArgs, json: bool) -> Result<(), String> {
    let size = geometry.size.ok_or("--size is required")?;
    let opts = geometry.options(size)?;
    if path.exists() {
        return Err(format!(
            "{} exists: keel create never overwrites a file; choose another path",
            path.display()
        ));
    }
    let g = Store::create_path(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    let made = Created {
        path: absolute(path),
        size: g.capacity,
        container_bytes: g.container_bytes(),
        segments: g.segments,
        segment_bytes: g.seg_blocks * 4096,
        spare_percent: keel_backend::store::spare::spare_percent(&g),
    };
    if json {
        return print_json(&made);
    }
    println!(
        "created {}: {} disk in a {} container ({} segments of {}, {}% spare)",
        made.path,
        human(made.size),
        human(made.container_bytes),
        made.segments,
        human(made.segment_bytes),
        made.spare_percent
    );
    Ok(())
}

pub fn info(path: &Path, json: bool, force_share: bool) -> Result<(), String> {
    let mut i = if force_share {
        open_shared(path)?.info()
    } else {
        open(path)?.info()
    };
    i.space.stale = force_share;
    if json {
        return print_json(&i);
    }
    println!("container        {}", absolute(path));
    println!(
        "disk size        {} ({} bytes)",
        human(i.capacity),
        i.capacity
    );
    println!("container size   {}", human(i.container_bytes));
    println!("encryption       {}", i.encryption.unwrap_or("none"));
    println!("compression      {}", i.compression);
    println!("mapped           {}", human(i.mapped_bytes));
    if i.compression != "none" {
        println!(
            "stored           {} (ratio {:.2})",
            human(i.data_bytes_stored),
            i.compression_ratio
        );
    }
    if let Some(d) = i.dictionary_bytes {
        println!("dictionary       {}", human(d));
    }
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
        println!(
            "  {:>4}  {}  created {}",
            s.seq,
            s.name,
            format_time(s.created)
        );
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

/// `keel fsck`: exit status 1 when the container has problems.
pub fn fsck(path: &Path, json: bool) -> Result<bool, String> {
    must_be_container(path)?;
    let r = match Store::open_path(path, store_options()) {
        Ok(store) => store.fsck(),
        // Damage found while opening is fsck's finding, not a failure to run.
        Err(e @ StoreError::Corrupt { .. }) => keel_backend::store::FsckReport {
            problems: vec![e.to_string()],
            ..Default::default()
        },
        Err(e) => return Err(open_error(path, e)),
    };
    if json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
        println!(
            "{}: {} trees ({} tree nodes walked, {} shared ones met again), {} mapped blocks, {} VBAs, {} nodes and {} data blocks verified, {} problems",
            absolute(path),
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
    Ok(r.is_clean())
}

/// What an offline resize did.
#[derive(Serialize)]
struct Grown {
    path: String,
    old_size: u64,
    size: u64,
    container_bytes: u64,
    spare_percent: u64,
}

pub fn resize(path: &Path, size: u64, json: bool) -> Result<(), String> {
    must_be_container(path)?;
    // A container file grows with its disk, keeping its spare percentage (a block device
    // cannot: its disk grows into the spare it has).
    let max_container_bytes = match (peek(path), std::fs::metadata(path)) {
        (Ok(Peeked::Container { capacity }), Ok(m)) if m.is_file() => Some(
            m.len()
                .saturating_mul(size.div_ceil(capacity.max(1)).saturating_add(1)),
        ),
        _ => None,
    };
    let opts = StoreOptions {
        space: keel_backend::store::SpaceOptions {
            max_container_bytes,
            ..Default::default()
        },
        ..store_options()
    };
    let store = Store::open_path(path, opts).map_err(|e| open_error(path, e))?;
    let old = store.capacity();
    let new = store.grow(size).map_err(|e| e.to_string())?;
    let g = Grown {
        path: absolute(path),
        old_size: old,
        size: new,
        container_bytes: store.geometry().container_bytes(),
        spare_percent: store.spare_percent(),
    };
    drop(store);
    if json {
        return print_json(&g);
    }
    println!(
        "{}: disk grown from {} to {} ({} bytes), {}% spare, container {}; keeld serves the \
         new size on its next start",
        g.path,
        human(old),
        human(new),
        new,
        g.spare_percent,
        human(g.container_bytes)
    );
    Ok(())
}

/// A snapshot named by its name, or by its seq number when the argument is a number.
fn snapshot_id(store: &Store, name: &str) -> Result<u64, String> {
    let list = store.list_snapshots();
    list.iter()
        .find(|s| s.name == name)
        .or_else(|| {
            name.parse::<u64>()
                .ok()
                .and_then(|id| list.iter().find(|s| s.seq == id))
        })
        .map(|s| s.seq)
        .ok_or_else(|| format!("no snapshot {name:?}"))
}

pub fn snapshot_create(path: &Path, name: &str, json: bool) -> Result<(), String> {
    keel_backend::config::check_name("snapshot", name)?;
    let store = open(path)?;
    let id = store.create_snapshot(name).map_err(|e| e.to_string())?;
    let info = store
        .list_snapshots()
        .into_iter()
        .find(|s| s.seq == id)
        .ok_or_else(|| format!("snapshot {name} vanished"))?;
    online::print_snapshot_created(&path.display().to_string(), &info, json)
}

pub fn snapshot_list(path: &Path, json: bool) -> Result<(), String> {
    online::print_snapshots(&open(path)?.list_snapshots(), json)
}

pub fn snapshot_delete(path: &Path, name: &str) -> Result<(), String> {
    let store = open(path)?;
    let id = snapshot_id(&store, name)?;
    // No cleaner runs offline: give the blocks back before the container closes.
    store
        .delete_snapshot(id)
        .and_then(|()| store.reclaim_all())
        .and_then(|()| store.flush())
        .map_err(|e| e.to_string())?;
    println!("snapshot {name} of {} deleted", path.display());
    Ok(())
}

pub fn snapshot_revert(path: &Path, name: &str) -> Result<(), String> {
    let store = open(path)?;
    let id = snapshot_id(&store, name)?;
    store.revert_to_snapshot(id).map_err(|e| e.to_string())?;
    println!("{} reverted to snapshot {name}", path.display());
    Ok(())
}

/// What `keel recover` did.
#[derive(Serialize)]
struct Recovered {
    path: String,
    #[serde(flatten)]
    report: keel_backend::store::RecoveryReport,
}

/// `keel recover`: opens the container (replaying its journal) and checkpoints it. With
/// `rewind`, a container refused for damage opens at its last intact state; what it discarded
/// is printed.
pub fn recover(path: &Path, rewind: bool, json: bool) -> Result<(), String> {
    let opts = StoreOptions {
        rewind,
        ..store_options()
    };
    must_be_container(path)?;
    let store = Store::open_path(path, opts).map_err(|e| open_error(path, e))?;
    store
        .checkpoint()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let r = Recovered {
        path: absolute(path),
        report: store.recovery_report().clone(),
    };
    if json {
        return print_json(&r);
    }
    let rep = &r.report;
    println!(
        "{}: {} journal records replayed ({}), {} intact records past them discarded; checkpoint written",
        r.path, rep.records_replayed, rep.stopped_because, rep.discarded_records
    );
    if let Some(why) = &rep.rewound {
        println!("rewound past damage, discarded: {why}");
    }
    Ok(())
}
