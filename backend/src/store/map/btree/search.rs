//! Finding a key in a node's sorted key array.
//!
//! A leaf holds up to a few hundred keys (2 KiB or more), and the leaves of a large disk are
//! not in the CPU cache: a binary search touches eight or so cache lines of a leaf and misses
//! on most of them, which made lookups the largest cost of the read path. Keys in a leaf are
//! spread evenly far more often than not (blocks written sequentially have consecutive block
//! numbers, and VBAs are handed out in order), so the search first guesses the position from
//! the key's place between the first and last keys, then gallops from there: one or two cache
//! lines for dense or uniform keys, and never more than twice a binary search's probes.

/// Where `key` is in the sorted, duplicate-free `keys`: `Ok(index)` if present, else
/// `Err(index it would be inserted at)`; the same answer as `keys.binary_search(&key)`.
#[cfg(test)]
pub fn find(keys: &[u64], key: u64) -> Result<usize, usize> {
    find_by(keys, key, |k| *k)
}

/// [`find`] over items sorted by a key `key_of` reads out of each (a leaf's `(key, value)`
/// pairs: the value found sits next to its key, in the same cache line).
pub fn find_by<T>(keys: &[T], key: u64, key_of: impl Fn(&T) -> u64) -> Result<usize, usize> {
    let (Some(first), Some(last)) = (keys.first().map(&key_of), keys.last().map(&key_of)) else {
        return Err(0);
    };
    if key <= first {
        return if key == first { Ok(0) } else { Err(0) };
    }
    if key >= last {
        let end = keys.len() - 1;
        return if key == last {
            Ok(end)
        } else {
            Err(keys.len())
        };
    }
    // first < key < last, so the span is at least 2 and the guess lies in 0..len.
    let span = (last - first) as u128;
    let guess = ((key - first) as u128 * (keys.len() - 1) as u128 / span) as usize;
    search_from(keys, key, &key_of, guess)
}

/// What a parent node says of a child's keys: every key is `>= lo` and `< hi` (`None`: not
/// known, at the tree's edges). A parent's separators are in cache when the child is reached,
/// so guessing from them saves the two misses on the child's first and last keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    pub lo: Option<u64>,
    pub hi: Option<u64>,
}

impl Bounds {
    /// The bounds of child `idx` of an internal node with separators `keys` (`keys[i]` is at
    /// most every key of child `i`), itself within `self`.
    pub fn child(self, keys: &[u64], idx: usize) -> Bounds {
        Bounds {
            lo: keys.get(idx).copied().or(self.lo),
            hi: keys.get(idx + 1).copied().or(self.hi),
        }
    }
}

/// [`find_by`] guessing the position from `bounds` when they enclose `key` (only the guessed
/// cache line is touched when the keys are dense). The answer does not depend on the bounds
/// being right, only how fast it comes.
pub fn find_within<T>(
    keys: &[T],
    key: u64,
    key_of: impl Fn(&T) -> u64,
    bounds: Bounds,
) -> Result<usize, usize> {
    match (bounds.lo, bounds.hi) {
        (Some(lo), Some(hi)) if lo <= key && key < hi && !keys.is_empty() => {
            let guess = (key - lo) as u128 * keys.len() as u128 / (hi - lo) as u128;
            search_from(keys, key, &key_of, (guess as usize).min(keys.len() - 1))
        }
        _ => find_by(keys, key, key_of),
    }
}

