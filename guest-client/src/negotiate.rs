//! Which virtio and vhost-user protocol features the driver asks for, and which it cannot do
//! without.

use keel_protocol::features::{self, bit, names};
use vhost::vhost_user::message::VhostUserProtocolFeatures as Proto;

use crate::error::{Error, Result};

/// Without these the driver cannot work: virtio 1.x rings and vhost-user protocol features
/// (needed to read the config space and to enable rings).
pub const REQUIRED: u64 = bit(features::VERSION_1) | bit(features::VHOST_USER_PROTOCOL_FEATURES);

/// Everything the driver understands.
pub const UNDERSTOOD: u64 = REQUIRED
    | bit(features::SIZE_MAX)
    | bit(features::SEG_MAX)
    | bit(features::RO)
    | bit(features::BLK_SIZE)
    | bit(features::FLUSH)
    | bit(features::TOPOLOGY)
    | bit(features::CONFIG_WCE)
    | bit(features::MQ)
    | bit(features::DISCARD)
    | bit(features::WRITE_ZEROES)
    | bit(features::RING_INDIRECT_DESC)
    | bit(features::RING_EVENT_IDX);

/// Ring features a caller may turn off (to test or compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFeatures {
    pub indirect: bool,
    pub event_idx: bool,
}

/// The virtio features to acknowledge, given what the device offers.
pub fn virtio_features(offered: u64, ring: RingFeatures) -> Result<u64> {
    let missing = REQUIRED & !offered;
    if missing != 0 {
        return Err(Error::MissingFeatures(names(missing).join(", ")));
    }
    let mut wanted = UNDERSTOOD;
    if !ring.indirect {
        wanted &= !bit(features::RING_INDIRECT_DESC);
    }
    if !ring.event_idx {
        wanted &= !bit(features::RING_EVENT_IDX);
    }
    Ok(offered & wanted)
}

/// Protocol features the driver cannot work without: GET_CONFIG.
pub fn required_protocol() -> Proto {
    Proto::CONFIG
}

/// The protocol features to acknowledge, given what the server offers.
pub fn protocol_features(offered: Proto) -> Result<Proto> {
    let missing = required_protocol() - offered;
    if !missing.is_empty() {
        return Err(Error::RefusedProtocolFeatures(protocol_names(missing)));
    }
    let wanted = Proto::MQ | Proto::REPLY_ACK | Proto::CONFIG | Proto::CONFIGURE_MEM_SLOTS;
    Ok(offered & wanted)
}

/// Names of protocol feature bits, for errors and `keel-client info`.
pub fn protocol_names(p: Proto) -> String {
    let names: Vec<&str> = p.iter_names().map(|(n, _)| n).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_RING: RingFeatures = RingFeatures {
        indirect: true,
        event_idx: true,
    };

    #[test]
    fn refuses_a_device_without_version_1() {
        let offered = bit(features::VHOST_USER_PROTOCOL_FEATURES) | bit(features::FLUSH);
        match virtio_features(offered, ALL_RING) {
            Err(Error::MissingFeatures(m)) => assert_eq!(m, "VERSION_1"),
            other => panic!("expected MissingFeatures, got {other:?}"),
        }
    }

    #[test]
    fn acknowledges_only_understood_and_enabled_bits() {
        let offered = REQUIRED | bit(features::FLUSH) | bit(features::RING_EVENT_IDX) | bit(40);
        let acked = virtio_features(offered, ALL_RING).unwrap();
        assert_eq!(
            acked,
            REQUIRED | bit(features::FLUSH) | bit(features::RING_EVENT_IDX)
        );
        let no_event = RingFeatures {
            event_idx: false,
            ..ALL_RING
        };
        assert_eq!(
            virtio_features(offered, no_event).unwrap(),
            REQUIRED | bit(features::FLUSH)
        );
    }

    #[test]
    fn protocol_without_config_is_refused() {
        match protocol_features(Proto::MQ | Proto::REPLY_ACK) {
            Err(Error::RefusedProtocolFeatures(m)) => assert_eq!(m, "CONFIG"),
            other => panic!("expected RefusedProtocolFeatures, got {other:?}"),
        }
        let acked = protocol_features(Proto::all()).unwrap();
        assert!(acked.contains(Proto::CONFIG | Proto::MQ | Proto::REPLY_ACK));
        assert!(!acked.contains(Proto::INFLIGHT_SHMFD));
    }
}
