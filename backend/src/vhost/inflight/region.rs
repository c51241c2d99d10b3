//! The inflight-tracking area a frontend keeps for the backend across backend restarts
//! (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
//!
//! Keel allocates it (GET_INFLIGHT_FD) as a sealed memfd, the frontend holds on to it and hands
//! it back after every reconnect (SET_INFLIGHT_FD). Its layout is the one the vhost-user
//! specification describes for split rings, one area per queue, each 64-byte aligned:
//!
//! ```text
//! header   u64 features, u16 version (1), u16 desc_num, u16 last_batch_head, u16 used_idx
//! desc[n]  u8 inflight, 5 bytes padding, u16 next, u64 counter        (16 bytes each)
//! ```
//!
//! The frontend can write the area at any time, so nothing read from it is trusted: head indices
//! are bounded by the ring size and resubmitted chains are parsed like any other.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use thiserror::Error;
use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::mmap::MmapRegion;
use vm_memory::{AtomicAccess, Bytes, FileOffset, VolatileMemory};

/// Bytes of a queue area's header.
const HEADER: usize = 16;
/// Bytes of one descriptor's state.
const ENTRY: usize = 16;
/// Queue areas start on this boundary.
const ALIGN: usize = 64;
/// The area format this backend writes.
const VERSION: u16 = 1;
/// The largest virtqueue the specification allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// Seals that make the memfd's size final, so a mapping of it can never fault (SIGBUS).
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

// Offsets inside a queue area's header and inside a descriptor's state.
const H_VERSION: usize = 8;
const H_DESC_NUM: usize = 10;
const H_LAST_BATCH_HEAD: usize = 12;
const H_USED_IDX: usize = 14;
const E_INFLIGHT: usize = 0;
const E_COUNTER: usize = 8;

/// Why an inflight area was refused.
#[derive(Debug, Error)]
pub enum InflightError {
    #[error("inflight area for {queues} queues of {size} descriptors: {why}")]
    Shape { queues: u16, size: u16, why: String },
    #[error(
        "the inflight area's file must be a memfd sealed against shrinking and growing, as keeld \
         hands it out"
    )]
    NotSealed,
    #[error("the inflight area's file holds {have} bytes, the message claims {want}")]
    TooSmall { have: u64, want: u64 },
    #[error("inflight area: {0}")]
    Io(#[from] io::Error),
    #[error("inflight area: mmap: {0}")]
    Map(String),
}

/// Bytes one queue's area takes.
pub fn queue_bytes(queue_size: u16) -> usize {
    (HEADER + ENTRY * usize::from(queue_size)).next_multiple_of(ALIGN)
}

