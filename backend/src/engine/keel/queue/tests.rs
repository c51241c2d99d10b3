//! Keel queues with write batches in flight, driven as the vhost layer drives them: kicks back
//! to back, each answered before its writes land.

use super::KeelQueue;
use crate::engine::keel::KeelEngine;
use crate::engine::keel::ring::MAX_BATCHES;
use crate::engine::{Completion, GuestBuffers, GuestMemory, IoOp, IoRequest, QueueEngine};
use crate::store::layout::BLOCK;
use crate::store::seal::Key;
use crate::store::tests::{test_compression, test_key};
use crate::store::{CreateOptions, Store, StoreOptions};
use crate::testing::SplitMix;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const MEM_BASE: u64 = 0x10_0000;
const MEM_BYTES: u64 = 2 << 20;
/// Blocks of a stripe: the unit the two queues of a test split the disk by.
const STRIPE: u64 = 8;
/// How long the queues of a test may take in all before it calls them deadlocked.
const DEADLOCK: Duration = Duration::from_secs(600);

/// Options of a container of a `capacity`-byte disk with 64 KiB segments and a 128 KiB
/// journal, so that a few MiB of writes fill it, clean it and checkpoint it many times.
fn create_opts(capacity: u64, key: Option<Key>) -> CreateOptions {
    CreateOptions {
        capacity,
        segment_bytes: 64 << 10,
        journal_bytes: Some(128 << 10),
        overprovision_percent: 25,
        encryption: key,
        compression: test_compression(),
    }
}

fn open_opts(writers: usize, key: Option<Key>) -> StoreOptions {
    StoreOptions {
        writers,
        key,
        ..StoreOptions::default()
    }
}

/// A key of its own, for the test that always runs encrypted.
fn own_key() -> Key {
    let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    Key::from_bytes(&raw).unwrap()
}

fn memory() -> Arc<GuestMemory> {
    let ranges = [(GuestAddress(MEM_BASE), MEM_BYTES as usize)];
    Arc::new(GuestMemory::from_ranges(&ranges).unwrap())
}

/// One kick being built: its requests, their buffers carved from guest memory in turn.
struct Kick<'m> {
    mem: &'m Arc<GuestMemory>,
    reqs: Vec<IoRequest>,
    /// Reads: token, guest address, the bytes they must return.
    reads: Vec<(u64, GuestAddress, Vec<u8>)>,
    at: u64,
    token: u64,
}

impl<'m> Kick<'m> {
    fn new(mem: &'m Arc<GuestMemory>, token: u64) -> Self {
        Self {
            mem,
            reqs: Vec::new(),
            reads: Vec::new(),
            at: MEM_BASE,
            token,
        }
    }

    fn buffer(&mut self, len: usize) -> (GuestAddress, GuestBuffers) {
        let addr = GuestAddress(self.at);
        self.at += (len as u64).next_multiple_of(BLOCK);
        assert!(self.at <= MEM_BASE + MEM_BYTES, "a kick too large");
        let bufs = GuestBuffers::from_guest(self.mem, [(addr, len as u32)]).unwrap();
        (addr, bufs)
    }

    fn push(&mut self, op: IoOp, buffers: GuestBuffers) -> u64 {
        self.token += 1;
        self.reqs.push(IoRequest {
            token: self.token,
            op,
            buffers,
        });
        self.token
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let (addr, buffers) = self.buffer(bytes.len());
        self.mem.write_slice(bytes, addr).unwrap();
        let op = IoOp::Write {
            offset,
            durable: false,
        };
        self.push(op, buffers);
    }

    /// A read of `want.len()` bytes at `offset`, which must return `want`.
    fn read(&mut self, offset: u64, want: &[u8]) {
        let (addr, buffers) = self.buffer(want.len());
        let token = self.push(IoOp::Read { offset }, buffers);
        self.reads.push((token, addr, want.to_vec()));
    }

    fn flush(&mut self) {
        self.push(IoOp::Flush, GuestBuffers::empty());
    }

    /// Submits a kick of writes and takes their answers without reaping the ring: the
    /// batches in flight stay there, whether their writes are done or not.
    fn submit(mut self, q: &mut KeelQueue) -> u64 {
        let n = self.reqs.len();
        q.submit(&mut self.reqs);
        assert_eq!(q.done.len(), n, "every write answered at once");
        for c in q.done.drain(..) {
            assert!(c.result.is_ok(), "request {}: {:?}", c.token, c.result);
        }
        self.token
    }

