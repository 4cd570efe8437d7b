//! The kss policy engine.
//!
//! Reads a `keyserver.yml` policy with the meaning the original key shard server gave it
//! (see `SPEC-policy.md`), validates it whole, compiles it, and decides requests:
//! rule sets are tried in order (OR), the rules of a set must all approve (AND), and only
//! the winning set consumes quota, atomically, through a [`QuotaStore`].
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