/// Finds `key` starting at `guess` (any index in `0..keys.len()`): gallops away from it until
/// the key is bracketed, then binary-searches the bracket.
fn search_from<T>(
    keys: &[T],
    key: u64,
    key_of: &impl Fn(&T) -> u64,
    guess: usize,
) -> Result<usize, usize> {
    let k = |i: usize| key_of(&keys[i]);
    let at = k(guess);
    if at == key {
        return Ok(guess);
    }
    let (lo, hi) = if at < key {
        let mut step = 1;
        let mut lo = guess + 1;
        loop {
            let probe = guess + step;
            if probe >= keys.len() {
                break (lo, keys.len());
            }
            if k(probe) >= key {
                break (lo, probe + 1);
            }
            lo = probe + 1;
            step *= 2;
        }
    } else {
        let mut step = 1;
        let mut hi = guess;
        loop {
            match guess.checked_sub(step) {
                Some(probe) if k(probe) > key => {
                    hi = probe;
                    step *= 2;
                }
                Some(probe) => break (probe, hi),
                None => break (0, hi),
            }
        }
    };
    match keys[lo..hi].binary_search_by_key(&key, key_of) {
        Ok(i) => Ok(lo + i),
        Err(i) => Err(lo + i),
    }
}

/// The child of an internal node that covers `key`: the last `i` with `keys[i] <= key`, with
/// `keys[0]` not consulted (child 0 also covers every smaller key).
pub fn route(keys: &[u64], key: u64) -> usize {
    route_within(keys, key, Bounds::default())
}

/// [`route`] in a node whose keys lie within `bounds`.
pub fn route_within(keys: &[u64], key: u64, bounds: Bounds) -> usize {
    match keys.get(1..) {
        None => 0,
        Some(rest) => match find_within(rest, key, |k| *k, bounds) {
            Ok(i) => i + 1,
            Err(i) => i,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn dense_keys_are_found_at_the_first_probe_position() {
        let keys: Vec<u64> = (1000..1254).collect();
        for k in 990..1260 {
            assert_eq!(find(&keys, k), keys.binary_search(&k), "key {k}");
        }
    }

    #[test]
    fn clustered_keys_with_a_far_outlier_are_still_found() {
        let mut keys: Vec<u64> = (0..200).collect();
        keys.push(u64::MAX - 1);
        for k in [
            0,
            1,
            100,
            199,
            200,
            1 << 40,
            u64::MAX - 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(find(&keys, k), keys.binary_search(&k), "key {k}");
        }
    }

    proptest! {
        #[test]
        fn find_answers_as_binary_search_does(
            keys in proptest::collection::vec(any::<u64>(), 0..300).prop_map(sorted),
            probes in proptest::collection::vec(any::<u64>(), 1..40),
            small in proptest::collection::vec(0u64..600, 0..300).prop_map(sorted),
        ) {
            for k in probes.iter().copied().chain(keys.iter().copied()) {
                prop_assert_eq!(find(&keys, k), keys.binary_search(&k));
            }
            for k in 0..610 {
                prop_assert_eq!(find(&small, k), small.binary_search(&k));
            }
        }

        #[test]
        fn find_within_answers_as_binary_search_whatever_the_bounds(
            keys in proptest::collection::vec(0u64..5000, 0..300).prop_map(sorted),
            probes in proptest::collection::vec(0u64..5100, 1..60),
            lo in proptest::option::of(0u64..5100),
            hi in proptest::option::of(0u64..5100),
        ) {
            // Right, loose, too tight or inverted bounds: only the speed may differ.
            let bounds = Bounds { lo, hi };
            for k in probes.iter().copied().chain(keys.iter().copied()) {
                prop_assert_eq!(find_within(&keys, k, |x| *x, bounds), keys.binary_search(&k));
                let expect = keys.get(1..).map_or(0, |r| r.partition_point(|x| *x <= k));
                prop_assert_eq!(route_within(&keys, k, bounds), expect);
            }
        }

        #[test]
        fn route_picks_the_last_child_starting_at_or_below_the_key(
            keys in proptest::collection::vec(0u64..5000, 1..130).prop_map(sorted),
            probes in proptest::collection::vec(0u64..5100, 1..60),
        ) {
            for k in probes {
                let expect = keys[1..].partition_point(|x| *x <= k);
                prop_assert_eq!(route(&keys, k), expect);
            }
        }
    }
}
