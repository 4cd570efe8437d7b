//! A cache of verified ciphertexts, and verification in batches.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::pairing::{self, CheckInput};
use super::{Decoded, VerifiedCiphertext, check_size, ciphertext_digest};
use crate::error::CryptoError;

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

/// What the cache knows of a ciphertext. Short-lived, on the stack: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Lookup {
    Hit(VerifiedCiphertext),
    Miss(Decoded),
}

#[derive(Default)]
struct CacheInner {
    present: HashMap<[u8; 32], VerifiedCiphertext>,
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
        match self.decode_unless_cached(bytes)? {
            Lookup::Hit(verified) => Ok(verified),
            Lookup::Miss(decoded) => {
                let verified = decoded.check()?;
                self.insert(&verified);
                Ok(verified)
            }
        }
    }

    /// Verifies each of `items` (results in the same order), with one batched pairing check
    /// for all that are not cached (see `pairing`): under load this costs about half as
    /// much per ciphertext as checking them one by one. If the batch fails, each of its
    /// ciphertexts is checked alone, so an invalid one fails only itself.
    pub fn verify_batch(&self, items: &[&[u8]]) -> Vec<Result<VerifiedCiphertext, CryptoError>> {
        let mut results: Vec<Option<Result<VerifiedCiphertext, CryptoError>>> =
            items.iter().map(|_| None).collect();
        let mut pending: Vec<(usize, Decoded)> = Vec::new();
        for (index, bytes) in items.iter().enumerate() {
            match self.decode_unless_cached(bytes) {
                Ok(Lookup::Hit(verified)) => results[index] = Some(Ok(verified)),
                Ok(Lookup::Miss(decoded)) => pending.push((index, decoded)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let inputs: Vec<&CheckInput> = pending.iter().map(|(_, d)| &d.input).collect();
        let all_passed = inputs.len() > 1 && pairing::check_batch(&inputs);
        for (index, decoded) in pending {
            let result = if all_passed {
                Ok(decoded.passed())
            } else {
                decoded.check()
            };
            if let Ok(verified) = &result {
                self.insert(verified);
            }
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(CryptoError::CiphertextInvalid)))
            .collect()
    }

    /// The verification of `bytes` if it is cached (counted as a hit); `None` otherwise
    /// (not counted: [`VerificationCache::verify`] or [`VerificationCache::verify_batch`]
    /// will count the miss). No curve arithmetic: a SHA-256 and a lookup.
    pub fn cached(&self, bytes: &[u8]) -> Option<VerifiedCiphertext> {
        check_size(bytes).ok()?;
        let digest = ciphertext_digest(bytes);
        let verified = self.lock().present.get(&digest).cloned()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(verified)
    }

    /// A cached verification of `bytes`, or their decoding (counted as a miss).
    fn decode_unless_cached(&self, bytes: &[u8]) -> Result<Lookup, CryptoError> {
        if let Some(verified) = self.cached(bytes) {
            return Ok(Lookup::Hit(verified));
        }
        check_size(bytes)?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Lookup::Miss(Decoded::new(bytes, ciphertext_digest(bytes))?))
    }

    fn insert(&self, verified: &VerifiedCiphertext) {
        if self.capacity == 0 {
            return;
        }
        let mut cache = self.lock();
        if cache
            .present
            .insert(verified.digest, verified.clone())
            .is_none()
        {
            cache.order.push_back(verified.digest);
            while cache.order.len() > self.capacity {
                if let Some(old) = cache.order.pop_front() {
                    cache.present.remove(&old);
                }
            }
        }
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
