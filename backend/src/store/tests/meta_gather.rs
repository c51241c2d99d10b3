//! Gathering sparse metadata segments with a live checkpoint: guest batches commit while the
//! checkpoint that writes the marked nodes elsewhere is held at each of its device writes and
//! flushes, a crash then recovers exactly what was written, and the gathered segments are
//! free once it commits.

use super::hold::Hold;
use super::live::{STAGES, Stage, finish, freeze};
use super::{new_store, opts_for, small_opts, store_opts};
use crate::device::BlockDevice;
use crate::store::map::sut::SegKind;
use crate::store::{CreateOptions, Op, Store};
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The name of the thread whose device calls [`HeldDevice`] holds.
const GATHERER: &str = "meta-gatherer";

/// Where the gathering thread is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldAt {
    /// Before its first write: the checkpoint froze, nothing of it is written.
    FirstWrite,
    /// Before its `n`th flush: 1, its nodes, table and root are written; 2, the superblock
    /// too; 3, the superblock is durable and its copy written.
    Flush(u32),
}

/// The gathering thread's device calls so far.
#[derive(Default)]
struct Calls {
    writes: u32,
    flushes: u32,
}

/// A [`FaultyDevice`] whose writes and flushes from the [`GATHERER`] thread stop at one
/// chosen point until the test lets them go; every other thread's pass straight through.
struct HeldDevice {
    inner: Arc<FaultyDevice>,
    at: HoldAt,
    calls: Mutex<Calls>,
    hold: Hold,
}

impl HeldDevice {
    fn new(inner: Arc<FaultyDevice>, at: HoldAt) -> Self {
        Self {
            inner,
            at,
            calls: Mutex::new(Calls::default()),
            hold: Hold::default(),
        }
    }

    /// Called before each write (`flush` false) or flush of any thread.
    fn pass(&self, flush: bool) {
        if std::thread::current().name() != Some(GATHERER) {
            return;
        }
        let hit = {
            let mut g = self.calls.lock().unwrap();
            let hit = match self.at {
                HoldAt::FirstWrite => !flush && g.writes == 0,
                HoldAt::Flush(n) => flush && g.flushes + 1 == n,
            };
            if flush {
                g.flushes += 1;
            } else {
                g.writes += 1;
            }
            hit
        };
        if hit {
            self.hold.hold(false);
        }
    }
}

impl BlockDevice for HeldDevice {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.pass(false);
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.pass(true);
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.pass(false);
        self.inner.discard(offset, len)
    }
}

/// What the guest wrote: the byte every block of an LBA holds (0: never written).
type Model = BTreeMap<u64, u8>;

/// Writes `value(lba)` to every block in `lbas`, 64 blocks a batch, and notes it in `model`.
fn write_all(s: &Store, model: &mut Model, lbas: &[u64], value: impl Fn(u64) -> u8) {
    super::live::write_all(s, lbas, &value);
    for l in lbas {
        model.insert(*l, value(*l));
    }
}

fn discard(s: &Store, model: &mut Model, lbas: std::ops::Range<u64>) {
    s.write_batch(
        0,
        &[Op::Discard {
            offset: lbas.start * 4096,
            len: (lbas.end - lbas.start) * 4096,
        }],
    )
    .unwrap();
    for l in lbas {
        model.insert(l, 0);
    }
}

/// Every LBA of `model` reads back as it says, and fsck finds nothing.
fn check(s: &Store, model: &Model, what: &str) {
    reads_back(s, model, what);
    let fsck = s.fsck();
    assert!(fsck.is_clean(), "{what}: {:?}", fsck.problems);
}

/// Every LBA of `model` reads back as it says (what can be checked while a checkpoint is
/// held: fsck would wait for it).
fn reads_back(s: &Store, model: &Model, what: &str) {
    let mut b = vec![0u8; 4096];
    for (lba, v) in model {
        s.read(lba * 4096, &mut b).unwrap();
        assert!(
            b.iter().all(|x| x == v),
            "{what}: lba {lba} reads {} (want {v})",
            b[0]
        );
    }
}

