//! Guest batches paced to the cleaner's rate when free space is low
//! ([`guest_pace`](crate::store::log::guest_pace)): a batch below the urgent level waits in
//! proportion to the blocks it writes, before anything is planned, beside a batch in flight
//! too; discards and a store without a cleaner are never paced.

use super::{new_store, small_opts};
use crate::store::Op;
use crate::store::layout::BLOCK;
use crate::store::log::pace::Levels;
use std::time::{Duration, Instant};

#[test]
fn a_batch_below_the_urgent_level_waits_in_proportion_to_its_blocks() {
    let (_dev, s) = new_store(&small_opts());
    let data = vec![7u8; 4 * BLOCK as usize];
    let write = [Op::Write {
        offset: 0,
        data: &data,
    }];
    // No cleaner: no pacing, however little is free.
    s.write_batch(0, &write).unwrap();
    assert_eq!(s.stats().paced_batches, 0);

    // Every free segment count is below this level, and at the reserve's end of it; the
    // cleaner won back 1 block in 1 ms: 2 ms a block, 8 ms for this batch.
    let levels = Levels {
        urgent: u64::MAX / 2,
        target: u64::MAX / 2 + 1,
    };
    s.guest_pace.enable(&levels, u64::MAX / 4);
    s.guest_pace.note_step(1, Duration::from_millis(1));
    let t0 = Instant::now();
    s.write_batch(0, &write).unwrap();
    let took = t0.elapsed();
    let st = s.stats();
    assert!(took >= Duration::from_millis(8), "waited {took:?}");
    assert_eq!(st.paced_batches, 1);
    assert!(
        (8000..9000).contains(&st.paced_us),
        "counted {} us",
        st.paced_us
    );

    // A plan beside a batch in flight is paced the same way (a sleep waits for nothing of
    // the store's), then planned.
    let refused = st.plans_refused;
    let t0 = Instant::now();
    let plan = s.try_plan_batch(0, &write).unwrap().expect("planned");
    assert!(t0.elapsed() >= Duration::from_millis(8));
    for (offset, parts) in plan.writes() {
        s.raw_device().write_at(&parts.concat(), offset).unwrap();
    }
    let batch = s.apply_plan(plan);
    s.finish_batch(batch, Ok(())).unwrap();
    assert_eq!(s.stats().plans_refused, refused);
    assert_eq!(s.stats().paced_batches, 2);

    // A discard takes no space: never paced.
    let discard = [Op::Discard {
        offset: 0,
        len: BLOCK,
    }];
    s.write_batch(0, &discard).unwrap();
    assert_eq!(s.stats().paced_batches, 2);

    // The cleaner stopped: no pacing.
    s.guest_pace.disable();
    s.write_batch(0, &write).unwrap();
    assert_eq!(s.stats().paced_batches, 2);
    let mut back = vec![0u8; data.len()];
    s.read(0, &mut back).unwrap();
    assert_eq!(back, data);
}
