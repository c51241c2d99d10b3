//! Several writers at once: their batches' writes finish in any order, yet the maps must take
//! them in LSN order, so that what the disk reads before a crash is what recovery rebuilds.

use super::{new_store, small_opts};
use crate::device::BlockDevice;
use crate::store::testing::SplitMix;
use crate::store::{BatchIo, Op, Store, StoreOptions};
use std::io;
use std::sync::{Arc, Barrier};

/// Writes through the device after a random pause, each write of a batch in a random order,
/// so that a later batch of another writer often lands (and would apply) first.
struct ShuffledIo<'a> {
    dev: &'a dyn BlockDevice,
    rng: SplitMix,
}

impl BatchIo for ShuffledIo<'_> {
    fn write_all(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        let mut order: Vec<usize> = (0..writes.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        std::thread::sleep(std::time::Duration::from_micros(self.rng.below(300)));
        for i in order {
            self.dev.write_at(writes[i].1, writes[i].0)?;
        }
        Ok(())
    }
}

fn image(store: &Store) -> Vec<u8> {
    let mut img = vec![0u8; store.capacity() as usize];
    store.read(0, &mut img).unwrap();
    img
}

#[test]
fn writers_racing_on_the_same_blocks_agree_with_recovery() {
    // A journal that holds every record and room for every block written: replay alone
    // rebuilds the maps, no checkpoint hides a wrong order.
    let opts = crate::store::CreateOptions {
        capacity: 8 << 20,
        journal_bytes: Some(4 << 20),
        ..small_opts()
    };
    let (dev, store) = new_store(&opts);
    let store = Arc::new(store);
    let writers = 3;
    let rounds = 10u64;
    // Each phase races the writers for a few rounds, then compares the disk with what
    // recovery makes of a copy of the device: the last writes to each block decide.
    for phase in 0..15u64 {
        let start = Arc::new(Barrier::new(writers));
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let (store, dev, start) =
                    (Arc::clone(&store), Arc::clone(&dev), Arc::clone(&start));
                std::thread::spawn(move || {
                    let seed = phase * 16 + w as u64;
                    let mut rng = SplitMix::new(0xc0ffee + seed);
                    let mut io = ShuffledIo {
                        dev: dev.as_ref(),
                        rng: SplitMix::new(7 + seed),
                    };
                    start.wait();
                    for round in 0..rounds {
                        // Every writer hits the same 8 blocks, so the order of batches decides.
                        let blk = rng.below(6);
                        let data = vec![(w as u8) << 6 | (round % 64) as u8; 3 * 4096];
                        let ops = [Op::Write {
                            offset: blk * 4096,
                            data: &data,
                        }];
                        store.write_batch_with(w, &ops, &mut io).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let before = image(&store);
        let copy = Arc::new(crate::store::testing::FaultyDevice::from_image(dev.image()));
        let recovered = Store::open(copy, StoreOptions::default()).unwrap();
        assert_eq!(
            recovered.recovery_report().records_replayed,
            (phase + 1) * writers as u64 * rounds
        );
        assert!(
            image(&recovered) == before,
            "phase {phase}: recovery rebuilt another disk"
        );
    }
    let report = store.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}
