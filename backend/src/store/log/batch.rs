//! Turns one batch of guest requests into per-block changes: sorted by block, overlapping
//! requests resolved in submission order, sub-block writes merged into whole blocks
//! (read-modify-write), whole-block discards and write-zeroes turned into unmapped ranges.

use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, BLOCK_SIZE, SECTOR};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// One guest request of a batch.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    Write { offset: u64, data: &'a [u8] },
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

impl Op<'_> {
    fn range(&self) -> (u64, u64) {
        match *self {
            Op::Write { offset, data } => (offset, data.len() as u64),
            Op::Discard { offset, len } | Op::WriteZeroes { offset, len } => (offset, len),
        }
    }

    /// Whether the request covers whole blocks only: planning it reads nothing.
    pub fn whole_blocks(&self) -> bool {
        let (offset, len) = self.range();
        offset.is_multiple_of(BLOCK) && len.is_multiple_of(BLOCK)
    }
}

/// Checks that `[offset, offset + len)` is sector-aligned and inside the disk.
pub fn check_request(offset: u64, len: u64, capacity: u64) -> Result<()> {
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(StoreError::Misaligned { offset, len });
    }
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(StoreError::OutOfRange {
            offset,
            len,
            capacity,
        }),
    }
}

/// The batch's effect, block by block.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// New contents of whole blocks, by LBA block number: the guest's bytes where a request
    /// covers the whole block, a merged copy where it does not.
    pub data: BTreeMap<u64, Cow<'a, [u8]>>,
    /// Block ranges `(first, count)` that read as zeroes afterwards, sorted and merged.
    /// They are applied before `data`; no block of `data` lies in them.
    pub unmap: Vec<(u64, u64)>,
    /// Bytes the guest asked to change.
    pub guest_bytes: u64,
}

/// Builds the plan; `read_block(lba, buf)` supplies current contents for partial blocks.
pub fn plan<'a>(
    ops: &[Op<'a>],
    capacity: u64,
    read_block: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Plan<'a>> {
    for op in ops {
        let (o, l) = op.range();
        check_request(o, l, capacity)?;
    }
    let mut p = Plan::default();
    // Unmapped ranges as [start, end) in submission order, merged at the end.
    let mut unmapped: Vec<(u64, u64)> = Vec::new();
    for op in ops {
        let (offset, len) = op.range();
        p.guest_bytes += len;
        if len == 0 {
            continue;
        }
        let (first, last) = (offset / BLOCK, (offset + len - 1) / BLOCK);
        if !matches!(op, Op::Write { .. }) {
            // Whole blocks inside the range are unmapped; edges are zeroed in place below.
            let whole_lo = offset.div_ceil(BLOCK);
            let whole_hi = (offset + len) / BLOCK;
            if whole_lo < whole_hi {
                let doomed: Vec<u64> = p.data.range(whole_lo..whole_hi).map(|(k, _)| *k).collect();
                for k in doomed {
                    p.data.remove(&k);
                }
                unmapped.push((whole_lo, whole_hi));
            }
        }
        for lba in first..=last {
            let bstart = lba * BLOCK;
            let lo = offset.max(bstart);
            let hi = (offset + len).min(bstart + BLOCK);
            let whole = lo == bstart && hi == bstart + BLOCK;
            let (in_lo, in_hi) = ((lo - bstart) as usize, (hi - bstart) as usize);
            match op {
                Op::Write { data, .. } => {
                    let src_lo = (lo - offset) as usize;
                    let src = &data[src_lo..src_lo + (hi - lo) as usize];
                    if whole {
                        p.data.insert(lba, Cow::Borrowed(src));
                    } else {
                        let block = current(&mut p, &unmapped, lba, read_block)?;
                        block[in_lo..in_hi].copy_from_slice(src);
                    }
                }
                _ if whole => {}
                _ => {
                    let block = current(&mut p, &unmapped, lba, read_block)?;
                    block[in_lo..in_hi].fill(0);
                }
            }
        }
    }
    unmapped.sort_unstable();
    for (s, e) in unmapped {
        match p.unmap.last_mut() {
            Some((ls, lc)) if s <= *ls + *lc => *lc = (*lc).max(e - *ls),
            _ => p.unmap.push((s, e - s)),
        }
    }
    Ok(p)
}

