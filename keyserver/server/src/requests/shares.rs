//! This keyserver's decryption shares of recently approved ciphertexts, so that a ciphertext
//! asked for again (a batch job re-reading files) costs no scalar multiplication (~0.1 ms).
//!
//! A share is looked up with the [`VerifiedCiphertext`] it belongs to, so nothing changes in
//! what is released or when: a share still leaves only for a verified ciphertext, after the
//! request's approval and audit record are committed. A decryption share is what every
//! approved requester receives anyway; it says nothing of the key share beyond that. Past
//! [`MAX_CACHED`] entries the cache starts over (at most a few MB).

use std::collections::HashMap;
use std::sync::Mutex;

use kss_crypto::ciphertext::{DECRYPTION_SHARE_LEN, VerifiedCiphertext};
use kss_crypto::ids::ProfileId;
use kss_crypto::profile::KssShare;

/// Past this many entries the cache starts over.
pub const MAX_CACHED: usize = 50_000;

type Key = (ProfileId, [u8; 32]);

#[derive(Default)]
pub struct ShareCache {
    shares: Mutex<HashMap<Key, [u8; DECRYPTION_SHARE_LEN]>>,
}

impl ShareCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, [u8; DECRYPTION_SHARE_LEN]>> {
        // A plain map: a panic elsewhere cannot leave it inconsistent.
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decryption share of `share` (profile `profile`) for `ct`: from the cache, or
    /// computed (outside the lock) and remembered.
    pub fn decryption_share(
        &self,
        profile: ProfileId,
        share: &KssShare,
        ct: &VerifiedCiphertext,
    ) -> [u8; DECRYPTION_SHARE_LEN] {
        let key = (profile, *ct.digest());
        if let Some(cached) = self.lock().get(&key) {
            return *cached;
        }
        let computed = share.decryption_share(ct).to_bytes();
        let mut shares = self.lock();
        if shares.len() >= MAX_CACHED {
            shares.clear();
        }
        shares.insert(key, computed);
        computed
    }

    /// Shares cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kss_crypto::ciphertext::verify;
    use kss_crypto::ids::KeyserverId;
    use kss_crypto::{ProfilePublicKeys, RootSecret, WorkstationShare};

    use super::*;

    /// A cached share is the share: the same bytes as computing it, per profile and
    /// ciphertext, and it still combines with the workstation's into the file key.
    #[test]
    fn cached_shares_are_the_computed_ones() {
        let root = RootSecret::generate();
        let keyserver = KeyserverId::random();
        let cache = ShareCache::default();
        for _ in 0..2 {
            let profile = ProfileId::random();
            let kss = root.profile_share(&keyserver, &profile);
            let ws = WorkstationShare::generate();
            let keys = ProfilePublicKeys::from_shares(&ws.public(), &kss.public());
            for key in [[1u8; 32], [2u8; 32]] {
                let ct = verify(keys.encrypt(&key).as_bytes()).unwrap();
                let expected = kss.decryption_share(&ct).to_bytes();
                assert_eq!(cache.decryption_share(profile, &kss, &ct), expected);
                assert_eq!(cache.decryption_share(profile, &kss, &ct), expected);
                let kss_share = kss_crypto::DecryptionShareBytes::from_bytes(&expected).unwrap();
                let recovered = keys
                    .combine(&ws.decryption_share(&ct), &kss_share, &ct)
                    .unwrap();
                assert_eq!(recovered.as_slice(), key.as_slice());
                // Keyed by (profile, ciphertext): the second call did not compute.
                let other = root.profile_share(&keyserver, &ProfileId::random());
                assert_eq!(cache.decryption_share(profile, &other, &ct), expected);
            }
        }
        assert_eq!(cache.len(), 4);
    }
}
