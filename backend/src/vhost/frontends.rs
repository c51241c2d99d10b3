//! Which of a disk's attached frontends is served.
//!
//! A disk accepts a second frontend while one is attached: during a live migration on one host
//! the destination QEMU connects to the same socket as the source (libvirt names the same
//! socket in both domains). Both are set up as usual (memory table, rings), but only one, the
//! *owner*, has its rings served; the other's rings wait. Ownership moves only when the owner
//! has no running ring left (QEMU stops every ring with GET_VRING_BASE when the source stops
//! the guest, or the owner disconnects) and the other frontend starts a ring. So a failed
//! migration, where the source restarts its rings and the destination never started its own,
//! leaves the source served; and nothing the waiting frontend does reaches the owner's rings.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

use log::info;

/// What the gate calls to make a frontend's waiting rings look again (its workers).
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// The arbiter of one disk, in its [`DiskContext`](super::backend::DiskContext).
#[derive(Default)]
pub struct FrontendGate {
    /// Last frontend id handed out (ids start at 1).
    last_id: AtomicU64,
    /// The served frontend's id, 0 for none: read without the lock on the data path.
    owner: AtomicU64,
    state: Mutex<GateState>,
}

impl std::fmt::Debug for FrontendGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendGate")
            .field("owner", &self.owner.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Default)]
struct GateState {
    /// Each attached frontend's started rings (served or waiting).
    running: BTreeMap<u64, BTreeSet<usize>>,
    wakers: BTreeMap<u64, Weak<dyn Wake>>,
}

impl FrontendGate {
    /// A new frontend's id.
    pub fn register(&self) -> u64 {
        self.last_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How to wake frontend `id`'s workers when it becomes the owner.
    pub fn set_waker(&self, id: u64, waker: Weak<dyn Wake>) {
        if let Ok(mut s) = self.state.lock() {
            s.wakers.insert(id, waker);
        }
    }

    /// Whether frontend `id` is the one served.
    pub fn is_owner(&self, id: u64) -> bool {
        self.owner.load(Ordering::Acquire) == id
    }

    /// Ring `ring` of frontend `id` is started; returns whether it may be served. It may when
    /// `id` owns the disk, or nobody does, or the owner has no running ring (then `id` takes
    /// the disk over).
    pub fn ring_started(&self, disk: &str, id: u64, ring: usize) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.running.entry(id).or_default().insert(ring);
        let owner = self.owner.load(Ordering::Acquire);
        if owner == id {
            return true;
        }
        let owner_runs = owner != 0 && s.running.get(&owner).is_some_and(|r| !r.is_empty());
        if owner_runs {
            return false;
        }
        self.owner.store(id, Ordering::Release);
        if owner != 0 {
            info!(
                "disk {disk}: frontend {id} takes the disk over (frontend {owner} stopped its \
                 rings)"
            );
        }
        true
    }

    /// Ring `ring` of frontend `id` stopped (GET_VRING_BASE, after its requests finished). When
    /// that was the owner's last running ring and another frontend has rings waiting, that
    /// frontend takes the disk over and its workers are woken.
    pub fn ring_stopped(&self, disk: &str, id: u64, ring: usize) {
        let waker = {
            let Ok(mut s) = self.state.lock() else {
                return;
            };
            if let Some(r) = s.running.get_mut(&id) {
                r.remove(&ring);
            }
            self.hand_over_if_idle(disk, &s, "stopped its rings")
        };
        wake(waker);
    }

    /// Whether any attached frontend has a started ring.
    pub fn any_running(&self) -> bool {
        self.state
            .lock()
            .map_or(true, |s| s.running.values().any(|r| !r.is_empty()))
    }

