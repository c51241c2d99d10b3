//! Writing a checkpoint: dirty tree nodes out of place, the SUT, a root block, then the
//! superblock flip. Used by `Store::checkpoint` and by formatting a new container.

use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use crate::store::error::{Result, StoreError};
use crate::store::io::BatchIo;
use crate::store::layout::{BLOCK, BLOCK_SIZE, Geometry};
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::checkpoint::{self, CheckpointRoot, SnapshotRecord};
use crate::store::log::superblock::Superblock;
use crate::store::log::superblock::{
    INCOMPAT_CIRCULAR_JOURNAL, INCOMPAT_FLUSH_MARKS, INCOMPAT_MARKED_REPLAY,
};
use crate::store::map::btree::NodeId;
use crate::store::map::sut::{AT_CHECKPOINT, SegKind, Sut};
use crate::store::{JournalState, State, Store};
use std::collections::HashSet;
use std::ops::Deref;

/// Device writes a checkpoint made.
pub struct Written {
    pub writes: u64,
    pub bytes: u64,
    /// Time spent encoding the tree nodes, before any write (for a checkpoint's log line).
    pub encoding: std::time::Duration,
}

/// Blocks to write, in runs of contiguous addresses.
pub struct Prepared {
    pub runs: Vec<(u64, AlignedBuf)>,
    pub root_pba: u64,
}

/// Takes `n` blocks for metadata; `contiguous` insists on one run inside one segment.
pub(in crate::store) fn take_meta(
    st: &mut State,
    meta: &mut SegmentWriter,
    n: usize,
    contiguous: bool,
) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let want = n - out.len();
        match meta.take(want) {
            Some((p, got)) if !contiguous || got == want => out.extend(p..p + got as u64),
            Some(_) => meta.retire(),
            None => match st.sut.grab(SegKind::Meta, true) {
                Some(seg) => meta.start(seg),
                None => {
                    log::debug!("no free segment for {n} metadata blocks");
                    return Err(StoreError::NoSpace);
                }
            },
        }
    }
    Ok(out)
}

/// Where a block of a checkpoint comes from.
#[derive(Clone, Copy)]
enum Source {
    LbaNode(NodeId),
    VbaNode(NodeId),
    /// Block `i` of the table-and-root bytes encoded by [`assign`].
    Table(usize),
}

/// A checkpoint with every block placed, not yet encoded.
struct Layout {
    /// (PBA, what goes there), in PBA order.
    blocks: Vec<(u64, Source)>,
    /// The usage table's blocks, then the root's.
    table: Vec<u8>,
    root_pba: u64,
    root_blocks: usize,
    chain_seed: u32,
}

