//! Fuzz target `upstreams`: see `switchyard::fuzzing::upstreams` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::fuzzing::upstreams(data);
});
