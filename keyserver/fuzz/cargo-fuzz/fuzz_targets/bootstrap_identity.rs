#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kss_fuzz::target("bootstrap_identity")
        .expect("a kss-fuzz target")
        .run)(data);
});
