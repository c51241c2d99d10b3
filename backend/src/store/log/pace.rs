//! How hard the background cleaner works: rate control by a target level of free segments.
//!
//! Below the *urgent* level it cleans without pause: guest writers are close to finding no
//! segment and cleaning for themselves. Between that and the *target* it cleans before space
//! is short, sharing the device with the guest: the pause between two victims grows with the
//! free space above the urgent level, so the cleaner speeds up as the guest eats into the
//! margin and idles off as it is rebuilt. At or above the target it cleans only when the guest
//! is idle. Segments the cleaner emptied count as free here: a mark or a checkpoint releases them.
//!
//! Both margins are cut from the container's spare space, so they are a fraction of it
//! (`spare / 8` and `ahead_percent` of it, at least 2 segments, at most `low_water`): a free
//! segment held back is garbage room the cleaner cannot use, and victims get fuller. On a
//! 1 GiB disk with 20 % spare (51 spare segments), keeping 24 free made the cleaner copy more
//! than twice as much per guest write as keeping 6 (a simulation of one random overwrite after
//! a sequential fill: 4.2 blocks against 2.2; keeping 48, it found no victim at all).

use std::time::Duration;

/// Emptied segments one release by a mark frees.
const MARK_BATCH: u64 = 2;
/// The same when space is short: the guest then waits for the cleaner, and each release
/// costs two device flushes (about 3 ms each on the benchmark host, as long as cleaning a
/// sparse victim) however many segments it frees. One release per victim in a fill's last
/// stretch, when writers took each emptied segment as soon as there was one, held the guest
/// to the flushes' pace.
const URGENT_MARK_BATCH: u64 = 8;

/// Emptied segments worth a release by a mark for a container with `spare` spare segments:
/// a few at a time, more when space is short (`urgent`), at most half the urgent margin
/// (`spare / 8`, see [`Levels::new`]). Emptied segments count as free for the cleaner's and
/// the guest's pace, but no writer can take them: a batch of them larger than the margin lets
/// the free segments run out before the guest is paced. On a 512 MiB disk (32 spare segments,
/// a margin of 4) batches of 8 had guest batches waiting for a segment 0.7-1.1 s of every 3 s
/// of full-disk random writes.
pub fn mark_batch(spare: u64, urgent: bool) -> u64 {
    let want = if urgent {
        URGENT_MARK_BATCH
    } else {
        MARK_BATCH
    };
    want.min(urgent_share(spare) / 2).max(1)
}

/// The share of a container's `spare` segments kept free above the reserve before the cleaner
/// works without pause (the urgent margin, before [`Levels::new`] clamps it).
fn urgent_share(spare: u64) -> u64 {
    spare / 8
}

/// What the cleaner should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Clean without pause.
    Urgent,
    /// Clean, pausing this long after each victim.
    Behind(Duration),
    /// Enough is free: clean only when the guest is idle.
    Ahead,
}

/// Free-segment levels of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub urgent: u64,
    pub target: u64,
}

impl Levels {
    /// Levels above `reserve` free segments for a container with `spare` spare segments.
    pub fn new(reserve: u64, spare: u64, low_water: u64, ahead_percent: u64) -> Self {
        let margin = |n: u64| n.clamp(2, low_water.max(2));
        let urgent = reserve + margin(urgent_share(spare));
        Self {
            urgent,
            target: urgent + margin(spare * ahead_percent / 100),
        }
    }

    /// Emptied segments worth a release. By a checkpoint: `low_water / 2` when urgent,
    /// `low_water` when cleaning ahead, at most a quarter of the spare. A checkpoint holds
    /// guest batches while it writes, and rewrites most map leaves under random writes however
    /// few segments it releases: batches of half the urgent margin (6 on a 2 GiB disk) made
    /// three times as many checkpoints as batches of 12 and 24, and the full-disk random
    /// writes no faster. By a mark (`by_mark`): two device flushes and one small record,
    /// whatever the number; a few at a time keeps the garbage room the cleaner cannot use
    /// small ([`mark_batch`]).
    pub fn release_batch(&self, spare: u64, low_water: u64, urgent: bool, by_mark: bool) -> u64 {
        if by_mark {
            return mark_batch(spare, urgent);
        }
        let want = if urgent { low_water / 2 } else { low_water };
        want.min(spare / 4).max(1)
    }

    /// The pace for `free` free segments plus `pending` emptied ones, with `pause` the
    /// longest pause between victims.
    pub fn pace(&self, free: u64, pending: u64, pause: Duration) -> Pace {
        let have = free + pending;
        if free < self.urgent && have < self.target {
            Pace::Urgent
        } else if have < self.target {
            let above = have.saturating_sub(self.urgent);
            let span = (self.target - self.urgent).max(1);
            Pace::Behind(pause * above as u32 / span as u32)
        } else {
            Pace::Ahead
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_with_the_margin_and_stop_at_the_target() {
        // 2 GiB, 20 % spare: 102 spare segments.
        let l = Levels::new(20, 102, 24, 10);
        assert_eq!(
            l,
            Levels {
                urgent: 32,
                target: 42
            }
        );
        let p = Duration::from_millis(20);
        assert_eq!(l.pace(5, 0, p), Pace::Urgent);
        assert_eq!(l.pace(32, 0, p), Pace::Behind(Duration::ZERO));
        assert_eq!(l.pace(37, 0, p), Pace::Behind(Duration::from_millis(10)));
        assert_eq!(l.pace(33, 4, p), Pace::Behind(Duration::from_millis(10)));
        assert_eq!(l.pace(42, 0, p), Pace::Ahead);
        // Emptied segments waiting for a checkpoint are as good as free.
        assert_eq!(l.pace(20, 30, p), Pace::Ahead);
        assert_eq!(
            (
                l.release_batch(102, 24, true, false),
                l.release_batch(102, 24, false, false)
            ),
            (12, 24)
        );
        assert_eq!(l.release_batch(102, 24, false, true), MARK_BATCH);
        assert_eq!(
            l.release_batch(102, 24, true, true),
            6,
            "half the urgent margin"
        );
        assert_eq!(mark_batch(32, true), 2, "half the urgent margin at most");
        assert_eq!(mark_batch(128, true), URGENT_MARK_BATCH);
        assert_eq!(mark_batch(3, false), 1);
        assert_eq!(
            l.release_batch(51, 24, false, false),
            12,
            "a quarter of the spare at most"
        );
        // Margins are cut from the spare: at least 2 segments each, at most low_water.
        assert_eq!(
            Levels::new(6, 5, 24, 10),
            Levels {
                urgent: 8,
                target: 10
            }
        );
        assert_eq!(
            Levels::new(6, 4000, 24, 10),
            Levels {
                urgent: 30,
                target: 54
            }
        );
    }
}
