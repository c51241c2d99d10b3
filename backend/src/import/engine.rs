//! The keel engine of a disk with `import_from`: served at once, filled in the background.
//!
//! At start the container says where the import stands: not begun (a new or empty
//! container: it is marked as importing, from block 0), copying (resumed at its durable
//! cursor), or finished (the config's `import_from` is logged and ignored). While the copy
//! runs the disk's queues are [`ImportQueue`]s; once it is done, new queues are the keel
//! engine's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use keel_protocol::control::{ImportReport, SnapshotInfo};

use super::identity::{changed, source_identity};
use super::queue::ImportQueue;
use super::{Import, Source, copier, layers};
use crate::config::DiskConfig;
use crate::engine::keel::KeelEngine;
use crate::engine::sync_queue::SyncQueue;
use crate::engine::{
    AdminError, ByteRange, Capabilities, Engine, EngineAdmin, EngineCounters, EngineError, Extent,
    MirrorCommand, QueueEngine,
};
use crate::store::Store;
use crate::store::layout::BLOCK;

/// A keel engine whose container is being filled from a source.
pub struct ImportEngine {
    inner: Arc<dyn Engine>,
    import: Arc<Import>,
    stop: Arc<AtomicBool>,
    copier: Mutex<Option<JoinHandle<()>>>,
    from: String,
}

fn setup(disk: &DiskConfig, message: String) -> EngineError {
    EngineError::Setup {
        path: disk.path.clone().unwrap_or_default(),
        message,
    }
}

/// Opens the keel disk `disk` names, importing from `disk.import_from` if the container says
/// the import is not finished.
/// A chain (or internal snapshots) becomes snapshots, which hold what each view changed on
/// top of the disk itself: a container the size of the source may not hold them. Unless the
/// disk's `max_size` says otherwise, a container a live import makes or still fills may grow
/// (only as it needs to) to one copy of the disk per view.
fn allow_room_for_views(disk: &mut DiskConfig, from: &str, path: &std::path::Path) {
    if disk.space.max_size.is_some() {
        return;
    }
    let one = if path.exists() {
        if !crate::store::peek::importing(path).unwrap_or(false) {
            return;
        }
        std::fs::metadata(path).map_or(0, |m| m.len())
    } else {
        let size = disk.size.unwrap_or(0);
        crate::config::create_options(size, disk.space.spare)
            .geometry()
            .map_or(0, |g| g.container_bytes())
    };
    let views = match layers::views(from) {
        Ok(v) if v.len() > 1 => v.len() as u64,
        _ => return,
    };
    if one > 0 {
        disk.space.max_size = Some(one.saturating_mul(views));
        log::info!(
            "{}: {views} views of {from} become snapshots: the container may grow to {} bytes \
             (max_size unset)",
            disk.name,
            one.saturating_mul(views)
        );
    }
}

pub fn open_engine(disk: &DiskConfig) -> Result<Arc<dyn Engine>, EngineError> {
    let Some(from) = disk.import_from.clone() else {
        return Ok(Arc::new(KeelEngine::open(disk)?));
    };
    let path = disk.path.clone().unwrap_or_default();
    let mut source = None;
    let mut disk = disk.clone();
    if !path.exists() {
        // A new container is as large as the source (or `size`, if larger).
        let s = Source::open(&from).map_err(|e| setup(&disk, e.to_string()))?;
        let size = s.len().next_multiple_of(BLOCK);
        disk.size = Some(disk.size.unwrap_or(0).max(size));
        source = Some(s);
    }
    allow_room_for_views(&mut disk, &from, &path);
    let keel = KeelEngine::open(&disk)?;
    let store = keel
        .admin()
        .and_then(|a| a.store())
        .ok_or_else(|| setup(&disk, "the keel engine has no store".into()))?;
    if store.import_cursor().is_none() {
        if store.import_finished() {
            log::info!(
                "{}: the import from {from} finished earlier; import_from is ignored",
                disk.name
            );
            return Ok(Arc::new(keel));
        }
        if store.info().mapped_bytes > 0 {
            return Err(setup(
                &disk,
                format!(
                    "the container holds data and no import: refusing to import {from} over it \
                     (remove import_from, or give a new container path)"
                ),
            ));
        }
    }
    let source = match source {
        Some(s) => s,
        None => Source::open(&from).map_err(|e| setup(&disk, e.to_string()))?,
    };
    if source.len() > store.capacity() {
        return Err(setup(
            &disk,
            format!(
                "the source {from} holds {} bytes, more than the disk's {}",
                source.len(),
                store.capacity()
            ),
        ));
    }
    let identity = source_identity(&from).map_err(|e| setup(&disk, e.to_string()))?;
    let begins = store.import_source_bytes().is_none();
    // A chain or internal snapshots become snapshots: the views are staged apart.
    let views = if begins || store.staging_progress().is_some() {
        layers::views(&from).map_err(|e| setup(&disk, e.to_string()))?
    } else {
        Vec::new()
    };
    let views = if views.len() > 1 { views } else { Vec::new() };
    match store.import_source_bytes() {
        None => {
            let began = if views.is_empty() {
                store.begin_import_from(source.len(), identity)
            } else {
                store.begin_staged_import(source.len(), identity)
            };
            began.map_err(|e| setup(&disk, format!("starting the import: {e}")))?;
        }
        Some(began) if began != source.len() => {
            return Err(setup(
                &disk,
                format!(
                    "import source {from}: its size changed from {began} to {} bytes since the \
                     import began; put the original back to resume",
                    source.len()
                ),
            ));
        }
        Some(_) => {
            if store
                .import_source_id()
                .is_some_and(|began| identity != Some(began))
            {
                return Err(setup(&disk, changed(&from)));
            }
        }
    }
    let cursor = store.import_cursor().unwrap_or(0);
    log::info!(
        "{}: importing {from} ({}, {} bytes) from byte {}; reads of blocks not yet moved go to \
         the source",
        disk.name,
        source.format(),
        source.len(),
        cursor * BLOCK
    );
    let writers = usize::from(disk.queues.max(1));
    let import = Arc::new(Import::new(store, source, writers).with_views(views));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = copier::spawn(
        Arc::clone(&import),
        Arc::clone(&stop),
        disk.name.clone(),
        disk.import_rate,
    )
    .map_err(|e| setup(&disk, format!("starting the copy: {e}")))?;
    Ok(Arc::new(ImportEngine {
        inner: Arc::new(keel),
        import,
        stop,
        copier: Mutex::new(Some(handle)),
        from,
    }))
}