/// Assigns disk blocks to every dirty node and encodes the usage table and the root: after
/// this the in-memory state describes the new checkpoint; [`encode`] then encodes the nodes.
/// `chain` is the crc the first record after the checkpoint chains to, when records go on
/// from the chain as it is; `None` starts a new chain from a seed of the checkpoint's own.
fn assign(
    st: &mut State,
    meta: &mut SegmentWriter,
    geo: &Geometry,
    generation: u64,
    lsn: u64,
    chain: Option<u32>,
) -> Result<Layout> {
    let mut lba_dirty = Vec::new();
    let mut seen = HashSet::new();
    for r in st.maps.lba_roots() {
        st.maps.lba.dirty_post_order(r, &mut lba_dirty, &mut seen);
    }
    let mut vba_dirty = Vec::new();
    st.maps
        .vba
        .dirty_post_order(st.maps.vba_root, &mut vba_dirty, &mut HashSet::new());
    let sut_blocks = Sut::encoded_blocks(geo) as usize;
    let root_blocks = checkpoint::root_blocks(
        st.maps.snapshots.len() + st.maps.doomed.len() + usize::from(st.maps.staging.is_some()),
    );
    // The table and the root each in one run inside a segment (they are read as runs).
    let mut sut_pbas = take_meta(st, meta, sut_blocks, true)?;
    let root_pbas = take_meta(st, meta, root_blocks, true)?;
    let root_pba = root_pbas[0];
    sut_pbas.extend(&root_pbas);
    let node_pbas = take_meta(st, meta, lba_dirty.len() + vba_dirty.len(), false)?;
    let mut blocks: Vec<(u64, Source)> = Vec::with_capacity(node_pbas.len() + sut_pbas.len());
    for (id, p) in lba_dirty.iter().zip(&node_pbas) {
        st.maps.lba.set_disk(*id, *p);
        blocks.push((*p, Source::LbaNode(*id)));
    }
    for (id, p) in vba_dirty.iter().zip(&node_pbas[lba_dirty.len()..]) {
        st.maps.vba.set_disk(*id, *p);
        blocks.push((*p, Source::VbaNode(*id)));
    }
    // Usage: the new blocks are live, the superseded ones die when this checkpoint commits.
    for p in node_pbas.iter().chain(&sut_pbas) {
        st.sut.add(*p, SegKind::Meta);
    }
    let mut garbage = std::mem::take(&mut st.maps.lba.garbage);
    garbage.append(&mut st.maps.vba.garbage);
    garbage.append(&mut st.ckpt_blocks);
    for p in garbage {
        st.sut.dec(p);
    }
    st.ckpt_blocks = sut_pbas.clone();
    let mut table = vec![0u8; sut_blocks * BLOCK_SIZE];
    if !st.sut.encode(&mut table) {
        return Err(StoreError::Invalid(
            "segment usage table does not encode".into(),
        ));
    }
    let sut_crc = crc32c::crc32c(&table);
    let disk = |id| st.maps.lba.node(id).disk.unwrap_or(u64::MAX);
    let chain_seed = chain.unwrap_or_else(|| {
        crc32c::crc32c(&[generation.to_le_bytes(), lsn.to_le_bytes()].concat())
            ^ crc32c::crc32c(&root_pba.to_le_bytes())
    });
    let root = CheckpointRoot {
        running_reverted: st.maps.running_reverted,
        generation,
        lsn,
        chain_seed,
        next_vba: st.maps.next_vba,
        seq: st.maps.seq,
        next_snapshot_id: st.maps.next_snapshot_id,
        running_root: disk(st.maps.running),
        vba_root: st.maps.vba.node(st.maps.vba_root).disk.unwrap_or(u64::MAX),
        sut_pba: sut_pbas[0],
        sut_blocks: sut_blocks as u32,
        sut_crc,
        snapshots: (st.maps.snapshots.iter().map(|s| (s, false)))
            .chain(st.maps.doomed.iter().map(|s| (s, true)))
            .map(|(s, deleting)| SnapshotRecord {
                id: s.id,
                seq: s.seq,
                root: disk(s.root),
                vba_watermark: s.vba_watermark,
                created: s.created,
                name: s.name.clone(),
                deleting,
                reverted_before: s.reverted_before,
            })
            .collect(),
        staging: st.maps.staging.as_ref().map(|s| checkpoint::StagingRecord {
            root: disk(s.root),
            view: s.view,
            cursor: s.cursor,
        }),
    };
    let root_bytes = root
        .encode(root_pba)
        .ok_or_else(|| StoreError::Invalid("checkpoint root does not encode".into()))?;
    table.extend_from_slice(&root_bytes);
    for (i, p) in sut_pbas.iter().enumerate() {
        blocks.push((*p, Source::Table(i)));
    }
    blocks.sort_unstable_by_key(|(p, _)| *p);
    Ok(Layout {
        blocks,
        table,
        root_pba,
        root_blocks,
        chain_seed,
    })
}

/// Blocks encoded per hold of the maps' lock while a frozen checkpoint encodes: guest
/// records wait for the lock at most that long (well under a millisecond).
const ENCODE_CHUNK: usize = 128;

/// Encodes every block of `layout` straight into its run's buffer (runs of contiguous
/// blocks, at most 1024), reading the nodes from the state `lock` gives, taken again every
/// [`ENCODE_CHUNK`] blocks (the nodes named must not change meanwhile: see [`freeze`]).
fn encode<S: Deref<Target = State>>(
    layout: &Layout,
    mut lock: impl FnMut() -> S,
) -> Result<Prepared> {
    let mut spans: Vec<(u64, usize, usize)> = Vec::new();
    for (i, (p, _)) in layout.blocks.iter().enumerate() {
        match spans.last_mut() {
            Some((start, _, n)) if *start + *n as u64 == *p && *n < 1024 => *n += 1,
            _ => spans.push((*p, i, 1)),
        }
    }
    let mut runs = Vec::with_capacity(spans.len());
    let mut st = lock();
    let mut since_lock = 0;
    for (start, first, n) in spans {
        let mut ab = AlignedBuf::blocks(n);
        for (k, (p, src)) in layout.blocks[first..first + n].iter().enumerate() {
            if since_lock == ENCODE_CHUNK {
                drop(st);
                st = lock();
                since_lock = 0;
            }
            since_lock += 1;
            let out = ab.block_mut(k);
            let ok = match *src {
                Source::LbaNode(id) => st.maps.lba.encode_node(id, *p, out),
                Source::VbaNode(id) => st.maps.vba.encode_node(id, *p, out),
                Source::Table(t) => {
                    out.copy_from_slice(&layout.table[t * BLOCK_SIZE..(t + 1) * BLOCK_SIZE]);
                    true
                }
            };
            if !ok {
                return Err(StoreError::Invalid("tree node does not encode".into()));
            }
        }
        runs.push((start, ab));
    }
    Ok(Prepared {
        runs,
        root_pba: layout.root_pba,
    })
}

