#![no_main]
#[path = "../../tests/support/sim/mod.rs"]
mod sim;
libfuzzer_sys::fuzz_target!(|data: &[u8]| sim::fuzz(data));
