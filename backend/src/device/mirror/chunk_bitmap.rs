//! A bitmap with one bit per chunk of the disk: tracking bitmaps (what an absent component
//! missed), sync bitmaps (what a resync has copied) and delta presence maps are all this type.

use bitvec::prelude::{BitVec, Lsb0};

/// One bit per `chunk_size` bytes of the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkBitmap {
    bits: BitVec<u8, Lsb0>,
}

impl ChunkBitmap {
    /// All chunks clear.
    pub fn new(chunks: u64) -> Self {
        Self {
            bits: BitVec::repeat(false, chunks as usize),
        }
    }

    /// All chunks set: a full resync.
    pub fn full(chunks: u64) -> Self {
        Self {
            bits: BitVec::repeat(true, chunks as usize),
        }
    }

    /// Rebuilds a bitmap of `chunks` bits from [`as_bytes`](Self::as_bytes); `None` if the
    /// byte count does not match.
    pub fn from_bytes(bytes: &[u8], chunks: u64) -> Option<Self> {
        if bytes.len() as u64 != chunks.div_ceil(8) {
            return None;
        }
        let mut bits = BitVec::<u8, Lsb0>::from_slice(bytes);
        bits.truncate(chunks as usize);
        Some(Self { bits })
    }

    /// The raw bytes, bit `i` in byte `i / 8`, least significant first.
    pub fn as_bytes(&self) -> &[u8] {
        self.bits.as_raw_slice()
    }

    /// Number of chunks covered.
    pub fn chunks(&self) -> u64 {
        self.bits.len() as u64
    }

    pub fn get(&self, chunk: u64) -> bool {
        self.bits.get(chunk as usize).is_some_and(|b| *b)
    }

    pub fn set(&mut self, chunk: u64) {
        if let Some(mut b) = self.bits.get_mut(chunk as usize) {
            *b = true;
        }
    }

    /// Whether every chunk in `first..=last` is set.
    pub fn all_set(&self, first: u64, last: u64) -> bool {
        self.bits
            .get(first as usize..=last as usize)
            .is_some_and(|s| s.all())
    }

    /// Sets every chunk in `first..=last` (clamped to the bitmap).
    pub fn set_range(&mut self, first: u64, last: u64) {
        let end = (last as usize + 1).min(self.bits.len());
        if let Some(s) = self.bits.get_mut(first as usize..end) {
            s.fill(true);
        }
    }

    pub fn count_ones(&self) -> u64 {
        self.bits.count_ones() as u64
    }

    pub fn is_clear(&self) -> bool {
        self.bits.not_any()
    }

    /// Sets every chunk set in `other`.
    pub fn union_with(&mut self, other: &ChunkBitmap) {
        let n = self.bits.len().min(other.bits.len());
        self.bits[..n] |= &other.bits[..n];
    }

    /// Keeps only the chunks also set in `other`.
    pub fn intersect_with(&mut self, other: &ChunkBitmap) {
        let n = self.bits.len().min(other.bits.len());
        self.bits[..n] &= &other.bits[..n];
        self.bits[n..].fill(false);
    }

    /// Clears every chunk set in `other`.
    pub fn subtract(&mut self, other: &ChunkBitmap) {
        for i in other.bits.iter_ones() {
            if let Some(mut b) = self.bits.get_mut(i) {
                *b = false;
            }
        }
    }

    /// Whether every chunk set here is also set in `other`.
    pub fn is_subset_of(&self, other: &ChunkBitmap) -> bool {
        self.bits.iter_ones().all(|i| other.get(i as u64))
    }

    /// The first set chunk at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let tail = self.bits.get(from as usize..)?;
        tail.first_one().map(|i| from + i as u64)
    }

    /// Set chunks in order.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter_ones().map(|i| i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_counts_and_round_trip() {
        let mut b = ChunkBitmap::new(21);
        b.set_range(3, 5);
        b.set(20);
        b.set(99);
        assert_eq!(b.count_ones(), 4);
        assert!(b.all_set(3, 5) && !b.all_set(3, 6) && !b.all_set(20, 21));
        assert_eq!(b.next_set(6), Some(20));
        assert_eq!(b.next_set(21), None);
        let back = ChunkBitmap::from_bytes(b.as_bytes(), 21).unwrap();
        assert_eq!(back, b);
        assert!(ChunkBitmap::from_bytes(b.as_bytes(), 40).is_none());
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![3, 4, 5, 20]);
    }

    #[test]
    fn set_algebra() {
        let mut a = ChunkBitmap::new(10);
        a.set_range(0, 4);
        let mut b = ChunkBitmap::new(10);
        b.set_range(3, 7);
        let mut u = a.clone();
        u.union_with(&b);
        assert_eq!(u.count_ones(), 8);
        u.subtract(&a);
        assert_eq!(u.iter_set().collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(u.is_subset_of(&b) && !a.is_subset_of(&b));
        let mut i = a.clone();
        i.intersect_with(&b);
        assert_eq!(i.iter_set().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(ChunkBitmap::full(10).count_ones(), 10);
    }
}
