//! `keel` commands that move data between files: import, export, diff --export, apply.
//! Each shows a progress bar on a terminal and ends with one summary line (or JSON) always.

use crate::args::GeometryArgs;
use crate::offline::open;
use indicatif::{ProgressBar, ProgressStyle};
use keel_backend::control::cli as online;
use keel_backend::control::output::{absolute, format_size as human, print_json};
use keel_backend::device::lock::{LockMode, lock_file};
use keel_backend::device::nbd::NbdAddress;
use keel_backend::import::copier::{self, Pace};
use keel_backend::import::{Import, Source, identity, layers};
use keel_backend::store::Store;
use keel_backend::store::diff_file::{self, ApplyTarget, Exporter, Header, Totals};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub const CHUNK: usize = 1 << 20;

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

/// What an import or export copied.
#[derive(Serialize)]
struct Copied {
    from: String,
    to: String,
    /// Bytes of the image.
    bytes: u64,
    /// Bytes that were all zeroes (left unallocated or as holes).
    zero_bytes: u64,
    /// Bytes of data an import read from its source (ranges it reports as zeroes are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    source_read_bytes: Option<u64>,
    elapsed_ms: u64,
}

impl Copied {
    fn print(&self, verb: &str, json: bool) -> Result<(), String> {
        if json {
            return print_json(self);
        }
        println!(
            "{verb} {} to {}: {} ({} of it zeroes) in {:.1} s",
            self.from,
            self.to,
            human(self.bytes),
            human(self.zero_bytes),
            self.elapsed_ms as f64 / 1000.0
        );
        Ok(())
    }
}

/// Copies a source (a raw image, any image `qemu-img` reads, an NBD URI) into a container with
/// the live import's own copier: holes stay holes, and an interrupted import resumes.
pub fn import(source: &str, path: &Path, geo: &GeometryArgs, json: bool) -> Result<(), String> {
    let started = Instant::now();
    let src = Source::open(source).map_err(|e| e.to_string())?;
    let src_len = src.len();
    // Before any container is made: a chain whose views clash is refused.
    let views = layers::views(source).map_err(|e| e.to_string())?;
    let identity = identity::source_identity(source).map_err(|e| e.to_string())?;
    let made = !path.exists();
    if made {
        let size = geo.size.unwrap_or(src_len.next_multiple_of(4096));
        let opts = geo.options(size)?;
        Store::create_path(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Views that become snapshots hold what each changed on top of the disk: the container
    // may grow (only as it needs to) to one copy of the disk per view.
    let growing =
        views.len() > 1 && (made || keel_backend::store::peek::importing(path).unwrap_or(false));
    let store = Arc::new(if growing {
        let one = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        super::offline::open_growing(path, one.saturating_mul(views.len() as u64))?
    } else {
        open(path)?
    });
    if src_len > store.capacity() {
        return Err(format!(
            "the image ({}, {src_len} bytes) is larger than the disk ({}, {} bytes)",
            human(src_len),
            human(store.capacity()),
            store.capacity()
        ));
    }
    if store.import_cursor().is_none() {
        let info = store.info();
        if info.mapped_bytes > 0 || !info.snapshots.is_empty() {
            return Err(format!(
                "{} holds data: import into a new container",
                path.display()
            ));
        }
        if views.len() > 1 {
            drop(src);
            return import_chain(source, &views, &store, path, started, json);
        }
        store
            .begin_import_from(src_len, identity)
            .map_err(|e| e.to_string())?;
    } else if store.import_source_bytes() != Some(src_len) {
        return Err(format!(
            "{source}: its size changed since the import into {} began",
            path.display()
        ));
    } else if store
        .import_source_id()
        .is_some_and(|began| identity != Some(began))
    {
        return Err(identity::changed(source));
    }
    // A live import that stages a chain's snapshots resumes doing so.
    let views = match store.staging_progress() {
        Some(_) => views,
        None => Vec::new(),
    };
    let import = Import::new(Arc::clone(&store), src, 0).with_views(views);
    let pb = progress(src_len, "import");
    let pace = Pace {
        yield_to_guest: false,
        rate: None,
    };
    let stop = AtomicBool::new(false);
    copier::run(&import, pace, &stop, &mut |done| pb.set_position(done))
        .map_err(|e| format!("importing {source}: {e}"))?;
    pb.finish_and_clear();
    let mapped = store.info().mapped_bytes;
    Copied {
        from: if NbdAddress::is_uri(source) {
            source.to_string()
        } else {
            absolute(Path::new(source))
        },
        to: absolute(path),
        bytes: src_len,
        zero_bytes: src_len.saturating_sub(mapped),
        source_read_bytes: Some(import.progress().source_read_bytes()),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
    .print("imported", json)
}

/// A backing chain and the top's internal snapshots, view by view: every view but the top's
/// current contents becomes a snapshot.
fn import_chain(
    source: &str,
    views: &[layers::View],
    store: &Store,
    path: &Path,
    started: Instant,
    json: bool,
) -> Result<(), String> {
    let pb = progress(0, "import");
    let made = layers::import_layers(store, views, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })
    .map_err(|e| format!("importing {source}: {e}"))?;
    pb.finish_and_clear();
    if !json {
        println!(
            "snapshots made from the image, oldest first: {}",
            made.join(", ")
        );
    }
    let bytes = store.capacity();
    Copied {
        from: absolute(Path::new(source)),
        to: absolute(path),
        bytes,
        zero_bytes: bytes.saturating_sub(store.info().mapped_bytes),
        source_read_bytes: None,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
    .print("imported", json)
}

pub fn export(path: &Path, raw: &Path, json: bool) -> Result<(), String> {
    let started = Instant::now();
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
    let mut zero_bytes = 0;
    while off < cap {
        let n = (cap - off).min(CHUNK as u64) as usize;
        store
            .read(off, &mut buf[..n])
            .map_err(|e| format!("reading at {off}: {e}"))?;
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], off)
                .map_err(|e| e.to_string())?;
        } else {
            zero_bytes += n as u64;
        }
        off += n as u64;
        pb.set_position(off);
    }
    out.sync_all().map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    Copied {
        from: absolute(path),
        to: absolute(raw),
        bytes: cap,
        zero_bytes,
        source_read_bytes: None,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
    .print("exported", json)
}

/// Writes an export file with `fill`, checks it by reading it back, and removes it on any
/// failure so no half-written backup is left behind.
pub fn write_export(
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

pub fn print_export(file: &Path, t: &Totals, json: bool) -> Result<(), String> {
    if json {
        return print_json(t);
    }
    println!(
        "wrote {}: {} records, {} of data, {} zeroed",
        absolute(file),
        t.records,
        human(t.data_bytes),
        human(t.zero_bytes)
    );
    Ok(())
}

/// `keel diff` on a container file.
pub fn diff_offline(
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

pub fn apply(file: &Path, target: &Path, json: bool) -> Result<(), String> {
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
        absolute(file),
        header.from,
        header.to,
        absolute(target),
        totals.records,
        human(totals.data_bytes),
        human(totals.zero_bytes)
    );
    Ok(())
}
