//! `session-params-rule`: approves, and bounds the session a `start_session` opens
//! (`docs/policy.md`, *`session-params-rule`*).

use super::Args;
use crate::error::{LoadError, LoadErrorKind, Warning};
use crate::timespec::TimeOfDay;

pub const ARGS: &[&str] = &["max_request_count", "max_time_seconds", "end_by_time"];
const DEFAULT_MAX_TIME: u64 = 300;
/// A session must last more than this many seconds...
const MIN_TIME: u64 = 1;
/// ...and less than a week.
const MAX_TIME: u64 = 604_800;

/// Bounds of a session opened under a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// Most requests in the session; 0 = no maximum.
    pub max_request_count: u64,
    pub max_time_seconds: u64,
    /// The session ends by this time of day.
    pub end_by_time: Option<TimeOfDay>,
}

impl SessionParams {
    pub(crate) fn compile(args: &Args<'_>, warnings: &mut Vec<Warning>) -> Result<Self, LoadError> {
        let max_request_count = match args.get("max_request_count") {
            None => 0,
            Some(arg) => {
                let n = arg.int("a whole number >= 0 (0 = no maximum)")?;
                u64::try_from(n).map_err(|_| arg.bad("a whole number >= 0 (0 = no maximum)"))?
            }
        };
        let max_time_seconds = match args.get("max_time_seconds") {
            None => DEFAULT_MAX_TIME,
            Some(arg) => {
                let n = arg.int("a whole number of seconds")?;
                if n <= i128::from(MIN_TIME) || n >= i128::from(MAX_TIME) {
                    return Err(arg.error(LoadErrorKind::Invalid(format!(
                        "max_time_seconds must be more than {MIN_TIME} and less than {MAX_TIME} (one week), found {n}"
                    ))));
                }
                n as u64
            }
        };
        let end_by_time = match args.get("end_by_time") {
            None => None,
            Some(arg) => Some(super::time_range::time_arg(&arg, warnings)?),
        };
        Ok(SessionParams {
            max_request_count,
            max_time_seconds,
            end_by_time,
        })
    }

    /// The tighter of two sets of bounds (a rule set with two session rules).
    pub fn tighten(self, other: SessionParams) -> SessionParams {
        let count = match (self.max_request_count, other.max_request_count) {
            (0, n) | (n, 0) => n,
            (a, b) => a.min(b),
        };
        SessionParams {
            max_request_count: count,
            max_time_seconds: self.max_time_seconds.min(other.max_time_seconds),
            end_by_time: self.end_by_time.or(other.end_by_time),
        }
    }
}
