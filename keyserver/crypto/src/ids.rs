//! 16-byte identifiers: profiles, keyservers and devices.
//!
//! All three have one canonical text form: 32 lower-case hex characters. They print
//! (`Display`, `Debug`) and serialize with serde in it, and parse (`FromStr`, serde) only
//! from it: upper case, surrounding spaces, other lengths and non-hex are refused, so that
//! one identifier never has two spellings (counters, locks, nonces and audit rows are keyed
//! by the text).

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::CryptoError;
use crate::signing::DevicePublicKey;

/// Length in bytes of a [`ProfileId`] (and of the other identifiers here).
pub const PROFILE_ID_LEN: usize = 16;
/// Length in bytes of a [`KeyserverId`].
pub const KEYSERVER_ID_LEN: usize = 16;
/// Length in bytes of a [`DeviceId`].
pub const DEVICE_ID_LEN: usize = 16;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A fresh random identifier (OS randomness).
            pub fn random() -> Self {
                let mut bytes = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                Self(bytes)
            }

            /// The identifier from its 16 bytes.
            pub const fn from_array(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The identifier from a 16-byte slice.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
                let array: [u8; 16] = bytes.try_into().map_err(|_| CryptoError::BadLength {
                    what: $what,
                    expected: 16,
                    got: bytes.len(),
                })?;
                Ok(Self(array))
            }

            /// The 16 bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The 32 lowercase hex characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl From<[u8; 16]> for $name {
            fn from(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = CryptoError;

            fn from_str(s: &str) -> Result<Self, CryptoError> {
                if s.len() != 32 {
                    return Err(CryptoError::Malformed(format!(
                        "{} must be 32 lower-case hex characters, got {} characters",
                        $what,
                        s.len()
                    )));
                }
                if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(CryptoError::Malformed(format!(
                        "{} must be 32 lower-case hex characters (0-9, a-f)",
                        $what
                    )));
                }
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(s, &mut bytes)
                    .map_err(|_| CryptoError::InvalidHex { what: $what })?;
                Ok(Self(bytes))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies a profile (one user's key set on one keyserver).
    ProfileId,
    "profile id"
);
id_type!(
    /// Identifies a keyserver.
    KeyserverId,
    "keyserver id"
);
id_type!(
    /// Identifies a device: derived from its request-signing public key, see [`DeviceId::of`].
    DeviceId,
    "device id"
);

impl DeviceId {
    /// The id of a device: the first 16 bytes of SHA-256("kss device id v1" || public key).
    pub fn of(key: &DevicePublicKey) -> Self {
        let digest = Sha256::new()
            .chain_update(b"kss device id v1")
            .chain_update(key.as_bytes())
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = ProfileId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(format!("{id:?}"), text);
        assert_eq!(text.parse::<ProfileId>().unwrap(), id);
        assert!(matches!(
            text.to_uppercase().parse::<ProfileId>(),
            Err(CryptoError::Malformed(_))
        ));
        let mixed: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if mixed != text {
            assert!(mixed.parse::<ProfileId>().is_err());
        }
        assert!(format!(" {}", &text[1..]).parse::<ProfileId>().is_err());
        assert!(format!("{text} ").parse::<ProfileId>().is_err());
        assert!(format!("+{}", &text[1..]).parse::<DeviceId>().is_err());
        assert!(matches!(
            "abc".parse::<ProfileId>(),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            "zz".repeat(16).parse::<KeyserverId>(),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            ProfileId::from_slice(&[0; 15]),
            Err(CryptoError::BadLength {
                expected: 16,
                got: 15,
                ..
            })
        ));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<ProfileId>(&json).unwrap(), id);
    }

    #[test]
    fn device_id_is_stable_prefix_of_sha256() {
        let key = crate::signing::DeviceKey::from_bytes(&[7u8; 32]).public();
        let id = DeviceId::of(&key);
        let mut h = Sha256::new();
        h.update(b"kss device id v1");
        h.update(key.as_bytes());
        assert_eq!(id.as_bytes()[..], h.finalize()[..16]);
        assert_ne!(
            id,
            DeviceId::of(&crate::signing::DeviceKey::from_bytes(&[8u8; 32]).public())
        );
    }
}
