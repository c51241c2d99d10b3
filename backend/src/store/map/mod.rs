//! The map layer: the trees (LBA -> VBA with snapshots, VBA -> PBA), applying changes to them,
//! and what readers hold while they follow a mapping (segment pins, blocks still being
//! written). It calls nothing above it: not the log, not admin.

pub mod btree;
pub mod diff_walk;
pub mod maps;
pub(super) mod pins;
pub(super) mod staging;
pub(super) mod sut;
pub(super) mod unwritten;
