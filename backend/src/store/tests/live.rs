//! Checkpoints that do not stop the world, driven a phase at a time: frozen, records written
//! into the ring past the freeze point, then the checkpoint's writes cut short at each stage
//! by a crash. Recovery must replay from the right place whatever stage the crash hit.

use super::{new_store, small_opts, store_opts};
use crate::store::io::DeviceIo;
use crate::store::log::persist::{self, Frozen};
use crate::store::{Op, Result, Store};
use crate::testing::{CrashMode, FaultyDevice};
use std::sync::Arc;

/// How far a checkpoint frozen by [`freeze`] gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// None of its writes.
    Nothing,
    /// Its tree nodes, usage table and root, not the superblock.
    Nodes,
    /// Everything, superblock included, but the store has not moved the ring's head.
    Superblock,
    /// Committed, as a live checkpoint ends.
    Committed,
}

pub(crate) const STAGES: [Stage; 4] = [
    Stage::Nothing,
    Stage::Nodes,
    Stage::Superblock,
    Stage::Committed,
];

/// Freezes a checkpoint of `s` as a live one does and leaves its writes to [`finish`]:
/// records written meanwhile go into the ring past its freeze point.
pub(crate) fn freeze(s: &Store) -> Result<Frozen> {
    if s.lock(&s.journal).fresh_chain {
        // Right after open the next record starts a new chain: a checkpoint that holds the
        // journal throughout does that first.
        s.checkpoint()?;
    }
    let mut j = s.quiet_journal();
    let f = persist::freeze(s, &mut j, false)?;
    j.checkpointing = true;
    Ok(f)
}

/// Takes the frozen checkpoint to `stage`. Short of [`Stage::Committed`] the store must not
/// be used again (it waits for the checkpoint forever): the test crashes it.
pub(crate) fn finish(s: &Store, f: Frozen, stage: Stage) -> Result<()> {
    let io = &mut DeviceIo(s.dev.as_ref());
    match stage {
        Stage::Nothing => {}
        Stage::Nodes => {
            let prepared = persist::encode_frozen(s, &f)?;
            persist::write_runs(s.dev.as_ref(), io, &prepared.runs)?;
        }
        Stage::Superblock => {
            persist::write_frozen(s, &f, io)?;
        }
        Stage::Committed => {
            persist::write_frozen(s, &f, io)?;
            let mut j = s.lock(&s.journal);
            persist::commit(s, &mut j, f);
            j.checkpointing = false;
            drop(j);
            s.journal_cv.notify_all();
        }
    }
    Ok(())
}

/// Journal blocks still free in the ring: records written while a checkpoint is held frozen
/// must not fill it (they would wait for that checkpoint).
pub(crate) fn ring_room(s: &Store) -> u64 {
    let j = s.lock(&s.journal);
    j.ring.blocks - j.ring.used
}

/// Whether a small batch can commit while a checkpoint is held frozen: room in the ring, and
/// free segments beyond the reserve (a writer that found none would take a checkpoint, which
/// waits for the frozen one).
pub(crate) fn room_for_a_batch(s: &Store) -> bool {
    ring_room(s) >= 8 && s.free_segments() >= s.reserved_segments() + 8
}

fn write(s: &Store, lba: u64, byte: u8) {
    let d = vec![byte; 4096];
    s.write_batch(
        0,
        &[Op::Write {
            offset: lba * 4096,
            data: &d,
        }],
    )
    .unwrap();
}

fn read(s: &Store, lba: u64) -> u8 {
    let mut b = vec![0u8; 4096];
    s.read(lba * 4096, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == b[0]), "lba {lba} is torn");
    b[0]
}

/// Opens the image a crash (every unflushed write lost) of `dev` leaves.
fn crash_and_open(dev: &FaultyDevice) -> Store {
    dev.crash(CrashMode::DropAll);
    let img = dev.contents();
    Store::open(Arc::new(FaultyDevice::from_image(img)), store_opts()).unwrap()
}

