//! Throttle counters: the store interface, the counting rules and an in-memory store.
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

    /// The counter after one more use in `window` (which must not be behind it).
    pub fn after_use(counter: Option<Counter>, window: QuotaWindow) -> Counter {
        let (hour, day) = counter.and_then(|c| c.usage_at(window)).unwrap_or((0, 0));
        Counter {
            window,
            hour_used: hour + 1,
            day_used: day + 1,
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

/// Whether one more use of every limit fits, and the counters after it, computed from the
/// current counters (`current(rule_id)`). Shared by every store so they count alike.
pub fn plan_consume(
    limits: &[QuotaLimit],
    window: QuotaWindow,
    mut current: impl FnMut(&str) -> Option<Counter>,
) -> Option<Vec<(Arc<str>, Counter)>> {
    let mut updates: Vec<(Arc<str>, Counter)> = Vec::with_capacity(limits.len());
    for limit in limits {
        let existing = match updates.iter().find(|(id, _)| **id == *limit.rule_id) {
            Some((_, c)) => Some(*c),
            None => current(&limit.rule_id),
        };
        let usage = match existing {
            Some(c) => c.usage_at(window),
            None => Some((0, 0)),
        };
        if !limit.allows(usage) {
            return None;
        }
        let next = Counter::after_use(existing, window);
        match updates.iter_mut().find(|(id, _)| **id == *limit.rule_id) {
            Some((_, c)) => *c = next,
            None => updates.push((Arc::clone(&limit.rule_id), next)),
        }
    }
    Some(updates)
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
        let plan = plan_consume(limits, window, |rule_id| {
            counters
                .get(rule_id)
                .and_then(|by_profile| by_profile.get(profile_id))
                .copied()
        });
        let Some(updates) = plan else {
            return Ok(false);
        };
        for (rule_id, counter) in updates {
            let by_profile = counters.entry(rule_id).or_default();
            match by_profile.get_mut(profile_id) {
                Some(c) => *c = counter,
                None => {
                    by_profile.insert(profile_id.into(), counter);
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
