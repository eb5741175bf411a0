//! Fuzz target `proxy_toml`: see `switchyard::fuzzing::proxy_toml` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::fuzzing::proxy_toml(data);
});
