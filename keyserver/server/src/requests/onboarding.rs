//! Who may onboard: a keyserver-wide rate limit (per instance), and enrollment tokens.
//!
//! The policy decides `create_profile` as the policy language defines (approved when the
//! section is absent). On top of that, an administrator can require an enrollment token
//! (`kss serve --require-enrollment-token`; tokens from `kss enrollment create --uses N
//! --ttl D`), and every instance admits at most `--max-onboard-per-minute` onboardings (a
//! token bucket refilled continuously), so that mass enrollment cannot fill the database.

use std::sync::Mutex;
use std::time::Instant;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every enrollment token (so that one is recognised in a paste or a leak scan).
pub const TOKEN_PREFIX: &str = "kssenroll_";
/// Random bytes of an enrollment token.
const TOKEN_RANDOM_LEN: usize = 32;

/// A fresh enrollment token and its public id.
pub fn new_token() -> (String, String) {
    let mut id = [0u8; 16];
    let mut secret = [0u8; TOKEN_RANDOM_LEN];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    (
        hex::encode(id),
        format!("{TOKEN_PREFIX}{}", hex::encode(secret)),
    )
}

/// What the store keeps of a token: its SHA-256 (the token itself is never stored).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a text has the shape of an enrollment token (checked before any lookup).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 2 * TOKEN_RANDOM_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The onboarding gate of one instance.
pub struct OnboardingGate {
    /// Onboarding requires an enrollment token.
    pub require_token: bool,
    bucket: Mutex<Bucket>,
    per_minute: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl OnboardingGate {
    /// `per_minute`: onboardings admitted per minute (also the burst); 0: none.
    pub fn new(require_token: bool, per_minute: u32) -> Self {
        OnboardingGate {
            require_token,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(per_minute),
                at: Instant::now(),
            }),
            per_minute,
        }
    }

    /// Takes one onboarding from the bucket; `false`: over the rate, refuse.
    pub fn admit(&self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let capacity = f64::from(self.per_minute);
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The configured rate.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_admits_its_burst_then_refills_at_the_rate() {
        let gate = OnboardingGate::new(false, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| gate.admit_at(start)));
        assert!(!gate.admit_at(start));
        // One per 20 s at 3 per minute.
        assert!(!gate.admit_at(start + Duration::from_secs(19)));
        assert!(gate.admit_at(start + Duration::from_secs(21)));
        assert!(!gate.admit_at(start + Duration::from_secs(22)));
        // Never more than the burst, however long it was idle.
        let later = start + Duration::from_secs(3600);
        assert!((0..3).all(|_| gate.admit_at(later)));
        assert!(!gate.admit_at(later));
        assert!(!OnboardingGate::new(false, 0).admit());
    }

    #[test]
    fn tokens_are_recognisable_and_only_their_digest_is_kept() {
        let (id, token) = new_token();
        assert_eq!(id.len(), 32);
        assert!(well_formed(&token));
        assert!(!well_formed(&token[1..]));
        assert!(!well_formed(&format!("{token}0")));
        assert!(!well_formed(""));
        assert_ne!(new_token().1, token);
        assert_eq!(token_digest(&token), token_digest(&token.clone()));
        assert_ne!(token_digest(&token), token_digest(&new_token().1));
    }
}
