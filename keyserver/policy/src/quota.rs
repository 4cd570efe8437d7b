//! Throttle counters: the store interface, the counting rules and an in-memory store
//! (`docs/policy.md`, *Quotas*).
//!
//! Counters are kept per (rule id, profile) for the current calendar hour and day of the
//! keyserver's zone. A store checks every limit of the winning rule set and consumes them
//! all in one atomic step, or none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::civil::{Date, DateTime};

/// One throttle rule's limits, under its rule id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLimit {
    pub rule_id: Arc<str>,
    /// `None` = unlimited.
    pub per_hour: Option<u64>,
    pub per_day: Option<u64>,
    /// Counters survive restarts (database) rather than living in memory.
    pub persistent: bool,
}

/// The calendar hour an approval counts in, on the keyserver's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaWindow {
    pub day: Date,
    pub hour: i8,
}

impl QuotaWindow {
    pub fn of(local: DateTime) -> Self {
        QuotaWindow {
            day: local.date(),
            hour: local.hour(),
        }
    }
}

/// Uses recorded for one (rule id, profile): the latest window used and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub window: QuotaWindow,
    pub hour_used: u64,
    pub day_used: u64,
}

impl Counter {
    /// Uses that count against `window`: `None` when the counter is ahead of it (the clock
    /// went back), which must deny: the uses of that earlier window are no longer known.
    pub fn usage_at(&self, window: QuotaWindow) -> Option<(u64, u64)> {
        if self.window > window {
            None
        } else if self.window.day < window.day {
            Some((0, 0))
        } else if self.window.hour < window.hour {
            Some((0, self.day_used))
        } else {
            Some((self.hour_used, self.day_used))
        }
    }

    /// The counter after `uses` more uses in `window` (which must not be behind it).
    pub fn after_uses(counter: Option<Counter>, window: QuotaWindow, uses: u64) -> Counter {
        let (hour, day) = counter.and_then(|c| c.usage_at(window)).unwrap_or((0, 0));
        Counter {
            window,
            hour_used: hour + uses,
            day_used: day + uses,
        }
    }
}

impl QuotaLimit {
    /// Whether one more use fits, given the uses so far (`None`: clock behind → no).
    pub fn allows(&self, usage: Option<(u64, u64)>) -> bool {
        let Some((hour, day)) = usage else {
            return false;
        };
        self.per_hour.is_none_or(|max| hour < max) && self.per_day.is_none_or(|max| day < max)
    }
}

/// A store failed (e.g. the database is unreachable): deny, consume nothing.
#[derive(Debug, thiserror::Error)]
#[error("quota store unavailable: {0}")]
pub struct QuotaStoreError(pub String);

/// Where throttle counters live.
pub trait QuotaStore: Send + Sync {
    /// Checks every limit for `profile_id` in `window` and, only if all allow one more use,
    /// records one use under each, atomically. Limits sharing a rule id share one counter
    /// (a second limit on it sees the first one's use). `Ok(false)`: at quota, nothing recorded.
    fn try_consume(
        &self,
        profile_id: &[u8],
        limits: &[QuotaLimit],
        window: QuotaWindow,
    ) -> Result<bool, QuotaStoreError>;

    /// Profiles that are at quota in `window` for any of `limits`, sorted.
    fn at_quota(
        &self,
        limits: &[QuotaLimit],
        window: QuotaWindow,
    ) -> Result<Vec<Vec<u8>>, QuotaStoreError>;

    /// Resets the counters of one profile, or of every profile.
    fn clear(&self, profile_id: Option<&[u8]>) -> Result<(), QuotaStoreError>;
}

/// Whether one more use of every limit fits in `window`, given the current counters
/// (`current(rule_id)`). Limits sharing a rule id share one counter: the n-th of them sees
/// the uses of the n-1 before it. Shared by every store so that they count alike.
pub fn fits(
    limits: &[QuotaLimit],
    window: QuotaWindow,
    current: impl Fn(&str) -> Option<Counter>,
) -> bool {
    limits.iter().enumerate().all(|(i, limit)| {
        let earlier = uses_before(limits, i);
        let usage = match current(&limit.rule_id) {
            Some(c) => c.usage_at(window),
            None => Some((0, 0)),
        };
        limit.allows(usage.map(|(hour, day)| (hour + earlier, day + earlier)))
    })
}

/// The distinct rule ids of `limits` with the number of uses one approval records on each.
pub fn uses_per_rule(limits: &[QuotaLimit]) -> impl Iterator<Item = (&Arc<str>, u64)> {
    limits
        .iter()
        .enumerate()
        .filter(|(i, _)| uses_before(limits, *i) == 0)
        .map(|(_, limit)| {
            let uses = limits.iter().filter(|l| l.rule_id == limit.rule_id).count() as u64;
            (&limit.rule_id, uses)
        })
}

fn uses_before(limits: &[QuotaLimit], i: usize) -> u64 {
    limits[..i]
        .iter()
        .filter(|l| l.rule_id == limits[i].rule_id)
        .count() as u64
}

/// Whether a counter is at quota for any limit with its rule id.
pub fn counter_at_quota(
    limits: &[QuotaLimit],
    rule_id: &str,
    counter: &Counter,
    window: QuotaWindow,
) -> bool {
    limits
        .iter()
        .filter(|l| &*l.rule_id == rule_id)
        .any(|l| !l.allows(counter.usage_at(window)))
}

/// Counters in memory: what `kss policy eval` uses, and the keyserver for throttles that
/// are not persistent. One lock makes check-and-consume atomic across threads.
#[derive(Debug, Default)]
pub struct MemoryQuotaStore {
    counters: Mutex<CountersByRule>,
}

