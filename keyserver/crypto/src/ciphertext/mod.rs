//! Threshold ciphertexts (blsttc), their verification, and a cache of verified ones.
//!
//! A blsttc ciphertext is `U (G1, 48 bytes) || W (G2, 96 bytes) || V (the masked payload)`.
//! `Ciphertext::verify` is the check `e(g1, W) = e(U, H(U, V))` that stops chosen-ciphertext
//! attacks: a decryption share must only ever be produced for a ciphertext that passed it.
//! [`VerifiedCiphertext`] is the proof that it did: its fields are private and it is made only by
//! [`verify`] / [`VerifiedCiphertext::verify`] and [`VerificationCache::verify`] /
//! [`VerificationCache::verify_batch`] (which checks many at once: see `pairing`).

use std::fmt;

use blsttc::group::Curve;
use blsttc::{Ciphertext, DecryptionShare, G1Affine, PK_SIZE, SIG_SIZE};
use sha2::{Digest, Sha256};

use crate::error::CryptoError;
use crate::scalar::SecretShare;

mod cache;
mod pairing;

pub use cache::VerificationCache;
use pairing::CheckInput;

/// The largest ciphertext accepted. A 32-byte file key encrypts to 176 bytes; this leaves room
/// for small payloads while refusing anything absurd before any curve arithmetic is done.
pub const MAX_CIPHERTEXT_LEN: usize = 4096;
/// The smallest well-formed ciphertext: U, W and a 1-byte payload.
pub const MIN_CIPHERTEXT_LEN: usize = PK_SIZE + SIG_SIZE + 1;
/// Length of an encoded decryption share (a compressed G1 point).
pub const DECRYPTION_SHARE_LEN: usize = PK_SIZE;

/// An encoded ciphertext, as produced by encryption (not yet verified).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CiphertextBytes(Vec<u8>);

impl CiphertextBytes {
    /// Wraps encoded bytes (nothing is checked until [`CiphertextBytes::verify`]).
    pub fn new(bytes: Vec<u8>) -> Self {
        CiphertextBytes(bytes)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, by value.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Parses and verifies, see [`verify`].
    pub fn verify(&self) -> Result<VerifiedCiphertext, CryptoError> {
        verify(&self.0)
    }

    pub(crate) fn from_ciphertext(ct: &Ciphertext) -> Self {
        CiphertextBytes(ct.to_bytes())
    }
}

impl From<Vec<u8>> for CiphertextBytes {
    fn from(bytes: Vec<u8>) -> Self {
        CiphertextBytes(bytes)
    }
}

impl AsRef<[u8]> for CiphertextBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for CiphertextBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CiphertextBytes({} bytes)", self.0.len())
    }
}

/// SHA-256 of the whole encoded ciphertext: the key of the [`VerificationCache`].
pub fn ciphertext_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn check_size(bytes: &[u8]) -> Result<(), CryptoError> {
    if bytes.len() > MAX_CIPHERTEXT_LEN {
        return Err(CryptoError::TooLarge {
            what: "ciphertext",
            max: MAX_CIPHERTEXT_LEN,
            got: bytes.len(),
        });
    }
    if bytes.len() < MIN_CIPHERTEXT_LEN {
        return Err(CryptoError::Malformed(format!(
            "ciphertext: {} bytes, at least {MIN_CIPHERTEXT_LEN} needed",
            bytes.len()
        )));
    }
    Ok(())
}

/// Whether a byte string that starts with a successfully decoded compressed point starts with
/// the identity (the "infinity" flag, bit 6 of the first byte, of the zcash/blst encoding).
pub(crate) fn is_identity_encoding(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0x40 != 0)
}

/// A ciphertext decoded (points on the curve and in their subgroups, U not the identity)
/// whose pairing check has not been done yet. Decoded once: the points the check needs are
/// the points a verified ciphertext keeps (U, for decryption shares).
struct Decoded {
    bytes: Vec<u8>,
    digest: [u8; 32],
    input: CheckInput,
}

impl Decoded {
    /// `digest` must be the SHA-256 of `bytes`.
    fn new(bytes: &[u8], digest: [u8; 32]) -> Result<Self, CryptoError> {
        check_size(bytes)?;
        let input = CheckInput::from_bytes(bytes).ok_or(CryptoError::CiphertextInvalid)?;
        // U = identity would let W = identity pass the pairing check; such a ciphertext hides
        // nothing, and there is no reason to ever serve a share for it. (U decoded, so its
        // compressed encoding's infinity flag tells whether it is the identity.)
        if is_identity_encoding(bytes) {
            return Err(CryptoError::CiphertextInvalid);
        }
        Ok(Decoded {
            bytes: bytes.to_vec(),
            digest,
            input,
        })
    }

    /// The pairing check of this ciphertext alone.
    fn check(self) -> Result<VerifiedCiphertext, CryptoError> {
        if pairing::check_one(&self.input) {
            Ok(self.passed())
        } else {
            Err(CryptoError::CiphertextInvalid)
        }
    }

    /// Only once its pairing check passed (alone or in a batch).
    fn passed(self) -> VerifiedCiphertext {
        VerifiedCiphertext {
            u: self.input.u(),
            bytes: self.bytes,
            digest: self.digest,
        }
    }
}

/// Parses and fully verifies a ciphertext.
pub fn verify(bytes: &[u8]) -> Result<VerifiedCiphertext, CryptoError> {
    VerifiedCiphertext::verify(bytes)
}

