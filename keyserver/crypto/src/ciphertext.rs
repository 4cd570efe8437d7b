//! Threshold ciphertexts (blsttc), their verification, and a cache of verified ones.
//!
//! A blsttc ciphertext is `U (G1, 48 bytes) || W (G2, 96 bytes) || V (the masked payload)`.
//! `Ciphertext::verify` is the check `e(g1, W) = e(U, H(U, V))` that stops chosen-ciphertext
//! attacks: a decryption share must only ever be produced for a ciphertext that passed it.
//! [`VerifiedCiphertext`] is the proof that it did: its fields are private and it is made only by
//! [`verify`] / [`VerifiedCiphertext::verify`] and [`VerificationCache::verify`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use blsttc::{Ciphertext, DecryptionShare, PK_SIZE, SIG_SIZE, SecretKeyShare};
use sha2::{Digest, Sha256};

use crate::error::CryptoError;

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

/// Offsets of the encoding `U (G1, 48) ‖ W (G2, 96) ‖ V` (blsttc's `Ciphertext::to_bytes`).
const U_END: usize = PK_SIZE;
const W_END: usize = PK_SIZE + SIG_SIZE;

/// The ciphertext's validity check, `e(g1, W) == e(U, H(U, V))` — exactly what
/// `blsttc::Ciphertext::verify` checks — computed as one product of two Miller loops and a
/// single final exponentiation, `e(g1, W) · e(−U, H(U, V)) == 1`, instead of two full
/// pairings (`tests/ciphertext.rs` checks both agree).
///
/// `bytes` must already have decoded as a `blsttc::Ciphertext` (which checks that U and W
/// are on the curve and in their subgroups): the points are decoded again here without
/// repeating those checks.
fn pairing_check(bytes: &[u8]) -> bool {
    use blsttc::blstrs::{Bls12, G1Affine, G1Projective, G2Affine, G2Prepared};
    use blsttc::group::Group;
    use pairing::{MillerLoopResult, MultiMillerLoop};

    let (Some(u), Some(w), Some(v)) = (
        bytes
            .get(..U_END)
            .and_then(|b| <&[u8; PK_SIZE]>::try_from(b).ok()),
        bytes
            .get(U_END..W_END)
            .and_then(|b| <&[u8; SIG_SIZE]>::try_from(b).ok()),
        bytes.get(W_END..),
    ) else {
        return false;
    };
    let (Some(u), Some(w)) = (
        Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(u)),
        Option::<G2Affine>::from(G2Affine::from_compressed_unchecked(w)),
    ) else {
        return false;
    };
    let hash = hash_g1_g2(&u, v);
    let product = Bls12::multi_miller_loop(&[
        (
            &G1Affine::from(G1Projective::generator()),
            &G2Prepared::from(w),
        ),
        (&(-u), &G2Prepared::from(hash)),
    ])
    .final_exponentiation();
    bool::from(product.is_identity())
}

/// blsttc's hash of a ciphertext's U and V to G2: V (its SHA3-256 when longer than 64
/// bytes) followed by U compressed, hashed to the curve with blsttc's domain tag.
fn hash_g1_g2(u: &blsttc::blstrs::G1Affine, v: &[u8]) -> blsttc::blstrs::G2Affine {
    use blsttc::group::Curve;
    use sha3::Digest as _;

    let mut msg = if v.len() > 64 {
        sha3::Sha3_256::digest(v).to_vec()
    } else {
        v.to_vec()
    };
    msg.extend_from_slice(&u.to_compressed());
    blsttc::blstrs::G2Projective::hash_to_curve(&msg, blsttc::DST, &[]).to_affine()
}

/// Parses and fully verifies a ciphertext.
pub fn verify(bytes: &[u8]) -> Result<VerifiedCiphertext, CryptoError> {
    VerifiedCiphertext::verify(bytes)
}

/// A ciphertext that passed `Ciphertext::verify`. Only this crate's verification functions
/// construct it, so holding one proves the check was done: its fields are private, so code
/// outside this crate cannot make one from unverified bytes.
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
    /// Parses and fully verifies a ciphertext (two pairings and a hash to G2).
    pub fn verify(bytes: &[u8]) -> Result<Self, CryptoError> {
        let inner = parse(bytes)?;
        Self::check(inner, bytes, ciphertext_digest(bytes))
    }

    pub(crate) fn from_ciphertext(inner: Ciphertext) -> Result<Self, CryptoError> {
        let bytes = inner.to_bytes();
        let digest = ciphertext_digest(&bytes);
        Self::check(inner, &bytes, digest)
    }

    /// `inner` must be the decoding of `bytes`, and `digest` their SHA-256.
    fn check(inner: Ciphertext, bytes: &[u8], digest: [u8; 32]) -> Result<Self, CryptoError> {
        // U = identity would let W = identity pass the pairing check; such a ciphertext hides
        // nothing, and there is no reason to ever serve a share for it. (U decoded, so its
        // compressed encoding's infinity flag tells whether it is the identity.)
        if is_identity_encoding(bytes) || !pairing_check(bytes) {
            return Err(CryptoError::CiphertextInvalid);
        }
        Ok(VerifiedCiphertext { inner, digest })
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
    /// passed `Ciphertext::verify` (directly, or through the cache, whose entries are digests of
    /// ciphertexts that did). Callers: `KssShare::decryption_share` (the server's hot path),
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

/// A bounded, thread-safe map from digests of ciphertexts that passed verification to their
/// decoded form.
///
/// Keyed by SHA-256 of the *whole* encoded ciphertext: bytes that hash to a cached digest are
/// the very bytes that were verified, so a hit is neither re-verified nor decoded again
/// (decoding checks subgroup membership of two points: ~0.2 ms, most of a repeat's cost).
/// Failed verifications are never cached. When full, the oldest entry is evicted first. The
/// lock is held only for the lookup and the insert, never during verification.
pub struct VerificationCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct CacheInner {
    present: HashMap<[u8; 32], Ciphertext>,
    order: VecDeque<[u8; 32]>,
}

impl VerificationCache {
    /// A cache of at most `capacity` digests (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        VerificationCache {
            capacity,
            inner: Mutex::new(CacheInner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // The protected data is a plain set; a panic elsewhere cannot leave it unusable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies `bytes`, skipping the pairing check when they were verified before.
    pub fn verify(&self, bytes: &[u8]) -> Result<VerifiedCiphertext, CryptoError> {
        check_size(bytes)?;
        let digest = ciphertext_digest(bytes);
        let hit = self.lock().present.get(&digest).cloned();
        if let Some(inner) = hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(VerifiedCiphertext { inner, digest });
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let inner = parse(bytes)?;
        let verified = VerifiedCiphertext::check(inner, bytes, digest)?;
        if self.capacity > 0 {
            let mut cache = self.lock();
            if cache
                .present
                .insert(digest, verified.inner.clone())
                .is_none()
            {
                cache.order.push_back(digest);
                while cache.order.len() > self.capacity {
                    if let Some(old) = cache.order.pop_front() {
                        cache.present.remove(&old);
                    }
                }
            }
        }
        Ok(verified)
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that needed a full verification (successful or not).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Digests currently cached.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of digests kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl fmt::Debug for VerificationCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
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