impl ImportEngine {
    fn copying(&self) -> bool {
        !self.import.progress.is_finished()
    }

    fn refuse_while_copying(&self, what: &str) -> Result<(), AdminError> {
        if self.copying() {
            return Err(AdminError::Conflict(format!(
                "{what} waits until the import from {} is done",
                self.from
            )));
        }
        Ok(())
    }
}

impl Drop for ImportEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.copier.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Engine for ImportEngine {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn describe(&self) -> String {
        format!("{}, importing from {}", self.inner.describe(), self.from)
    }

    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        if !self.copying() {
            return self.inner.queue(index);
        }
        Ok(Box::new(SyncQueue::new(ImportQueue::new(
            Arc::clone(&self.import),
            index,
        ))))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.inner.flush()
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }

    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        // Blocks still on the source are not in the map: nothing to tell until the end.
        if self.copying() {
            return None;
        }
        self.inner.allocation(range)
    }

    fn snapshot(&self, name: &str) -> Result<Arc<dyn Engine>, EngineError> {
        if self.copying() {
            return Err(EngineError::Refused(format!(
                "snapshots are served once the import from {} is done",
                self.from
            )));
        }
        self.inner.snapshot(name)
    }

    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        if self.copying() {
            return Err(EngineError::Refused(format!(
                "the disk grows once the import from {} is done",
                self.from
            )));
        }
        self.inner.grow(size)
    }

    fn import(&self) -> Option<ImportReport> {
        Some(self.import.progress.report())
    }
}

/// The keel engine's management calls; those that read or freeze the whole disk wait for the
/// end of the copy (until then the container lacks the blocks still on the source).
impl EngineAdmin for ImportEngine {
    fn counters(&self) -> EngineCounters {
        self.inner.admin().map(|a| a.counters()).unwrap_or_default()
    }

    fn failure(&self) -> Option<String> {
        self.inner.admin().and_then(|a| a.failure())
    }

    fn space(&self) -> Option<keel_protocol::control::SpaceReport> {
        self.inner.admin().and_then(|a| a.space())
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        self.keel()?.list_snapshots()
    }

    fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, AdminError> {
        self.refuse_while_copying("a snapshot")?;
        self.keel()?.create_snapshot(name)
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), AdminError> {
        // The snapshots a chain becomes are still being built, their blocks shared.
        self.refuse_while_copying("a snapshot delete")?;
        self.keel()?.delete_snapshot(name)
    }

    fn revert_snapshot(&self, name: &str) -> Result<(), AdminError> {
        self.refuse_while_copying("a revert")?;
        self.keel()?.revert_snapshot(name)
    }

    fn mirror_status(&self) -> Result<serde_json::Value, AdminError> {
        self.keel()?.mirror_status()
    }

    fn mirror_command(&self, component: usize, cmd: MirrorCommand) -> Result<(), AdminError> {
        self.keel()?.mirror_command(component, cmd)
    }

    fn store(&self) -> Option<Arc<Store>> {
        if self.copying() {
            return None;
        }
        self.inner.admin().and_then(|a| a.store())
    }
}

impl ImportEngine {
    fn keel(&self) -> Result<&dyn EngineAdmin, AdminError> {
        self.inner
            .admin()
            .ok_or_else(|| AdminError::Failed("the keel engine has no admin".into()))
    }
}
