//! Judging a block read back against what the state file says it must hold.

use serde::Serialize;

use super::block::{Content, expected, inspect};
use super::state::State;

/// The verdict on one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Holds its flushed generation, or the one whose write was in flight.
    Ok,
    /// Holds an older generation than one acknowledged and flushed: a lost write.
    Lost,
    /// Holds an intact block of another block number or another run: stale or misdirected data.
    Stale,
    /// Sectors from two different generations: a write landed partly.
    Torn,
    /// Checksum failure or bytes that are no block at all.
    Corrupt,
    /// Reads as zeroes although a flushed write put data there.
    NeverWritten,
    /// A generation newer than any the state allows.
    Unexpected,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Ok,
        Verdict::Lost,
        Verdict::Stale,
        Verdict::Torn,
        Verdict::Corrupt,
        Verdict::NeverWritten,
        Verdict::Unexpected,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Lost => "lost",
            Self::Stale => "stale",
            Self::Torn => "torn",
            Self::Corrupt => "corrupt",
            Self::NeverWritten => "never-written",
            Self::Unexpected => "unexpected",
        }
    }
}

/// One block that failed, for the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Offender {
    pub block: u64,
    pub offset: u64,
    pub verdict: Verdict,
    pub detail: String,
}

/// Options of the judgement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    /// Accept a block whose in-flight write landed partly (sector by sector): devices without
    /// atomic multi-sector writes may do that on a crash.
    pub allow_torn_pending: bool,
}

/// Judges block `block` read back as `data`.
pub fn judge(state: &State, block: u64, data: &[u8], rules: Rules) -> (Verdict, String) {
    let flushed = state
        .flushed
        .get(block as usize)
        .copied()
        .map_or(0, u64::from);
    let pending = state.pending_for(block);
    let allowed = match pending {
        Some(p) => format!("generation {flushed} or {p}"),
        None => format!("generation {flushed}"),
    };
    match inspect(data) {
        Content::Blank if flushed == 0 => (Verdict::Ok, String::new()),
        Content::Blank => (
            Verdict::NeverWritten,
            format!("reads as zeroes, expected {allowed}"),
        ),
        Content::Stamp {
            seed,
            block: found,
            generation,
        } => {
            if seed != state.seed || found != block {
                (
                    Verdict::Stale,
                    format!("holds block {found} generation {generation} of run {seed:#x}"),
                )
            } else if generation == flushed || pending == Some(generation) {
                (Verdict::Ok, String::new())
            } else if generation < flushed {
                (
                    Verdict::Lost,
                    format!("holds generation {generation}, expected {allowed}"),
                )
            } else {
                (
                    Verdict::Unexpected,
                    format!("holds generation {generation}, expected {allowed}"),
                )
            }
        }
        Content::BadChecksum | Content::Garbage => {
            let torn = torn_between(state, block, data, flushed, pending);
            match torn {
                Some(_) if rules.allow_torn_pending && pending.is_some() => {
                    (Verdict::Ok, String::new())
                }
                Some((a, b)) => (
                    Verdict::Torn,
                    format!("sectors of generations {a} and {b}, expected {allowed}"),
                ),
                None => (
                    Verdict::Corrupt,
                    format!("checksum mismatch or foreign bytes, expected {allowed}"),
                ),
            }
        }
    }
}

/// If every sector of `data` matches one of the two allowed generations, and both occur,
/// returns them: the write was torn.
fn torn_between(
    state: &State,
    block: u64,
    data: &[u8],
    flushed: u64,
    pending: Option<u64>,
) -> Option<(u64, u64)> {
    let mut candidates = vec![flushed];
    if let Some(p) = pending {
        candidates.push(p);
    }
    // A lost-then-torn block may also mix with the generation before the flushed one.
    if flushed > 0 {
        candidates.push(flushed - 1);
    }
    let images: Vec<(u64, Vec<u8>)> = candidates
        .iter()
        .map(|&g| (g, expected(data.len(), state.seed, block, g)))
        .collect();
    for (i, (ga, a)) in images.iter().enumerate() {
        for (gb, b) in images.iter().skip(i + 1) {
            let mut saw_a = false;
            let mut saw_b = false;
            let all = data.chunks(512).enumerate().all(|(s, sector)| {
                let range = s * 512..s * 512 + sector.len();
                let is_a = a.get(range.clone()) == Some(sector);
                let is_b = b.get(range) == Some(sector);
                saw_a |= is_a && !is_b;
                saw_b |= is_b && !is_a;
                is_a || is_b
            });
            if all && saw_a && saw_b {
                return Some((*ga.min(gb), *ga.max(gb)));
            }
        }
    }
    None
}

/// Counts per verdict and the first offenders.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub blocks: u64,
    pub ok: u64,
    pub lost: u64,
    pub stale: u64,
    pub torn: u64,
    pub corrupt: u64,
    pub never_written: u64,
    pub unexpected: u64,
    pub first_offenders: Vec<Offender>,
}