/// A mapped inflight area.
pub struct InflightRegion {
    map: MmapRegion<()>,
    file: Arc<File>,
    queues: u16,
    queue_size: u16,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl InflightRegion {
    /// Allocates a zeroed, sealed area for `queues` rings of `queue_size` descriptors (the
    /// answer to GET_INFLIGHT_FD). `max_queues` and `max_queue_size` are what the disk offers.
    pub fn create(
        queues: u16,
        queue_size: u16,
        max_queues: u16,
        max_queue_size: u16,
    ) -> Result<Self, InflightError> {
        check_shape(queues, queue_size, max_queues, max_queue_size)?;
        let bytes = usize::from(queues) * queue_bytes(queue_size);
        // SAFETY: the name is a valid NUL-terminated string and the flags are valid.
        let fd = unsafe {
            libc::memfd_create(
                c"keel-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(bytes as u64)?;
        // SAFETY: fcntl on a descriptor we own with a valid command and argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let region = Self::map(file, 0, bytes, queues, queue_size)?;
        for q in 0..queues {
            let base = region.base(q);
            region.put(base + H_VERSION, VERSION);
            region.put(base + H_DESC_NUM, queue_size);
        }
        Ok(region)
    }

    /// Maps the area a frontend hands back (SET_INFLIGHT_FD), after checking that it is shaped
    /// like one this disk could have handed out and that its size cannot change under us.
    pub fn open(
        file: File,
        msg: &VhostUserInflight,
        max_queues: u16,
        max_queue_size: u16,
    ) -> Result<Self, InflightError> {
        let (queues, size) = (msg.num_queues, msg.queue_size);
        check_shape(queues, size, max_queues, max_queue_size)?;
        let want = usize::from(queues) * queue_bytes(size);
        if msg.mmap_size < want as u64 {
            return Err(InflightError::Shape {
                queues,
                size,
                why: format!(
                    "mmap_size {} is below the {want} bytes needed",
                    msg.mmap_size
                ),
            });
        }
        // SAFETY: fcntl on a descriptor we own with a valid command.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SIZE_SEALS != SIZE_SEALS {
            return Err(InflightError::NotSealed);
        }
        let have = file.metadata()?.len();
        let end = msg.mmap_offset.checked_add(want as u64);
        if end.is_none_or(|end| end > have) {
            return Err(InflightError::TooSmall {
                have,
                want: msg.mmap_offset.saturating_add(want as u64),
            });
        }
        Self::map(file, msg.mmap_offset, want, queues, size)
    }

    fn map(
        file: File,
        offset: u64,
        bytes: usize,
        queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let file = Arc::new(file);
        let map = MmapRegion::from_file(FileOffset::from_arc(Arc::clone(&file), offset), bytes)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        Ok(Self {
            map,
            file,
            queues,
            queue_size,
        })
    }

    /// What GET_INFLIGHT_FD answers: the size and offset of the area in [`file`](Self::file).
    pub fn message(&self) -> VhostUserInflight {
        VhostUserInflight::new(self.map.size() as u64, 0, self.queues, self.queue_size)
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    fn base(&self, queue: u16) -> usize {
        usize::from(queue) * queue_bytes(self.queue_size)
    }

    /// Stores a value (release: it lands after every store before it). Offsets come from the
    /// layout above and are inside the mapping.
    fn put<T: AtomicAccess>(&self, offset: usize, v: T) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v, offset, Ordering::Release);
    }

    fn get<T: AtomicAccess + Default>(&self, offset: usize) -> T {
        self.map
            .as_volatile_slice()
            .load(offset, Ordering::Acquire)
            .unwrap_or_default()
    }
}

fn check_shape(
    queues: u16,
    size: u16,
    max_queues: u16,
    max_queue_size: u16,
) -> Result<(), InflightError> {
    let why = if queues == 0 || queues > max_queues {
        format!("the disk has 1 to {max_queues} queues")
    } else if size == 0 || size > max_queue_size.min(MAX_QUEUE_SIZE) {
        format!("the disk's queues hold 1 to {max_queue_size} descriptors")
    } else {
        return Ok(());
    };
    Err(InflightError::Shape { queues, size, why })
}

/// One queue's part of the area, kept current by the queue's worker.
///
/// The order of the stores makes the area right whenever the process dies: a head is marked
/// before its chain is parsed, and on completion `last_batch_head` names it before the used ring
/// shows it, so if keeld dies between the used ring update and clearing the mark, recovery sees
/// `used_idx` lag the ring by one and clears that head instead of running it twice.
#[derive(Debug)]
pub struct QueueInflight {
    region: Arc<InflightRegion>,
    base: usize,
    /// Descriptors this area tracks (the ring may be smaller, never larger).
    entries: u16,
    counter: u64,
}

impl QueueInflight {
    /// The area of ring `queue`, or `None` if the area has no room for it.
    pub fn new(region: Arc<InflightRegion>, queue: u16) -> Option<Self> {
        (queue < region.queues).then(|| Self {
            base: region.base(queue),
            entries: region.queue_size,
            region,
            counter: 0,
        })
    }

    fn entry(&self, head: u16) -> Option<usize> {
        (head < self.entries).then(|| self.base + HEADER + usize::from(head) * ENTRY)
    }

    /// Marks `head` in flight: it was taken off the available ring.
    pub fn begin(&mut self, head: u16) {
        if let Some(e) = self.entry(head) {
            self.counter += 1;
            self.region.put(e + E_COUNTER, self.counter);
            self.region.put(e + E_INFLIGHT, 1u8);
        }
    }

    /// Call before putting `head` on the used ring.
    pub fn before_used(&self, head: u16) {
        self.region.put(self.base + H_LAST_BATCH_HEAD, head);
    }

