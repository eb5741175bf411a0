//! Fuzz target `decide`: see `switchyard::fuzzing::decide` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::fuzzing::decide(data);
});