/// Assigns disk blocks to every dirty node and encodes the checkpoint, each block straight
/// into its run's buffer. After this the in-memory state describes the new checkpoint; the
/// caller writes it and flips the superblock. `chain` as for [`assign`].
pub fn prepare(
    st: &mut State,
    meta: &mut SegmentWriter,
    geo: &Geometry,
    generation: u64,
    lsn: u64,
    chain: Option<u32>,
) -> Result<Prepared> {
    let layout = assign(st, meta, geo, generation, lsn, chain)?;
    let st: &State = st;
    encode(&layout, || st)
}

/// Writes the prepared blocks (all at once, through `io`) and flushes.
pub fn write_runs(
    dev: &dyn BlockDevice,
    io: &mut dyn BatchIo,
    runs: &[(u64, AlignedBuf)],
) -> Result<Written> {
    let writes: Vec<(u64, &[u8])> = runs.iter().map(|(p, b)| (p * BLOCK, &b[..])).collect();
    io.write_all(&writes)?;
    dev.flush()?;
    Ok(Written {
        encoding: std::time::Duration::ZERO,
        writes: runs.len() as u64,
        bytes: runs.iter().map(|(_, b)| b.len() as u64).sum(),
    })
}

/// Writes `sb` to its slot and flushes (the moment the new checkpoint takes effect), then
/// writes the same superblock to the other slot and flushes again: from then on one damaged
/// copy cannot roll the container back to an older checkpoint.
pub fn write_superblock(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    let mut ab = AlignedBuf::blocks(1);
    ab.copy_from_slice(&sb.encode());
    for slot in [sb.slot(), 1 - sb.slot()] {
        dev.write_at(&ab, slot * BLOCK)?;
        dev.flush()?;
    }
    Ok(())
}

/// Rewrites the slot that does not hold `sb` (found damaged or stale at open) and flushes.
pub fn repair_superblock_copy(dev: &dyn BlockDevice, sb: &Superblock, slot: u64) -> Result<()> {
    let mut ab = AlignedBuf::blocks(1);
    ab.copy_from_slice(&sb.encode());
    dev.write_at(&ab, slot * BLOCK)?;
    dev.flush()?;
    Ok(())
}

/// A checkpoint frozen at one LSN: placed, its usage table and root encoded, its trees
/// pinned (the running maps go on changing, the nodes it names do not), not yet written.
pub struct Frozen {
    layout: Layout,
    /// The superblock that makes it take effect.
    superblock: Superblock,
    /// Journal blocks it holds: the live part of the ring when it froze.
    folded: u64,
    /// Metadata segments writers filled before it froze: they close when it commits.
    retired: Vec<u64>,
    /// Segments emptied before it froze: free once it commits. Those emptied later stay
    /// pending, records after the freeze point (which a recovery from it replays) may still
    /// name their blocks.
    releasable: Vec<(u64, u64)>,
}