/// A container with several sparse metadata segments: leaves written once and never again
/// keep the segments of the first checkpoint alive after the others were rewritten.
fn container_with_sparse_meta(at: HoldAt) -> (Arc<FaultyDevice>, Arc<HeldDevice>, Store, Model) {
    let opts = CreateOptions {
        capacity: 32 << 20,
        journal_bytes: Some(1 << 20),
        ..small_opts()
    };
    let inner = Arc::new(FaultyDevice::new(
        opts.geometry().unwrap().container_bytes(),
    ));
    Store::format(inner.as_ref(), &opts).unwrap();
    let held = Arc::new(HeldDevice::new(Arc::clone(&inner), at));
    let s = Store::open(held.clone(), opts_for(&opts)).unwrap();
    let mut model = Model::new();
    let all: Vec<u64> = (0..2400).collect();
    write_all(&s, &mut model, &all, |l| l as u8 | 1);
    s.checkpoint().unwrap();
    // Two thirds of the leaves rewritten, twice: a third keep their first blocks.
    for round in 0..2u8 {
        let some: Vec<u64> = all.iter().copied().filter(|l| l / 400 % 3 != 0).collect();
        write_all(&s, &mut model, &some, |l| (l as u8) ^ (0x30 + round));
        s.checkpoint().unwrap();
    }
    (inner, held, s, model)
}

/// The guest commits batches while the checkpoint that gathers sparse metadata segments is
/// held at each of its writes and flushes (the journal is not held: a checkpoint that held it
/// throughout would keep these batches waiting for ever). A crash there recovers exactly the
/// data written before and meanwhile; once it commits, the gathered segments are free, and a
/// crash after more writes (which may reuse them) recovers everything too.
#[test]
fn batches_commit_while_a_gathering_checkpoint_writes_and_a_crash_recovers_them() {
    for at in [
        HoldAt::FirstWrite,
        HoldAt::Flush(1),
        HoldAt::Flush(2),
        HoldAt::Flush(3),
    ] {
        let (inner, held, s, mut model) = container_with_sparse_meta(at);
        let sparse = s.sparse_meta_segments();
        assert!(
            sparse.len() >= 2,
            "{at:?}: sparse metadata segments {sparse:?}"
        );
        let reserve = s.geometry().reserved_segments();
        assert!(
            s.free_segments() >= reserve + 16,
            "{at:?}: room for the batches"
        );
        let s = Arc::new(s);
        let gatherer = {
            let s = Arc::clone(&s);
            std::thread::Builder::new()
                .name(GATHERER.into())
                .spawn(move || s.clean_meta())
                .unwrap()
        };
        assert!(held.hold.wait_held());
        // Committed while the gathering checkpoint is held, then made durable.
        let even: Vec<u64> = (0..2400).step_by(2).collect();
        write_all(&s, &mut model, &even, |l| (l as u8) ^ 0xc3);
        let fresh: Vec<u64> = (3000..3300).collect();
        write_all(&s, &mut model, &fresh, |l| (l as u8) ^ 0x77);
        discard(&s, &mut model, 401..451);
        s.flush().unwrap();
        reads_back(&s, &model, &format!("{at:?}, held"));
        let image = inner.crash_image(CrashMode::DropAll, &mut SplitMix::new(7));
        let r = Store::open(Arc::new(FaultyDevice::from_image(image)), store_opts()).unwrap();
        check(&r, &model, &format!("{at:?}, crashed while held"));
        drop(r);

        held.hold.release();
        let marked = gatherer.join().unwrap().unwrap();
        assert!(marked > 0, "{at:?}: nodes marked");
        for seg in &sparse {
            let st = s.read_lock(&s.state);
            assert_eq!(
                st.sut.kind(*seg),
                SegKind::Free,
                "{at:?}: gathered segment {seg} ({} live)",
                st.sut.live(*seg)
            );
        }
        let st = s.stats();
        assert_eq!((st.meta_gathers, st.meta_nodes_marked), (1, marked as u64));
        // More writes and checkpoints, which may take the freed segments again.
        for round in 0..3u8 {
            let some: Vec<u64> = (0..2400).filter(|l| l % 3 == u64::from(round)).collect();
            write_all(&s, &mut model, &some, |l| (l as u8) ^ (0x50 + round));
            s.checkpoint().unwrap();
        }
        write_all(&s, &mut model, &[7, 3100], |_| 0xee);
        s.flush().unwrap();
        check(&s, &model, &format!("{at:?}, committed"));
        drop(s);
        inner.crash(CrashMode::DropAll);
        let image = inner.contents();
        let r = Store::open(Arc::new(FaultyDevice::from_image(image)), store_opts()).unwrap();
        check(&r, &model, &format!("{at:?}, crashed after"));
    }
}