/// rule id → profile id → counter.
type CountersByRule = HashMap<Arc<str>, HashMap<Box<[u8]>, Counter>>;

impl MemoryQuotaStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CountersByRule> {
        // A panic while holding the lock cannot leave a counter half-written (updates are
        // single assignments), so a poisoned lock is still consistent.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl QuotaStore for MemoryQuotaStore {
    fn try_consume(
        &self,
        profile_id: &[u8],
        limits: &[QuotaLimit],
        window: QuotaWindow,
    ) -> Result<bool, QuotaStoreError> {
        let mut counters = self.lock();
        let current = |rule_id: &str| {
            counters
                .get(rule_id)
                .and_then(|by_profile| by_profile.get(profile_id))
                .copied()
        };
        if !fits(limits, window, current) {
            return Ok(false);
        }
        for (rule_id, uses) in uses_per_rule(limits) {
            let by_profile = match counters.get_mut(&**rule_id) {
                Some(m) => m,
                None => counters.entry(Arc::clone(rule_id)).or_default(),
            };
            match by_profile.get_mut(profile_id) {
                Some(c) => *c = Counter::after_uses(Some(*c), window, uses),
                None => {
                    by_profile.insert(profile_id.into(), Counter::after_uses(None, window, uses));
                }
            }
        }
        Ok(true)
    }

    fn at_quota(
        &self,
        limits: &[QuotaLimit],
        window: QuotaWindow,
    ) -> Result<Vec<Vec<u8>>, QuotaStoreError> {
        let counters = self.lock();
        let mut out: Vec<Vec<u8>> = counters
            .iter()
            .flat_map(|(rule_id, by_profile)| {
                by_profile
                    .iter()
                    .filter(|(_, c)| counter_at_quota(limits, rule_id, c, window))
                    .map(|(p, _)| p.to_vec())
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn clear(&self, profile_id: Option<&[u8]>) -> Result<(), QuotaStoreError> {
        let mut counters = self.lock();
        match profile_id {
            None => counters.clear(),
            Some(p) => counters.values_mut().for_each(|by_profile| {
                by_profile.remove(p);
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(day: i8, hour: i8) -> QuotaWindow {
        QuotaWindow {
            day: jiff::civil::date(2022, 3, day),
            hour,
        }
    }

    fn limit(id: &str, per_hour: Option<u64>, per_day: Option<u64>) -> QuotaLimit {
        QuotaLimit {
            rule_id: id.into(),
            per_hour,
            per_day,
            persistent: false,
        }
    }

    #[test]
    fn hour_and_day_windows_reset() {
        let store = MemoryQuotaStore::new();
        let limits = [limit("a", Some(2), Some(3))];
        let p = b"p".as_slice();
        assert!(store.try_consume(p, &limits, window(9, 10)).expect("ok"));
        assert!(store.try_consume(p, &limits, window(9, 10)).expect("ok"));
        assert!(
            !store.try_consume(p, &limits, window(9, 10)).expect("ok"),
            "per_hour"
        );
        assert!(
            store.try_consume(p, &limits, window(9, 11)).expect("ok"),
            "new hour"
        );
        assert!(
            !store.try_consume(p, &limits, window(9, 12)).expect("ok"),
            "per_day"
        );
        assert!(
            store.try_consume(p, &limits, window(10, 0)).expect("ok"),
            "new day"
        );
    }

    #[test]
    fn clock_going_back_denies() {
        let store = MemoryQuotaStore::new();
        let limits = [limit("a", None, Some(5))];
        let p = b"p".as_slice();
        assert!(store.try_consume(p, &limits, window(10, 0)).expect("ok"));
        assert!(!store.try_consume(p, &limits, window(9, 23)).expect("ok"));
        assert_eq!(
            store.at_quota(&limits, window(9, 23)).expect("ok"),
            vec![b"p".to_vec()]
        );
    }

    #[test]
    fn all_or_nothing_and_shared_ids() {
        let store = MemoryQuotaStore::new();
        let p = b"p".as_slice();
        let limits = [limit("a", None, Some(5)), limit("b", None, Some(1))];
        assert!(store.try_consume(p, &limits, window(9, 1)).expect("ok"));
        assert!(!store.try_consume(p, &limits, window(9, 1)).expect("ok"));
        // "a" was not consumed by the refused attempt: 4 more uses remain
        let only_a = [limit("a", None, Some(5))];
        for _ in 0..4 {
            assert!(store.try_consume(p, &only_a, window(9, 1)).expect("ok"));
        }
        assert!(!store.try_consume(p, &only_a, window(9, 1)).expect("ok"));
        // two limits on one id count twice against one counter
        let shared = [limit("s", None, Some(3)), limit("s", None, Some(3))];
        assert!(store.try_consume(p, &shared, window(9, 1)).expect("ok"));
        assert!(!store.try_consume(p, &shared, window(9, 1)).expect("ok"));
    }

    #[test]
    fn clear_one_or_all() {
        let store = MemoryQuotaStore::new();
        let limits = [limit("a", None, Some(1))];
        for p in [b"p".as_slice(), b"q".as_slice()] {
            assert!(store.try_consume(p, &limits, window(9, 1)).expect("ok"));
        }
        assert_eq!(store.at_quota(&limits, window(9, 1)).expect("ok").len(), 2);
        store.clear(Some(b"p")).expect("ok");
        assert_eq!(
            store.at_quota(&limits, window(9, 1)).expect("ok"),
            vec![b"q".to_vec()]
        );
        store.clear(None).expect("ok");
        assert!(
            store
                .at_quota(&limits, window(9, 1))
                .expect("ok")
                .is_empty()
        );
    }
}
