//! Fuzzes the policy loader: any UTF-8 text either fails to load with an error, or loads,
//! and then its dump loads again, with the same rule ids, and dumps to the same text.
//! Anything else (a panic, an overflow, a hang, a dump that does not round-trip) is a bug.
#![no_main]

use kss_policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::load(text) else {
        return;
    };
    let dump = policy.dump();
    let reloaded = match Policy::load(&dump) {
        Ok(p) => p,
        Err(e) => panic!(
            "the dump of a policy that loads does not load: {e}\n--- input ---\n{text}\n--- dump ---\n{dump}"
        ),
    };
    assert_eq!(
        policy.rule_ids(),
        reloaded.rule_ids(),
        "rule ids change when the dump is reloaded\n--- input ---\n{text}\n--- dump ---\n{dump}"
    );
    let second = reloaded.dump();
    assert_eq!(
        dump, second,
        "the dump of the dump differs\n--- input ---\n{text}"
    );
});
