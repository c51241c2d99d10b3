//! Opening a container: pick the newest valid superblock, load its checkpoint (trees, SUT),
//! replay the journal tail, and discard the first torn record and everything after it, unless
//! what lies after it proves it was acknowledged and flushed ([`tail`](crate::store::log::tail)).
//!
//! A record is torn when its own crc fails, when it does not chain to its predecessor, or
//! when a data block it points at does not match the crc it carries (the data write and
//! the record write were issued together and only one of them reached the disk). With
//! `INCOMPAT_MARKED_REPLAY` the data of a record a Flushed mark in the chain covers is not
//! checked: it was flushed, and its segment may have been reused ([`chain`]).

use crate::device::BlockDevice;
use crate::store::State;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of};
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, Geometry};
use crate::store::log::chain;
use crate::store::log::checkpoint::CheckpointRoot;
use crate::store::log::journal::{Entry, JournalCursor};
use crate::store::log::journal_ring::Ring;
use crate::store::log::superblock::{INCOMPAT_CIRCULAR_JOURNAL, INCOMPAT_MARKED_REPLAY};
use crate::store::log::superblock::{INCOMPAT_FLUSH_MARKS, Superblock};
use crate::store::log::tail;
use crate::store::map::btree::Forest;
use crate::store::map::maps::{Maps, Snapshot};
use crate::store::map::staging::Staging;
use crate::store::map::sut::Sut;
use crate::store::seal::DataView;
use std::collections::HashMap;
use std::time::Instant;

/// What recovery did, for logs and `keel info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    pub superblock_generation: u64,
    /// Problems with the other superblock copy (normal right after a torn flip).
    pub other_superblock: Option<String>,
    pub records_replayed: u64,
    pub journal_blocks_replayed: u64,
    /// Why replay stopped where it did.
    pub stopped_because: String,
    /// Intact records found past the end of the chain and dropped (a torn tail's survivors).
    pub discarded_records: u64,
    /// Set when `rewind` accepted the loss of acknowledged writes: what was lost.
    pub rewound: Option<String>,
    pub elapsed_micros: u64,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint generation {}, {} journal records ({} blocks) replayed in {} ms (stopped: {})",
            self.superblock_generation,
            self.records_replayed,
            self.journal_blocks_replayed,
            self.elapsed_micros / 1000,
            self.stopped_because
        )?;
        if self.discarded_records > 0 {
            write!(f, "; {} unflushed records dropped", self.discarded_records)?;
        }
        if let Some(o) = &self.other_superblock {
            write!(f, "; {o} (rewritten)")?;
        }
        if let Some(r) = &self.rewound {
            write!(f, "; REWOUND past damage: {r}")?;
        }
        Ok(())
    }
}

pub(crate) struct Loaded {
    pub superblock: Superblock,
    pub state: State,
    pub cursor: JournalCursor,
    /// The journal ring's live part: from the head through the replayed records.
    pub ring: Ring,
    pub report: RecoveryReport,
    /// The superblock slot that does not hold the opened copy (damaged or one generation
    /// older), to rewrite before the container changes.
    pub stale_slot: Option<u64>,
    /// Journal blocks holding dropped records, to erase before new records are written.
    pub erase: Vec<(u64, u64)>,
    /// With `INCOMPAT_MARKED_REPLAY`: the highest LSN a Flushed entry of a replayed record
    /// names (0: none). Once a device flush makes the replayed records durable, the segments
    /// records through it emptied may be reused (see `mark_release`).
    pub replayed_mark: u64,
}

/// The superblock recovery opens and the state of the other copy.
pub struct Picked {
    pub superblock: Superblock,
    /// What is wrong with the other copy, if it is unreadable.
    pub other_problem: Option<String>,
    /// The slot that does not hold an identical copy.
    pub stale_slot: Option<u64>,
}

fn read_block(dev: &dyn BlockDevice, pba: u64) -> Result<AlignedBuf> {
    let mut b = AlignedBuf::blocks(1);
    dev.read_at(&mut b, pba * BLOCK)?;
    Ok(b)
}

