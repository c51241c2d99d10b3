//! Hot/cold separation of guest writes. A block the guest overwrites soon after its previous
//! write is likely to be overwritten soon again (hot); a first write, or an overwrite of a block
//! left alone for long, is likely to stay (cold). Each guest writer fills one open segment with
//! cold blocks and another with hot ones, so a segment holds data of one temperature: hot
//! segments empty themselves before the cleaner gets to them, cold ones stay full and are left
//! alone, and the victims the cleaner does take hold little live data. The cleaner's
//! relocations go to segments of their own, also two: the live blocks of a young victim to
//! one, those of an old victim to the other.
//!
//! The temperature of a block is the age of its previous version: the data blocks written
//! since that version's segment was opened (the usage table's clock and stamps, in memory
//! only). Younger than the disk's blocks divided by [`HOT_AGE_DIVISOR`] is hot. After an open
//! every segment is stamped 0, as old as can be: overwrites count as cold until new segments
//! are written. Packed (compressed) batches are not separated.

use crate::store::Store;
use crate::store::error::Result;
use crate::store::layout::BLOCK;
use crate::store::log::alloc::SegmentWriter;
use crate::store::map::maps::Maps;
use crate::store::map::sut::Sut;

/// A previous version younger than the disk's blocks divided by this makes a block hot. The
/// clock counts the cleaner's copies too (about as many again as the guest's blocks on a full
/// disk). On a 90/10 hot set the hot tenth is rewritten about every ninth of the disk the
/// guest writes, the rest about every nine disks: one disk of the clock tells them apart with
/// few mistakes (a twentieth of the cold writes counted hot, a fiftieth of the hot ones cold).
pub const HOT_AGE_DIVISOR: u64 = 1;

/// Which of a guest writer's open segments a block goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Temperature {
    /// First writes and blocks whose previous version is old.
    Cold = 0,
    /// Blocks whose previous version is young.
    Hot = 1,
}

/// The temperature of data in segment `seg`: hot if the segment was opened (or its data, if
/// the cleaner copied it there, first written) fewer than `young` data blocks ago.
pub fn of_segment(sut: &Sut, seg: u64, young: u64) -> Temperature {
    let stamp = sut.stamp(seg);
    if stamp > 0 && sut.clock().saturating_sub(stamp) < young {
        Temperature::Hot
    } else {
        Temperature::Cold
    }
}

/// The temperature of a new write of `lba`: that of the segment its current version lives in
/// (cold for a first write).
pub fn of(maps: &Maps, sut: &Sut, seg_blocks: u64, young: u64, lba: u64) -> Temperature {
    match maps.lookup(lba) {
        Some((_, e)) => of_segment(sut, e.pba / seg_blocks, young),
        None => Temperature::Cold,
    }
}

impl Store {
    /// Data blocks of the usage table's clock under which a version is young (hot).
    pub(in crate::store) fn young_blocks(&self) -> u64 {
        self.capacity() / BLOCK / HOT_AGE_DIVISOR
    }

    /// Orders a batch's blocks (and their sources, index for index) cold first, then hot;
    /// returns the temperature of each block, in the new order.
    pub(in crate::store) fn order_by_temperature(
        &self,
        blocks: &mut Vec<(u64, &[u8])>,
        sources: &mut Vec<&[u8]>,
    ) -> Vec<Temperature> {
        let young = self.young_blocks();
        let temps: Vec<Temperature> = {
            let st = self.read_lock(&self.state);
            (blocks.iter())
                .map(|(lba, _)| of(&st.maps, &st.sut, self.geo.seg_blocks, young, *lba))
                .collect()
        };
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_by_key(|&i| temps[i]);
        *blocks = order.iter().map(|&i| blocks[i]).collect();
        *sources = order.iter().map(|&i| sources[i]).collect();
        order.iter().map(|&i| temps[i]).collect()
    }

    /// Takes blocks for the leading run of one temperature in `temps` (at least one) from
    /// `w`'s open segment for that temperature, as [`take_blocks`](Self::take_blocks) does.
    pub(in crate::store) fn take_blocks_by_temperature(
        &self,
        w: &mut SegmentWriter,
        temps: &[Temperature],
    ) -> Result<(u64, usize)> {
        let t = temps.first().copied().unwrap_or(Temperature::Cold);
        let run = temps.iter().take_while(|x| **x == t).count().max(1);
        self.take_blocks_at(w, t, run, false)
    }

    /// [`take_blocks`](Self::take_blocks) from `w`'s open segment for temperature `t`.
    pub(in crate::store) fn take_blocks_at(
        &self,
        w: &mut SegmentWriter,
        t: Temperature,
        want: usize,
        use_reserve: bool,
    ) -> Result<(u64, usize)> {
        w.select(t);
        let taken = self.take_blocks(w, want, use_reserve);
        w.select(Temperature::Cold);
        taken
    }
}
