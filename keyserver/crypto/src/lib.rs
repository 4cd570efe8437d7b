//! kss-crypto: the keyserver's cryptography. Pure and synchronous: no async, no I/O.
//!
//! * [`ids`] — 16-byte profile, keyserver and device identifiers.
//! * [`root`] — the keyserver's root secret, per-profile KSS shares and profile tokens.
//! * [`profile`] — a profile's 2-of-2 threshold key set (workstation + keyserver).
//! * [`ciphertext`] — threshold ciphertexts, verification and the verification cache.
//! * [`signing`] — Ed25519 request signatures with domain separation.
//! * [`seal`](mod@seal) — XChaCha20-Poly1305 sealing of secrets at rest.
//! * [`identity`] — the keyserver's ID and sealed root secret, as stored and as the
//!   operator's bootstrap document.
//! * [`backup`] — the root secret under an M-of-N threshold of administrator keys.
//! * [`words`] — a profile's verification words, derived from its public key set.
//!
//! Secrets are zeroized on drop, are not `Clone`, and print as `<redacted>`. Errors are one
//! [`CryptoError`] enum and never contain secret bytes.

pub mod backup;
pub mod ciphertext;
mod error;
pub mod identity;
pub mod ids;
pub mod profile;
pub mod root;
mod scalar;
pub mod seal;
pub mod signing;
pub mod words;

pub use blsttc;
pub use zeroize::Zeroizing;

pub use backup::{
    AdminKey, AdminPublicKey, Approval, BackupHolder, BackupKey, approve, create_backup, recover,
};
pub use ciphertext::{
    CiphertextBytes, DecryptionShareBytes, VerificationCache, VerifiedCiphertext,
};
pub use error::CryptoError;
pub use identity::SealedIdentity;
pub use ids::{DeviceId, KeyserverId, PROFILE_ID_LEN, ProfileId};
pub use profile::{
    KssPublicShare, KssShare, PossessionProof, ProfilePublicKeys, WorkstationPublicShare,
    WorkstationShare, onboard, verify_keyserver_share, verify_possession,
};
pub use root::{ProfileClaims, ROW_MAC_LEN, RootSecret, RowKey, TokenKey};
pub use seal::{MasterKey, open, seal};
pub use signing::{DeviceKey, DevicePublicKey, SignDomain};
