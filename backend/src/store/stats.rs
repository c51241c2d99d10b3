//! Counters for the store's behaviour: guest I/O against device I/O, checksums, checkpoints.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, updated with relaxed atomics on the I/O path.
#[derive(Default)]
pub struct Counters {
    pub guest_writes: AtomicU64,
    pub guest_write_bytes: AtomicU64,
    pub guest_reads: AtomicU64,
    pub guest_read_bytes: AtomicU64,
    pub batches: AtomicU64,
    pub data_writes: AtomicU64,
    pub data_write_bytes: AtomicU64,
    pub journal_writes: AtomicU64,
    pub journal_write_bytes: AtomicU64,
    pub checkpoint_writes: AtomicU64,
    pub checkpoint_write_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub cleaner_moves: AtomicU64,
    pub cleaner_write_bytes: AtomicU64,
    pub segments_cleaned: AtomicU64,
    pub cleaner_read_bytes: AtomicU64,
    pub cleaner_read_us: AtomicU64,
    pub cleaner_write_us: AtomicU64,
    pub writer_cleaned: AtomicU64,
    pub segments_freed: AtomicU64,
    pub checkpoint_us: AtomicU64,
    pub checkpoint_max_us: AtomicU64,
    pub checkpoint_waits: AtomicU64,
    pub checkpoint_wait_us: AtomicU64,
    pub segment_waits: AtomicU64,
    pub segment_wait_us: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_marks: AtomicU64,
    pub meta_gathers: AtomicU64,
    pub meta_nodes_marked: AtomicU64,
    pub meta_mark_us: AtomicU64,
    pub mark_releases: AtomicU64,
    pub segments_freed_by_marks: AtomicU64,
    pub paced_batches: AtomicU64,
    pub paced_us: AtomicU64,
    pub plans_pipelined: AtomicU64,
    pub plans_refused: AtomicU64,
    pub plans_refused_late: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Raises `c` to `n` if it is lower (a maximum seen).
    pub fn max(c: &AtomicU64, n: u64) {
        c.fetch_max(n, Relaxed);
    }

