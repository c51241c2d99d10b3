//! Cloning a snapshot into a new keel container beside its disk and serving it while keeld runs.
//!
//! The call checks everything it can at once and answers; the copy runs on a thread of its own,
//! so the control socket keeps answering while it runs. Until it is done the new disk is listed
//! as `cloning` with its progress; a failed clone stays listed as failed, with the reason, until
//! its name is used again. An rbd disk's clone is an RBD layered clone instead, made and served
//! at once (`clone_rbd.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use keel_protocol::control::{CloneAnswer, CloneProgress, DiskInfo, DiskState};

use super::control::{DaemonControl, from_store, side};
use super::disks::DiskSet;
use super::{DaemonError, start_disk};
use crate::config::DiskConfig;
use crate::control::ApiError;
use crate::store::diff::{ChangedBlock, TreeRef};
use crate::store::layout::BLOCK;
use crate::store::{CloneWatch, Store, StoreError};

/// The clones this daemon copies now or saw fail, by new disk name.
pub(super) type CloneJobs = Arc<Mutex<HashMap<String, CloneJob>>>;

/// One clone: what it copies, how far it is, and how it ended if it failed.
pub(super) struct CloneJob {
    /// `disk@snapshot`.
    source: String,
    /// The new disk as it will be served.
    config: DiskConfig,
    total_blocks: u64,
    watch: Arc<CloneWatch>,
    failed: Option<String>,
    thread: Option<JoinHandle<()>>,
}

impl CloneJob {
    /// Whether its copy is still under way (not failed).
    pub(super) fn is_running(&self) -> bool {
        self.failed.is_none()
    }

    pub(super) fn info(&self) -> DiskInfo {
        let state = match self.failed {
            Some(_) => DiskState::Failed,
            None => DiskState::Cloning,
        };
        DiskInfo {
            size: self.config.size.unwrap_or(0),
            error: self.failed.clone(),
            clone: Some(CloneProgress {
                source: self.source.clone(),
                copied_bytes: self.watch.copied.load(Ordering::Relaxed) * BLOCK,
                total_bytes: self.total_blocks * BLOCK,
            }),
            ..super::info::configured(&self.config, state)
        }
    }
}

/// The copy step of a clone: the source store, the blocks to copy, the new container's path.
pub(super) type CopyStep =
    Box<dyn FnOnce(&Store, &[ChangedBlock], &Path, &CloneWatch) -> Result<u64, StoreError> + Send>;

impl DaemonControl {
    /// Clones snapshot `snapshot` of `disk` into a new keel container beside it and serves it
    /// as `new_disk` on a socket beside `disk`'s once the copy, started here, is done.
    pub(super) fn clone_disk(
        &self,
        disk: &str,
        snapshot: &str,
        new_disk: &str,
    ) -> Result<CloneAnswer, ApiError> {
        self.clone_disk_with(
            disk,
            snapshot,
            new_disk,
            Box::new(|store, blocks, path, watch| store.clone_into(blocks, path, watch)),
        )
    }

