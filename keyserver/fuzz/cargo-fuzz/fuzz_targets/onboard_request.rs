#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kss_fuzz::target("onboard_request")
        .expect("a kss-fuzz target")
        .run)(data);
});
