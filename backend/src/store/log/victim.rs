//! Which segment the cleaner empties next. Emptying a segment of utilisation `u` reads it (1)
//! and writes its live part (`u`) to gain `1 - u`.
//!
//! - **Greedy** (the default) takes the sealed data segment with the fewest live blocks.
//! - **Cost-benefit with age** (Sprite LFS) weighs the gain by how long it lasts: the free space
//!   a segment gives back lasts longer the older (colder) its data is, so the victim is the one
//!   with the highest
//!
//!   ```text
//!   benefit / cost = (1 - u) x age / (1 + u)
//!   ```
//!
//!   Age counts data blocks written since the segment's data was (its stamp in the usage table,
//!   kept in memory: after an open every segment has the same age and the choice is greedy).
//!
//! Measured on a keel disk (`skew_bench`, docs/benchmarks.md "Skewed writes"), cost-benefit
//! copied more than greedy on uniform, 90/10 hot-set and Zipf writes alike: guest writers mix
//! hot and cold blocks in their segments, so the old segments it prefers are cleaned while
//! still fairly full. It pays only once writes are separated by temperature; until then greedy
//! is the default and cost-benefit a choice (`cleaner_policy`).
//!
//! Segments above `max_live` are never chosen: moving a nearly full segment gains nothing.

use crate::store::map::sut::{SegKind, Sut};

/// How the cleaner picks its victims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VictimPolicy {
    /// The segment with the fewest live blocks, whatever its age.
    #[default]
    Greedy,
    /// Benefit per cost with age (see the module doc): cold segments are cleaned at a higher
    /// utilisation than hot ones, which are left to empty themselves.
    CostBenefit,
}

impl VictimPolicy {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cost-benefit" => Ok(Self::CostBenefit),
            "greedy" => Ok(Self::Greedy),
            _ => Err(format!(
                "\"{s}\" is not a cleaner policy (expected \"cost-benefit\" or \"greedy\")"
            )),
        }
    }
}

/// Up to `n` distinct sealed data segments holding garbage to clean next, best first: each
/// is the one to choose once the ones before it are cleaned.
pub fn choose_many(
    sut: &Sut,
    first_data_segment: u64,
    seg_blocks: u64,
    max_live: u32,
    policy: VictimPolicy,
    n: usize,
) -> Vec<u64> {
    let now = sut.clock();
    let mut scored: Vec<(f64, u64)> = (first_data_segment..sut.segments())
        .filter(|s| {
            let l = sut.live(*s);
            sut.kind(*s) == SegKind::Data && !sut.is_open(*s) && l > 0 && l <= max_live
        })
        .map(|s| {
            let age = match policy {
                VictimPolicy::CostBenefit => now.saturating_sub(sut.stamp(s)),
                // Equal ages leave only utilisation to decide.
                VictimPolicy::Greedy => 0,
            };
            (score(sut.live(s), seg_blocks, age), s)
        })
        .collect();
    // Best score first; among equals, the lowest segment.
    let best = |a: &(f64, u64), b: &(f64, u64)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if n < scored.len() {
        scored.select_nth_unstable_by(n, best);
        scored.truncate(n);
    }
    scored.sort_unstable_by(best);
    scored.into_iter().map(|(_, s)| s).collect()
}

