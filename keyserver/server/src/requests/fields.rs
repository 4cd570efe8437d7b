//! Decoding and bounds of request fields: every field is checked before any work is done,
//! and an id is accepted only in its canonical text form (32 lower-case hex characters).

use std::str::FromStr;

use kss_crypto::CryptoError;
use kss_policy::RequestType;
use kss_proto::v1 as pb;

use super::RequestError;

/// Nonces are 16 random bytes.
pub const NONCE_LEN: usize = 16;

/// An id field in canonical form, or `INVALID_ARGUMENT` naming the field.
pub fn canonical_id<T>(field: &'static str, text: &str) -> Result<T, RequestError>
where
    T: FromStr<Err = CryptoError>,
{
    if text.is_empty() {
        return Err(RequestError::invalid(field, "is required"));
    }
    text.parse::<T>().map_err(|_| {
        RequestError::invalid(
            field,
            format!(
                "must be 32 lower-case hex characters (0-9, a-f), got {} characters{}",
                text.chars().count(),
                if text.trim() != text {
                    " with surrounding spaces"
                } else {
                    ""
                }
            ),
        )
    })
}

/// A nonce of exactly [`NONCE_LEN`] bytes.
pub fn nonce(bytes: &[u8]) -> Result<(), RequestError> {
    if bytes.len() != NONCE_LEN {
        return Err(RequestError::invalid(
            "nonce",
            format!("must be {NONCE_LEN} bytes, got {}", bytes.len()),
        ));
    }
    Ok(())
}

/// At most this many `auth_meta` entries in a request.
pub const MAX_AUTH_META: usize = 256;
/// At most this many bytes in one `auth_meta` entry (a path).
pub const MAX_META_BYTES: usize = 4096;
/// At most this many bytes of `cryptographic_id` (a digest: 32 bytes).
pub const MAX_CRYPTOGRAPHIC_ID_BYTES: usize = 64;
/// At most this many bytes of `ciphertext`.
pub const MAX_CIPHERTEXT_BYTES: usize = kss_crypto::ciphertext::MAX_CIPHERTEXT_LEN;
/// At most this many bytes in a profile's name.
pub const MAX_PROFILE_NAME_BYTES: usize = 256;
/// At most this many verification words in a registration (they are ignored).
pub const MAX_CLAIMED_WORDS: usize = 24;

fn over(field: &'static str, what: &str, got: usize, limit: usize) -> RequestError {
    RequestError::invalid(field, format!("{got} {what}, at most {limit}"))
}

/// The bounds of an approval request's variable fields, checked before any work is done.
pub fn request_bounds(body: &pb::RequestBody) -> Result<(), RequestError> {
    if body.auth_meta.len() > MAX_AUTH_META {
        return Err(over(
            "auth_meta",
            "entries",
            body.auth_meta.len(),
            MAX_AUTH_META,
        ));
    }
    if let Some(m) = body
        .auth_meta
        .iter()
        .find(|m| m.meta.len() > MAX_META_BYTES)
    {
        return Err(over(
            "auth_meta.meta",
            "bytes",
            m.meta.len(),
            MAX_META_BYTES,
        ));
    }
    if body.cryptographic_id.len() > MAX_CRYPTOGRAPHIC_ID_BYTES {
        return Err(over(
            "cryptographic_id",
            "bytes",
            body.cryptographic_id.len(),
            MAX_CRYPTOGRAPHIC_ID_BYTES,
        ));
    }
    if body.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return Err(over(
            "ciphertext",
            "bytes",
            body.ciphertext.len(),
            MAX_CIPHERTEXT_BYTES,
        ));
    }
    if let Some(reg) = &body.registration {
        if reg.profile_name.len() > MAX_PROFILE_NAME_BYTES {
            return Err(over(
                "registration.profile_name",
                "bytes",
                reg.profile_name.len(),
                MAX_PROFILE_NAME_BYTES,
            ));
        }
        if reg.profile_words.len() > MAX_CLAIMED_WORDS {
            return Err(over(
                "registration.profile_words",
                "words",
                reg.profile_words.len(),
                MAX_CLAIMED_WORDS,
            ));
        }
    }
    Ok(())
}

/// The bounds of an onboarding's variable fields.
pub fn onboard_bounds(body: &pb::OnboardBody) -> Result<(), RequestError> {
    if body.profile_name.len() > MAX_PROFILE_NAME_BYTES {
        return Err(over(
            "profile_name",
            "bytes",
            body.profile_name.len(),
            MAX_PROFILE_NAME_BYTES,
        ));
    }
    if body.profile_words.len() > MAX_CLAIMED_WORDS {
        return Err(over(
            "profile_words",
            "words",
            body.profile_words.len(),
            MAX_CLAIMED_WORDS,
        ));
    }
    Ok(())
}

/// The request's metadata as the policy reads it.
pub fn policy_meta(meta: Vec<pb::MetaInfo>) -> Vec<kss_policy::MetaInfo> {
    meta.into_iter()
        .map(|m| kss_policy::MetaInfo {
            meta: m.meta,
            complete: m.complete,
        })
        .collect()
}

/// The request type of an approval.
pub fn request_type(t: i32) -> Result<RequestType, RequestError> {
    let t = pb::RequestType::try_from(t)
        .map_err(|_| RequestError::invalid("request_type", format!("unknown value {t}")))?;
    Ok(match t {
        pb::RequestType::Unspecified => {
            return Err(RequestError::invalid("request_type", "is required"));
        }
        pb::RequestType::Decrypt => RequestType::Decrypt,
        pb::RequestType::Search => RequestType::Search,
        pb::RequestType::CreateProfile => RequestType::CreateProfile,
        pb::RequestType::CreateLocation => RequestType::CreateLocation,
        pb::RequestType::Rename => RequestType::Rename,
        pb::RequestType::SecureExport => RequestType::SecureExport,
        pb::RequestType::StartSession => RequestType::StartSession,
        pb::RequestType::ChangeProfile => RequestType::ChangeProfile,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kss_crypto::ids::ProfileId;

    use super::*;

    #[test]
    fn only_canonical_ids_pass_and_errors_name_the_field() {
        let id = ProfileId::random();
        let text = id.to_string();
        assert_eq!(canonical_id::<ProfileId>("profile_id", &text).unwrap(), id);
        for bad in [
            text.to_uppercase(),
            format!(" {text}"),
            format!("{text} "),
            text[..31].to_string(),
            format!("{text}0"),
            format!("{}g", &text[..31]),
            String::new(),
        ] {
            let err = canonical_id::<ProfileId>("profile_id", &bad).unwrap_err();
            assert!(
                matches!(
                    &err,
                    RequestError::InvalidArgument {
                        field: "profile_id",
                        ..
                    }
                ),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().starts_with("profile_id: "), "{err}");
        }
    }
}
