//! The kss policy engine: reads a `keyserver.yml`, validates it whole, compiles it, and
//! decides requests.
//!
//! The policy language (structure, every rule and argument, evaluation order, quotas and
//! their windows, time rules, rule ids, errors and warnings) is described in
//! `docs/policy.md` at the root of the repository. In short: rule sets are tried in file
//! order (OR), the rules of a set must all approve (AND), and only the winning set consumes
//! quota, all of it or none, atomically, through a [`QuotaStore`].
//!
//! ```
//! use kss_policy::{Decision, DenyReason, MemoryQuotaStore, Policy, Request, RequestType};
//!
//! let policy = Policy::load(
//!     "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 1\n",
//! )?;
//! let (store, tz) = (MemoryQuotaStore::new(), jiff::tz::TimeZone::UTC);
//! let at: jiff::Timestamp = "2022-03-07T10:00:00Z".parse()?;
//! let request = Request::new(RequestType::Decrypt);
//! assert_eq!(policy.evaluate(&request, at, &tz, &store).rule_set(), Some(0));
//! assert_eq!(
//!     policy.evaluate(&request, at, &tz, &store),
//!     Decision::Denied(DenyReason::Quota),
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate is pure: no async runtime, database, TLS or gRPC. The keyserver and the
//! operator both use it.
#![forbid(unsafe_code)]

mod dump;
mod error;
mod policy;
mod quota;
mod request;
mod rule_id;
mod rules;
mod timespec;
mod yaml;

pub use error::{LoadError, LoadErrorKind, Location, Warning};
pub use policy::{Candidate, Decision, DenyReason, Policy, Prepared, RuleInfo, Summary};
pub use quota::{
    Counter, MemoryQuotaStore, QuotaLimit, QuotaStore, QuotaStoreError, QuotaWindow,
    counter_at_quota, fits, uses_per_rule,
};
pub use request::{MetaInfo, Request, RequestType, UnknownRequestType};
pub use rules::{RULE_NAMES, SessionParams, THROTTLE};
pub use timespec::TimeOfDay;

/// Parses an IANA time zone name (`Europe/Paris`, `UTC`), from the bundled database.
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|e| format!("unknown time zone '{name}': {e}"))
}
