//! Arbitrary server bytes (handshake and replies) against Keel's NBD client device.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::nbd::run_replies(data);
});
