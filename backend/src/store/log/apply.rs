//! Applying a journal record to the maps: how the log's records become mappings, the same
//! for a live write and for replay at open.

use super::journal::Entry;
use crate::store::map::maps::Maps;
use crate::store::map::sut::Sut;

/// Applies record `lsn`'s entries to the maps, in order.
pub fn apply(maps: &mut Maps, lsn: u64, entries: &[Entry], sut: &mut Sut) {
    maps.seq += 1;
    // Segments it empties are released by a mark that covers it (see `mark_release`).
    sut.applying(Some(lsn));
    for e in entries {
        match *e {
            Entry::Map { lba, vba, pba, crc } => maps.map(lba, vba, pba, crc, sut),
            Entry::Unmap { lba, count } => maps.unmap(lba, count, sut),
            Entry::Move {
                vba,
                old_pba,
                new_pba,
                crc,
            } => {
                maps.relocate(vba, old_pba, new_pba, crc, sut);
            }
            // Recovery checked the id; a live store wrote the record with the next one.
            Entry::Snapshot { id, created, name } if id == maps.next_snapshot_id => {
                maps.create_snapshot(&name.as_str(), created);
            }
            Entry::Snapshot { .. } => {}
            // Recovery checked the snapshot exists.
            Entry::DeleteSnapshot { id } => {
                maps.delete_snapshot(id);
            }
            Entry::Release { vba } => maps.free_vba(vba, sut),
            Entry::Flushed { .. } => {}
            Entry::StageMap { lba, vba, pba, crc } => maps.stage_map(lba, vba, pba, crc, sut),
            Entry::StageUnmap { lba, count } => maps.stage_unmap(lba, count, sut),
            Entry::Adopt { lba, count } => maps.adopt(lba, count),
        }
    }
    sut.applying(None);
    note_trees(maps, sut);
}

/// Tells the usage table how large the trees are, which sizes the free space kept for the
/// next checkpoint. Skipped while a checkpoint holds trees pinned: it placed their nodes
/// when it froze, and the copies made since replace nodes it frees.
pub fn note_trees(maps: &Maps, sut: &mut Sut) {
    if maps.lba.is_pinned() || maps.vba.is_pinned() {
        return;
    }
    let roots = maps.snapshots.len() + maps.doomed.len() + usize::from(maps.staging.is_some());
    let nodes = maps.lba.live_nodes() + maps.vba.live_nodes();
    sut.note_trees(nodes as u64, super::checkpoint::root_blocks(roots) as u64);
}
