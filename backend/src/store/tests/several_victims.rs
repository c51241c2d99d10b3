//! A cleaning step with several victims: every live block of each is moved by one record and
//! reads back, before and after recovery; a guest overwrite made while the step reads is not
//! rolled back by its moves.

use super::hold::Hold;
use super::{noise, opts_for, small_opts};
use crate::device::{BlockDevice, FileDevice};
use crate::store::{CreateOptions, Op, Store};
use crate::testing::FaultyDevice;
use std::sync::Arc;

const BLOCK: u64 = 4096;
/// Segments of the victims (small_opts: 16 blocks each).
const VICTIMS: u64 = 4;

/// What LBA `lba` holds after round `round`: data that does not compress.
fn data(lba: u64, round: u64) -> Vec<u8> {
    noise(BLOCK as usize, (lba << 8) | round)
}

fn write(s: &Store, lba: u64, round: u64) {
    let d = data(lba, round);
    let ops = [Op::Write {
        offset: lba * BLOCK,
        data: &d,
    }];
    s.write_batch(0, &ops).unwrap();
}

fn read(s: &Store, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    s.read(lba * BLOCK, &mut b).unwrap();
    b
}

/// Fills `VICTIMS` segments' worth of LBAs, then overwrites all but every fourth: those
/// segments are a quarter live (4 blocks each, a run of their own), the rest full. Returns
/// the LBAs written.
fn quarter_live(s: &Store, opts: &CreateOptions) -> u64 {
    let lbas = VICTIMS * opts.segment_bytes / BLOCK;
    for lba in 0..lbas {
        write(s, lba, 1);
    }
    for lba in (0..lbas).filter(|l| l % 4 != 0) {
        write(s, lba, 2);
    }
    lbas
}

/// Round of LBA `lba` after [`quarter_live`], with `newer` rewritten in round 3.
fn round_of(lba: u64, newer: &[u64]) -> u64 {
    match lba {
        l if newer.contains(&l) => 3,
        l if l % 4 == 0 => 1,
        _ => 2,
    }
}

fn check_all(s: &Store, lbas: u64, newer: &[u64]) {
    for lba in 0..lbas {
        let want = data(lba, round_of(lba, newer));
        assert!(read(s, lba) == want, "LBA {lba}");
    }
}

/// A step of four victims moves each one's four live blocks with one journal record.
fn one_step_empties_four_victims(dev: Arc<dyn BlockDevice>, opts: &CreateOptions) {
    Store::format(dev.as_ref(), opts).unwrap();
    let s = Store::open(Arc::clone(&dev), opts_for(opts)).unwrap();
    let lbas = quarter_live(&s, opts);
    s.checkpoint().unwrap();
    let before = s.stats();
    let done = s.clean_several(4).unwrap();
    let st = s.stats();
    assert_eq!(done.len(), VICTIMS as usize, "{done:?}");
    let mut segs: Vec<u64> = done.iter().map(|r| r.segment).collect();
    segs.sort_unstable();
    segs.dedup();
    assert_eq!(segs.len(), done.len(), "distinct victims: {done:?}");
    assert!(done.iter().all(|r| r.live == 4 && r.moved == 4), "{done:?}");
    assert_eq!(st.segments_cleaned - before.segments_cleaned, VICTIMS);
    assert_eq!(st.cleaner_moves - before.cleaner_moves, 4 * VICTIMS);
    assert_eq!(
        st.journal_writes - before.journal_writes,
        1,
        "one record moves them all"
    );
    assert_eq!(
        st.cleaner_write_bytes - before.cleaner_write_bytes,
        4 * VICTIMS * BLOCK
    );
    check_all(&s, lbas, &[]);
    assert!(s.fsck().is_clean());
    // Nothing is left to move in them: the next step takes none of them.
    let next = s.clean_several(4).unwrap();
    assert!(next.iter().all(|r| !segs.contains(&r.segment)), "{next:?}");
    // Replayed from the journal.
    s.flush().unwrap();
    drop(s);
    let s = Store::open(dev, opts_for(opts)).unwrap();
    check_all(&s, lbas, &[]);
    assert!(s.fsck().is_clean());
}

#[test]
fn one_step_empties_several_victims_with_one_record() {
    let opts = small_opts();
    let bytes = opts.geometry().unwrap().container_bytes();
    one_step_empties_four_victims(Arc::new(FaultyDevice::new(bytes)), &opts);
}

/// The same on a file opened as keeld opens it (O_DIRECT): read and written on rings.
#[test]
fn one_step_empties_several_victims_on_a_file() {
    let opts = small_opts();
    let bytes = opts.geometry().unwrap().container_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("container");
    drop(FileDevice::create(&path, bytes).unwrap());
    let dev = FileDevice::open(&path, false, true).unwrap();
    assert!(dev.raw_fd().is_some());
    one_step_empties_four_victims(Arc::new(dev), &opts);
}

/// The thread whose reads [`HeldReads`] holds.
const CLEANER: &str = "cleaner-held-read";

/// A device that holds the [`CLEANER`] thread after its first read, until the test lets it go.
struct HeldReads {
    inner: FaultyDevice,
    hold: Hold,
}

impl BlockDevice for HeldReads {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let res = self.inner.read_at(buf, offset);
        if std::thread::current().name() == Some(CLEANER) {
            self.hold.hold(true);
        }
        res
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
}

/// The guest rewrites every live block of the first victim and one of the second while the
/// step has read the first: those moves are dropped at commit, the rest are made, and the
/// guest's data is what reads back, before and after recovery.
#[test]
fn a_guest_overwrite_during_a_step_is_not_rolled_back() {
    let opts = small_opts();
    let dev = Arc::new(HeldReads {
        inner: FaultyDevice::new(opts.geometry().unwrap().container_bytes()),
        hold: Hold::default(),
    });
    Store::format(dev.as_ref(), &opts).unwrap();
    let s = Arc::new(Store::open(dev.clone(), opts_for(&opts)).unwrap());
    let lbas = quarter_live(&s, &opts);
    s.checkpoint().unwrap();
    let seg_lbas = opts.segment_bytes / BLOCK;
    let before = s.stats().cleaner_moves;
    let cleaner = {
        let s = Arc::clone(&s);
        std::thread::Builder::new()
            .name(CLEANER.into())
            .spawn(move || s.clean_several(4))
            .unwrap()
    };
    assert!(dev.hold.wait_held());
    // The first victim (greedy, equal live counts: the lowest segment) holds LBAs 0..16.
    let newer: Vec<u64> = vec![0, 4, 8, 12, seg_lbas + 4];
    for &lba in &newer {
        write(&s, lba, 3);
    }
    dev.hold.release();
    let done = cleaner.join().unwrap().unwrap();
    assert_eq!(done.len(), VICTIMS as usize, "{done:?}");
    let moved: Vec<u64> = done.iter().map(|r| r.moved).collect();
    assert_eq!(moved, vec![0, 3, 4, 4], "{done:?}");
    assert_eq!(s.stats().cleaner_moves - before, 11);
    check_all(&s, lbas, &newer);
    assert!(s.fsck().is_clean());
    s.flush().unwrap();
    drop(s);
    let s = Store::open(dev, opts_for(&opts)).unwrap();
    check_all(&s, lbas, &newer);
    assert!(s.fsck().is_clean());
}
