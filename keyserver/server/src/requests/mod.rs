//! The workstation API's request algorithm, free of any transport: the gRPC service
//! (`service::keyserver`) only converts messages and errors.
//!
//! An approval goes: decode → bounds → identity → signature → freshness → ciphertext →
//! decision ([`Keyserver::approve`]); onboarding goes: decode → bounds → keyserver →
//! signature → freshness → rate limit → enrollment → proof of possession → decision
//! ([`Keyserver::onboard`]). Ids are accepted only in their canonical form (32 lower-case
//! hex characters, [`fields`]); from there on the typed ids are the only keys (counters,
//! locks, nonces, audit rows).

mod approve;
pub mod fields;
mod onboard;
pub mod onboarding;
pub mod profiles;
pub mod reject_log;
pub mod shares;
pub mod verifier;

use std::sync::Arc;
use std::time::Duration;

use kss_policy::RequestType;
use kss_store::Store;
use tokio::sync::watch;

pub use approve::{Approval, ApprovalFields, parse_approval};
pub use onboard::{OnboardFields, Onboarded, parse_onboard};

use crate::clock::now_ms;
use crate::db_deadline::DbDeadline;
use crate::decider::Decider;
use crate::identity::KeyserverIdentity;
use crate::metrics::Metrics;
use crate::switches::Switches;
use crate::verdict::Reason;
use onboarding::OnboardingGate;
use profiles::ProfileCache;
use reject_log::RejectLog;
use shares::ShareCache;
use verifier::Verifier;

/// Why a request got no decision at all (it is malformed, or cannot be taken now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field is missing, malformed, not canonical or over its bound.
    #[error("{field}: {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: String,
    },
    /// The request cannot be taken as it is (wrong keyserver, stale timestamp).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The signature does not verify.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Onboarding was denied for `reason`; `why` says it in words.
    #[error("onboarding denied: {why}")]
    Denied { reason: Reason, why: &'static str },
    /// Too many requests of this kind right now.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The keyserver is shutting down.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl RequestError {
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        RequestError::InvalidArgument {
            field,
            problem: problem.into(),
        }
    }

    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::InvalidArgument { .. } => "invalid_argument",
            RequestError::FailedPrecondition(_) => "failed_precondition",
            RequestError::Unauthenticated(_) => "unauthenticated",
            RequestError::Denied { .. } => "denied",
            RequestError::ResourceExhausted(_) => "resource_exhausted",
            RequestError::Unavailable(_) => "unavailable",
        }
    }
}

/// The keyserver's workstation-facing core.
pub struct Keyserver {
    pub identity: Arc<KeyserverIdentity>,
    pub store: Arc<dyn Store>,
    pub decider: Decider,
    pub switches: watch::Receiver<Arc<Switches>>,
    pub profiles: ProfileCache,
    pub verifier: Verifier,
    pub shares: ShareCache,
    pub metrics: Arc<Metrics>,
    pub onboarding: OnboardingGate,
    /// How far a request's timestamp may be from this server's clock.
    pub max_clock_skew: Duration,
    /// A sample of the requests refused before authentication.
    pub reject_log: RejectLog,
    /// How long a request may wait on the database, all its waits together.
    pub db_deadline: DbDeadline,
}

impl Keyserver {
    fn within_skew(&self, timestamp_ms: i64) -> bool {
        let skew = i64::try_from(self.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        now_ms().abs_diff(timestamp_ms) <= skew.unsigned_abs()
    }

    /// Counts a request refused before authentication and logs it as a sample.
    pub fn refused(&self, rpc: &'static str, reason: &'static str, detail: &str) {
        self.metrics.unauthenticated(reason);
        self.reject_log.note(rpc, reason, detail);
    }

    /// The policy in force's version and whether the keyserver is enabled.
    pub fn info(&self) -> (bool, u64) {
        let switches = self.switches.borrow();
        (switches.enabled, switches.policy.version)
    }
}

/// What is counted of a request that got a decision.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub request_type: RequestType,
    pub reason: Option<Reason>,
}
