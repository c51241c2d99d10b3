//! Opening a disk's mirror (`mirror = [...]`) and answering the control API's mirror calls.

use super::{AdminError, EngineError, MirrorCommand};
use crate::config::DiskConfig;
use crate::device::mirror::remote::is_remote;
use crate::device::mirror::{MirrorConfig, MirrorDevice, MirrorError, ResyncScheduler};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Resync jobs of every mirrored disk of the process run here, at most this many at once.
const RESYNC_JOBS: usize = 2;

fn scheduler() -> Arc<ResyncScheduler> {
    static SCHEDULER: OnceLock<Arc<ResyncScheduler>> = OnceLock::new();
    Arc::clone(SCHEDULER.get_or_init(|| ResyncScheduler::new(RESYNC_JOBS)))
}

/// Opens the mirror of `disk` with `size` bytes per component (missing files are created sparse;
/// if every component is a new local file they are known to be equal and need no initial
/// copy; a remote export may hold anything, so it is copied onto in full the first time).
pub fn open(disk: &DiskConfig, size: u64) -> Result<Arc<MirrorDevice>, EngineError> {
    let all_new = disk
        .mirror
        .iter()
        .all(|p| !p.exists() && !is_remote(&p.to_string_lossy()));
    let mut mc = MirrorConfig::new(disk.name.clone(), disk.mirror.clone());
    mc.size = Some(size);
    mc.chunk_size = disk.resync_chunk;
    mc.options.assume_clean = all_new;
    mc.options.direct = disk.direct;
    mc.options.scheduler = Some(scheduler());
    // A remote component's round trip would add to every write's latency if the components
    // were written in turn: with one, writes go to all components at once.
    if disk.mirror.iter().any(|p| is_remote(&p.to_string_lossy())) {
        mc.options.parallel_write_min = Some(0);
    }
    mc.options.resync_rate = Arc::new(crate::device::mirror::ResyncRate::new(
        disk.limits.resync_bps_limit,
    ));
    let dev = MirrorDevice::open(mc).map_err(|e| EngineError::Setup {
        path: disk.mirror.first().cloned().unwrap_or_default(),
        message: format!("opening the mirror: {e}"),
    })?;
    Ok(Arc::new(dev))
}

/// A clean stop: flushes and clears the write-intent bitmap, so the next open copies nothing.
pub fn shut_down(dev: &MirrorDevice) {
    match dev.shut_down() {
        Ok(()) => log::info!("mirror {}: closed cleanly", dev.name()),
        Err(e) => log::warn!(
            "mirror {}: not closed cleanly ({e}); the next open resyncs the chunks written \
             since the last flush",
            dev.name()
        ),
    }
}

/// The mirror's status as JSON (per component: state, LSN, dirty chunks, resync progress).
pub fn status(dev: &MirrorDevice) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(dev.status()).map_err(|e| AdminError::Failed(e.to_string()))
}

/// Carries out a component operation.
pub fn command(dev: &MirrorDevice, n: usize, cmd: MirrorCommand) -> Result<(), AdminError> {
    let cmd_starts_resync = matches!(cmd, MirrorCommand::Online | MirrorCommand::Replace { .. });
    let result = match cmd {
        MirrorCommand::Offline => dev.offline(n),
        MirrorCommand::Online => dev.online(n),
        MirrorCommand::Maintenance { delta } => {
            let path = delta.unwrap_or_else(|| default_delta_path(dev, n));
            dev.maintenance(n, &path)
        }
        MirrorCommand::Replace { path } => dev.replace(n, &path),
    };
    result.map_err(from_mirror)?;
    if cmd_starts_resync {
        dev.watch_resync(n, RESYNC_WATCH).map_err(from_mirror)?;
    }
    Ok(())
}

/// How long `online` and `replace` watch the resync they queued before answering.
const RESYNC_WATCH: Duration = Duration::from_millis(500);

/// `<component>.delta` beside the component, when the caller names no path.
fn default_delta_path(dev: &MirrorDevice, n: usize) -> PathBuf {
    let base = dev
        .component_path(n)
        .unwrap_or_else(|| PathBuf::from("component"));
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(".delta");
    base.with_file_name(name)
}

fn from_mirror(e: MirrorError) -> AdminError {
    match e {
        MirrorError::NoSuchComponent(_) => AdminError::NotFound(e.to_string()),
        MirrorError::WrongState { .. } | MirrorError::LastInSync(_) | MirrorError::NoSource(_) => {
            AdminError::Conflict(e.to_string())
        }
        other => AdminError::Failed(other.to_string()),
    }
}