/// Freezes the maps at the newest record (every reserved record must be applied: the caller
/// waited for the journal to be quiet): places every dirty node and pins the trees, so that
/// [`encode_frozen`] can encode them after the journal lock is let go. With `fresh`, the next
/// record starts a new chain (nothing may be written until the checkpoint commits: the caller
/// keeps the journal lock); otherwise records go on from the chain as it is, into the ring
/// past the freeze point, while the checkpoint encodes and writes.
pub fn freeze(store: &Store, j: &mut JournalState, fresh: bool) -> Result<Frozen> {
    let generation = j.superblock.generation + 1;
    let lsn = j.cursor.next_lsn - 1;
    let chain = (!fresh).then_some(j.cursor.prev_crc);
    // No leaf written ahead is placed but unsettled while this checkpoint freezes.
    let mut prewriter = store.lock(&store.prewriter);
    let (layout, releasable) = {
        let mut st = store.write_lock(&store.state);
        let layout = assign(
            &mut st,
            &mut j.meta_writer,
            &j.superblock.geometry,
            generation,
            lsn,
            chain,
        )?;
        let maps = &mut st.maps;
        let (lba_roots, vba_root, seq) = (maps.lba_roots(), maps.vba_root, maps.seq);
        maps.lba.pin(&lba_roots, seq);
        maps.vba.pin(&[vba_root], seq);
        (layout, st.sut.pending_segments())
    };
    let retired = (j.meta_writer.retired.drain(..))
        .chain(prewriter.retired.drain(..))
        .collect();
    let mut incompat = j.superblock.incompat | INCOMPAT_CIRCULAR_JOURNAL;
    if incompat & INCOMPAT_FLUSH_MARKS != 0 {
        // Every mark in the journal was written after a flush: replay may trust them all.
        incompat |= INCOMPAT_MARKED_REPLAY;
    }
    if layout.root_blocks > 1 {
        // From this checkpoint on, a Keel that reads only one-block roots refuses the
        // container instead of calling the root corrupt.
        incompat |= super::superblock::INCOMPAT_LONG_ROOT;
    }
    let superblock = Superblock {
        generation,
        checkpoint_pba: layout.root_pba,
        incompat,
        journal_head: j.cursor.pos % j.ring.blocks,
        ..j.superblock
    };
    if fresh {
        j.cursor.prev_crc = layout.chain_seed;
    }
    let folded = j.ring.used;
    j.cursor.records = 0;
    Ok(Frozen {
        layout,
        superblock,
        folded,
        retired,
        releasable,
    })
}

/// Encodes a frozen checkpoint's nodes, taking the maps' lock a chunk at a time (records go
/// on meanwhile), then unpins its trees. Needs no other lock.
pub fn encode_frozen(store: &Store, f: &Frozen) -> Result<Prepared> {
    let prepared = encode(&f.layout, || store.read_lock(&store.state));
    let mut st = store.write_lock(&store.state);
    st.maps.lba.unpin();
    st.maps.vba.unpin();
    prepared
}

/// Encodes and writes a frozen checkpoint's blocks and its superblock; needs no lock.
pub fn write_frozen(store: &Store, f: &Frozen, io: &mut dyn BatchIo) -> Result<Written> {
    let t0 = std::time::Instant::now();
    let prepared = encode_frozen(store, f)?;
    let encoding = t0.elapsed();
    let mut written = write_runs(store.dev.as_ref(), io, &prepared.runs)?;
    written.encoding = encoding;
    write_superblock(store.dev.as_ref(), &f.superblock)?;
    written.writes += 2;
    written.bytes += 2 * BLOCK;
    Ok(written)
}

/// The frozen checkpoint is durable: the ring's head moves past what it holds, and the
/// segments emptied before it froze may be reused, except those a read in flight still reads
/// from (they wait for a later checkpoint). The caller holds the journal lock.
pub fn commit(store: &Store, j: &mut JournalState, f: Frozen) {
    j.superblock = f.superblock;
    j.ring.fold(f.folded, f.superblock.journal_head);
    let mut st = store.write_lock(&store.state);
    for seg in &f.retired {
        st.sut.close(*seg, AT_CHECKPOINT);
    }
    let retired = f.retired.iter().map(|s| (*s, AT_CHECKPOINT));
    let freed = st
        .sut
        .release_pending_of(f.releasable.iter().copied().chain(retired), &|seg| {
            store.pins.is_pinned(seg)
        });
    crate::store::stats::Counters::add(&store.stats.segments_freed, freed);
}

/// One checkpoint of an open store, start to end, with the journal lock held throughout (no
/// record is written meanwhile); the next record starts a new chain.
pub fn checkpoint(store: &Store, j: &mut JournalState, io: &mut dyn BatchIo) -> Result<Written> {
    let frozen = freeze(store, j, true)?;
    let written = write_frozen(store, &frozen, io)?;
    commit(store, j, frozen);
    Ok(written)
}
