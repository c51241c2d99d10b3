//! The virtio-blk configuration space (`struct virtio_blk_config`), encoded by hand.

/// Bytes of the config space Keel fills: through `write_zeroes_may_unmap` and its padding.
/// A frontend may ask for more (newer fields); those read as zero.
pub const CONFIG_SIZE: usize = 60;

/// The fields of the virtio-blk config space that Keel uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    /// 1 = write-back cache (FLUSH needed for durability), 0 = write-through.
    pub wce: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry, unused.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = self.alignment_offset;
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[32] = self.wce;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// Decodes a config space read by a driver; missing trailing bytes read as zero.
    pub fn from_bytes(raw: &[u8]) -> Self {
        let mut b = [0u8; CONFIG_SIZE];
        let n = raw.len().min(CONFIG_SIZE);
        b[..n].copy_from_slice(&raw[..n]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[0..8]);
        Self {
            capacity: u64::from_le_bytes(cap),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            physical_block_exp: b[24],
            alignment_offset: b[25],
            min_io_size: u16_at(26),
            opt_io_size: u32_at(28),
            wce: b[32],
            num_queues: u16_at(34),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56],
        }
    }

    /// Reads `len` bytes at `offset` the way a frontend's GET_CONFIG does: past the end is zero.
    pub fn read_window(&self, offset: usize, len: usize) -> Vec<u8> {
        let full = self.to_bytes();
        (offset..offset.saturating_add(len))
            .map(|i| full.get(i).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let c = BlkConfig {
            capacity: 1 << 21,
            size_max: 1 << 20,
            seg_max: 126,
            blk_size: 4096,
            physical_block_exp: 3,
            alignment_offset: 0,
            min_io_size: 8,
            opt_io_size: 256,
            wce: 1,
            num_queues: 4,
            max_discard_sectors: 1 << 22,
            max_discard_seg: 1,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 1 << 22,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
        };
        assert_eq!(BlkConfig::from_bytes(&c.to_bytes()), c);
    }

    #[test]
    fn window_past_end_reads_zero() {
        let c = BlkConfig {
            capacity: 0xffff,
            ..Default::default()
        };
        let w = c.read_window(0, 80);
        assert_eq!(w.len(), 80);
        assert_eq!(&w[0..2], &[0xff, 0xff]);
        assert!(w[CONFIG_SIZE..].iter().all(|&x| x == 0));
        assert_eq!(c.read_window(1000, 4), vec![0; 4]);
    }
}
