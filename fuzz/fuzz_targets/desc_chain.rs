//! Arbitrary descriptor chains in an arbitrary guest memory map, served like keeld's queue worker.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::chain::run(data);
});
