//! How a mirrored disk is described: its component paths, size and resync settings.

use super::scheduler::{ResyncPriority, ResyncScheduler};
use super::throttle::{ResyncRate, ThrottleConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// Default tracking-bitmap granularity.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 10;

/// A mirrored disk (`mirror = [...]` and `resync_chunk` in a `[[disk]]` table).
#[derive(Clone)]
pub struct MirrorConfig {
    /// The disk's name, used in logs and scheduler queues.
    pub name: String,
    /// Component paths, numbered from 0 in this order.
    pub components: Vec<PathBuf>,
    /// Size in bytes; missing component files are created sparse with it. `None` takes the
    /// size of the first component.
    pub size: Option<u64>,
    /// Tracking-bitmap granularity; a power of two, at least 4 KiB.
    pub chunk_size: u64,
    pub options: MirrorOptions,
}

/// Behaviour knobs with sensible defaults.
#[derive(Clone)]
pub struct MirrorOptions {
    /// On first open, trust that all components hold the same bytes (e.g. all freshly
    /// created); otherwise every component but 0 gets a full copy from component 0.
    pub assume_clean: bool,
    /// O_DIRECT on file components and their sidecars, as the `direct` key defaults to.
    pub direct: bool,
    /// Fan writes of at least this many bytes out to the components at once, on writer threads
    /// started at open (`None`: no writer threads, always in turn).
    pub parallel_write_min: Option<usize>,
    pub priority: ResyncPriority,
    pub throttle: ThrottleConfig,
    /// Bytes per second a resync copies (0: unlimited), changeable while the mirror is open.
    pub resync_rate: Arc<ResyncRate>,
    /// Where resync jobs run; `None` leaves them to [`super::MirrorDevice::run_resync`].
    pub scheduler: Option<Arc<ResyncScheduler>>,
    /// Chunks copied between two sync-bitmap checkpoints.
    pub checkpoint_chunks: u64,
    /// Keep a write-intent bitmap so that copies diverging in unflushed chunks after a power
    /// loss are brought back together at open (costs a metadata update on the first write to
    /// a chunk in two flush epochs).
    pub write_intent: bool,
    /// Granularity of the write-intent bitmap in bytes (a multiple of the chunk size): a
    /// region's bits are set all at once, so only the first write to a region in two flush
    /// epochs pays for a metadata update, at the price of resyncing whole regions after a
    /// power loss.
    pub intent_region: u64,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            assume_clean: false,
            direct: true,
            parallel_write_min: None,
            priority: ResyncPriority::Normal,
            throttle: ThrottleConfig::default(),
            resync_rate: Arc::default(),
            scheduler: None,
            checkpoint_chunks: 256,
            write_intent: true,
            intent_region: 64 << 20,
        }
    }
}

impl MirrorConfig {
    pub fn new(name: impl Into<String>, components: Vec<PathBuf>) -> Self {
        Self {
            name: name.into(),
            components,
            size: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            options: MirrorOptions::default(),
        }
    }
}
