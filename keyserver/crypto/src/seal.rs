//! Secrets at rest: XChaCha20-Poly1305 under a [`MasterKey`].
//!
//! Sealed layout: `version (1 byte, = 1) || nonce (24 random bytes) || ciphertext+tag`.
//! The version byte is authenticated too (the AEAD's associated data is `version || aad`).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::CryptoError;

/// The sealed-format version written by [`seal`].
pub const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes [`seal`] adds to the plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The key that seals secrets at rest (32 bytes; zeroized on drop; `Debug` is redacted).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A fresh key from OS randomness.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        MasterKey(key)
    }

    /// The key from 32 bytes (as read from the key file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadLength {
            what: "master key",
            expected: 32,
            got: bytes.len(),
        })?;
        Ok(MasterKey(array))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    /// The key file's text: 64 lowercase hex characters.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// The key from the key file's text: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| CryptoError::InvalidHex { what: "master key" })?,
        );
        Self::from_bytes(&bytes)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn full_aad(aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(1 + aad.len());
    full.push(SEAL_VERSION);
    full.extend_from_slice(aad);
    full
}

/// Seals `plaintext`, bound to `aad` (which must be given again to open).
///
/// Never panics. (The AEAD refuses only plaintexts beyond ~256 GiB; such a call would yield a
/// value that [`open`] rejects, never an unauthenticated one.)
pub fn seal(key: &MasterKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = full_aad(aad);
    let body = key
        .cipher()
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        // Encryption only fails for plaintexts longer than ~256 GiB.
        .unwrap_or_default();
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + body.len());
    sealed.push(SEAL_VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    sealed
}

/// Opens what [`seal`] produced. Any failure — wrong key, wrong `aad`, damaged, truncated,
/// unknown version — is [`CryptoError::Sealed`].
pub fn open(key: &MasterKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
        return Err(CryptoError::Sealed);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
    let nonce = &XNonce::from(nonce);
    let aad = full_aad(aad);
    key.cipher()
        .decrypt(
            nonce,
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Sealed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = MasterKey::generate();
        let sealed = seal(&key, b"root secret", b"very secret");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(
            &**open(&key, b"root secret", &sealed).unwrap(),
            b"very secret"
        );
        let empty = seal(&key, b"", b"");
        assert!(open(&key, b"", &empty).unwrap().is_empty());
        // Fresh nonce each time.
        assert_ne!(sealed, seal(&key, b"root secret", b"very secret"));
        let again = MasterKey::from_bytes(&*key.to_bytes()).unwrap();
        let text = key.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(*text, text.to_lowercase());
        let from_file = MasterKey::from_hex(&format!("  {}\n", *text)).unwrap();
        assert_eq!(
            &**open(&from_file, b"root secret", &sealed).unwrap(),
            b"very secret"
        );
        assert_eq!(
            &**open(&again, b"root secret", &sealed).unwrap(),
            b"very secret"
        );
    }

    #[test]
    fn failures_are_sealed_errors() {
        let key = MasterKey::generate();
        let sealed = seal(&key, b"aad", b"payload");
        let other = MasterKey::generate();
        assert_eq!(open(&other, b"aad", &sealed), Err(CryptoError::Sealed));
        assert_eq!(open(&key, b"aae", &sealed), Err(CryptoError::Sealed));
        assert_eq!(
            open(&key, b"aad", &sealed[..sealed.len() - 1]),
            Err(CryptoError::Sealed)
        );
        assert_eq!(open(&key, b"aad", &sealed[..10]), Err(CryptoError::Sealed));
        assert_eq!(open(&key, b"aad", &[]), Err(CryptoError::Sealed));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                open(&key, b"aad", &bad),
                Err(CryptoError::Sealed),
                "byte {i}"
            );
        }
        assert!(MasterKey::from_bytes(&[0; 31]).is_err());
        assert_eq!(
            MasterKey::from_hex("xyz").unwrap_err(),
            CryptoError::InvalidHex { what: "master key" }
        );
        assert!(matches!(
            MasterKey::from_hex(&"ab".repeat(31)),
            Err(CryptoError::BadLength { got: 31, .. })
        ));
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
