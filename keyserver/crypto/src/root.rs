//! The keyserver's root secret and what is derived from it.
//!
//! Everything the keyserver needs per profile is re-derivable from the [`RootSecret`] and public
//! data, so a lost database can be rebuilt:
//!
//! * the KSS's share of each profile's threshold key: [`RootSecret::profile_share`];
//! * the key that authenticates profile tokens: [`RootSecret::token_key`]. A workstation keeps
//!   `(claims, token)`; after the keyserver's database is lost and recovered from the root
//!   secret, the workstation presents them and the keyserver re-learns the profile.

use std::fmt;

use hkdf::Hkdf;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::CryptoError;
use crate::ids::{KeyserverId, ProfileId};
use crate::profile::{KssShare, WorkstationPublicShare};
use crate::scalar::{SecretShare, fr_from_wide_be};
use crate::signing::DevicePublicKey;

/// Length of the root secret.
pub const ROOT_SECRET_LEN: usize = 32;
/// Length of a profile token.
pub const TOKEN_LEN: usize = 32;

const PROFILE_SHARE_INFO: &[u8] = b"kss profile share v1";
const TOKEN_KEY_INFO: &[u8] = b"kss profile token v1";
const CLAIMS_TAG: &[u8] = b"kss profile claims v1";
const ROW_KEY_INFO: &[u8] = b"kss row mac v1";
const AUDIT_KEY_INFO: &[u8] = b"kss audit chain v1";
/// Length of a row MAC.
pub const ROW_MAC_LEN: usize = 32;

/// The keyserver's root secret: 32 bytes (zeroized on drop, not `Clone`, `Debug` redacted).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RootSecret([u8; ROOT_SECRET_LEN]);

impl RootSecret {
    /// A fresh root secret from OS randomness.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ROOT_SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        RootSecret(bytes)
    }

    /// The root secret from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; ROOT_SECRET_LEN] =
            bytes.try_into().map_err(|_| CryptoError::BadLength {
                what: "root secret",
                expected: ROOT_SECRET_LEN,
                got: bytes.len(),
            })?;
        Ok(RootSecret(array))
    }

    /// The raw secret. Only for sealing it at rest and for backup — never log or send it.
    pub fn expose_bytes(&self) -> &[u8; ROOT_SECRET_LEN] {
        &self.0
    }

    fn hkdf(&self) -> Hkdf<Sha256> {
        Hkdf::<Sha256>::new(None, &self.0)
    }

    /// The KSS's secret share of a profile's key set (deterministic).
    ///
    /// HKDF-SHA256(ikm = root, no salt, info = "kss profile share v1" || keyserver || profile)
    /// expanded to 64 bytes, reduced mod r (see `scalar::fr_from_wide_be`). Should the result
    /// be zero (probability ~2^-255) a counter byte is appended to the info and it is redone.
    pub fn profile_share(&self, keyserver: &KeyserverId, profile: &ProfileId) -> KssShare {
        let hkdf = self.hkdf();
        let mut counter: u8 = 0;
        loop {
            let mut info = Vec::with_capacity(PROFILE_SHARE_INFO.len() + 33);
            info.extend_from_slice(PROFILE_SHARE_INFO);
            info.extend_from_slice(keyserver.as_bytes());
            info.extend_from_slice(profile.as_bytes());
            if counter > 0 {
                info.push(counter);
            }
            let mut okm = Zeroizing::new([0u8; 64]);
            // 64 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot fail.
            let expanded = hkdf.expand(&info, &mut okm[..]).is_ok();
            let mut fr = fr_from_wide_be(&okm);
            if expanded && !bool::from(blsttc::group::ff::Field::is_zero(&fr)) {
                // `from_mut` overwrites `fr` with zero after copying it.
                return KssShare::from_share(SecretShare::from_mut(&mut fr));
            }
            counter = counter.wrapping_add(1);
        }
    }

    /// The key that issues and verifies profile tokens for `keyserver`.
    ///
    /// HKDF-SHA256(ikm = root, no salt, info = "kss profile token v1" || keyserver) → 64 bytes
    /// (an HMAC-SHA256 key of exactly the block size).
    pub fn token_key(&self, keyserver: &KeyserverId) -> TokenKey {
        let mut info = Vec::with_capacity(TOKEN_KEY_INFO.len() + 16);
        info.extend_from_slice(TOKEN_KEY_INFO);
        info.extend_from_slice(keyserver.as_bytes());
        let mut key = TokenKey([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's limit: this cannot fail.
        let _ = self.hkdf().expand(&info, &mut key.0);
        key
    }
}

impl RootSecret {
    /// The key that authenticates rows this keyserver writes to its database (profiles,
    /// policy versions), so that whoever can write the database cannot swap a device key or
    /// install a policy.
    ///
    /// HKDF-SHA256(ikm = root, no salt, info = "kss row mac v1" || keyserver) → 64 bytes.
    pub fn row_key(&self, keyserver: &KeyserverId) -> RowKey {
        self.mac_key(ROW_KEY_INFO, keyserver)
    }

    /// The key of the audit log's chain (each row's chained MAC, its checkpoints and its
    /// head), so that whoever can write the database cannot edit, drop, insert or reorder
    /// audit rows unnoticed. The same HMAC construction as [`RootSecret::row_key`], under a
    /// key of its own (domain-separated by the HKDF info).
    ///
    /// HKDF-SHA256(ikm = root, no salt, info = "kss audit chain v1" || keyserver) → 64 bytes.
    pub fn audit_key(&self, keyserver: &KeyserverId) -> RowKey {
        self.mac_key(AUDIT_KEY_INFO, keyserver)
    }

    fn mac_key(&self, purpose: &[u8], keyserver: &KeyserverId) -> RowKey {
        let mut info = Vec::with_capacity(purpose.len() + 16);
        info.extend_from_slice(purpose);
        info.extend_from_slice(keyserver.as_bytes());
        let mut key = RowKey([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's limit: this cannot fail.
        let _ = self.hkdf().expand(&info, &mut key.0);
        key
    }
}

/// HMAC-SHA256 key for database rows (zeroized on drop, `Debug` redacted).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RowKey([u8; 64]);

impl RowKey {
    fn hmac(&self, table: &str, fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new((&self.0).into());
        for field in std::iter::once(table.as_bytes()).chain(fields.iter().copied()) {
            // u64 lengths: no field can make two encodings collide.
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// HMAC-SHA256 over the row's table name and fields, each as
    /// `u64 big-endian length || bytes` (an unambiguous encoding).
    pub fn mac(&self, table: &str, fields: &[&[u8]]) -> [u8; ROW_MAC_LEN] {
        self.hmac(table, fields).finalize().into_bytes().into()
    }

    /// Checks a row's MAC in constant time.
    pub fn verify(&self, table: &str, fields: &[&[u8]], mac: &[u8]) -> Result<(), CryptoError> {
        if mac.len() != ROW_MAC_LEN {
            return Err(CryptoError::BadRowMac);
        }
        self.hmac(table, fields)
            .verify_slice(mac)
            .map_err(|_| CryptoError::BadRowMac)
    }
}

impl fmt::Debug for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RowKey(<redacted>)")
    }
}

impl fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootSecret(<redacted>)")
    }
}

/// What a profile token vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileClaims {
    /// The keyserver the profile lives on.
    pub keyserver: KeyserverId,
    /// The profile.
    pub profile: ProfileId,
    /// The device that onboarded it.
    pub device_public_key: DevicePublicKey,
    /// The workstation's public share of the profile key set.
    pub workstation_share: WorkstationPublicShare,
}

