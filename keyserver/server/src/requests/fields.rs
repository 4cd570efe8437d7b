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
