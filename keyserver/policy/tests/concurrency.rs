//! Check-and-consume is atomic: under contention through one shared Policy and
//! MemoryQuotaStore, a profile gets exactly its quota, never more, never fewer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use common::*;
use jiff::tz::TimeZone;
use kss_policy::{Decision, DenyReason, MemoryQuotaStore, Policy, QuotaStore, RequestType};

const THREADS: usize = 16;
const REQUESTS_PER_THREAD: usize = 10_000;
const PER_DAY: usize = 1_000;

fn policy(per_day: usize) -> Policy {
    load(&format!(
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: {per_day}\n"
    ))
}

/// Runs THREADS × REQUESTS_PER_THREAD requests, spread over `profiles` (thread t, request i
/// uses profile (t + i) % profiles), and returns the approvals per profile.
fn hammer(policy: Arc<Policy>, store: Arc<MemoryQuotaStore>, profiles: usize) -> Vec<usize> {
    let approvals: Arc<Vec<AtomicUsize>> =
        Arc::new((0..profiles).map(|_| AtomicUsize::new(0)).collect());
    let start = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (policy, store, approvals, start) = (
                Arc::clone(&policy),
                Arc::clone(&store),
                Arc::clone(&approvals),
                Arc::clone(&start),
            );
            thread::spawn(move || {
                let tz = TimeZone::UTC;
                let at = monday_morning();
                let requests: Vec<_> = (0..profiles)
                    .map(|p| req(RequestType::Decrypt, &[0x10, p as u8]))
                    .collect();
                start.wait();
                for i in 0..REQUESTS_PER_THREAD {
                    let p = (t + i) % profiles;
                    match policy.evaluate(&requests[p], at, &tz, &*store) {
                        Decision::Approved { rule_set, .. } => {
                            assert_eq!(rule_set, Some(0));
                            approvals[p].fetch_add(1, Ordering::Relaxed);
                        }
                        Decision::Denied(reason) => assert_eq!(reason, DenyReason::Quota),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker thread panicked");
    }
    approvals
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect()
}

#[test]
fn one_profile_gets_exactly_its_daily_quota_under_contention() {
    let store = Arc::new(MemoryQuotaStore::new());
    let approvals = hammer(Arc::new(policy(PER_DAY)), Arc::clone(&store), 1);
    assert_eq!(approvals, [PER_DAY]);
    // and the store agrees that the profile is at quota
    let p = policy(PER_DAY);
    let w = kss_policy::QuotaWindow::of(TimeZone::UTC.to_datetime(monday_morning()));
    assert_eq!(
        store.at_quota(p.quota_limits(), w).expect("list"),
        vec![vec![0x10, 0]]
    );
}

#[test]
fn several_profiles_each_get_exactly_their_daily_quota_under_contention() {
    // 160,000 requests over 5 profiles: 32,000 each, far above the quota of 1,000
    let approvals = hammer(
        Arc::new(policy(PER_DAY)),
        Arc::new(MemoryQuotaStore::new()),
        5,
    );
    assert_eq!(approvals, vec![PER_DAY; 5]);
}

#[test]
fn quota_with_two_throttles_in_a_set_is_exact_under_contention() {
    // Both counters of the set are consumed together or not at all: the tighter one decides,
    // and the looser one is consumed exactly as often (a later policy sees its remainder).
    let p = Arc::new(load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 1500
      rule_id: loose
    - rule: per-profile-throttle-rule
      per_day: 700
      rule_id: tight
",
    ));
    let store = Arc::new(MemoryQuotaStore::new());
    let approvals = hammer(p, Arc::clone(&store), 2);
    assert_eq!(approvals, [700, 700]);
    let loose = load(
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 1500\n      rule_id: loose\n",
    );
    let remaining = (0..2000)
        .filter(|_| {
            loose
                .evaluate(
                    &req(RequestType::Decrypt, &[0x10, 0]),
                    monday_morning(),
                    &TimeZone::UTC,
                    &*store,
                )
                .is_approved()
        })
        .count();
    assert_eq!(remaining, 800);
}