/// Every stage of a checkpoint cut short by a crash, with flushed records after its freeze
/// point that wrapped round the ring's end: all of them come back, none twice.
#[test]
fn a_crash_at_any_stage_of_a_checkpoint_keeps_the_records_after_its_freeze_point() {
    let mut wrapped_runs = 0;
    for stage in STAGES {
        for lead in [0u64, 5, 11] {
            let (dev, s) = new_store(&small_opts());
            // Records before the freeze point; `lead` of them move the freeze point along
            // the ring, so the records after it wrap round its end in some runs.
            for i in 0..8 + lead {
                write(&s, i % 16, 1 + i as u8);
            }
            s.checkpoint().unwrap();
            for i in 0..lead {
                write(&s, 20 + i, 0x40 + i as u8);
            }
            let before = s.lock(&s.journal).cursor.pos;
            let f = freeze(&s).unwrap();
            let mut after = 0u64;
            while ring_room(&s) > 2 && after < 12 {
                write(&s, 40 + after % 6, 0x80 + after as u8);
                after += 1;
            }
            assert!(after >= 6, "room for records past the freeze point");
            s.flush().unwrap();
            let wrapped = s.lock(&s.journal).cursor.pos < before;
            wrapped_runs += usize::from(wrapped);
            finish(&s, f, stage).unwrap();
            if stage == Stage::Committed {
                write(&s, 50, 0xee);
                s.flush().unwrap();
            }
            let expect: Vec<(u64, u8)> = (0..8 + lead)
                .map(|i| (i % 16, 1 + i as u8))
                .chain((0..lead).map(|i| (20 + i, 0x40 + i as u8)))
                .chain((0..after).map(|i| (40 + i % 6, 0x80 + i as u8)))
                .chain((stage == Stage::Committed).then_some((50, 0xee)))
                .collect();
            drop(s);
            let r = crash_and_open(&dev);
            let mut want = std::collections::BTreeMap::new();
            for (lba, v) in expect {
                want.insert(lba, v);
            }
            for (lba, v) in &want {
                assert_eq!(
                    read(&r, *lba),
                    *v,
                    "{stage:?}, lead {lead} (wrapped: {wrapped}): lba {lba}; {:?}",
                    r.recovery_report()
                );
            }
            let fsck = r.fsck();
            assert!(
                fsck.is_clean(),
                "{stage:?}, lead {lead}: {:?}",
                fsck.problems
            );
            // And it goes on: more writes, a checkpoint, a clean reopen.
            write(&r, 60, 0x11);
            r.checkpoint().unwrap();
            assert_eq!(read(&r, 60), 0x11);
        }
    }
    assert!(
        wrapped_runs > 0,
        "some records after a freeze point wrapped round the ring"
    );
}

/// Writes `value` to every block in `lbas`, 64 blocks a batch.
pub(super) fn write_all(s: &Store, lbas: &[u64], value: impl Fn(u64) -> u8) {
    for chunk in lbas.chunks(64) {
        let data: Vec<Vec<u8>> = chunk.iter().map(|l| vec![value(*l); 4096]).collect();
        let ops: Vec<Op<'_>> = (chunk.iter().zip(&data))
            .map(|(l, d)| Op::Write {
                offset: l * 4096,
                data: d,
            })
            .collect();
        s.write_batch(0, &ops).unwrap();
    }
}

