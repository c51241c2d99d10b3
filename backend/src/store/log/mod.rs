//! The log layer: the data path over the container (a write batches into a journal record
//! and data segments, a read plans from the maps) and everything that keeps the log going:
//! journal, checkpoints, recovery, segment allocation and usage, space and the cleaner.
//! It calls the map layer below it, never admin.

pub(super) mod alloc;
pub(super) mod apply;
pub(super) mod batch;
pub(super) mod chain;
pub(super) mod checkpoint;
pub(super) mod clean_ahead;
pub(super) mod cleaner;
pub(super) mod flush;
pub(super) mod format;
pub(super) mod gather_meta;
pub(super) mod guest_pace;
pub mod io_class;
pub mod journal;
pub(super) mod journal_ring;
pub(super) mod live_checkpoint;
pub(super) mod mark_release;
pub(super) mod pace;
pub(super) mod persist;
pub(super) mod prewrite;
pub(super) mod read;
pub(super) mod reclaim;
pub(super) mod recovery;
pub(super) mod space;
pub mod spare;
pub(super) mod superblock;
pub(super) mod tail;
pub(super) mod victim;
pub(super) mod victim_read;
pub(super) mod write;
pub(super) mod write_plan;
