//! Knobs of the randomized crash campaigns (kill -9, power loss): how many points to run and
//! which seed to start from, from the environment, so CI runs a bounded sample and anyone can
//! run more or replay a failing seed.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The number in `var`, or `default` when it is unset; a value that does not parse stops the
/// test with a message naming the variable (a typo must not run zero points).
pub fn points(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

/// The seed in `var`, or one drawn from the clock; the same for every call in this process,
/// so the cases of one test binary replay together from the seed it prints.
pub fn seed(var: &'static str) -> u64 {
    static SEEDS: OnceLock<Mutex<HashMap<&'static str, u64>>> = OnceLock::new();
    let mut seeds = SEEDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *seeds
        .entry(var)
        .or_insert_with(|| match std::env::var(var) {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var} must be a number, not {v:?}")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007),
        })
}
