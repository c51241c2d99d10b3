//! The admin layer: operations on a whole disk rather than on blocks (snapshots, clone,
//! diff and diff files, import, resize, fsck, peeking at a container). It calls the log and
//! map layers below it; nothing below calls it.

pub(super) mod clone;
pub mod diff;
pub mod diff_file;
pub(super) mod fsck;
pub(super) mod import;
pub mod peek;
pub mod resize;
pub(super) mod scrub;
pub(super) mod snapshots;
pub(super) mod staging;
