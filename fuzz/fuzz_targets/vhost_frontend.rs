//! Arbitrary vhost-user messages and file descriptors against an in-process keeld.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::frontend::run(data);
});