    /// Wakes the owner's workers (a ring that waited for the disk's engine may be served).
    pub fn wake_owner(&self) {
        let owner = self.owner.load(Ordering::Acquire);
        let waker = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.wakers.get(&owner).and_then(Weak::upgrade));
        wake(waker);
    }

    /// Frontend `id` is gone (its requests finished): the disk passes to a waiting frontend.
    pub fn detach(&self, disk: &str, id: u64) {
        let waker = {
            let Ok(mut s) = self.state.lock() else {
                return;
            };
            s.running.remove(&id);
            s.wakers.remove(&id);
            if self.owner.load(Ordering::Acquire) == id {
                self.owner.store(0, Ordering::Release);
            }
            self.hand_over_if_idle(disk, &s, "detached")
        };
        wake(waker);
    }

    /// With the owner idle (or gone), gives the disk to a frontend with waiting rings and
    /// returns its waker (called once the lock is released: a worker takes the lock too).
    fn hand_over_if_idle(
        &self,
        disk: &str,
        s: &GateState,
        why: &str,
    ) -> Option<std::sync::Arc<dyn Wake>> {
        let owner = self.owner.load(Ordering::Acquire);
        if owner != 0 && s.running.get(&owner).is_some_and(|r| !r.is_empty()) {
            return None;
        }
        let (&next, _) = s
            .running
            .iter()
            .find(|(id, rings)| **id != owner && !rings.is_empty())?;
        self.owner.store(next, Ordering::Release);
        info!("disk {disk}: frontend {next} takes the disk over (frontend {owner} {why})");
        s.wakers.get(&next).and_then(Weak::upgrade)
    }
}

fn wake(waker: Option<std::sync::Arc<dyn Wake>>) {
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn gate_with(n: usize) -> (FrontendGate, Vec<(u64, Arc<Count>)>) {
        let gate = FrontendGate::default();
        let fronts = (0..n)
            .map(|_| {
                let id = gate.register();
                let count = Arc::new(Count::default());
                let weak: Weak<dyn Wake> = Arc::downgrade(&(count.clone() as Arc<dyn Wake>));
                gate.set_waker(id, weak);
                (id, count)
            })
            .collect();
        (gate, fronts)
    }

    #[test]
    fn the_destination_waits_until_the_source_stops_its_rings() {
        let (gate, f) = gate_with(2);
        let ((src, _), (dst, dst_wakes)) = (&f[0], &f[1]);
        assert!(gate.ring_started("d", *src, 0));
        assert!(gate.ring_started("d", *src, 1));
        assert!(!gate.ring_started("d", *dst, 0), "the source still runs");
        gate.ring_stopped("d", *src, 0);
        assert!(gate.is_owner(*src), "one source ring still runs");
        assert_eq!(dst_wakes.0.load(Ordering::SeqCst), 0);
        gate.ring_stopped("d", *src, 1);
        assert!(gate.is_owner(*dst));
        assert_eq!(dst_wakes.0.load(Ordering::SeqCst), 1, "woken to serve");
        assert!(gate.ring_started("d", *dst, 0));
        assert!(gate.ring_started("d", *dst, 1));
        assert!(
            !gate.ring_started("d", *src, 0),
            "the source cannot come back"
        );
    }

    #[test]
    fn a_cancelled_migration_leaves_the_source_served() {
        let (gate, f) = gate_with(2);
        let ((src, _), (dst, _)) = (&f[0], &f[1]);
        assert!(gate.ring_started("d", *src, 0));
        gate.ring_stopped("d", *src, 0);
        // The destination never started a ring: the source restarts its own.
        assert!(gate.ring_started("d", *src, 0));
        assert!(!gate.ring_started("d", *dst, 0));
        gate.detach("d", *dst);
        assert!(gate.is_owner(*src));
        gate.ring_stopped("d", *src, 0);
        assert!(gate.ring_started("d", *src, 0));
    }

    #[test]
    fn a_leaving_owner_hands_over_to_the_waiting_frontend() {
        let (gate, f) = gate_with(2);
        let ((old, _), (new, new_wakes)) = (&f[0], &f[1]);
        assert!(gate.ring_started("d", *old, 0));
        assert!(!gate.ring_started("d", *new, 0));
        gate.detach("d", *old);
        assert!(gate.is_owner(*new));
        assert_eq!(new_wakes.0.load(Ordering::SeqCst), 1);
        gate.detach("d", *new);
        assert!(!gate.is_owner(*new));
        let third = gate.register();
        assert!(
            gate.ring_started("d", third, 0),
            "a lone frontend is served"
        );
    }

    #[test]
    fn a_stopped_ring_of_the_waiting_frontend_changes_nothing() {
        let (gate, f) = gate_with(2);
        let ((src, _), (dst, _)) = (&f[0], &f[1]);
        assert!(gate.ring_started("d", *src, 0));
        gate.ring_stopped("d", *dst, 0);
        gate.detach("d", *dst);
        assert!(gate.is_owner(*src));
        assert!(gate.ring_started("d", *src, 0));
    }
}
