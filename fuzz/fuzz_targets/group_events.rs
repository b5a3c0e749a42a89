#![no_main]
#[path = "../../tests/support/fuzzing.rs"]
mod fuzzing;
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::group_events(data));
