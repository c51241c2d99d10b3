//! The mirror on real files with the options users get (O_DIRECT on components and sidecars):
//! a fresh set's first copy, an outage's resync, and writes from unaligned buffers all work, and
//! no component fails.

use super::*;
use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

fn config(dir: &std::path::Path) -> MirrorConfig {
    let paths: Vec<PathBuf> = ["a.img", "b.img"].iter().map(|p| dir.join(p)).collect();
    let mut c = MirrorConfig::new("files", paths);
    c.size = Some(8 * MIB);
    c
}

fn assert_nothing_failed(dev: &MirrorDevice) {
    let s = dev.status();
    for c in &s.components {
        assert_ne!(c.state, ComponentState::Failed, "{:?}", s.events);
    }
    assert!(
        s.events.iter().all(|e| !e.contains("failed")),
        "{:?}",
        s.events
    );
}

#[test]
fn default_options_on_files_copy_and_resync_under_o_direct() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    assert!(c.options.direct, "O_DIRECT is the default");
    let dev = MirrorDevice::open(c).unwrap();
    // Without assume_clean, component 1 first gets a full copy of component 0.
    assert_eq!(
        dev.run_resync(1).unwrap(),
        ResyncOutcome::Completed { bytes: 8 * MIB }
    );
    let mut data = AlignedBuf::zeroed(MIB as usize);
    data.fill(0x5a);
    dev.write_at(&data, 2 * MIB).unwrap();
    dev.offline(1).unwrap();
    data.fill(0xa5);
    dev.write_at(&data, 4 * MIB).unwrap();
    // An unaligned buffer, offset and length: served through the page-cache descriptor.
    let odd = vec![0x33u8; 1001];
    dev.write_at(&odd[1..], 6 * MIB + 7).unwrap();
    dev.flush().unwrap();
    dev.online(1).unwrap();
    // 1 MiB at 4 MiB is 16 chunks of 64 KiB; the odd write one more.
    assert_eq!(
        dev.run_resync(1).unwrap(),
        ResyncOutcome::Completed {
            bytes: 17 * 64 * 1024
        }
    );
    assert_nothing_failed(&dev);
    let mut back = vec![0u8; 1000];
    dev.read_at(&mut back, 6 * MIB + 7).unwrap();
    assert!(back.iter().all(|&b| b == 0x33));
    dev.close().unwrap();
    let a = std::fs::read(dir.path().join("a.img")).unwrap();
    let b = std::fs::read(dir.path().join("b.img")).unwrap();
    assert!(a == b, "the components differ");
    assert!(
        a[4 * MIB as usize..5 * MIB as usize]
            .iter()
            .all(|&x| x == 0xa5)
    );

    // Reopened, both components are O_DIRECT from the start and nothing is pending.
    let dev = MirrorDevice::open(config(dir.path())).unwrap();
    assert!(dev.pending_resyncs().is_empty());
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    assert_nothing_failed(&dev);
}
