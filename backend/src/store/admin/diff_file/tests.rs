//! Export files: round trips onto an image and onto another store, exact length, and
//! refusal of every kind of damage.

use super::*;
use crate::store::admin::diff::TreeRef;
use crate::store::tests::{new_store, small_opts};
use crate::testing::SplitMix;

/// A raw image in memory.
struct Image(Vec<u8>);

impl ApplyTarget for Image {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.0[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SplitMix::new(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn whole(s: &Store) -> Vec<u8> {
    let mut v = vec![0u8; s.capacity() as usize];
    s.read(0, &mut v).unwrap();
    v
}

fn write(s: &Store, offset: u64, data: &[u8]) {
    s.write_batch(0, &[Op::Write { offset, data }]).unwrap();
}

fn export(s: &Store, from: TreeRef, to: TreeRef) -> Vec<u8> {
    let d = s.diff(from, to).unwrap();
    let h = Header {
        disk_size: s.capacity(),
        created: 7,
        from: format!("{from:?}"),
        to: format!("{to:?}"),
    };
    let want = export_len(&h, &d);
    let mut out = Vec::new();
    Exporter::new(s, &h, d).read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, want, "export_len is exact");
    out
}

/// A store with a full base snapshot and an incremental one on top.
fn history() -> (Store, u64, u64) {
    let (_d, s) = new_store(&small_opts());
    write(&s, 0, &bytes(1, 300 << 10)); // more than one 256-block data record
    write(&s, 600 << 10, &bytes(2, 8192));
    let base = s.create_snapshot("base").unwrap();
    write(&s, 4096, &bytes(3, 4096));
    s.write_batch(
        0,
        &[Op::Discard {
            offset: 600 << 10,
            len: 8192,
        }],
    )
    .unwrap();
    write(&s, 900 << 10, &bytes(4, 12288));
    let incr = s.create_snapshot("incr").unwrap();
    (s, base, incr)
}

#[test]
fn full_then_incremental_restores_each_snapshot() {
    let (s, base, incr) = history();
    let full = export(&s, TreeRef::Empty, TreeRef::Snapshot(base));
    let delta = export(&s, TreeRef::Snapshot(base), TreeRef::Snapshot(incr));
    let (h, t) = verify(&delta[..]).unwrap();
    assert_eq!((h.disk_size, h.created), (s.capacity(), 7));
    assert_eq!((t.data_bytes, t.zero_bytes), (16384, 8192));
    assert_eq!(t.records, 3);

    // Onto an image.
    // A full export holds the mapped blocks only: it restores onto a zero-filled image.
    let mut img = Image(vec![0; s.capacity() as usize]);
    apply(&full[..], &mut img).unwrap();
    s.revert_to_snapshot(base).unwrap();
    assert!(img.0 == whole(&s), "full export restores the base snapshot");
    apply(&delta[..], &mut img).unwrap();
    s.revert_to_snapshot(incr).unwrap();
    assert!(
        img.0 == whole(&s),
        "base + incremental restores the newer snapshot"
    );

    // Onto another store: the same contents.
    let (_d2, mut other) = new_store(&small_opts());
    apply(&full[..], &mut other).unwrap();
    apply(&delta[..], &mut other).unwrap();
    assert!(whole(&other) == img.0);
    assert!(other.fsck().is_clean());
}

#[test]
fn refuses_damage_and_the_wrong_disk() {
    let (s, base, incr) = history();
    let good = export(&s, TreeRef::Snapshot(base), TreeRef::Snapshot(incr));
    verify(&good[..]).unwrap();
    // Every single flipped byte is caught.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x40;
        assert!(
            verify(&b[..]).is_err(),
            "flip at byte {i} of {}",
            good.len()
        );
    }
    // Truncated anywhere, or with bytes after the end record.
    for cut in [0, 10, HEADER_LEN, good.len() / 2, good.len() - 1] {
        assert!(verify(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = good.clone();
    longer.push(0);
    let e = verify(&longer[..]).unwrap_err();
    assert!(e.to_string().contains("after the end"), "{e}");
    // Meant for another size of disk.
    let mut img = Image(vec![0; s.capacity() as usize * 2]);
    let e = apply(&good[..], &mut img).unwrap_err();
    assert!(e.to_string().contains("-byte disk"), "{e}");
    assert!(img.0.iter().all(|b| *b == 0), "nothing applied");
    // A newer version is named as such.
    let mut v2 = good.clone();
    v2[8] = 2;
    assert!(matches!(verify(&v2[..]), Err(StoreError::Unsupported(_))));
}

#[test]
fn refuses_extents_out_of_order_or_beyond_the_disk() {
    // Hand-built files with valid checksums but bad extents.
    let build = |disk: u64, recs: &[(u8, u64, u64)]| {
        let h = Header {
            disk_size: disk,
            created: 0,
            from: "a".into(),
            to: "b".into(),
        };
        let mut f = h.encode();
        let mut zero = 0;
        for &(tag, off, len) in recs {
            f.push(tag);
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            zero += len;
        }
        f.push(TAG_END);
        f.extend_from_slice(&(recs.len() as u64).to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&zero.to_le_bytes());
        let crc = crc32c::crc32c(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    };
    let z = TAG_ZERO;
    verify(&build(1 << 20, &[(z, 0, 4096), (z, 8192, 4096)])[..]).unwrap();
    for (recs, why) in [
        (vec![(z, 8192, 4096), (z, 0, 4096)], "out of order"),
        (vec![(z, 0, 8192), (z, 4096, 4096)], "out of order"),
        (vec![(z, 1 << 20, 4096)], "beyond the disk"),
        (vec![(z, u64::MAX - 4095, 4096)], "beyond the disk"),
        (vec![(z, 512, 4096)], "whole blocks"),
        (vec![(z, 0, 0)], "whole blocks"),
        (vec![(b'Q', 0, 4096)], "unknown record tag"),
    ] {
        let e = verify(&build(1 << 20, &recs)[..]).unwrap_err();
        assert!(e.to_string().contains(why), "{recs:?}: {e}");
    }
}

#[test]
fn an_export_of_the_running_point_fails_if_the_disk_moves_on() {
    let (s, base, _) = history();
    write(&s, 4096, &bytes(8, 4096)); // held by the running point alone
    let d = s.diff(TreeRef::Snapshot(base), TreeRef::Running).unwrap();
    let h = Header {
        disk_size: s.capacity(),
        created: 0,
        from: "base".into(),
        to: "@running".into(),
    };
    let mut ex = Exporter::new(&s, &h, d);
    // The first changed block of the running point, rewritten before the export reads it.
    write(&s, 4096, &bytes(9, 4096));
    let mut out = Vec::new();
    let e = ex.read_to_end(&mut out).unwrap_err();
    assert!(e.to_string().contains("changed since the diff"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Damaged files of every shape (bytes changed, cut, inserted, or random) are refused
    /// with an error, never a panic, and never read as valid.
    #[test]
    fn damaged_files_are_refused_without_panicking(
        edits in proptest::collection::vec((0usize..1 << 16, 0u8..=255, 0u8..3), 1..6),
        random in proptest::collection::vec(0u8..=255, 0..512),
    ) {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let good = GOOD.get_or_init(|| {
            let (s, base, incr) = history();
            export(&s, TreeRef::Snapshot(base), TreeRef::Snapshot(incr))
        });
        let mut b = good.clone();
        for (at, v, kind) in edits {
            let at = at % b.len().max(1);
            match kind {
                0 => b[at] = if b[at] == v { v.wrapping_add(1) } else { v },
                1 => b.truncate(at),
                _ => b.insert(at, v),
            }
            if b.is_empty() {
                break;
            }
        }
        if &b != good {
            proptest::prop_assert!(verify(&b[..]).is_err());
        }
        let mut r = MAGIC.to_vec();
        r.extend_from_slice(&random);
        proptest::prop_assert!(verify(&r[..]).is_err());
        proptest::prop_assert!(verify(&random[..]).is_err());
    }
}

#[test]
fn an_apply_cut_short_by_a_crash_completes_when_run_again() {
    use crate::testing::{CrashMode, FaultyDevice};
    use std::sync::Arc;
    let (s, base, incr) = history();
    let full = export(&s, TreeRef::Empty, TreeRef::Snapshot(base));
    let delta = export(&s, TreeRef::Snapshot(base), TreeRef::Snapshot(incr));
    s.revert_to_snapshot(incr).unwrap();
    let want = whole(&s);
    let mut rng = SplitMix::new(5);
    let mut cuts = 0;
    for cut in 0..64u64 {
        let (dev, mut t) = new_store(&small_opts());
        apply(&full[..], &mut t).unwrap();
        dev.fail_writes_after(Some(cut));
        if apply(&delta[..], &mut t).is_ok() {
            break; // every write of the apply fits before the cut: all cut points are done
        }
        cuts += 1;
        drop(t);
        let mode = if cut % 2 == 0 {
            CrashMode::TornPrefix
        } else {
            CrashMode::RandomSubset
        };
        let dev = Arc::new(FaultyDevice::from_image(dev.crash_image(mode, &mut rng)));
        let mut t = Store::open(dev, crate::store::tests::store_opts()).unwrap();
        apply(&delta[..], &mut t).unwrap();
        assert!(whole(&t) == want, "cut after {cut} writes");
        let f = t.fsck();
        assert!(f.is_clean(), "{:?}", f.problems);
    }
    assert!(cuts >= 4, "only {cuts} cut points");
}
