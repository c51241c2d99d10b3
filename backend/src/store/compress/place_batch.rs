//! Placing a compressed batch: its physical blocks (packed and raw) take blocks and VBAs
//! from the writer the way a batch without compression does, one Map entry per guest block.

use super::codec::Codec;
use super::pack::{Packed, Physical, pack_batch};
use super::place;
use crate::store::Store;
use crate::store::error::Result;
use crate::store::journal::Entry;
use crate::store::layout::BLOCK;
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::write::{MAX_PARTS, Waits};
use crate::store::log::write_plan::{Part, Run};

impl Store {
    /// Compresses and packs a batch's blocks (`sources`) for `writer` (whose run of blocks
    /// that did not shrink decides which are tried) with `codec` and the container's
    /// dictionary; without one yet, the blocks that compressed go to its sample.
    pub(in crate::store) fn pack(&self, writer: usize, codec: Codec, sources: &[&[u8]]) -> Packed {
        let dict = self.dict.get();
        let grain = self.data.grain();
        let misses = &self.misses[writer % self.misses.len()];
        let packed = pack_batch(codec, dict.map(|d| &**d), grain, sources, misses);
        if dict.is_none() {
            self.dict.offer(sources, &packed);
        }
        packed
    }

    /// Takes blocks and VBAs for `packed`, the packing of the batch's blocks (`lbas`, their
    /// bytes `sources` and where each is written from, `parts`), adding its Map entries to
    /// `entries` and its writes to `runs` (taking blocks as `waits` allows). Returns the
    /// physical blocks written.
    pub(in crate::store) fn place_packed<'a>(
        &self,
        w: &mut SegmentWriter,
        (lbas, sources, parts): (&[u64], &[&[u8]], &[Part<'a>]),
        packed: &Packed,
        entries: &mut Vec<Entry>,
        runs: &mut Vec<Run<'a>>,
        waits: Waits,
    ) -> Result<u64> {
        let phys = &packed.phys;
        let mut i = 0;
        while i < phys.len() {
            let (pba, n) = self.take_guest_blocks(w, phys.len() - i, waits)?;
            let vbas: usize = phys[i..i + n]
                .iter()
                .map(|p| match p {
                    Physical::Raw(_) => 1,
                    Physical::Packed { slots, .. } => slots.len(),
                })
                .sum();
            let mut vba = {
                // As for a batch without compression: the writer lock orders VBAs with
                // the commit.
                let mut st = self.write_lock(&self.state);
                let v = st.maps.next_vba;
                st.maps.next_vba += vbas as u64;
                v
            };
            let mut run = Vec::with_capacity(n);
            for (j, p) in phys[i..i + n].iter().enumerate() {
                let at = pba + j as u64;
                match p {
                    Physical::Raw(b) => {
                        entries.push(Entry::Map {
                            lba: lbas[*b],
                            vba,
                            pba: at,
                            crc: self.prepared_crc(vba, sources[*b]),
                        });
                        vba += 1;
                        run.push(parts[*b]);
                    }
                    Physical::Packed { index, slots } => {
                        let data = packed.buf.block(*index);
                        for (b, slot) in slots {
                            entries.push(Entry::Map {
                                lba: lbas[*b],
                                vba,
                                pba: place::packed(at, *slot, self.data.grain()),
                                crc: self.prepared_crc(vba, &data[slot.range()]),
                            });
                            vba += 1;
                        }
                        run.push(Part::Packed(*index));
                    }
                }
            }
            for (k, chunk) in run.chunks(MAX_PARTS).enumerate() {
                runs.push(((pba + (k * MAX_PARTS) as u64) * BLOCK, chunk.to_vec()));
            }
            i += n;
        }
        Ok(phys.len() as u64)
    }
}
