//! Arbitrary server bytes through the NBD reply parser a client uses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::nbd::run_replies(data);
});