impl ProfileClaims {
    /// The canonical encoding that tokens authenticate:
    /// `u32 len || "kss profile claims v1"` then each field (keyserver, profile, device public
    /// key, workstation share) as `u32 big-endian length || bytes`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let ws = self.workstation_share.to_bytes();
        let fields: [&[u8]; 5] = [
            CLAIMS_TAG,
            self.keyserver.as_bytes(),
            self.profile.as_bytes(),
            self.device_public_key.as_bytes(),
            &ws,
        ];
        let mut out = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
        for field in fields {
            // Every field is a few dozen bytes: the length always fits.
            out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// HMAC-SHA256 key for profile tokens: 64 bytes, SHA-256's block size (zeroized on drop,
/// `Debug` redacted).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct TokenKey([u8; 64]);

impl TokenKey {
    fn mac(&self, claims: &ProfileClaims) -> Hmac<Sha256> {
        // The key is exactly SHA-256's block size, so it is used as is (no pre-hashing).
        let mut mac = <Hmac<Sha256> as KeyInit>::new((&self.0).into());
        mac.update(&claims.canonical_bytes());
        mac
    }

    /// The token for `claims`: HMAC-SHA256 over their canonical encoding.
    pub fn issue(&self, claims: &ProfileClaims) -> [u8; TOKEN_LEN] {
        self.mac(claims).finalize().into_bytes().into()
    }

    /// Checks a token in constant time.
    pub fn verify(&self, claims: &ProfileClaims, token: &[u8]) -> Result<(), CryptoError> {
        if token.len() != TOKEN_LEN {
            return Err(CryptoError::BadToken);
        }
        self.mac(claims)
            .verify_slice(token)
            .map_err(|_| CryptoError::BadToken)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}
