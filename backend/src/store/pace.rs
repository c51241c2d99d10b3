//! How hard the background cleaner works: rate control by a target level of free segments.
//!
//! Below the *urgent* level (the reserve plus `low_water`) it cleans without pause: guest
//! writers are close to finding no segment and cleaning for themselves. Between that and the
//! *target* (urgent plus `ahead_percent` of the data segments, at least `low_water`) it cleans
//! before space is short, sharing the device with the guest: the pause between two victims
//! grows with the free space above the urgent level, so the cleaner speeds up as the guest
//! eats into the margin and idles off as it is rebuilt. At or above the target it cleans only
//! when the guest is idle. Segments the cleaner emptied count as free here: the next
//! checkpoint releases them.

use std::time::Duration;

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
    pub fn new(reserve: u64, data_segments: u64, low_water: u64, ahead_percent: u64) -> Self {
        let urgent = reserve + low_water;
        Self {
            urgent,
            target: urgent + (data_segments * ahead_percent / 100).max(low_water),
        }
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
        let l = Levels::new(10, 1000, 24, 5);
        assert_eq!(
            l,
            Levels {
                urgent: 34,
                target: 84
            }
        );
        let p = Duration::from_millis(20);
        assert_eq!(l.pace(5, 0, p), Pace::Urgent);
        assert_eq!(l.pace(34, 0, p), Pace::Behind(Duration::ZERO));
        assert_eq!(l.pace(59, 0, p), Pace::Behind(Duration::from_millis(10)));
        assert_eq!(l.pace(40, 19, p), Pace::Behind(Duration::from_millis(10)));
        assert_eq!(l.pace(84, 0, p), Pace::Ahead);
        // Emptied segments waiting for a checkpoint are as good as free.
        assert_eq!(l.pace(20, 70, p), Pace::Ahead);
        // A small container: the margin is at least low_water.
        assert_eq!(Levels::new(6, 20, 24, 5).target, 6 + 48);
    }
}
