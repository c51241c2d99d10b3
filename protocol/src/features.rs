//! Feature bits a virtio-blk device and a vhost-user backend negotiate.
//!
//! Bit numbers, not masks: use [`bit`] to build a mask.

use virtio_bindings::bindings::virtio_blk as blk;
use virtio_bindings::bindings::virtio_config as cfg;
use virtio_bindings::bindings::virtio_ring as ring;

pub const VERSION_1: u32 = cfg::VIRTIO_F_VERSION_1;
pub const RING_INDIRECT_DESC: u32 = ring::VIRTIO_RING_F_INDIRECT_DESC;
pub const RING_EVENT_IDX: u32 = ring::VIRTIO_RING_F_EVENT_IDX;
pub const SIZE_MAX: u32 = blk::VIRTIO_BLK_F_SIZE_MAX;
pub const SEG_MAX: u32 = blk::VIRTIO_BLK_F_SEG_MAX;
pub const RO: u32 = blk::VIRTIO_BLK_F_RO;
pub const BLK_SIZE: u32 = blk::VIRTIO_BLK_F_BLK_SIZE;
pub const FLUSH: u32 = blk::VIRTIO_BLK_F_FLUSH;
pub const TOPOLOGY: u32 = blk::VIRTIO_BLK_F_TOPOLOGY;
pub const CONFIG_WCE: u32 = blk::VIRTIO_BLK_F_CONFIG_WCE;
pub const MQ: u32 = blk::VIRTIO_BLK_F_MQ;
pub const DISCARD: u32 = blk::VIRTIO_BLK_F_DISCARD;
pub const WRITE_ZEROES: u32 = blk::VIRTIO_BLK_F_WRITE_ZEROES;
/// Vhost-user's own bit: the frontend may ask for protocol features.
pub const VHOST_USER_PROTOCOL_FEATURES: u32 = 30;

/// The mask of one feature bit.
pub const fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// Whether `mask` has `feature` set.
pub const fn has(mask: u64, feature: u32) -> bool {
    mask & bit(feature) != 0
}

/// Names of the known bits set in `mask`, for logs and `keel-client info`.
pub fn names(mask: u64) -> Vec<&'static str> {
    const KNOWN: &[(u32, &str)] = &[
        (SIZE_MAX, "SIZE_MAX"),
        (SEG_MAX, "SEG_MAX"),
        (RO, "RO"),
        (BLK_SIZE, "BLK_SIZE"),
        (FLUSH, "FLUSH"),
        (TOPOLOGY, "TOPOLOGY"),
        (CONFIG_WCE, "CONFIG_WCE"),
        (MQ, "MQ"),
        (DISCARD, "DISCARD"),
        (WRITE_ZEROES, "WRITE_ZEROES"),
        (RING_INDIRECT_DESC, "RING_INDIRECT_DESC"),
        (RING_EVENT_IDX, "RING_EVENT_IDX"),
        (VHOST_USER_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
        (VERSION_1, "VERSION_1"),
    ];
    KNOWN
        .iter()
        .filter(|(b, _)| has(mask, *b))
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lists_only_set_bits() {
        let mask = bit(FLUSH) | bit(VERSION_1);
        assert_eq!(names(mask), vec!["FLUSH", "VERSION_1"]);
        assert!(has(mask, FLUSH));
        assert!(!has(mask, DISCARD));
    }
}
