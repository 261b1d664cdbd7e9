//! Fuzz target: the properties of `chat4all_gateway_fuzz::frame` (see `../src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chat4all_gateway_fuzz::frame(data));