/// The block as this batch has left it so far, loading it from the store if untouched.
fn current<'p>(
    p: &'p mut Plan<'_>,
    unmapped: &[(u64, u64)],
    lba: u64,
    read_block: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<&'p mut [u8]> {
    match p.data.entry(lba) {
        std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut().to_mut()),
        std::collections::btree_map::Entry::Vacant(v) => {
            let mut b = vec![0u8; BLOCK_SIZE];
            if !unmapped.iter().any(|(s, e)| lba >= *s && lba < *e) {
                read_block(lba, &mut b)?;
            }
            Ok(v.insert(Cow::Owned(b)).to_mut())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_read(_: u64, _: &mut [u8]) -> Result<()> {
        panic!("unexpected read")
    }

    #[test]
    fn later_requests_win_and_blocks_are_sorted() {
        let a = vec![1u8; 8192];
        let b = vec![2u8; 4096];
        let ops = [
            Op::Write {
                offset: 8192,
                data: &a,
            },
            Op::Write {
                offset: 0,
                data: &b,
            },
            Op::Write {
                offset: 12288,
                data: &b,
            },
        ];
        let p = plan(&ops, 1 << 20, &mut no_read).unwrap();
        let keys: Vec<u64> = p.data.keys().copied().collect();
        assert_eq!(keys, vec![0, 2, 3]);
        assert_eq!(p.data[&2][0], 1);
        assert_eq!(p.data[&3][0], 2);
        assert_eq!(p.guest_bytes, 16384);
    }

    #[test]
    fn sub_block_writes_read_modify_write() {
        let s = vec![9u8; 512];
        let ops = [Op::Write {
            offset: 4096 + 1024,
            data: &s,
        }];
        let mut reads = 0;
        let p = plan(&ops, 1 << 20, &mut |lba, buf: &mut [u8]| {
            assert_eq!(lba, 1);
            reads += 1;
            buf.fill(5);
            Ok(())
        })
        .unwrap();
        assert_eq!(reads, 1);
        let blk = &p.data[&1];
        assert_eq!((blk[0], blk[1024], blk[1535], blk[1536]), (5, 9, 9, 5));
    }

    #[test]
    fn discard_then_write_and_partial_zeroes() {
        let w = vec![3u8; 4096];
        let ops = [
            Op::Write {
                offset: 0,
                data: &w,
            },
            Op::Discard {
                offset: 0,
                len: 5 * 4096,
            },
            Op::Write {
                offset: 4096,
                data: &w,
            },
            Op::WriteZeroes {
                offset: 6 * 4096,
                len: 1024,
            },
        ];
        let p = plan(&ops, 1 << 20, &mut |_, b: &mut [u8]| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        assert_eq!(p.unmap, vec![(0, 5)]);
        assert_eq!(p.data.keys().copied().collect::<Vec<_>>(), vec![1, 6]);
        assert_eq!(p.data[&6][1023], 0);
        assert_eq!(p.data[&6][1024], 7);
    }

    #[test]
    fn rejects_misaligned_and_out_of_range() {
        let w = vec![0u8; 512];
        let r = plan(
            &[Op::Write {
                offset: 100,
                data: &w,
            }],
            1 << 20,
            &mut no_read,
        );
        assert!(matches!(r, Err(StoreError::Misaligned { .. })));
        let r = plan(
            &[Op::Discard {
                offset: 1 << 20,
                len: 512,
            }],
            1 << 20,
            &mut no_read,
        );
        assert!(matches!(r, Err(StoreError::OutOfRange { .. })));
        let r = plan(
            &[Op::Discard {
                offset: u64::MAX - 511,
                len: 1024,
            }],
            1 << 20,
            &mut no_read,
        );
        assert!(matches!(r, Err(StoreError::OutOfRange { .. })));
    }
}
