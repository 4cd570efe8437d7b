//! `per-profile-throttle-rule`: per-profile quotas per calendar hour and day
//! (`docs/policy.md`, *Quotas*).

use std::sync::Arc;

use super::Args;
use crate::error::{LoadError, Warning};
use crate::quota::QuotaLimit;

pub const ARGS: &[&str] = &["per_hour", "per_day", "persistent"];
/// Accepted for compatibility with the original engine and ignored: the keyserver's own
/// database holds persistent counters.
pub const IGNORED_ARGS: &[&str] = &["expiry_secs", "db-uri", "db-file", "db-table"];

/// A throttle's limits; its counters live in a [`crate::QuotaStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub per_hour: Option<u64>,
    pub per_day: Option<u64>,
    pub persistent: bool,
}

impl Throttle {
    pub fn compile(args: &Args<'_>, warnings: &mut Vec<Warning>) -> Result<Self, LoadError> {
        let limit = |name: &str| -> Result<Option<u64>, LoadError> {
            let Some(arg) = args.get(name) else {
                return Ok(None);
            };
            const EXPECTED: &str = "a whole number >= 0, or -1 for unlimited";
            match arg.int(EXPECTED)? {
                -1 => Ok(None),
                n => u64::try_from(n).map(Some).map_err(|_| arg.bad(EXPECTED)),
            }
        };
        let per_hour = limit("per_hour")?;
        let per_day = limit("per_day")?;
        let persistent = args
            .get("persistent")
            .map(|a| a.bool())
            .transpose()?
            .unwrap_or(false);
        for name in IGNORED_ARGS {
            if let Some(arg) = args.get(name) {
                warnings.push(Warning::new(
                    &arg.loc,
                    format!(
                        "'{name}' is ignored: counters live in the keyserver's own database \
                         (persistent) or in memory"
                    ),
                ));
            }
        }
        Ok(Throttle {
            per_hour,
            per_day,
            persistent,
        })
    }

    pub fn limit(&self, rule_id: &Arc<str>) -> QuotaLimit {
        QuotaLimit {
            rule_id: Arc::clone(rule_id),
            per_hour: self.per_hour,
            per_day: self.per_day,
            persistent: self.persistent,
        }
    }
}
