//! Arbitrary client traffic against keeld's NBD server (handshake and transmission).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::nbd::run_server(data);
});
