//! What a request got: approved, or denied for a [`Reason`]. One vocabulary for the
//! client's answer (the proto's `DenyReason`), the audit record's text and the metric
//! label, mapped in one table ([`Reason::names`]).

use kss_policy::{DenyReason, SessionParams};
use kss_proto::v1 as pb;

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No rule set of the policy approves it.
    Policy,
    /// A rule set would approve it, but its quota is used up.
    Quota,
    /// The keyserver is disabled.
    Disabled,
    /// The signature does not verify with the profile's device key.
    Signature,
    /// No such profile (or device of it) here.
    UnknownProfile,
    /// Cannot decide now (database unreachable, queue full, shutting down).
    Unavailable,
    /// The request's timestamp is too far from this server's clock.
    Stale,
    /// Its nonce was used before.
    Replayed,
    /// The ciphertext failed verification.
    InvalidCiphertext,
    /// It names another keyserver.
    WrongKeyserver,
    /// The profile, or this device of it, was revoked.
    Revoked,
    /// Onboarding without a usable enrollment token (unknown, expired or used up).
    Enrollment,
}

impl Reason {
    /// Every reason, in the proto's order.
    pub const ALL: [Reason; 12] = [
        Reason::Policy,
        Reason::Quota,
        Reason::Disabled,
        Reason::Signature,
        Reason::UnknownProfile,
        Reason::Unavailable,
        Reason::Stale,
        Reason::Replayed,
        Reason::InvalidCiphertext,
        Reason::WrongKeyserver,
        Reason::Revoked,
        Reason::Enrollment,
    ];

    /// The table: the reason's text (in the audit log and as the metric label, the
    /// proto name's lower-case tail, as workstations print it) and its proto code.
    const fn names(self) -> (&'static str, pb::DenyReason) {
        match self {
            Reason::Policy => ("policy", pb::DenyReason::Policy),
            Reason::Quota => ("quota", pb::DenyReason::Quota),
            Reason::Disabled => ("disabled", pb::DenyReason::Disabled),
            Reason::Signature => ("signature", pb::DenyReason::Signature),
            Reason::UnknownProfile => ("unknown_profile", pb::DenyReason::UnknownProfile),
            Reason::Unavailable => ("unavailable", pb::DenyReason::Unavailable),
            Reason::Stale => ("stale", pb::DenyReason::Stale),
            Reason::Replayed => ("replayed", pb::DenyReason::Replayed),
            Reason::InvalidCiphertext => ("invalid_ciphertext", pb::DenyReason::InvalidCiphertext),
            Reason::WrongKeyserver => ("wrong_keyserver", pb::DenyReason::WrongKeyserver),
            Reason::Revoked => ("revoked", pb::DenyReason::Revoked),
            Reason::Enrollment => ("enrollment", pb::DenyReason::Enrollment),
        }
    }

    /// The audit record's text and the metric label.
    pub const fn as_str(self) -> &'static str {
        self.names().0
    }

    /// The code a client receives.
    pub const fn code(self) -> pb::DenyReason {
        self.names().1
    }

    /// The reason an audit record's text names.
    pub fn from_audit_text(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The reason a client's code stands for (`None` for `UNSPECIFIED`).
    pub fn from_code(code: pb::DenyReason) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The policy engine's reason in this vocabulary.
    pub const fn from_policy(reason: DenyReason) -> Reason {
        match reason {
            DenyReason::NotInPolicy | DenyReason::Policy => Reason::Policy,
            DenyReason::Quota => Reason::Quota,
            DenyReason::Unavailable => Reason::Unavailable,
        }
    }
}

/// A request's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved {
        /// The rule set that approved it (`None`: no policy rule involved).
        rule_set: Option<usize>,
        session: Option<SessionParams>,
    },
    Denied(Reason),
}

impl Verdict {
    /// The decision and reason codes of an answer.
    pub fn codes(self) -> (pb::Decision, pb::DenyReason) {
        match self {
            Verdict::Approved { .. } => (pb::Decision::Approved, pb::DenyReason::Unspecified),
            Verdict::Denied(reason) => (pb::Decision::Denied, reason.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_but_unspecified_is_one_reason_and_back() {
        let mut seen = Vec::new();
        for value in 0.. {
            let Ok(code) = pb::DenyReason::try_from(value) else {
                break;
            };
            match Reason::from_code(code) {
                None => assert_eq!(code, pb::DenyReason::Unspecified),
                Some(reason) => {
                    assert_eq!(reason.code(), code);
                    seen.push(reason);
                }
            }
        }
        // ALL holds each reason once, and every one has its own code.
        assert_eq!(seen, Reason::ALL);
    }

    #[test]
    fn audit_text_is_the_workstations_name_and_reads_back() {
        for reason in Reason::ALL {
            let text = reason.as_str();
            assert_eq!(Reason::from_audit_text(text), Some(reason));
            let proto_name = reason.code().as_str_name();
            assert_eq!(
                proto_name
                    .trim_start_matches("DENY_REASON_")
                    .to_ascii_lowercase(),
                text
            );
        }
        assert_eq!(Reason::from_audit_text("Policy"), None);
        assert_eq!(Reason::from_audit_text(""), None);
    }

    #[test]
    fn policy_reasons_map_to_their_own() {
        assert_eq!(Reason::from_policy(DenyReason::NotInPolicy), Reason::Policy);
        assert_eq!(Reason::from_policy(DenyReason::Policy), Reason::Policy);
        assert_eq!(Reason::from_policy(DenyReason::Quota), Reason::Quota);
        assert_eq!(
            Reason::from_policy(DenyReason::Unavailable),
            Reason::Unavailable
        );
    }

    #[test]
    fn answers_carry_the_reasons_code() {
        assert_eq!(
            Verdict::Denied(Reason::Replayed).codes(),
            (pb::Decision::Denied, pb::DenyReason::Replayed)
        );
        let approved = Verdict::Approved {
            rule_set: Some(0),
            session: None,
        };
        assert_eq!(
            approved.codes(),
            (pb::Decision::Approved, pb::DenyReason::Unspecified)
        );
    }
}