/// A checkpoint encodes its nodes after the journal is let go: a batch committed meanwhile
/// overwrites every leaf it froze, splits leaves with new blocks and trims others. Whatever
/// stage a crash cuts the checkpoint at, both the frozen state and that batch come back
/// exactly: the frozen nodes were encoded as they were at the freeze, not as changed after.
#[test]
fn a_batch_committed_while_a_checkpoint_encodes_is_recovered_exactly() {
    let opts = crate::store::CreateOptions {
        capacity: 16 << 20,
        journal_bytes: Some(1 << 20),
        ..small_opts()
    };
    for stage in STAGES {
        let (dev, s) = new_store(&opts);
        let old: Vec<u64> = (0..1200).collect();
        write_all(&s, &old, |l| l as u8 | 1);
        s.checkpoint().unwrap();
        // Every leaf dirty again when the checkpoint freezes.
        write_all(&s, &old, |l| (l as u8) ^ 0x5a);
        let f = freeze(&s).unwrap();
        // Committed while the frozen nodes wait to be encoded.
        let even: Vec<u64> = (0..1200).step_by(2).collect();
        write_all(&s, &even, |_| 0xc3);
        let fresh: Vec<u64> = (2000..2600).collect();
        write_all(&s, &fresh, |l| (l as u8) ^ 0x77);
        s.write_batch(
            0,
            &[Op::Discard {
                offset: 301 * 4096,
                len: 50 * 4096,
            }],
        )
        .unwrap();
        s.flush().unwrap();
        finish(&s, f, stage).unwrap();
        let want = |l: u64| -> u8 {
            match l {
                2000..2600 => (l as u8) ^ 0x77,
                301..351 => 0,
                _ if l.is_multiple_of(2) => 0xc3,
                _ => (l as u8) ^ 0x5a,
            }
        };
        drop(s);
        let r = crash_and_open(&dev);
        for l in (0..1200).chain(2000..2600) {
            assert_eq!(read(&r, l), want(l), "{stage:?}: lba {l}");
        }
        let fsck = r.fsck();
        assert!(fsck.is_clean(), "{stage:?}: {:?}", fsck.problems);
    }
}

/// Writers keep committing while checkpoints freeze and write, many times round the ring;
/// what they wrote reads back, and a crash recovers it.
#[test]
fn batches_commit_while_checkpoints_write() {
    let (dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ckpt = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                s.checkpoint().unwrap();
                n += 1;
            }
            n
        })
    };
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    let d = vec![(w * 100 + i % 100) as u8 | 1; 4096];
                    s.write_batch(
                        w as usize,
                        &[Op::Write {
                            offset: (w * 32 + i % 32) * 4096,
                            data: &d,
                        }],
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let checkpoints = ckpt.join().unwrap();
    s.flush().unwrap();
    assert!(checkpoints > 3, "{checkpoints} checkpoints");
    let st = s.stats();
    assert!(st.checkpoints >= checkpoints, "{st:?}");
    // The last of the 300 writes to each block wins.
    let expect = |w: u64, j: u64| {
        let i = (0..300u64).rev().find(|i| i % 32 == j).unwrap();
        (w * 100 + i % 100) as u8 | 1
    };
    let check = |s: &Store| {
        for w in 0..3u64 {
            for j in 0..32u64 {
                assert_eq!(read(s, w * 32 + j), expect(w, j), "writer {w}, block {j}");
            }
        }
        assert!(s.fsck().is_clean());
    };
    check(&s);
    drop(s);
    check(&crash_and_open(&dev));
}

/// A container from before the ring journal (replay from block 0, no head) opens unchanged
/// and gains the ring at its first checkpoint.
#[test]
fn an_older_container_gains_the_ring_at_its_first_checkpoint() {
    use crate::store::log::superblock::INCOMPAT_CIRCULAR_JOURNAL;
    let (dev, s) = new_store(&small_opts());
    write(&s, 1, 7);
    s.flush().unwrap();
    drop(s);
    // What an older Keel leaves: the bit clear and the head field reserved (zero).
    let picked = crate::store::log::recovery::pick_superblock(dev.as_ref()).unwrap();
    let old = crate::store::log::superblock::Superblock {
        incompat: picked.superblock.incompat & !INCOMPAT_CIRCULAR_JOURNAL,
        journal_head: 0,
        ..picked.superblock
    };
    crate::store::log::persist::write_superblock(dev.as_ref(), &old).unwrap();
    let s = Store::open(dev.clone(), store_opts()).unwrap();
    assert_eq!(read(&s, 1), 7);
    write(&s, 2, 8);
    s.flush().unwrap();
    drop(s);
    let sb = crate::store::log::recovery::pick_superblock(dev.as_ref())
        .unwrap()
        .superblock;
    assert_ne!(sb.incompat & INCOMPAT_CIRCULAR_JOURNAL, 0);
    let s = Store::open(dev, store_opts()).unwrap();
    assert_eq!((read(&s, 1), read(&s, 2)), (7, 8));
}