/// How many offenders a report lists.
pub const MAX_OFFENDERS: usize = 10;

impl CheckReport {
    pub fn add(&mut self, block: u64, offset: u64, verdict: Verdict, detail: String) {
        self.blocks += 1;
        *self.count_mut(verdict) += 1;
        if verdict != Verdict::Ok && self.first_offenders.len() < MAX_OFFENDERS {
            self.first_offenders.push(Offender {
                block,
                offset,
                verdict,
                detail,
            });
        }
    }

    fn count_mut(&mut self, v: Verdict) -> &mut u64 {
        match v {
            Verdict::Ok => &mut self.ok,
            Verdict::Lost => &mut self.lost,
            Verdict::Stale => &mut self.stale,
            Verdict::Torn => &mut self.torn,
            Verdict::Corrupt => &mut self.corrupt,
            Verdict::NeverWritten => &mut self.never_written,
            Verdict::Unexpected => &mut self.unexpected,
        }
    }

    pub fn count(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Ok => self.ok,
            Verdict::Lost => self.lost,
            Verdict::Stale => self.stale,
            Verdict::Torn => self.torn,
            Verdict::Corrupt => self.corrupt,
            Verdict::NeverWritten => self.never_written,
            Verdict::Unexpected => self.unexpected,
        }
    }

    pub fn problems(&self) -> u64 {
        self.blocks - self.ok
    }

    pub fn to_text(&self) -> String {
        let counts: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{} {}", self.count(*v), v.name()))
            .collect();
        let mut out = format!("checked {} blocks: {}\n", self.blocks, counts.join(", "));
        if !self.first_offenders.is_empty() {
            out += "first problems:\n";
            for o in &self.first_offenders {
                out += &format!(
                    "  block {} (offset {}): {}: {}\n",
                    o.block,
                    o.offset,
                    o.verdict.name(),
                    o.detail
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::block::expected;

    const BS: usize = 2048;

    fn state() -> State {
        let mut s = State::new(BS as u32, 8, 5);
        s.flushed = vec![0, 2, 2, 2, 2, 2, 2, 2];
        s.last_generation = 2;
        s.pending_generation = 3;
        s.pending = vec![2];
        s
    }

    fn verdict(block: u64, data: &[u8]) -> Verdict {
        judge(&state(), block, data, Rules::default()).0
    }

    #[test]
    fn flushed_and_pending_generations_are_ok() {
        assert_eq!(verdict(1, &expected(BS, 5, 1, 2)), Verdict::Ok);
        assert_eq!(verdict(2, &expected(BS, 5, 2, 2)), Verdict::Ok);
        assert_eq!(verdict(2, &expected(BS, 5, 2, 3)), Verdict::Ok);
        assert_eq!(verdict(0, &[0u8; BS]), Verdict::Ok);
    }

    #[test]
    fn each_kind_of_damage_has_its_verdict() {
        assert_eq!(verdict(1, &expected(BS, 5, 1, 1)), Verdict::Lost);
        assert_eq!(verdict(1, &expected(BS, 5, 1, 3)), Verdict::Unexpected);
        assert_eq!(verdict(1, &expected(BS, 5, 4, 2)), Verdict::Stale);
        assert_eq!(verdict(1, &expected(BS, 6, 1, 2)), Verdict::Stale);
        assert_eq!(verdict(1, &[0u8; BS]), Verdict::NeverWritten);
        let mut flipped = expected(BS, 5, 1, 2);
        flipped[700] ^= 0x10;
        assert_eq!(verdict(1, &flipped), Verdict::Corrupt);
    }

    #[test]
    fn a_half_landed_write_is_torn() {
        let mut torn = expected(BS, 5, 2, 2);
        torn[1024..].copy_from_slice(&expected(BS, 5, 2, 3)[1024..]);
        assert_eq!(verdict(2, &torn), Verdict::Torn);
        let lenient = Rules {
            allow_torn_pending: true,
        };
        assert_eq!(judge(&state(), 2, &torn, lenient).0, Verdict::Ok);
        // Not pending: a torn block stays a problem even when lenient.
        let mut torn1 = expected(BS, 5, 1, 2);
        torn1[1024..].fill(0);
        torn1[1024..].copy_from_slice(&expected(BS, 5, 1, 1)[1024..]);
        assert_eq!(judge(&state(), 1, &torn1, lenient).0, Verdict::Torn);
    }

    #[test]
    fn report_counts_and_keeps_first_offenders() {
        let mut r = CheckReport::default();
        r.add(0, 0, Verdict::Ok, String::new());
        for b in 1..=12 {
            r.add(b, b * 4096, Verdict::Lost, "x".into());
        }
        assert_eq!(r.problems(), 12);
        assert_eq!(r.lost, 12);
        assert_eq!(r.first_offenders.len(), MAX_OFFENDERS);
        assert!(r.to_text().contains("12 lost"));
    }
}
