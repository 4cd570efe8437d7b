//! Request signatures: Ed25519 (ed25519-dalek 2) with domain separation.
//!
//! The signed bytes are a domain prefix followed by the message — `"kss request v1\0"` or
//! `"kss onboard v1\0"` — so a signature made for one purpose is never valid for another.
//! Verification uses `verify_strict` (rejects non-canonical and small-order components) and
//! public keys are validated when constructed (weak / small-order keys are refused).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// Length of a device public key.
pub const DEVICE_PUBLIC_KEY_LEN: usize = 32;
/// Length of a device signature.
pub const DEVICE_SIGNATURE_LEN: usize = 64;

/// What a signature is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignDomain {
    /// A request to the keyserver (decryption share, token refresh, ...).
    Request,
    /// The onboarding of a device / profile.
    Onboard,
}

impl SignDomain {
    /// The prefix of the signed bytes.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            SignDomain::Request => b"kss request v1\0",
            SignDomain::Onboard => b"kss onboard v1\0",
        }
    }

    fn signed_bytes(self, msg: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut bytes = Vec::with_capacity(prefix.len() + msg.len());
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(msg);
        bytes
    }
}

/// A device's request-signing key (secret; zeroized on drop; `Debug` is redacted).
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// A fresh key from OS randomness.
    pub fn generate() -> Self {
        DeviceKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key from its 32-byte seed (as written by [`DeviceKey::to_bytes`]).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        DeviceKey(SigningKey::from_bytes(bytes))
    }

    /// The key from a slice that must be 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: &[u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadLength {
            what: "device key",
            expected: 32,
            got: bytes.len(),
        })?;
        Ok(Self::from_bytes(array))
    }

    /// The 32-byte seed, for the client's key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> DevicePublicKey {
        DevicePublicKey(self.0.verifying_key())
    }

    /// Signs `domain prefix || msg`.
    pub fn sign(&self, domain: SignDomain, msg: &[u8]) -> [u8; 64] {
        self.0.sign(&domain.signed_bytes(msg)).to_bytes()
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// A device's public key: a valid, not small-order, Ed25519 point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DevicePublicKey(VerifyingKey);

impl DevicePublicKey {
    /// Parses and validates 32 bytes; rejects non-points and weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: &[u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadLength {
            what: "device public key",
            expected: DEVICE_PUBLIC_KEY_LEN,
            got: bytes.len(),
        })?;
        let key = VerifyingKey::from_bytes(array).map_err(|_| CryptoError::InvalidPoint {
            what: "device public key",
        })?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPoint {
                what: "device public key (weak)",
            });
        }
        Ok(DevicePublicKey(key))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The 32 bytes, by value.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies a signature made by [`DeviceKey::sign`] with the same domain.
    pub fn verify(&self, domain: SignDomain, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
        self.0
            .verify_strict(&domain.signed_bytes(msg), &sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl std::hash::Hash for DevicePublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl fmt::Debug for DevicePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Display for DevicePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let key = DeviceKey::generate();
        let public = key.public();
        let msg = [0x5au8; 200];
        let sig = key.sign(SignDomain::Request, &msg);
        public.verify(SignDomain::Request, &msg, &sig).unwrap();

        let onboard = key.sign(SignDomain::Onboard, &msg);
        public.verify(SignDomain::Onboard, &msg, &onboard).unwrap();
        assert_eq!(
            public.verify(SignDomain::Request, &msg, &onboard),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            public.verify(SignDomain::Onboard, &msg, &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn wrong_key_flipped_bits_and_bad_lengths() {
        let key = DeviceKey::generate();
        let other = DeviceKey::generate().public();
        let msg = b"GET /share";
        let sig = key.sign(SignDomain::Request, msg);
        assert_eq!(
            other.verify(SignDomain::Request, msg, &sig),
            Err(CryptoError::BadSignature)
        );
        for i in [0, 31, 32, 63] {
            let mut bad = sig;
            bad[i] ^= 1;
            assert!(key.public().verify(SignDomain::Request, msg, &bad).is_err());
        }
        let mut bad_msg = msg.to_vec();
        bad_msg[0] ^= 1;
        assert!(
            key.public()
                .verify(SignDomain::Request, &bad_msg, &sig)
                .is_err()
        );
        assert!(
            key.public()
                .verify(SignDomain::Request, msg, &sig[..63])
                .is_err()
        );
    }

    #[test]
    fn key_bytes_round_trip_and_weak_keys() {
        let key = DeviceKey::generate();
        let again = DeviceKey::from_bytes(&key.to_bytes());
        assert_eq!(key.public(), again.public());
        let public = DevicePublicKey::from_bytes(key.public().as_bytes()).unwrap();
        assert_eq!(public, key.public());
        // The identity point (small order) is refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(DevicePublicKey::from_bytes(&identity).is_err());
        assert!(DevicePublicKey::from_bytes(&[0u8; 31]).is_err());
        assert_eq!(format!("{key:?}"), "DeviceKey(<redacted>)");
    }
}
