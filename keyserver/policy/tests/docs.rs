//! The examples of `docs/policy.md` load and do what the page says; the first one is the
//! benchmarks' example policy.

use jiff::tz::TimeZone;
use kss_policy::{MemoryQuotaStore, MetaInfo, Policy, Request, RequestType};

const REFERENCE: &str = include_str!("../../../docs/policy.md");
const EXAMPLE_POLICY: &str = include_str!("../../../bench/example-policy.yml");

/// The ```yaml blocks of the reference, in order.
fn yaml_blocks() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in REFERENCE.lines() {
        match &mut current {
            None if line.trim_end() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unterminated ```yaml block");
    blocks
}

#[test]
fn every_example_of_the_reference_loads() {
    let blocks = yaml_blocks();
    assert!(blocks.len() >= 5, "found {} yaml blocks", blocks.len());
    for block in &blocks {
        if let Err(e) = Policy::load(block) {
            panic!("docs/policy.md example does not load: {e}\n---\n{block}");
        }
    }
}

#[test]
fn the_first_example_is_the_benchmarks_example_policy() {
    let ids = |text: &str| Policy::load(text).expect("loads").rule_ids();
    assert_eq!(ids(&yaml_blocks()[0]), ids(EXAMPLE_POLICY));
}

fn example(containing: &str) -> Policy {
    let block = yaml_blocks()
        .into_iter()
        .find(|b| b.contains(containing))
        .unwrap_or_else(|| panic!("no example contains {containing:?}"));
    Policy::load(&block).expect("loads")
}

fn approved(policy: &Policy, request: &Request, at: &str) -> bool {
    let at: jiff::Timestamp = at.parse().expect("timestamp");
    policy
        .evaluate(request, at, &TimeZone::UTC, &MemoryQuotaStore::new())
        .is_approved()
}

fn decrypt(meta: &str, complete: bool) -> Request {
    let mut r = Request::new(RequestType::Decrypt);
    r.auth_meta = vec![MetaInfo {
        meta: meta.to_string(),
        complete,
    }];
    r
}

#[test]
fn the_path_and_regex_example_behaves_as_described() {
    let p = example("/finance");
    let at = "2026-03-02T10:00:00Z";
    assert!(approved(&p, &decrypt("finance/q1.xlsx", true), at));
    assert!(approved(
        &p,
        &decrypt("finance/archive/2026/q1.xlsx", true),
        at
    ));
    assert!(!approved(
        &p,
        &decrypt("finance/archive/2025/q1.xlsx", true),
        at
    ));
    assert!(!approved(&p, &decrypt("finance/plan.draft", true), at));
    assert!(!approved(&p, &decrypt("finance/q1.xlsx", false), at));
    assert!(!approved(&p, &decrypt("hr/q1.xlsx", true), at));
}

#[test]
fn the_night_window_example_behaves_as_described() {
    let p = example("secure_export");
    let r = Request::new(RequestType::SecureExport);
    // 2026-03-02 is a Monday, 2026-03-08 a Sunday.
    for (at, expected) in [
        ("2026-03-02T21:59:59Z", false),
        ("2026-03-02T22:00:00Z", true),
        ("2026-03-02T23:59:59Z", true),
        ("2026-03-03T00:00:00Z", true),
        ("2026-03-03T06:00:00Z", true),
        ("2026-03-03T06:00:01Z", false),
        ("2026-03-08T23:00:00Z", false),
        ("2026-03-08T03:00:00Z", false),
    ] {
        assert_eq!(approved(&p, &r, at), expected, "{at}");
    }
}