    /// Call after putting `head` on the used ring; `used_idx` is the ring's new used index.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        if let Some(e) = self.entry(head) {
            self.region.put(e + E_INFLIGHT, 0u8);
        }
        self.region.put(self.base + H_USED_IDX, used_idx);
    }

    /// Brings the area in line with a ring whose used index is `used_idx` and whose size is
    /// `ring_size`, and returns the heads that were in flight, oldest first: they must run
    /// again. The ring's next available index is then `used_idx + heads.len()`.
    pub fn recover(&mut self, used_idx: u16, ring_size: u16) -> Vec<u16> {
        let r = &self.region;
        if r.get::<u16>(self.base + H_USED_IDX) != used_idx {
            // keeld died after putting the last completion on the used ring and before clearing
            // its mark.
            let last = r.get::<u16>(self.base + H_LAST_BATCH_HEAD);
            if let Some(e) = self.entry(last) {
                r.put(e + E_INFLIGHT, 0u8);
            }
            r.put(self.base + H_USED_IDX, used_idx);
        }
        let mut heads: Vec<(u64, u16)> = Vec::new();
        for head in 0..self.entries {
            let e = self.base + HEADER + usize::from(head) * ENTRY;
            if r.get::<u8>(e + E_INFLIGHT) == 0 {
                continue;
            }
            if head < ring_size {
                heads.push((r.get::<u64>(e + E_COUNTER), head));
            } else {
                // A mark the ring cannot hold (the frontend wrote it): drop it.
                r.put(e + E_INFLIGHT, 0u8);
            }
        }
        heads.sort_unstable();
        self.counter = heads.last().map_or(0, |&(c, _)| c);
        heads.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed_back(r: &InflightRegion) -> InflightRegion {
        InflightRegion::open(r.file().try_clone().unwrap(), &r.message(), 4, 256).unwrap()
    }

    #[test]
    fn the_area_survives_a_reopen_and_returns_in_flight_heads_oldest_first() {
        let region = Arc::new(InflightRegion::create(2, 128, 4, 256).unwrap());
        assert_eq!(region.message().mmap_size, 2 * queue_bytes(128) as u64);
        let mut q1 = QueueInflight::new(Arc::clone(&region), 1).unwrap();
        for head in [7, 3, 90, 12] {
            q1.begin(head);
        }
        q1.before_used(3);
        q1.after_used(3, 1);
        // keeld dies here; the frontend hands the area to the next keeld.
        let again = Arc::new(handed_back(&region));
        let mut q1 = QueueInflight::new(Arc::clone(&again), 1).unwrap();
        assert_eq!(q1.recover(1, 128), vec![7, 90, 12]);
        let mut q0 = QueueInflight::new(again, 0).unwrap();
        assert!(
            q0.recover(0, 128).is_empty(),
            "queue 0 had nothing in flight"
        );
        // New heads are ordered after the recovered ones.
        q1.begin(5);
        assert_eq!(q1.recover(1, 128), vec![7, 90, 12, 5]);
    }

    #[test]
    fn a_completion_on_the_used_ring_but_not_cleared_is_not_run_again() {
        let region = Arc::new(InflightRegion::create(1, 16, 1, 16).unwrap());
        let mut q = QueueInflight::new(Arc::clone(&region), 0).unwrap();
        q.begin(4);
        q.begin(9);
        q.before_used(9);
        // The used ring shows 9 (used index 1) but keeld died before clearing its mark.
        let mut q = QueueInflight::new(region, 0).unwrap();
        assert_eq!(q.recover(1, 16), vec![4]);
    }

    #[test]
    fn marks_outside_the_ring_are_dropped() {
        let region = Arc::new(InflightRegion::create(1, 64, 1, 64).unwrap());
        let mut q = QueueInflight::new(Arc::clone(&region), 0).unwrap();
        q.begin(40);
        q.begin(2);
        // The frontend set the ring up with 32 descriptors: head 40 cannot be in flight.
        assert_eq!(q.recover(0, 32), vec![2]);
        assert_eq!(q.recover(0, 64), vec![2]);
        assert!(QueueInflight::new(region, 1).is_none());
    }

    #[test]
    fn shapes_and_files_a_disk_could_not_have_handed_out_are_refused() {
        for (queues, size) in [(0, 128), (5, 128), (1, 0), (1, 512)] {
            let err = InflightRegion::create(queues, size, 4, 256).unwrap_err();
            assert!(matches!(err, InflightError::Shape { .. }), "{err}");
        }
        let region = InflightRegion::create(1, 128, 4, 256).unwrap();
        let mut msg = region.message();
        msg.mmap_size -= 1;
        let err = InflightRegion::open(region.file().try_clone().unwrap(), &msg, 4, 256);
        assert!(matches!(err, Err(InflightError::Shape { .. })));
        let mut msg = region.message();
        msg.mmap_offset = 4096;
        let err = InflightRegion::open(region.file().try_clone().unwrap(), &msg, 4, 256);
        assert!(matches!(err, Err(InflightError::TooSmall { .. })));
        // A plain file could be truncated under the mapping.
        let plain = tempfile::tempfile().unwrap();
        plain.set_len(1 << 20).unwrap();
        let err = InflightRegion::open(plain, &region.message(), 4, 256);
        assert!(matches!(err, Err(InflightError::NotSealed)));
    }
}
