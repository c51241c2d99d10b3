use super::*;
use crate::device::BlockDevice;

#[test]
fn crash_image_keeps_flushed_and_drops_unflushed() {
    let d = FaultyDevice::new(8192);
    d.write_at(&[1; 4096], 0).unwrap();
    d.flush().unwrap();
    d.write_at(&[2; 4096], 4096).unwrap();
    let mut rng = SplitMix::new(1);
    let img = d.crash_image(CrashMode::DropAll, &mut rng);
    assert_eq!(img[0], 1);
    assert_eq!(img[4096], 0);
    let mut torn_seen = false;
    for s in 0..64 {
        let img = d.crash_image(CrashMode::TornPrefix, &mut SplitMix::new(s));
        assert_eq!(img[0], 1);
        let twos = img[4096..].iter().filter(|b| **b == 2).count();
        assert_eq!(twos % 512, 0, "tears at sector boundaries");
        torn_seen |= twos > 0 && twos < 4096;
    }
    assert!(torn_seen);
}

#[test]
fn writes_fail_after_a_count() {
    let d = FaultyDevice::new(4096);
    d.fail_writes_after(Some(1));
    assert!(d.write_at(&[1; 512], 0).is_ok());
    assert!(d.write_at(&[1; 512], 0).is_err());
    assert!(d.discard(0, 512).is_err());
    d.fail_writes_after(None);
    assert!(d.write_at(&[1; 512], 0).is_ok());
    assert_eq!(d.stats().writes, 2);
}

#[test]
fn direct_mode_refuses_what_o_direct_refuses() {
    let d = FaultyDevice::seeded(8192, 1);
    d.set_direct(true);
    let aligned = crate::store::buf::AlignedBuf::copy_of(&[3u8; 1024]);
    d.write_at(&aligned, 512).unwrap();
    let odd = vec![1u8; 1025];
    for (buf, at) in [
        (&odd[1..], 512u64),
        (&aligned[..1000], 512),
        (&aligned[..], 100),
    ] {
        let e = d.write_at(buf, at).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
    assert_eq!(d.stats().misaligned, 3);
    d.set_direct(false);
    d.write_at(&odd[1..], 100).unwrap();
}

#[test]
fn crash_drops_unflushed_writes() {
    let d = FaultyDevice::seeded(8192, 1);
    d.write_at(&[1; 512], 0).unwrap();
    d.flush().unwrap();
    d.write_at(&[2; 512], 0).unwrap();
    d.write_at(&[3; 512], 4096).unwrap();
    let mut b = [0u8; 512];
    d.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [2; 512]);
    d.crash(CrashMode::DropAll);
    assert_eq!(d.pending_writes(), 0);
    d.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [1; 512]);
    d.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, [0; 512]);
}

#[test]
fn torn_crash_keeps_sector_prefixes_and_replays_from_seed() {
    let run = |seed| {
        let d = FaultyDevice::seeded(1 << 16, seed);
        for i in 0..16u8 {
            d.write_at(&[i + 1; 2048], u64::from(i) * 4096).unwrap();
        }
        d.crash(CrashMode::RandomSubset);
        d.contents()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, same outcome");
    for i in 0..16usize {
        let block = &a[i * 4096..i * 4096 + 2048];
        let kept = block.iter().take_while(|&&b| b == i as u8 + 1).count();
        assert_eq!(kept % 512, 0, "tears fall on sector boundaries");
        assert!(block[kept..].iter().all(|&b| b == 0));
    }
    let outcomes: std::collections::HashSet<_> = (0..20).map(run).collect();
    assert!(outcomes.len() > 1, "different seeds tear differently");
}

#[test]
fn scripted_and_random_failures() {
    let d = FaultyDevice::seeded(4096, 3);
    d.set_fail_writes(true);
    assert!(d.write_at(&[1; 16], 0).is_err());
    d.set_fail_writes(false);
    d.write_at(&[1; 16], 0).unwrap();
    d.set_fail_flushes(true);
    assert!(d.flush().is_err());
    d.set_dead(false);
    d.set_error_rates(500_000, 0);
    let mut b = [0u8; 16];
    let failures = (0..200).filter(|_| d.read_at(&mut b, 0).is_err()).count();
    assert!(failures > 50 && failures < 150, "{failures} of 200 failed");
    assert_eq!(d.stats().injected_errors, failures as u64 + 2);
}
