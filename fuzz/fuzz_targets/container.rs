//! A valid container with fuzz bytes written over it, opened, read and checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::container::run(data);
});
