#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowmark_fuzz::checks::openflow(data));