    /// [`Self::clone_disk`] with the copy step given, so tests can act while a copy runs.
    pub(super) fn clone_disk_with(
        &self,
        disk: &str,
        snapshot: &str,
        new_disk: &str,
        copy: CopyStep,
    ) -> Result<CloneAnswer, ApiError> {
        let src = self.disk(disk)?;
        if src.config.rbd.is_some() {
            return self.clone_rbd(&src, snapshot, new_disk);
        }
        let store = src.store()?;
        let TreeRef::Snapshot(id) = side(&store, snapshot)? else {
            return Err(ApiError::BadRequest(format!(
                "{snapshot} is not a snapshot of disk {disk}"
            )));
        };
        let beside = |p: &Path, ext: &str| {
            p.parent()
                .unwrap_or(Path::new("."))
                .join(format!("{new_disk}.{ext}"))
        };
        let container = src.config.path.as_deref().ok_or_else(|| {
            ApiError::Unsupported(format!(
                "disk {disk} has no single container to clone beside"
            ))
        })?;
        let path = beside(container, "keel");
        let socket = beside(&src.config.socket, "sock");
        let mut config = src.config.clone();
        config.name = new_disk.to_string();
        config.socket = socket.clone();
        config.path = Some(path.clone());
        config.size = Some(store.capacity());
        config.resize = false;
        config.read_only = false;
        config.serial = new_disk.chars().take(keel_protocol::ID_BYTES).collect();

        let mut jobs = self.cloning.lock().map_err(|_| poisoned_jobs())?;
        if self.disks.has(new_disk).map_err(super::control::poisoned)? {
            return Err(ApiError::Conflict(format!("disk {new_disk} exists")));
        }
        if jobs.get(new_disk).is_some_and(|j| j.failed.is_none()) {
            return Err(ApiError::Conflict(format!(
                "disk {new_disk} is being cloned already"
            )));
        }
        for p in [&path, &socket] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(ApiError::Conflict(format!(
                    "{} exists: choose another name for the clone",
                    p.display()
                )));
            }
        }
        let blocks = store.clone_plan(id).map_err(from_store)?;
        if let Some(old) = jobs.remove(new_disk) {
            old.join();
        }
        let total_blocks = blocks.len() as u64;
        let watch = Arc::new(CloneWatch::default());
        let run = CloneRun {
            name: new_disk.to_string(),
            source: format!("{disk}@{snapshot}"),
            config: config.clone(),
            disks: Arc::clone(&self.disks),
            exports: self.exports.clone(),
            jobs: Arc::clone(&self.cloning),
            watch: Arc::clone(&watch),
        };
        let thread = std::thread::Builder::new()
            .name(format!("keel-clone-{new_disk}"))
            .spawn(move || run.run(&store, &blocks, copy))
            .map_err(|e| ApiError::Internal(format!("clone {new_disk}: cannot start: {e}")))?;
        jobs.insert(
            new_disk.to_string(),
            CloneJob {
                source: format!("{disk}@{snapshot}"),
                config,
                total_blocks,
                watch,
                failed: None,
                thread: Some(thread),
            },
        );
        log::info!("disk {new_disk}: cloning {disk}@{snapshot} ({total_blocks} blocks)");
        Ok(CloneAnswer {
            disk: new_disk.to_string(),
            path: path.display().to_string(),
            socket: socket.display().to_string(),
            blocks: total_blocks,
            state: DiskState::Cloning,
        })
    }

    /// The clones copying now or failed, as the disk list shows them.
    pub(super) fn clone_infos(&self) -> Result<Vec<DiskInfo>, ApiError> {
        let jobs = self.cloning.lock().map_err(|_| poisoned_jobs())?;
        let mut infos: Vec<DiskInfo> = jobs.values().map(CloneJob::info).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    /// Waits for every clone's copy to end; with `cancel`, stops them first (their partial
    /// containers are removed).
    pub fn finish_clones(&self, cancel: bool) {
        let threads: Vec<JoinHandle<()>> = match self.cloning.lock() {
            Ok(mut jobs) => jobs
                .values_mut()
                .filter_map(|j| {
                    if cancel {
                        j.watch.cancel.store(true, Ordering::Relaxed);
                    }
                    j.thread.take()
                })
                .collect(),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

fn poisoned_jobs() -> ApiError {
    ApiError::Internal("the clone list is poisoned".into())
}

impl CloneJob {
    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the clone's own thread needs: it copies, then serves the new disk or records why not.
struct CloneRun {
    name: String,
    source: String,
    config: DiskConfig,
    disks: Arc<DiskSet>,
    /// The NBD exports the served clone joins, as every served disk does.
    exports: Option<Arc<crate::nbd::Exports>>,
    jobs: CloneJobs,
    watch: Arc<CloneWatch>,
}

impl CloneRun {
    fn run(self, store: &Store, blocks: &[ChangedBlock], copy: CopyStep) {
        let started = std::time::Instant::now();
        let path = self.config.path.clone().unwrap_or_default();
        let outcome = self.copy_and_serve(store, blocks, &path, copy);
        let Ok(mut jobs) = self.jobs.lock() else {
            return;
        };
        match outcome {
            Ok(copied) => {
                jobs.remove(&self.name);
                log::info!(
                    "disk {}: cloned from {} ({copied} blocks in {:.1?}), serving on {}",
                    self.name,
                    self.source,
                    started.elapsed(),
                    self.config.socket.display()
                );
            }
            Err(reason) => {
                log::error!(
                    "disk {}: clone from {} failed: {reason}",
                    self.name,
                    self.source
                );
                if let Some(job) = jobs.get_mut(&self.name) {
                    job.failed = Some(reason);
                }
            }
        }
    }

    /// Copies and starts serving; on failure the container this clone created is removed.
    fn copy_and_serve(
        &self,
        store: &Store,
        blocks: &[ChangedBlock],
        path: &Path,
        copy: CopyStep,
    ) -> Result<u64, String> {
        let copied = match copy(store, blocks, path, &self.watch) {
            Ok(copied) => copied,
            // The file appeared since the call checked: someone else's, so it stays.
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!(
                    "{} exists: choose another name for the clone",
                    path.display()
                ));
            }
            Err(e) => {
                remove_unfinished(&self.name, path);
                return Err(e.to_string());
            }
        };
        let served = match start_disk(&self.config) {
            Ok(served) => served,
            Err(e) => {
                remove_unfinished(&self.name, path);
                return Err(match e {
                    DaemonError::Engine { source, .. } => {
                        format!("cannot open {}: {source}", path.display())
                    }
                    other => other.to_string(),
                });
            }
        };
        let engine = Arc::clone(served.engine());
        if let Err(e) = self.disks.insert(served) {
            return Err(format!("cannot list the new disk: {e:?}"));
        }
        if let Some(exports) = &self.exports {
            exports.add(&self.config, engine);
        }
        Ok(copied)
    }
}

/// Removes a clone's container that never got served, so a retry under the same name works.
fn remove_unfinished(name: &str, path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(
            "clone {name}: cannot remove the unfinished {}: {e}",
            path.display()
        );
    }
}
