//! The admin API's typed contracts with its clients (the operator, the `kss` CLI): why an
//! instance refuses to serve and why a policy does not load travel as proto enums and
//! messages (`kss.v1.Refusal`, `kss.v1.PolicyRejection`) in the status's details, built
//! here from the keyserver's own typed values. The messages stay for people.

use kss_policy::{LoadError, LoadErrorKind, Location};
use kss_proto::details;
use kss_proto::v1 as pb;
use tonic::{Code, Status};

use crate::bootstrap::{Refusal, RefusalKind};

/// The proto reason of a refusal kind: one distinct value per kind.
pub fn refusal_reason(kind: RefusalKind) -> pb::RefusalReason {
    match kind {
        RefusalKind::IdentityMismatch => pb::RefusalReason::IdentityMismatch,
        RefusalKind::IdentityMissing => pb::RefusalReason::IdentityMissing,
        RefusalKind::MasterKeyMismatch => pb::RefusalReason::MasterKeyMismatch,
        RefusalKind::BootstrapKeyMismatch => pb::RefusalReason::BootstrapKeyMismatch,
    }
}

/// The refusal kind of a proto reason (`None`: unspecified).
pub fn refusal_kind(reason: pb::RefusalReason) -> Option<RefusalKind> {
    match reason {
        pb::RefusalReason::Unspecified => None,
        pb::RefusalReason::IdentityMismatch => Some(RefusalKind::IdentityMismatch),
        pb::RefusalReason::IdentityMissing => Some(RefusalKind::IdentityMissing),
        pb::RefusalReason::MasterKeyMismatch => Some(RefusalKind::MasterKeyMismatch),
        pb::RefusalReason::BootstrapKeyMismatch => Some(RefusalKind::BootstrapKeyMismatch),
    }
}

/// What every admin RPC of a refusing instance answers: FAILED_PRECONDITION with the
/// refusal's message and its typed `kss.v1.Refusal` detail.
pub fn refusal_status(refusal: &Refusal) -> Status {
    let message = refusal.to_string();
    let detail = pb::Refusal {
        reason: refusal_reason(refusal.kind()) as i32,
        message: message.clone(),
        kss_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    details::status_with(Code::FailedPrecondition, message, &detail)
}

/// The proto kind of a policy load error: one distinct value per kind.
pub fn policy_error_kind(kind: &LoadErrorKind) -> pb::PolicyErrorKind {
    use pb::PolicyErrorKind as P;
    match kind {
        LoadErrorKind::Yaml(_) => P::Yaml,
        LoadErrorKind::Empty => P::Empty,
        LoadErrorKind::NotAMapping { .. } => P::NotAMapping,
        LoadErrorKind::UnknownRequestType(_) => P::UnknownRequestType,
        LoadErrorKind::SectionNotList { .. } => P::SectionNotList,
        LoadErrorKind::RuleSetNotList { .. } => P::RuleSetNotList,
        LoadErrorKind::RuleNotMapping { .. } => P::RuleNotMapping,
        LoadErrorKind::MissingRuleName => P::MissingRuleName,
        LoadErrorKind::UnknownRule(_) => P::UnknownRule,
        LoadErrorKind::UnknownArgument { .. } => P::UnknownArgument,
        LoadErrorKind::Incompatible { .. } => P::Incompatible,
        LoadErrorKind::BadValue { .. } => P::BadValue,
        LoadErrorKind::Invalid(_) => P::Invalid,
        LoadErrorKind::TooFewWords { .. } => P::TooFewWords,
        LoadErrorKind::DayOutOfRange(_) => P::DayOutOfRange,
        LoadErrorKind::IncludeExcludeOverlap(_) => P::IncludeExcludeOverlap,
        LoadErrorKind::StartNotBeforeEnd { .. } => P::StartNotBeforeEnd,
        LoadErrorKind::OnlyOneOfStartEnd { .. } => P::OnlyOneOfStartEnd,
        LoadErrorKind::InvalidRegex { .. } => P::InvalidRegex,
        LoadErrorKind::EmptyPattern => P::EmptyPattern,
    }
}

/// Longest error text carried in a detail (it travels in a trailer, which clients bound).
const MAX_ERROR_TEXT: usize = 1024;

/// `text` cut to at most [`MAX_ERROR_TEXT`] bytes, on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn index(i: Option<usize>) -> Option<u32> {
    i.map(|i| u32::try_from(i).unwrap_or(u32::MAX))
}