/// A ciphertext that passed the check of `Ciphertext::verify` (alone, or in a batch: see
/// `pairing`). Only this crate's verification functions construct it, so holding one proves
/// the check was done: its fields are private, so code outside this crate cannot make one
/// from unverified bytes.
///
/// ```compile_fail,E0451
/// use kss_crypto::ciphertext::VerifiedCiphertext;
/// fn forge(bytes: Vec<u8>, u: kss_crypto::blsttc::G1Affine) -> VerifiedCiphertext {
///     VerifiedCiphertext { u, bytes, digest: [0; 32] } // error: private fields
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCiphertext {
    /// U, decoded and subgroup-checked: a decryption share is `U·x`.
    u: G1Affine,
    /// The encoding that was verified (and digested).
    bytes: Vec<u8>,
    digest: [u8; 32],
}

impl VerifiedCiphertext {
    /// Parses and fully verifies a ciphertext (two Miller loops, one final exponentiation
    /// and a hash to G2).
    pub fn verify(bytes: &[u8]) -> Result<Self, CryptoError> {
        Decoded::new(bytes, ciphertext_digest(bytes))?.check()
    }

    pub(crate) fn from_ciphertext(inner: Ciphertext) -> Result<Self, CryptoError> {
        let bytes = inner.to_bytes();
        Decoded::new(&bytes, ciphertext_digest(&bytes))?.check()
    }

    /// SHA-256 of the encoded ciphertext.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The encoded ciphertext: the bytes that were verified.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// As a blsttc `Ciphertext`, for combining shares and checking them (decoded again: off
    /// the server's path, which only makes shares).
    pub(crate) fn to_blsttc(&self) -> Result<Ciphertext, CryptoError> {
        Ciphertext::from_bytes(&self.bytes).map_err(|_| CryptoError::CiphertextInvalid)
    }

    /// The decryption share `U·x` of the secret share `x` for this ciphertext (blsttc's
    /// `SecretKeyShare::decrypt_share`, on the U decoded for verification).
    ///
    /// The only place in the crate where a share is made. It does not check the ciphertext
    /// again because it cannot be reached without that check: a `VerifiedCiphertext` exists
    /// only once its bytes passed the check of `Ciphertext::verify` now (alone or in a batch)
    /// or were found by their SHA-256 in the cache, which holds only ciphertexts that passed
    /// it (with the U decoded then, not from the request's bytes). Callers:
    /// `KssShare::decryption_share` (the server's hot path),
    /// `WorkstationShare::decryption_share`, and `backup::approve`.
    pub(crate) fn decryption_share(&self, share: &SecretShare) -> DecryptionShareBytes {
        DecryptionShareBytes((self.u * share.scalar()).to_affine())
    }
}

impl fmt::Debug for VerifiedCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedCiphertext(sha256={})", hex::encode(self.digest))
    }
}

/// A decryption share: a valid, non-identity G1 point (48 bytes compressed).
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptionShareBytes(G1Affine);

impl DecryptionShareBytes {
    /// Decodes and validates 48 bytes (on the curve, in the subgroup, not the identity).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; DECRYPTION_SHARE_LEN] =
            bytes.try_into().map_err(|_| CryptoError::BadLength {
                what: "decryption share",
                expected: DECRYPTION_SHARE_LEN,
                got: bytes.len(),
            })?;
        let share = Option::<G1Affine>::from(G1Affine::from_compressed(&array)).ok_or(
            CryptoError::InvalidPoint {
                what: "decryption share",
            },
        )?;
        if is_identity_encoding(&array) {
            return Err(CryptoError::InvalidPoint {
                what: "decryption share",
            });
        }
        Ok(DecryptionShareBytes(share))
    }

    /// The 48-byte encoding.
    pub fn to_bytes(&self) -> [u8; DECRYPTION_SHARE_LEN] {
        self.0.to_compressed()
    }

    /// As a blsttc `DecryptionShare`, for combining and checking shares (decoded again).
    pub(crate) fn to_blsttc(&self) -> Result<DecryptionShare, CryptoError> {
        DecryptionShare::from_bytes(self.to_bytes()).map_err(|_| CryptoError::InvalidPoint {
            what: "decryption share",
        })
    }
}

impl fmt::Debug for DecryptionShareBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecryptionShareBytes({})", hex::encode(self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use blsttc::SecretKeyShare;

    use super::*;
    use crate::scalar::random_nonzero_fr;

    /// `U·x` on the U kept from verification is blsttc's own decryption share of the share
    /// `x` (the server's shares are computed this way, without a blsttc `Ciphertext`).
    #[test]
    fn decryption_shares_are_blsttcs() {
        let key = blsttc::SecretKey::random().public_key();
        for len in [1usize, 32, 200] {
            let ct = key.encrypt(vec![3u8; len]);
            let verified = verify(&ct.to_bytes()).unwrap();
            let fr = random_nonzero_fr();
            let theirs = SecretKeyShare::from_mut(&mut fr.clone())
                .decrypt_share(&ct)
                .unwrap();
            let ours = verified.decryption_share(&SecretShare::from_mut(&mut fr.clone()));
            assert_eq!(ours.to_bytes(), theirs.to_bytes(), "payload of {len} bytes");
            assert_eq!(ours.to_blsttc().unwrap(), theirs);
        }
    }

    /// A verified ciphertext keeps the very bytes it was verified from, and they decode to
    /// blsttc's ciphertext.
    #[test]
    fn a_verified_ciphertext_is_the_bytes_that_were_verified() {
        let ct = blsttc::SecretKey::random().public_key().encrypt([5u8; 32]);
        let bytes = ct.to_bytes();
        let verified = verify(&bytes).unwrap();
        assert_eq!(verified.to_bytes(), bytes);
        assert_eq!(verified.digest(), &ciphertext_digest(&bytes));
        assert_eq!(verified.to_blsttc().unwrap(), ct);
    }
}
