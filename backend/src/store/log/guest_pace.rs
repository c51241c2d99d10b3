//! Guest writes paced to the cleaner's rate when free space runs low, instead of stalled.
//!
//! When guest writes outrun the cleaner, free segments run out and a guest batch finds none:
//! it waits until the cleaner empties a segment and a mark or checkpoint releases it, tens of
//! milliseconds, while the batches before it went at full speed. That wait is the guest's
//! tail latency on a full disk. Below the cleaner's urgent level (see [`pace`]) each guest
//! batch is instead delayed a little, in proportion to how far free space is below that level
//! and to what the cleaner has lately needed to win back a block, so that the guest's rate
//! meets the cleaner's with free space between the reserve and the urgent level: many short
//! delays in place of a few long waits.
//!
//! The cleaner's cost per block won back is its wall time per step over the blocks a step
//! frees net of its copies (`seg_blocks` less the blocks moved), both smoothed over recent
//! steps.
//! The pacing is on only while a background cleaner runs ([`GuestPace::enable`]); without one
//! nothing cleans ahead, and writers make room themselves as before.
//!
//! [`pace`]: super::pace

use super::pace::Levels;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Delay per block at the reserve, in units of the cleaner's cost per block won back: at
/// half the way from the urgent level to the reserve the guest goes at the cleaner's pace.
const GAIN: u64 = 2;
/// The longest delay of one batch (the wait it replaces is a few tens of milliseconds).
const MOST: Duration = Duration::from_millis(20);
/// Weight of the newest step in the smoothed cost, as `1 / SMOOTHING`.
const SMOOTHING: u64 = 8;

/// The guest's pacing state of one store.
#[derive(Debug, Default)]
pub struct GuestPace {
    /// Free segments (emptied ones included) under which guest batches are paced; 0 while
    /// no background cleaner runs.
    urgent: AtomicU64,
    /// Free segments guest writes never get.
    reserve: AtomicU64,
    /// The cleaner's smoothed wall time per step, in nanoseconds, and blocks won back per
    /// step, in 1/`SMOOTHING` blocks (0: nothing known yet).
    step_ns: AtomicU64,
    step_blocks: AtomicU64,
}

impl GuestPace {
    /// Paces guest batches below `levels.urgent` free segments, down to `reserve`.
    pub fn enable(&self, levels: &Levels, reserve: u64) {
        self.reserve.store(reserve, Relaxed);
        self.urgent.store(levels.urgent.max(reserve + 1), Relaxed);
    }

    /// Whether guest batches may be paced at all.
    pub fn is_on(&self) -> bool {
        self.urgent.load(Relaxed) != 0
    }

    /// No pacing (the cleaner stopped).
    pub fn disable(&self) {
        self.urgent.store(0, Relaxed);
    }

    /// One cleaning step took `took` and won back `net_blocks` blocks (the blocks of the
    /// segments it emptied less those it copied). Only the cleaner's thread calls this.
    pub fn note_step(&self, net_blocks: u64, took: Duration) {
        let smooth = |a: &AtomicU64, new: u64| {
            let old = a.load(Relaxed);
            a.store(
                match old {
                    0 => new,
                    _ => old - old / SMOOTHING + new / SMOOTHING,
                },
                Relaxed,
            );
        };
        smooth(&self.step_ns, took.as_nanos() as u64);
        smooth(&self.step_blocks, net_blocks * SMOOTHING);
    }

    /// The cleaner's smoothed cost per block won back, in nanoseconds.
    fn ns_per_block(&self) -> u64 {
        let ns = self.step_ns.load(Relaxed);
        match self.step_blocks.load(Relaxed) {
            0 if ns == 0 => 0,
            // Steps that win nothing back: as slow as can be.
            0 => u64::MAX,
            b => ns.saturating_mul(SMOOTHING) / b,
        }
    }

    /// The cleaner's smoothed cost per block won back.
    #[cfg(test)]
    pub fn cost_per_block(&self) -> Duration {
        Duration::from_nanos(self.ns_per_block())
    }

    /// How long a batch of `blocks` blocks waits before it is planned, with `free` segments
    /// free or emptied.
    pub fn delay(&self, free: u64, blocks: u64) -> Duration {
        let urgent = self.urgent.load(Relaxed);
        if urgent == 0 || free >= urgent || blocks == 0 {
            return Duration::ZERO;
        }
        let reserve = self.reserve.load(Relaxed).min(urgent - 1);
        let span = urgent - reserve;
        let below = (urgent - free).min(span);
        let per_block = u128::from(self.ns_per_block()) * u128::from(GAIN);
        let ns = per_block * u128::from(blocks) * u128::from(below) / u128::from(span);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).min(MOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced() -> GuestPace {
        let p = GuestPace::default();
        p.enable(
            &Levels {
                urgent: 32,
                target: 42,
            },
            20,
        );
        p
    }

    #[test]
    fn no_delay_at_or_above_the_urgent_level_or_when_off() {
        let p = paced();
        p.note_step(1000, Duration::from_millis(10));
        assert_eq!(p.delay(32, 32), Duration::ZERO);
        assert_eq!(p.delay(40, 32), Duration::ZERO);
        p.disable();
        assert_eq!(p.delay(0, 32), Duration::ZERO);
    }

    #[test]
    fn the_delay_grows_with_the_shortfall_and_the_batch() {
        let p = paced();
        // 10 us per block won back.
        p.note_step(1000, Duration::from_millis(10));
        assert_eq!(p.cost_per_block(), Duration::from_micros(10));
        // Half way to the reserve: the cleaner's own pace, 10 us a block.
        assert_eq!(p.delay(26, 32), Duration::from_micros(320));
        assert_eq!(p.delay(26, 64), Duration::from_micros(640));
        // A quarter of the way: half of that.
        assert_eq!(p.delay(29, 32), Duration::from_micros(160));
        // At the reserve and below it: twice the cleaner's pace, at most `MOST`.
        assert_eq!(p.delay(20, 32), Duration::from_micros(640));
        assert_eq!(p.delay(3, 32), Duration::from_micros(640));
        assert_eq!(p.delay(20, 100_000), MOST);
    }

    #[test]
    fn the_cost_follows_recent_steps() {
        let p = paced();
        // Nothing known yet: no delay.
        assert_eq!(p.delay(20, 32), Duration::ZERO);
        p.note_step(1000, Duration::from_millis(8));
        assert_eq!(p.cost_per_block(), Duration::from_micros(8));
        // A slower step moves the cost an eighth of the way.
        p.note_step(1000, Duration::from_millis(16));
        assert_eq!(p.cost_per_block(), Duration::from_micros(9));
        // A step that won nothing back weighs in as much: 9.875 ms over 875 blocks.
        p.note_step(0, Duration::from_millis(16));
        assert_eq!(p.cost_per_block(), Duration::from_nanos(11_285));
        assert_eq!(
            p.delay(20, 32),
            Duration::from_nanos(2 * 32 * p.cost_per_block().as_nanos() as u64)
        );
    }
}
