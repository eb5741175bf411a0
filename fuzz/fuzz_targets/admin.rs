//! Fuzz target `admin`: see `switchyard::fuzzing::admin` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::fuzzing::admin(data);
});