    /// Submits the kick and collects its answers, waiting only for its reads (its writes
    /// are answered at once and may stay in flight); checks every answer and read.
    fn run(mut self, q: &mut KeelQueue) -> u64 {
        let tokens: Vec<u64> = self.reqs.iter().map(|r| r.token).collect();
        q.submit(&mut self.reqs);
        let mut done: Vec<Completion> = Vec::new();
        q.reap(&mut done);
        while tokens.iter().any(|t| !done.iter().any(|c| c.token == *t)) {
            q.wait(&mut done);
        }
        for c in &done {
            assert!(c.result.is_ok(), "request {}: {:?}", c.token, c.result);
        }
        for (token, addr, want) in &self.reads {
            let mut got = vec![0u8; want.len()];
            self.mem.read_slice(&mut got, *addr).unwrap();
            assert!(&got == want, "read {token} returned other bytes");
        }
        self.token
    }
}

/// A disk's bytes as a guest that wrote them expects them.
struct Model {
    bytes: Vec<u8>,
}

impl Model {
    fn new(capacity: u64) -> Self {
        Self {
            bytes: vec![0; capacity as usize],
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    fn at(&self, offset: u64, len: u64) -> &[u8] {
        &self.bytes[offset as usize..(offset + len) as usize]
    }
}

fn random_bytes(rng: &mut SplitMix, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn the_next_kick_is_started_while_the_last_one_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 1 << 20;
    let path = dir.path().join("disk.keel");
    Store::create_path(&path, &create_opts(capacity, test_key())).unwrap();
    let store = Arc::new(Store::open_path(&path, open_opts(1, test_key())).unwrap());
    let mut q = KeelQueue::new(&store, 0, false).unwrap();
    assert!(q.ring.is_some(), "a container file gets a ring");
    let mem = memory();
    let mut model = Model::new(capacity);
    let mut rng = SplitMix::new(24);
    let mut token = 0;
    let mut kick = |q: &mut KeelQueue, lba: u64, len: u64, model: &mut Model| {
        let data = random_bytes(&mut rng, len as usize);
        let mut k = Kick::new(&mem, token);
        k.write(lba * BLOCK, &data);
        model.write(lba * BLOCK, &data);
        token = k.submit(q);
    };
    // The first batch plans as ever (it may wait: nothing of the queue's is in flight).
    kick(&mut q, 0, 16 * BLOCK, &mut model);
    assert_eq!(q.flying.len(), 1);
    // The next ones, small as they are, are planned while it flies; once every slot is
    // taken, the next kick first finishes the oldest.
    for n in 1..MAX_BATCHES as u64 {
        kick(&mut q, 16 * n, BLOCK, &mut model);
        assert_eq!(q.flying.len() as u64, n + 1, "{} batches in flight", n + 1);
    }
    kick(&mut q, 200, 8 * BLOCK, &mut model);
    assert_eq!(q.flying.len(), MAX_BATCHES);
    assert_eq!(store.stats().plans_refused, 0);
    assert_eq!(
        store.stats().plans_pipelined,
        MAX_BATCHES as u64,
        "every one after the first planned beside one in flight"
    );
    // A write of part of a block must read the block first: refused, the queue finishes
    // its batches and plans it the old way.
    kick(&mut q, 17, 1024, &mut model);
    assert_eq!(store.stats().plans_refused, 1);
    assert_eq!(
        q.flying.len(),
        1,
        "the batches before it finished, it flies"
    );
    // A kick within the queue's bound on data in flight joins the batches in flight; one
    // that would pass it finishes the oldest first, as many as it takes.
    q.max_bytes_in_flight = (24 * BLOCK) as usize;
    kick(&mut q, 20, 16 * BLOCK, &mut model);
    assert_eq!(
        q.flying.len(),
        2,
        "16 blocks and 1 KiB in flight: within it"
    );
    kick(&mut q, 36, 16 * BLOCK, &mut model);
    assert_eq!(
        q.flying.len(),
        1,
        "both finished first: 32 blocks would pass the bound even without the oldest"
    );
    kick(&mut q, 52, 8 * BLOCK, &mut model);
    assert_eq!(q.flying.len(), 2, "24 blocks in flight: at the bound");
    assert_eq!(store.stats().plans_refused, 1);
    assert_eq!(store.stats().plans_pipelined, MAX_BATCHES as u64 + 2);
    // A read finishes them all, and sees every write.
    let mut k = Kick::new(&mem, token);
    k.read(0, model.at(0, 48 * BLOCK));
    k.run(&mut q);
    assert!(q.flying.is_empty());
    drop(q);
    assert!(store.fsck().is_clean(), "{:?}", store.fsck());
}

/// Two queues write back to back, in kicks of 1-6 requests (some of part of a block), to
/// disjoint stripes of a small container `passes` times its size over, with the cleaner and
/// the flush marks running and checkpoints taken in the background; every few kicks one
/// ends with a FLUSH or a read. Then every block is read back through the queues, and again
/// from the container opened anew.
fn two_queues_on_a_full_container(key: Option<Key>, passes: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let capacity: u64 = 4 << 20;
    let path = dir.path().join("disk.keel");
    Store::create_path(&path, &create_opts(capacity, key.clone())).unwrap();
    let store = Store::open_path(&path, open_opts(2, key.clone())).unwrap();
    let engine = KeelEngine::serve(store, None, 2, false, "test".into()).unwrap();
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let store = Arc::clone(&engine.store);
            let tx = tx.clone();
            std::thread::spawn(move || {
                let r = write_stripes(&store, t, capacity, passes, seed + t);
                tx.send(()).unwrap();
                r
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLOCK;
    for _ in &workers {
        if rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            // Its threads may be stuck too: dropping it would hang the test.
            std::mem::forget(engine);
            panic!("the queues stopped making progress: a deadlock");
        }
    }
    let models: Vec<(Model, usize)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // With the guest paced to the cleaner, free space on this small container stays near
    // the reserve, where a queue may find no room for a second batch for a whole run; the
    // queues together still must have had two in flight.
    assert!(
        models.iter().any(|(_, most)| *most >= 2),
        "no queue ever had two batches in flight"
    );
    let stats = engine.store.stats();
    assert!(stats.segments_cleaned > 0, "the container never filled up");
    assert!(stats.checkpoints > 2, "{} checkpoints", stats.checkpoints);
    assert!(stats.plans_refused > 0);
    assert!(stats.plans_pipelined > 0);
    drop(engine);
    let store = Store::open_path(&path, open_opts(2, key)).unwrap();
    assert!(store.fsck().is_clean(), "{:?}", store.fsck());
    let mut b = vec![0u8; (STRIPE * BLOCK) as usize];
    for lba in (0..capacity / BLOCK).step_by(STRIPE as usize) {
        let (model, _) = &models[((lba / STRIPE) % 2) as usize];
        store.read(lba * BLOCK, &mut b).unwrap();
        assert!(
            b == model.at(lba * BLOCK, STRIPE * BLOCK),
            "stripe at {lba}"
        );
    }
}

/// Queue `t`'s part of [`two_queues_on_a_full_container`]: writes its stripes, reads them
/// back, and returns what they hold and the most batches it had in flight.
fn write_stripes(
    store: &Arc<Store>,
    t: u64,
    capacity: u64,
    passes: u64,
    seed: u64,
) -> (Model, usize) {
    let mut q = KeelQueue::new(store, t as usize, false).unwrap();
    let mem = memory();
    let mut model = Model::new(capacity);
    let mut rng = SplitMix::new(seed);
    let stripes = capacity / BLOCK / STRIPE / 2;
    let stripe_at = |n: u64| (n * 2 + t) * STRIPE * BLOCK;
    let (mut token, mut written, mut most, mut kicks) = (0, 0, 0, 0u64);
    while written < capacity * passes / 2 {
        let mut k = Kick::new(&mem, token);
        for _ in 0..=rng.below(6) {
            let at = stripe_at(rng.below(stripes));
            let (offset, len) = if rng.chance(1, 25) {
                // Part of a block, in sectors.
                let sector = rng.below(8);
                (at + sector * 512, (1 + rng.below(8 - sector)) * 512)
            } else {
                let first = rng.below(STRIPE);
                (at + first * BLOCK, (1 + rng.below(STRIPE - first)) * BLOCK)
            };
            let data = random_bytes(&mut rng, len as usize);
            k.write(offset, &data);
            model.write(offset, &data);
            written += len;
        }
        kicks += 1;
        if kicks.is_multiple_of(16) {
            k.flush();
        } else if kicks.is_multiple_of(7) {
            let at = stripe_at(rng.below(stripes));
            k.read(at, model.at(at, STRIPE * BLOCK));
        }
        token = k.run(&mut q);
        most = most.max(q.flying.len());
    }
    for first in (0..stripes).step_by(16) {
        let mut k = Kick::new(&mem, token);
        for n in first..(first + 16).min(stripes) {
            k.read(stripe_at(n), model.at(stripe_at(n), STRIPE * BLOCK));
        }
        token = k.run(&mut q);
    }
    (model, most)
}

#[test]
fn two_queues_write_back_to_back_on_a_full_container() {
    two_queues_on_a_full_container(test_key(), 8, 0x2424);
}

#[test]
fn two_queues_write_back_to_back_on_a_full_encrypted_container() {
    two_queues_on_a_full_container(Some(test_key().unwrap_or_else(own_key)), 4, 0x2323);
}
