#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = centralino_fuzz::targets::rtp(data);
});
