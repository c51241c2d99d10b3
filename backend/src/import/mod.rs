//! Live import: a keel disk served at once from another image while a background copy moves
//! the image into the container (docs/import.md).
//!
//! - [`source`]: the image, read directly (raw) or through `qemu-nbd` (any format, backing
//!   chains flattened), or an NBD export;
//! - [`copier`]: the background copy, which writes only blocks the disk still lacks and moves
//!   the store's durable import cursor;
//! - [`holes`]: which blocks of a source read as zeroes, neither read nor copied;
//! - [`identity`]: the source's files, recorded when an import begins and checked when it
//!   resumes;
//! - [`queue`]: the disk's queues while the copy runs: blocks not yet moved are read from the
//!   source, and the guest's writes never let a later read fall back to it;
//! - [`layers`]: offline, a backing chain imported layer by layer, each layer below the top a
//!   snapshot;
//! - [`staging`]: live, a chain whose layers and internal snapshots become snapshots, built in
//!   the store's staging tree apart from the running point;
//! - [`engine`]: the keel engine wrapped with the two above, and how a disk's import starts,
//!   resumes or is found finished.

pub mod copier;
pub mod engine;
mod holes;
pub mod identity;
pub mod layers;
mod progress;
mod queue;
pub mod source;
pub mod staging;

use std::sync::{Arc, RwLock};

pub use engine::open_engine;
pub use progress::Progress;
pub use source::{Source, SourceError};

use crate::store::Store;

/// One import into one container: the store, the source while it is needed, the progress.
pub struct Import {
    store: Arc<Store>,
    /// Dropped (stopping `qemu-nbd`) once the copy is done.
    source: RwLock<Option<Arc<Source>>>,
    progress: Progress,
    /// The store writer slot the copier uses.
    writer: usize,
    /// Held while the source is opened again.
    reopening: std::sync::Mutex<()>,
    /// The views staged as snapshots (oldest first, the top last), when the store stages.
    views: Vec<layers::View>,
}

impl Import {
    /// An import of `source` into `store`, which must already be marked as importing
    /// ([`Store::begin_import`]); it resumes at the store's cursor.
    pub fn new(store: Arc<Store>, source: Source, writer: usize) -> Self {
        let from = store.import_cursor().unwrap_or(0) * crate::store::layout::BLOCK;
        let progress = Progress::new(source.len(), from, false);
        Self {
            store,
            source: RwLock::new(Some(Arc::new(source))),
            progress,
            writer,
            reopening: std::sync::Mutex::new(()),
            views: Vec::new(),
        }
    }

    /// The import stages `views` (oldest first, the top last) as snapshots: see [`staging`].
    pub fn with_views(mut self, views: Vec<layers::View>) -> Self {
        self.views = views;
        self
    }

    /// The source, while the copy still needs it.
    pub fn source(&self) -> Option<Arc<Source>> {
        self.source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Opens the source again after `failed` (the `Arc` a read failed on) stopped answering
    /// (an NBD server that went away and came back, a restarted `qemu-nbd`). Readers that
    /// failed together reopen it once; a source that changed size is refused.
    pub fn reopen(&self, failed: &Arc<Source>) -> Result<(), SourceError> {
        let _one = self.reopening.lock().unwrap_or_else(|e| e.into_inner());
        match self.source() {
            Some(now) if Arc::ptr_eq(&now, failed) => {}
            _ => return Ok(()),
        }
        let fresh = failed.open_again()?;
        if fresh.len() != failed.len() {
            return Err(SourceError::Open(
                failed.name().to_string(),
                format!(
                    "its size changed from {} to {} bytes during the import",
                    failed.len(),
                    fresh.len()
                ),
            ));
        }
        let mut slot = self.source.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            *slot = Some(Arc::new(fresh));
        }
        Ok(())
    }

    /// Lets the source go (the copy is done): `qemu-nbd` stops once no reader holds it.
    fn drop_source(&self) {
        self.source
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