    /// Adds the microseconds since `t0` to `c`; returns them.
    pub fn add_since(c: &AtomicU64, t0: std::time::Instant) -> u64 {
        let us = t0.elapsed().as_micros() as u64;
        c.fetch_add(us, Relaxed);
        us
    }

    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Relaxed);
        Stats {
            guest_writes: g(&self.guest_writes),
            guest_write_bytes: g(&self.guest_write_bytes),
            guest_reads: g(&self.guest_reads),
            guest_read_bytes: g(&self.guest_read_bytes),
            batches: g(&self.batches),
            data_writes: g(&self.data_writes),
            data_write_bytes: g(&self.data_write_bytes),
            journal_writes: g(&self.journal_writes),
            journal_write_bytes: g(&self.journal_write_bytes),
            checkpoint_writes: g(&self.checkpoint_writes),
            checkpoint_write_bytes: g(&self.checkpoint_write_bytes),
            checkpoints: g(&self.checkpoints),
            cleaner_moves: g(&self.cleaner_moves),
            cleaner_write_bytes: g(&self.cleaner_write_bytes),
            segments_cleaned: g(&self.segments_cleaned),
            cleaner_read_bytes: g(&self.cleaner_read_bytes),
            cleaner_read_us: g(&self.cleaner_read_us),
            cleaner_write_us: g(&self.cleaner_write_us),
            writer_cleaned: g(&self.writer_cleaned),
            segments_freed: g(&self.segments_freed),
            checkpoint_us: g(&self.checkpoint_us),
            checkpoint_max_us: g(&self.checkpoint_max_us),
            checkpoint_waits: g(&self.checkpoint_waits),
            checkpoint_wait_us: g(&self.checkpoint_wait_us),
            segment_waits: g(&self.segment_waits),
            segment_wait_us: g(&self.segment_wait_us),
            checksum_errors: g(&self.checksum_errors),
            flushes: g(&self.flushes),
            flush_marks: g(&self.flush_marks),
            meta_gathers: g(&self.meta_gathers),
            meta_nodes_marked: g(&self.meta_nodes_marked),
            meta_mark_us: g(&self.meta_mark_us),
            mark_releases: g(&self.mark_releases),
            segments_freed_by_marks: g(&self.segments_freed_by_marks),
            paced_batches: g(&self.paced_batches),
            paced_us: g(&self.paced_us),
            plans_pipelined: g(&self.plans_pipelined),
            plans_refused: g(&self.plans_refused),
            plans_refused_late: g(&self.plans_refused_late),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Guest write-type operations (write, discard, write-zeroes) submitted.
    pub guest_writes: u64,
    pub guest_write_bytes: u64,
    pub guest_reads: u64,
    pub guest_read_bytes: u64,
    /// `write_batch` calls that committed.
    pub batches: u64,
    /// Device writes of guest data (one per contiguous run).
    pub data_writes: u64,
    pub data_write_bytes: u64,
    /// Journal record writes (one per batch, plus one per cleaner step).
    pub journal_writes: u64,
    pub journal_write_bytes: u64,
    /// Device writes made by checkpoints (node runs, SUT, root block, superblock).
    pub checkpoint_writes: u64,
    pub checkpoint_write_bytes: u64,
    pub checkpoints: u64,
    /// Blocks the cleaner copied and remapped.
    pub cleaner_moves: u64,
    pub cleaner_write_bytes: u64,
    /// Data segments the cleaner emptied (free at the next checkpoint or durable mark).
    pub segments_cleaned: u64,
    /// Bytes the cleaner read from its victims.
    pub cleaner_read_bytes: u64,
    /// Time the cleaner spent reading victims, in microseconds.
    pub cleaner_read_us: u64,
    /// Time the cleaner spent writing its copies and committing their moves (the map updates
    /// included), in microseconds.
    pub cleaner_write_us: u64,
    /// Of `segments_cleaned`, those a guest writer cleaned itself because it found no free
    /// segment (the guest waited for them).
    pub writer_cleaned: u64,
    /// Segments given back to the free list by checkpoints.
    pub segments_freed: u64,
    /// Time checkpoints held the journal (no record is reserved meanwhile), in microseconds:
    /// while they freeze the maps (the writes that follow do not hold it).
    pub checkpoint_us: u64,
    /// The longest such hold, in microseconds.
    pub checkpoint_max_us: u64,
    /// Batches that waited for a checkpoint (one freezing, a full journal ring).
    pub checkpoint_waits: u64,
    /// Time those batches waited, in microseconds.
    pub checkpoint_wait_us: u64,
    /// Guest batches that found no free segment and had to make room or wait.
    pub segment_waits: u64,
    /// Time those batches spent getting a segment (cleaning, checkpoints, waiting), in
    /// microseconds.
    pub segment_wait_us: u64,
    /// Data blocks whose crc32c did not match on read.
    pub checksum_errors: u64,
    pub flushes: u64,
    /// Journal records written after a flush to say which records it made durable.
    pub flush_marks: u64,
    /// Times sparse metadata segments were gathered (nodes marked for the next checkpoint).
    pub meta_gathers: u64,
    /// Tree nodes those gatherings marked dirty.
    pub meta_nodes_marked: u64,
    /// Time the marking held the maps' lock, in microseconds (records wait to apply
    /// meanwhile; the journal is not held).
    pub meta_mark_us: u64,
    /// Releases of emptied data segments by a durable flush mark (instead of a checkpoint).
    pub mark_releases: u64,
    /// Segments those gave back to the free list.
    pub segments_freed_by_marks: u64,
    /// Guest batches delayed to the cleaner's pace because free space ran low, and the
    /// time they were delayed, in microseconds.
    pub paced_batches: u64,
    pub paced_us: u64,
    /// Batches planned beside one in flight on the same queue (a plan that may not wait,
    /// accepted).
    pub plans_pipelined: u64,
    /// Batches a plan that may not wait refused (a queue with a batch in flight then finished
    /// it and planned again, waiting as needed).
    pub plans_refused: u64,
    /// Of those, the ones refused after their blocks were taken (another writer took the
    /// last free segment or journal room first): their blocks are dead space.
    pub plans_refused_late: u64,
}

impl Stats {
    /// Metadata device writes (journal + checkpoint) per guest write.
    pub fn metadata_writes_per_guest_write(&self) -> f64 {
        (self.journal_writes + self.checkpoint_writes) as f64 / self.guest_writes.max(1) as f64
    }

    /// Bytes written to the device per byte written by the guest.
    pub fn write_amplification(&self) -> f64 {
        let dev = self.data_write_bytes
            + self.journal_write_bytes
            + self.checkpoint_write_bytes
            + self.cleaner_write_bytes;
        dev as f64 / self.guest_write_bytes.max(1) as f64
    }
}
