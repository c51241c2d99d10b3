//! Requests that survive a keeld restart (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
//!
//! While a frontend that negotiated the feature is attached, every queue worker marks each chain
//! it takes off the available ring in a memory area the frontend holds ([`region`]) and clears
//! the mark when the chain goes on the used ring. If keeld dies, the frontend (QEMU with
//! `reconnect-ms` on its chardev) reconnects to the restarted keeld and hands the area back; the
//! worker then runs the marked chains again, oldest first ([`chain`] walks them from their
//! heads), before anything new. The guest sees its requests complete, just late.

pub mod chain;
pub mod region;

pub use chain::HeadChain;
pub use region::{InflightError, InflightRegion, QueueInflight};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The inflight area of one frontend connection, installed by SET_INFLIGHT_FD and taken up by
/// each queue worker at its next wakeup (the generation tells it the area changed).
#[derive(Debug, Default)]
pub struct InflightSlot {
    region: Mutex<Option<Arc<InflightRegion>>>,
    generation: AtomicU64,
}

impl InflightSlot {
    pub fn install(&self, region: InflightRegion) {
        if let Ok(mut slot) = self.region.lock() {
            *slot = Some(Arc::new(region));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Bumped by every [`install`](Self::install).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn region(&self) -> Option<Arc<InflightRegion>> {
        self.region.lock().ok().and_then(|slot| slot.clone())
    }
}