/// A policy location as the admin API reports it.
pub fn policy_location(location: &Location) -> pb::PolicyLocation {
    pb::PolicyLocation {
        request_type: location
            .request_type
            .clone()
            .map(bounded)
            .unwrap_or_default(),
        rule_set: index(location.rule_set),
        rule: index(location.rule),
        rule_name: location.rule_name.clone().unwrap_or_default(),
        argument: location.argument.clone().map(bounded).unwrap_or_default(),
        line: index(location.line).unwrap_or(0),
        column: index(location.column).unwrap_or(0),
    }
}

/// A policy load error as the admin API reports it: kind, location, text.
pub fn policy_error(error: &LoadError) -> pb::PolicyError {
    pb::PolicyError {
        kind: policy_error_kind(error.kind()) as i32,
        location: Some(policy_location(error.location())),
        message: bounded(error.kind().to_string()),
    }
}

/// What `LoadPolicy` answers for a policy that does not load: INVALID_ARGUMENT with the
/// located error, and the typed `kss.v1.PolicyRejection` detail.
pub fn policy_rejected_status(error: &LoadError) -> Status {
    let detail = pb::PolicyRejection {
        errors: vec![policy_error(error)],
    };
    details::status_with(
        Code::InvalidArgument,
        format!("{error}; the policy in force is unchanged"),
        &detail,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Fails to compile when a kind is added, until it is also in [`RefusalKind::ALL`].
    fn position(kind: RefusalKind) -> usize {
        match kind {
            RefusalKind::IdentityMismatch => 0,
            RefusalKind::IdentityMissing => 1,
            RefusalKind::MasterKeyMismatch => 2,
            RefusalKind::BootstrapKeyMismatch => 3,
        }
    }

    #[test]
    fn every_refusal_kind_has_its_own_reason_and_back() {
        for (i, kind) in RefusalKind::ALL.iter().enumerate() {
            assert_eq!(position(*kind), i, "RefusalKind::ALL lists every kind once");
        }
        let mut seen = HashSet::new();
        for kind in RefusalKind::ALL {
            let reason = refusal_reason(kind);
            assert_ne!(reason, pb::RefusalReason::Unspecified, "{kind:?}");
            assert!(seen.insert(reason), "{kind:?} shares {reason:?}");
            assert_eq!(refusal_kind(reason), Some(kind));
        }
    }

    #[test]
    fn every_proto_reason_is_a_kind_but_unspecified() {
        let mut values = 0;
        for n in 0..64 {
            let Ok(reason) = pb::RefusalReason::try_from(n) else {
                continue;
            };
            values += 1;
            match refusal_kind(reason) {
                None => assert_eq!(reason, pb::RefusalReason::Unspecified),
                Some(kind) => assert_eq!(refusal_reason(kind), reason),
            }
        }
        assert_eq!(values, RefusalKind::ALL.len() + 1);
    }

    #[test]
    fn a_refusal_answers_with_its_typed_reason_and_message() {
        let status = refusal_status(&Refusal::IdentityMissing);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = details::find::<pb::Refusal>(&status).expect("a Refusal detail");
        assert_eq!(detail.reason(), pb::RefusalReason::IdentityMissing);
        assert_eq!(detail.message, Refusal::IdentityMissing.to_string());
        assert_eq!(status.message(), detail.message);
    }

    /// One error of every kind (the match fails to compile when a kind is added).
    fn one_of_each() -> Vec<LoadErrorKind> {
        let kinds = vec![
            LoadErrorKind::Yaml("x".into()),
            LoadErrorKind::Empty,
            LoadErrorKind::NotAMapping { found: "list" },
            LoadErrorKind::UnknownRequestType("x".into()),
            LoadErrorKind::SectionNotList { found: "null" },
            LoadErrorKind::RuleSetNotList { found: "null" },
            LoadErrorKind::RuleNotMapping { found: "list" },
            LoadErrorKind::MissingRuleName,
            LoadErrorKind::UnknownRule("x".into()),
            LoadErrorKind::UnknownArgument {
                rule: "meta-rule",
                accepted: &[],
            },
            LoadErrorKind::Incompatible {
                rule: "meta-rule",
                request_type: kss_policy::RequestType::Search,
            },
            LoadErrorKind::BadValue {
                expected: "an integer",
                found: "x".into(),
            },
            LoadErrorKind::Invalid("x".into()),
            LoadErrorKind::TooFewWords {
                phrase: "a b".into(),
                count: 2,
            },
            LoadErrorKind::DayOutOfRange(9),
            LoadErrorKind::IncludeExcludeOverlap(jiff::civil::date(2026, 1, 1)),
            LoadErrorKind::StartNotBeforeEnd {
                start: "b".into(),
                end: "a".into(),
            },
            LoadErrorKind::OnlyOneOfStartEnd {
                missing: "time_end",
            },
            LoadErrorKind::InvalidRegex {
                pattern: "(".into(),
                message: "x".into(),
            },
            LoadErrorKind::EmptyPattern,
        ];
        for kind in &kinds {
            match kind {
                LoadErrorKind::Yaml(_)
                | LoadErrorKind::Empty
                | LoadErrorKind::NotAMapping { .. }
                | LoadErrorKind::UnknownRequestType(_)
                | LoadErrorKind::SectionNotList { .. }
                | LoadErrorKind::RuleSetNotList { .. }
                | LoadErrorKind::RuleNotMapping { .. }
                | LoadErrorKind::MissingRuleName
                | LoadErrorKind::UnknownRule(_)
                | LoadErrorKind::UnknownArgument { .. }
                | LoadErrorKind::Incompatible { .. }
                | LoadErrorKind::BadValue { .. }
                | LoadErrorKind::Invalid(_)
                | LoadErrorKind::TooFewWords { .. }
                | LoadErrorKind::DayOutOfRange(_)
                | LoadErrorKind::IncludeExcludeOverlap(_)
                | LoadErrorKind::StartNotBeforeEnd { .. }
                | LoadErrorKind::OnlyOneOfStartEnd { .. }
                | LoadErrorKind::InvalidRegex { .. }
                | LoadErrorKind::EmptyPattern => {}
            }
        }
        kinds
    }

    #[test]
    fn every_policy_error_kind_has_its_own_proto_kind() {
        let kinds = one_of_each();
        let mut seen = HashSet::new();
        for kind in &kinds {
            let proto = policy_error_kind(kind);
            assert_ne!(proto, pb::PolicyErrorKind::Unspecified, "{kind:?}");
            assert!(seen.insert(proto), "{kind:?} shares {proto:?}");
        }
        // Every proto value but UNSPECIFIED is some kind's.
        let defined = (0..256)
            .filter(|n| pb::PolicyErrorKind::try_from(*n).is_ok())
            .count();
        assert_eq!(defined, kinds.len() + 1);
    }

    #[test]
    fn a_rejected_policy_names_kind_location_and_text() {
        let error = kss_policy::Policy::load(
            "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_days: 5\n",
        )
        .expect_err("an unknown argument");
        let status = policy_rejected_status(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .ends_with("; the policy in force is unchanged")
        );
        let rejection = details::find::<pb::PolicyRejection>(&status).expect("a detail");
        let [e] = rejection.errors.as_slice() else {
            panic!("one error: {rejection:?}");
        };
        assert_eq!(e.kind(), pb::PolicyErrorKind::UnknownArgument);
        assert_eq!(
            e.location,
            Some(pb::PolicyLocation {
                request_type: "decrypt".into(),
                rule_set: Some(0),
                rule: Some(0),
                rule_name: "per-profile-throttle-rule".into(),
                argument: "per_days".into(),
                line: 3,
                column: 0,
            })
        );
        assert!(e.message.starts_with("unknown argument"), "{}", e.message);
    }

    #[test]
    fn a_yaml_syntax_error_has_its_line_and_column() {
        let error = kss_policy::Policy::load("decrypt:\n  - [a\n  b: c\n").expect_err("not YAML");
        let e = policy_error(&error);
        assert_eq!(e.kind(), pb::PolicyErrorKind::Yaml);
        let at = e.location.expect("a location");
        assert!(at.line >= 2 && at.column >= 1, "{at:?} {error}");
    }

    #[test]
    fn long_texts_are_bounded_on_a_character_boundary() {
        let text = bounded("é".repeat(MAX_ERROR_TEXT));
        assert!(text.len() <= MAX_ERROR_TEXT + '…'.len_utf8());
        assert!(text.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
    }
}