/// A checkpoint frozen before the marking still encodes the trees it froze: nothing may be
/// marked meanwhile (a marked node loses its block, and a frozen parent encoded after would
/// name none). Whatever stage a crash cuts that checkpoint at, with batches committed
/// meanwhile, recovery gives exactly what was written; once it committed, the marking goes
/// ahead and the next checkpoint frees the sparse segments.
#[test]
fn nothing_is_marked_while_a_frozen_checkpoint_encodes() {
    for stage in STAGES {
        let (inner, _held, s, mut model) = container_with_sparse_meta(HoldAt::FirstWrite);
        let sparse = s.sparse_meta_segments();
        assert!(
            sparse.len() >= 2,
            "{stage:?}: sparse metadata segments {sparse:?}"
        );
        // Parents of the nodes to be marked are dirty in the checkpoint that freezes; those
        // nodes are not.
        let some: Vec<u64> = (0..2400).step_by(5).filter(|l| l / 400 % 3 != 0).collect();
        write_all(&s, &mut model, &some, |l| (l as u8) ^ 0x11);
        let f = freeze(&s).unwrap();
        assert_eq!(
            s.try_mark_sparse_meta(),
            None,
            "{stage:?}: marked while pinned"
        );
        let fresh: Vec<u64> = (3000..3200).collect();
        write_all(&s, &mut model, &fresh, |l| (l as u8) ^ 0x77);
        s.flush().unwrap();
        finish(&s, f, stage).unwrap();
        if stage == Stage::Committed {
            assert!(
                s.try_mark_sparse_meta().unwrap() > 0,
                "marked once it is done"
            );
            s.checkpoint().unwrap();
            let st = s.read_lock(&s.state);
            for seg in &sparse {
                assert_eq!(st.sut.kind(*seg), SegKind::Free, "gathered segment {seg}");
            }
            drop(st);
            write_all(&s, &mut model, &[9], |_| 0xee);
            s.flush().unwrap();
        }
        drop(s);
        inner.crash(CrashMode::DropAll);
        let r = Store::open(
            Arc::new(FaultyDevice::from_image(inner.contents())),
            store_opts(),
        );
        check(&r.unwrap(), &model, &format!("{stage:?}, crashed"));
    }
}

/// With no sparse metadata segment, gathering marks nothing and takes no checkpoint.
#[test]
fn gathering_without_sparse_segments_does_nothing() {
    let (_dev, s) = new_store(&small_opts());
    let mut model = Model::new();
    write_all(&s, &mut model, &(0..40).collect::<Vec<_>>(), |l| {
        l as u8 | 1
    });
    s.checkpoint().unwrap();
    assert!(s.sparse_meta_segments().is_empty());
    let before = s.stats();
    assert_eq!(s.clean_meta().unwrap(), 0);
    let after = s.stats();
    assert_eq!(after.checkpoints, before.checkpoints);
    assert_eq!(after.meta_gathers, 0);
    check(&s, &model, "nothing gathered");
}