/// Reads both superblocks and returns the newest valid one. A copy may sit in either slot
/// (the second write of each checkpoint puts it in the other one too).
pub fn pick_superblock(dev: &dyn BlockDevice) -> Result<Picked> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for slot in 0..2u64 {
        match read_block(dev, slot).and_then(|b| Superblock::decode(&b, dev.len())) {
            Ok(sb) => found.push((slot, sb)),
            Err(e) => errors.push((slot, e)),
        }
    }
    let name = |s: u64| if s == 0 { "A" } else { "B" };
    let Some(&(slot, sb)) = found
        .iter()
        .max_by_key(|(slot, s)| (s.generation, *slot == s.slot()))
    else {
        if let Some((_, e @ StoreError::Unsupported(_))) = errors
            .iter()
            .find(|(_, e)| matches!(e, StoreError::Unsupported(_)))
        {
            return Err(StoreError::Unsupported(e.to_string()));
        }
        let detail = errors
            .iter()
            .map(|(s, e)| format!("{}: {e}", name(*s)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(StoreError::corrupt(
            "superblocks",
            format!("no valid copy ({detail})"),
        ));
    };
    let other = 1 - slot;
    let identical = found.iter().any(|&(s, o)| s == other && o == sb);
    Ok(Picked {
        superblock: sb,
        other_problem: errors
            .first()
            .map(|(s, e)| format!("superblock {}: {e}", name(*s))),
        stale_slot: (!identical).then_some(other),
    })
}

/// Loads the container on `dev`. Damage that would silently lose acknowledged, flushed
/// writes is an error, unless `rewind` accepts it (it is then reported in `rewound`).
pub(crate) fn load(dev: &dyn BlockDevice, data: &DataView, rewind: bool) -> Result<Loaded> {
    let t0 = Instant::now();
    let picked = pick_superblock(dev)?;
    let sb = picked.superblock;
    let geo = sb.geometry;
    let first = read_block(dev, sb.checkpoint_pba)?;
    let root_blocks = crate::store::log::checkpoint::root_blocks_in(&first) as u64;
    let last = sb.checkpoint_pba + root_blocks - 1;
    if geo.segment_of(last) != geo.segment_of(sb.checkpoint_pba) || !geo.is_data_block(last) {
        return Err(StoreError::corrupt(
            "checkpoint",
            format!(
                "root of {root_blocks} blocks at {} crosses its segment",
                sb.checkpoint_pba
            ),
        ));
    }
    let mut root_bytes = AlignedBuf::blocks(root_blocks as usize);
    dev.read_at(&mut root_bytes, sb.checkpoint_pba * BLOCK)?;
    let root = CheckpointRoot::decode(sb.checkpoint_pba, &root_bytes)?;
    let sut = load_sut(dev, &geo, &root)?;
    let mut read_node = |pba: u64| -> Result<Vec<u8>> {
        if !geo.is_data_block(pba) {
            return Err(StoreError::corrupt(
                "tree",
                format!("node address {pba} is outside the segments"),
            ));
        }
        Ok(read_block(dev, pba)?.to_vec())
    };
    let mut lba = Forest::new();
    let mut loaded = HashMap::new();
    let running = lba.load(root.running_root, &mut read_node, &mut loaded)?;
    let mut snapshots = Vec::with_capacity(root.snapshots.len());
    let mut doomed = Vec::new();
    // A container from before background deletes kept no record of reverts: assume one
    // before every tree (a delete then asks every later tree, as it always did).
    let knows_reverts =
        sb.incompat & crate::store::log::superblock::INCOMPAT_BACKGROUND_DELETES != 0;
    for s in &root.snapshots {
        let snap = Snapshot {
            id: s.id,
            name: s.name.clone(),
            seq: s.seq,
            root: lba.load(s.root, &mut read_node, &mut loaded)?,
            vba_watermark: s.vba_watermark,
            created: s.created,
            reverted_before: s.reverted_before || !knows_reverts,
        };
        // Bits 6 and 7 of the name length mean nothing in an older container (as before,
        // a long name length there is clamped, not an error).
        if s.deleting && knows_reverts {
            doomed.push(snap);
        } else {
            snapshots.push(snap);
        }
    }
    let staging = match &root.staging {
        Some(r) => Some(Staging {
            root: lba.load(r.root, &mut read_node, &mut loaded)?,
            view: r.view,
            cursor: r.cursor,
        }),
        None => None,
    };
    let mut vba = Forest::new();
    let vba_root = vba.load(root.vba_root, &mut read_node, &mut HashMap::new())?;
    let mut maps = Maps::loaded(
        lba,
        running,
        snapshots,
        doomed,
        vba,
        vba_root,
        root.next_vba,
        root.seq,
        root.next_snapshot_id,
        root.running_reverted || !knows_reverts,
        geo.segments * geo.seg_blocks,
    );
    maps.staging = staging;
    let mut ckpt_blocks: Vec<u64> = (root.sut_pba..root.sut_pba + root.sut_blocks as u64).collect();
    ckpt_blocks.extend(sb.checkpoint_pba..sb.checkpoint_pba + root_blocks);
    let mut state = State {
        maps,
        sut,
        ckpt_blocks,
    };
    // A container from before the ring journal replays from block 0 and never wraps.
    let circular = sb.incompat & INCOMPAT_CIRCULAR_JOURNAL != 0;
    let head = if circular { sb.journal_head } else { 0 };
    let mut cursor = JournalCursor {
        pos: head,
        next_lsn: root.lsn + 1,
        prev_crc: root.chain_seed,
        records: 0,
    };
    let mut ring = Ring::new(geo.journal_blocks(), head);
    let (stopped, replayed_mark) = replay(
        dev,
        data,
        &geo,
        &mut state,
        &mut cursor,
        &mut ring,
        sb.incompat,
    )?;
    // The rest of the region: in a ring, from the chain's end round to the head.
    let rest = if circular && cursor.pos < head {
        vec![(cursor.pos, head)]
    } else if circular {
        vec![(cursor.pos, geo.journal_blocks()), (0, head)]
    } else {
        vec![(cursor.pos, geo.journal_blocks())]
    };
    let found = tail::scan(dev, &geo, &rest, cursor.next_lsn)?;
    let end = tail::ChainEnd {
        pos: cursor.pos,
        next_lsn: cursor.next_lsn,
        prev_crc: cursor.prev_crc,
    };
    // Older containers may hold records an earlier recovery dropped: nothing can be proven.
    let marks = sb.incompat & INCOMPAT_FLUSH_MARKS != 0;
    let damage = if marks {
        tail::damage(&found, end)
    } else {
        None
    };
    if let Some(why) = &damage {
        if !rewind {
            return Err(StoreError::corrupt(
                "journal",
                format!(
                    "{why} (replay stopped: {stopped}); nothing was changed. `keel recover \
                     --rewind` opens the container at the last intact state and discards the rest"
                ),
            ));
        }
        log::warn!("opened past damage (a rewind, or a look at a container in use): {why}");
    }
    if !found.is_empty() {
        log::warn!(
            "dropped {} intact journal records (lsn {} to {}) past the end of the chain: \
             written when the container was last closed uncleanly, never flushed",
            found.len(),
            found.iter().map(|f| f.lsn).min().unwrap_or(0),
            found.iter().map(|f| f.lsn).max().unwrap_or(0)
        );
    }
    state.sut.rebuild_free();
    super::apply::note_trees(&state.maps, &mut state.sut);
    let report = RecoveryReport {
        superblock_generation: sb.generation,
        other_superblock: picked.other_problem,
        records_replayed: cursor.records,
        journal_blocks_replayed: ring.used,
        stopped_because: stopped,
        discarded_records: found.len() as u64,
        rewound: damage,
        elapsed_micros: t0.elapsed().as_micros() as u64,
    };
    Ok(Loaded {
        superblock: sb,
        state,
        cursor,
        ring,
        report,
        stale_slot: picked.stale_slot,
        erase: tail::erase_ranges(&found),
        replayed_mark,
    })
}

fn load_sut(dev: &dyn BlockDevice, geo: &Geometry, root: &CheckpointRoot) -> Result<Sut> {
    let n = root.sut_blocks as u64;
    let end = root.sut_pba.saturating_add(n);
    if n != Sut::encoded_blocks(geo)
        || !geo.is_data_block(root.sut_pba)
        || !geo.is_data_block(end - 1)
    {
        return Err(StoreError::corrupt(
            "checkpoint",
            "segment usage table location is invalid",
        ));
    }
    let mut b = AlignedBuf::blocks(n as usize);
    dev.read_at(&mut b, root.sut_pba * BLOCK)?;
    if crc32c::crc32c(&b) != root.sut_crc {
        return Err(StoreError::corrupt(
            "segment usage table",
            "checksum mismatch",
        ));
    }
    Sut::decode(*geo, &b)
}

/// Replays records from the ring's head; returns why it stopped, and the highest LSN a
/// Flushed entry of a replayed record names (with `MARKED_REPLAY`). With `CIRCULAR_JOURNAL` in
/// `incompat`, a record that did not fit before the region's end is looked for at block 0.
/// With `MARKED_REPLAY`, the records a Flushed mark in the chain covers are applied without
/// reading their data: it was flushed, and a segment it names may have been reused since.
fn replay(
    dev: &dyn BlockDevice,
    data: &DataView,
    geo: &Geometry,
    st: &mut State,
    cur: &mut JournalCursor,
    ring: &mut Ring,
    incompat: u64,
) -> Result<(String, u64)> {
    let circular = incompat & INCOMPAT_CIRCULAR_JOURNAL != 0;
    let marked = incompat & INCOMPAT_MARKED_REPLAY != 0;
    let flushed = if marked {
        chain::highest_mark(dev, geo, *cur, *ring, circular)?
    } else {
        0
    };
    let mut replayed_mark = 0;
    loop {
        let r = match chain::read_next(dev, geo, cur, ring, circular)? {
            Ok(r) => r,
            Err(why) => return Ok((why, replayed_mark)),
        };
        let check = r.lsn > flushed;
        if let Some(why) = check_entries(data, geo, st, &r.entries, check)? {
            return Ok((
                format!("record lsn {} discarded: {why}", r.lsn),
                replayed_mark,
            ));
        }
        if marked {
            replayed_mark = replayed_mark.max(chain::mark_of(&r.entries));
        }
        let State { maps, sut, .. } = st;
        super::apply::apply(maps, r.lsn, &r.entries, sut);
        chain::advance(cur, ring, &r);
    }
}

/// Longest run of data blocks read at once when checking a record (1 MiB).
const CHECK_RUN_BLOCKS: u64 = 256;

/// Checks that every entry is in range and, with `check`, that every data block it names
/// holds the data it describes; `Some(reason)` when the record must be discarded.
fn check_entries(
    data: &DataView,
    geo: &Geometry,
    st: &State,
    entries: &[Entry],
    check: bool,
) -> Result<Option<String>> {
    let cap = geo.capacity_blocks();
    // (pba, vba, crc) of every data block the record points at.
    let mut blocks = Vec::new();
    for e in entries {
        let (pba, vba, crc) = match *e {
            Entry::Unmap { lba, count } => {
                if lba.checked_add(count).is_none_or(|end| end > cap) {
                    return Ok(Some(format!("unmap {lba}+{count} beyond the disk")));
                }
                continue;
            }
            Entry::Map { lba, vba, pba, crc } => {
                if lba >= cap {
                    return Ok(Some(format!("LBA {lba} beyond the disk")));
                }
                (pba, vba, crc)
            }
            Entry::StageMap { lba, vba, pba, crc } => {
                if lba >= cap || st.maps.staging.is_none() {
                    return Ok(Some(format!(
                        "staged LBA {lba} beyond the disk or no staging"
                    )));
                }
                (pba, vba, crc)
            }
            Entry::StageUnmap { lba, count } | Entry::Adopt { lba, count } => {
                if lba.checked_add(count).is_none_or(|end| end > cap) || st.maps.staging.is_none() {
                    return Ok(Some(format!(
                        "staging range {lba}+{count} beyond the disk or no staging"
                    )));
                }
                continue;
            }
            Entry::Snapshot { id, .. } => {
                if id != st.maps.next_snapshot_id
                    || st.maps.snapshots.len() + st.maps.doomed.len()
                        >= crate::store::log::checkpoint::max_snapshots(geo.seg_blocks)
                {
                    return Ok(Some(format!(
                        "snapshot {id} out of sequence (next is {})",
                        st.maps.next_snapshot_id
                    )));
                }
                continue;
            }
            Entry::DeleteSnapshot { id } => {
                if !st.maps.snapshots.iter().any(|s| s.id == id) {
                    return Ok(Some(format!(
                        "delete of snapshot {id}, which does not exist"
                    )));
                }
                continue;
            }
            // Freeing a VBA that is gone already changes nothing.
            Entry::Release { .. } | Entry::Flushed { .. } => continue,
            Entry::Move { vba, crc, .. } if crc.is_some() && !data.crc_over_ciphertext() => {
                return Ok(Some(format!(
                    "a move of VBA {vba} with a crc in a container without CIPHERTEXT_CRC"
                )));
            }
            Entry::Move {
                vba,
                old_pba,
                new_pba,
                crc,
            } => match st.maps.vba.get(st.maps.vba_root, vba) {
                Some(v) if v.pba == old_pba => (new_pba, vba, crc.unwrap_or(v.crc)),
                // Apply skips it the same way; the cleaner never journals one.
                _ => continue,
            },
        };
        if !geo.is_data_block(block_of(pba)) || !data.valid_pba(pba) {
            return Ok(Some(format!("block {pba:#x} outside the segments")));
        }
        blocks.push((pba, vba, crc));
    }
    if !check {
        return Ok(None);
    }
    check_data(data, &mut blocks)
}

/// Reads the blocks `(pba, vba, crc)` a record points at (`pba` as the map has it: a packed
/// slot's carries it) and checks each against its crc (over the bytes `data` says it covers).
/// A batch's data was appended in a few contiguous runs, so they are read a run at a time
/// (one device read per run instead of one per block: replaying a journal that covers a
/// whole disk reads the disk once, at sequential speed).
fn check_data(data: &DataView, blocks: &mut [(u64, u64, u32)]) -> Result<Option<String>> {
    blocks.sort_unstable_by_key(|b| (block_of(b.0), b.0));
    let mut buf = AlignedBuf::blocks(CHECK_RUN_BLOCKS as usize);
    let mut rest = &blocks[..];
    while let Some(&(first, ..)) = rest.first() {
        // The longest prefix of consecutive blocks (the slots of a packed block share it).
        let start = block_of(first);
        let mut n = 1;
        while n < rest.len()
            && block_of(rest[n].0) - start < CHECK_RUN_BLOCKS
            && block_of(rest[n].0) <= block_of(rest[n - 1].0) + 1
        {
            n += 1;
        }
        let bytes = (block_of(rest[n - 1].0) - start + 1) as usize * BLOCK as usize;
        data.read_raw(&mut buf[..bytes], start * BLOCK)?;
        data.covered(&mut buf[..bytes], start * BLOCK)?;
        for &(pba, vba, crc) in &rest[..n] {
            let i = (block_of(pba) - start) as usize;
            let block = &buf[i * BLOCK as usize..(i + 1) * BLOCK as usize];
            if block_crc(vba, compress::stored_bytes(block, pba)) != crc {
                return Ok(Some(format!(
                    "data at block {} does not match its checksum",
                    block_of(pba)
                )));
            }
        }
        rest = &rest[n..];
    }
    Ok(None)
}
