//! Threshold ciphertexts (blsttc), their verification, and a cache of verified ones.
//!
//! A blsttc ciphertext is `U (G1, 48 bytes) || W (G2, 96 bytes) || V (the masked payload)`.
//! `Ciphertext::verify` is the check `e(g1, W) = e(U, H(U, V))` that stops chosen-ciphertext
//! attacks: a decryption share must only ever be produced for a ciphertext that passed it.
//! [`VerifiedCiphertext`] is the proof that it did: its fields are private and it is made only by
//! [`verify`] / [`VerifiedCiphertext::verify`] and [`VerificationCache::verify`] /
//! [`VerificationCache::verify_batch`] (which checks many at once: see `pairing`).

use std::fmt;

use blsttc::{Ciphertext, DecryptionShare, PK_SIZE, SIG_SIZE, SecretKeyShare};
use sha2::{Digest, Sha256};

use crate::error::CryptoError;

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

/// Decodes (points are decompressed and subgroup-checked) without the pairing check.
fn parse(bytes: &[u8]) -> Result<Ciphertext, CryptoError> {
    check_size(bytes)?;
    Ciphertext::from_bytes(bytes).map_err(|_| CryptoError::CiphertextInvalid)
}

/// A ciphertext decoded (points on the curve and in their subgroups, U not the identity)
/// whose pairing check has not been done yet.
struct Decoded {
    inner: Ciphertext,
    digest: [u8; 32],
    input: CheckInput,
}

impl Decoded {
    /// `digest` must be the SHA-256 of `bytes`.
    fn new(bytes: &[u8], digest: [u8; 32]) -> Result<Self, CryptoError> {
        let inner = parse(bytes)?;
        // U = identity would let W = identity pass the pairing check; such a ciphertext hides
        // nothing, and there is no reason to ever serve a share for it. (U decoded, so its
        // compressed encoding's infinity flag tells whether it is the identity.)
        if is_identity_encoding(bytes) {
            return Err(CryptoError::CiphertextInvalid);
        }
        let input = CheckInput::from_bytes(bytes).ok_or(CryptoError::CiphertextInvalid)?;
        Ok(Decoded {
            inner,
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
            inner: self.inner,
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
/// fn forge(inner: kss_crypto::blsttc::Ciphertext) -> VerifiedCiphertext {
///     VerifiedCiphertext { inner, digest: [0; 32] } // error: private fields
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCiphertext {
    inner: Ciphertext,
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

    /// The encoded ciphertext.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub(crate) fn inner(&self) -> &Ciphertext {
        &self.inner
    }

    /// The decryption share of `share` for this ciphertext.
    ///
    /// This is the only call of `decrypt_share_no_verify` in the crate. Skipping blsttc's own
    /// re-verification is sound only because a `VerifiedCiphertext` cannot exist without having
    /// passed the check of `Ciphertext::verify` (alone, in a batch, or through the cache,
    /// whose entries are digests of ciphertexts that did). Callers: `KssShare::decryption_share` (the server's hot path),
    /// `WorkstationShare::decryption_share`, and `backup::approve`.
    pub(crate) fn decryption_share(&self, share: &SecretKeyShare) -> DecryptionShareBytes {
        DecryptionShareBytes(share.decrypt_share_no_verify(&self.inner))
    }
}

impl fmt::Debug for VerifiedCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedCiphertext(sha256={})", hex::encode(self.digest))
    }
}

/// A decryption share: a valid, non-identity compressed G1 point (48 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptionShareBytes(DecryptionShare);

impl DecryptionShareBytes {
    /// Decodes and validates 48 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; DECRYPTION_SHARE_LEN] =
            bytes.try_into().map_err(|_| CryptoError::BadLength {
                what: "decryption share",
                expected: DECRYPTION_SHARE_LEN,
                got: bytes.len(),
            })?;
        let share = DecryptionShare::from_bytes(array).map_err(|_| CryptoError::InvalidPoint {
            what: "decryption share",
        })?;
        if is_identity_encoding(&array) {
            return Err(CryptoError::InvalidPoint {
                what: "decryption share",
            });
        }
        Ok(DecryptionShareBytes(share))
    }

    /// The 48-byte encoding.
    pub fn to_bytes(&self) -> [u8; DECRYPTION_SHARE_LEN] {
        self.0.to_bytes()
    }

    pub(crate) fn inner(&self) -> &DecryptionShare {
        &self.0
    }
}

impl fmt::Debug for DecryptionShareBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecryptionShareBytes({})", hex::encode(self.to_bytes()))
    }
}