/// Benefit per cost of emptying a segment with `live` of `seg_blocks` blocks live, whose data
/// is `age` blocks written old.
pub fn score(live: u32, seg_blocks: u64, age: u64) -> f64 {
    let u = f64::from(live) / seg_blocks.max(1) as f64;
    (1.0 - u) * (age as f64 + 1.0) / (1.0 + u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::Geometry;

    /// The one segment to clean next.
    fn choose(
        sut: &Sut,
        first_data_segment: u64,
        seg_blocks: u64,
        max_live: u32,
        policy: VictimPolicy,
    ) -> Option<u64> {
        choose_many(sut, first_data_segment, seg_blocks, max_live, policy, 1)
            .first()
            .copied()
    }

    #[test]
    fn sparser_wins_at_equal_age_and_older_wins_at_equal_use() {
        assert!(score(4, 16, 100) > score(8, 16, 100));
        assert!(score(8, 16, 1000) > score(8, 16, 100));
        // Old and fairly full beats young and sparse once it is old enough.
        assert!(score(12, 16, 10_000) > score(4, 16, 100));
        assert_eq!(score(16, 16, 5), 0.0);
    }

    /// A segment `live` blocks of 16 live, sealed.
    fn fill(s: &mut Sut, geo: &Geometry, live: u64) -> u64 {
        let seg = s.grab(SegKind::Data, false).unwrap();
        for b in 0..16 {
            s.add(geo.segment_start(seg) + b, SegKind::Data);
        }
        for b in live..16 {
            s.dec(geo.segment_start(seg) + b);
        }
        s.close(seg, 0);
        seg
    }

    #[test]
    fn policies_parse_by_their_config_names() {
        assert_eq!(
            VictimPolicy::parse("cost-benefit"),
            Ok(VictimPolicy::CostBenefit)
        );
        assert_eq!(VictimPolicy::parse("greedy"), Ok(VictimPolicy::Greedy));
        assert!(VictimPolicy::parse("lru").unwrap_err().contains("greedy"));
    }

    /// A small geometry of 16-block segments, and its first data segment.
    fn small() -> (Geometry, u64) {
        let geo = Geometry {
            seg_blocks: 16,
            segments: 40,
            journal_segments: 2,
            capacity: 64 * 4096,
        };
        (geo, geo.first_data_segment())
    }

    #[test]
    fn chooses_by_cost_benefit_among_sealed_data_segments() {
        let (geo, first) = small();
        // Written one after the other: as old, so the sparser goes first (greedy).
        let mut s = Sut::new(geo);
        fill(&mut s, &geo, 12);
        let sparser = fill(&mut s, &geo, 6);
        assert_eq!(
            choose(&s, first, 16, 14, VictimPolicy::CostBenefit),
            Some(sparser)
        );
        assert_eq!(
            choose(&s, first, 16, 11, VictimPolicy::CostBenefit),
            Some(sparser)
        );

        // The fuller one written long before: its data is cold, it goes first.
        let mut s = Sut::new(geo);
        let old = fill(&mut s, &geo, 12);
        for _ in 0..20 {
            fill(&mut s, &geo, 0);
            s.release_pending(&|_| false);
        }
        let young = fill(&mut s, &geo, 6);
        assert_eq!(
            choose(&s, first, 16, 14, VictimPolicy::CostBenefit),
            Some(old)
        );
        assert_eq!(
            choose(&s, first, 16, 14, VictimPolicy::Greedy),
            Some(young),
            "greedy looks at utilisation only"
        );
        assert_eq!(
            choose(&s, first, 16, 11, VictimPolicy::CostBenefit),
            Some(young),
            "above max_live: never"
        );
        // An open segment is never chosen, nor a full one.
        let open = s.grab(SegKind::Data, false).unwrap();
        s.add(geo.segment_start(open), SegKind::Data);
        assert_eq!(
            choose(&s, first, 16, 16, VictimPolicy::CostBenefit),
            Some(old)
        );
        assert_eq!(choose(&s, first, 16, 5, VictimPolicy::CostBenefit), None);
    }

    #[test]
    fn several_victims_come_best_first_and_distinct() {
        let (geo, first) = small();
        let mut s = Sut::new(geo);
        let segs: Vec<u64> = [9, 3, 12, 3, 7]
            .iter()
            .map(|l| fill(&mut s, &geo, *l))
            .collect();
        let greedy = |n| choose_many(&s, first, 16, 10, VictimPolicy::Greedy, n);
        // Equal live counts: the lower segment first; 12 live is above max_live.
        assert_eq!(greedy(3), vec![segs[1], segs[3], segs[4]]);
        assert_eq!(greedy(9), vec![segs[1], segs[3], segs[4], segs[0]]);
        assert_eq!(greedy(1), vec![segs[1]]);
        assert_eq!(greedy(0), Vec::<u64>::new());
        assert_eq!(
            choose(&s, first, 16, 10, VictimPolicy::Greedy),
            Some(segs[1]),
            "the first of several is the one victim"
        );
    }
}
