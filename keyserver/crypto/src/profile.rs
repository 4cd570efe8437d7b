//! A profile's 2-of-2 threshold key set, made without any party ever knowing the master secret.
//!
//! The key set is a blsttc [`PublicKeySet`] of threshold 1 (2 shares decrypt): share
//! [`WORKSTATION_INDEX`] (x = 1) is the workstation's random `s_w`, share [`KSS_INDEX`]
//! (x = 2) the keyserver's `s_k`, derived from its root secret. The master secret
//! `2·s_w − s_k` is known to neither. Each side proves possession of its share's secret
//! ([`verify_possession`], [`verify_keyserver_share`]), so that neither can choose a rogue
//! share that would make it the master key's sole owner, and degenerate sets are refused
//! ([`ProfilePublicKeys::validate`]). A file key is encrypted to the master public key; to
//! decrypt, each side produces a decryption share of a *verified* ciphertext and
//! [`ProfilePublicKeys::combine`] interpolates the two at x = 0.

use std::fmt;

use blsttc::group::{Curve, Group};
use blsttc::poly::Commitment;
use blsttc::{
    Ciphertext, DecryptionShare, G1Affine, G1Projective, PK_SIZE, PublicKey, PublicKeySet,
    SIG_SIZE, Signature,
};
use zeroize::Zeroizing;

use crate::ciphertext::{
    CiphertextBytes, DecryptionShareBytes, VerifiedCiphertext, is_identity_encoding,
};
use crate::error::CryptoError;
use crate::ids::{KeyserverId, ProfileId};
use crate::root::RootSecret;
use crate::scalar::{SecretShare, fr_from_be_nonzero, random_nonzero_fr};
use crate::signing::DevicePublicKey;

/// The workstation's share index in the profile key set (evaluated at x = 1).
pub const WORKSTATION_INDEX: usize = 0;
/// The keyserver's share index in the profile key set (evaluated at x = 2).
pub const KSS_INDEX: usize = 1;
/// Length of an encoded public share (compressed G1).
pub const PUBLIC_SHARE_LEN: usize = PK_SIZE;
/// Length of an encoded proof of possession (compressed G2).
pub const POSSESSION_PROOF_LEN: usize = SIG_SIZE;
/// Length of encoded [`ProfilePublicKeys`]: the two commitment coefficients `C0 || C1`.
pub const PROFILE_PUBLIC_KEYS_LEN: usize = 2 * PK_SIZE;
const POP_TAG: &[u8] = b"kss onboard pop v1";
const KSS_POP_TAG: &[u8] = b"kss keyserver share pop v1";

/// Decodes a compressed, subgroup-checked, non-identity G1 point.
fn g1_from_slice(bytes: &[u8], what: &'static str) -> Result<G1Affine, CryptoError> {
    let array: [u8; PK_SIZE] = bytes.try_into().map_err(|_| CryptoError::BadLength {
        what,
        expected: PK_SIZE,
        got: bytes.len(),
    })?;
    let point = Option::<G1Affine>::from(G1Affine::from_compressed(&array))
        .ok_or(CryptoError::InvalidPoint { what })?;
    if is_identity_encoding(&array) {
        return Err(CryptoError::InvalidPoint { what });
    }
    Ok(point)
}

fn pop_message(keyserver: &KeyserverId, device_pk: &DevicePublicKey, share: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(POP_TAG.len() + 16 + 32 + PK_SIZE);
    msg.extend_from_slice(POP_TAG);
    msg.extend_from_slice(keyserver.as_bytes());
    msg.extend_from_slice(device_pk.as_bytes());
    msg.extend_from_slice(share);
    msg
}

/// The workstation's secret share `s_w` (zeroized on drop, not `Clone`, `Debug` redacted).
pub struct WorkstationShare(SecretShare);

impl WorkstationShare {
    /// A fresh random non-zero share.
    pub fn generate() -> Self {
        let mut fr = random_nonzero_fr();
        WorkstationShare(SecretShare::from_mut(&mut fr))
    }

    /// The share from its 32 big-endian bytes; rejects out-of-range and zero scalars.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut fr = fr_from_be_nonzero(bytes)?;
        Ok(WorkstationShare(SecretShare::from_mut(&mut fr)))
    }

    /// The 32 big-endian bytes, for the client to store.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.key().to_bytes())
    }

    /// `P_w = g1·s_w`.
    pub fn public(&self) -> WorkstationPublicShare {
        WorkstationPublicShare(self.0.key().public_key_share().to_bytes())
    }

    /// Proves knowledge of `s_w` for onboarding with `keyserver` from the device `device_pk`.
    pub fn proof_of_possession(
        &self,
        keyserver: &KeyserverId,
        device_pk: &DevicePublicKey,
    ) -> PossessionProof {
        let public = self.public();
        let msg = pop_message(keyserver, device_pk, &public.0);
        PossessionProof(self.0.key().sign(msg).0)
    }

    /// The workstation's decryption share of a verified ciphertext.
    pub fn decryption_share(&self, ct: &VerifiedCiphertext) -> DecryptionShareBytes {
        ct.decryption_share(&self.0)
    }
}

impl fmt::Debug for WorkstationShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkstationShare(<redacted>)")
    }
}

/// The workstation's public share `P_w` (a valid, non-identity compressed G1 point).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkstationPublicShare([u8; PK_SIZE]);

/// The keyserver's public share `P_k` (a valid, non-identity compressed G1 point).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KssPublicShare([u8; PK_SIZE]);

macro_rules! public_share_impl {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Decodes and validates 48 bytes (on the curve, in the subgroup, not the identity).
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
                let point = g1_from_slice(bytes, $what)?;
                Ok($name(point.to_compressed()))
            }

            /// The 48-byte compressed point.
            pub fn to_bytes(&self) -> [u8; PK_SIZE] {
                self.0
            }

            /// The 48-byte compressed point.
            pub fn as_bytes(&self) -> &[u8; PK_SIZE] {
                &self.0
            }

            fn point(&self) -> G1Projective {
                // Validated when constructed; the fallback is unreachable.
                Option::<G1Projective>::from(G1Projective::from_compressed(&self.0))
                    .unwrap_or_else(G1Projective::identity)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.0))
            }
        }
    };
}

public_share_impl!(WorkstationPublicShare, "workstation public share");
public_share_impl!(KssPublicShare, "kss public share");

/// A BLS signature proving knowledge of a share: the workstation's, or the keyserver's
/// (compressed G2, 96 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct PossessionProof(Signature);

impl PossessionProof {
    /// Decodes and validates 96 bytes (on the curve, in the subgroup, not the identity).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; SIG_SIZE] = bytes.try_into().map_err(|_| CryptoError::BadLength {
            what: "proof of possession",
            expected: SIG_SIZE,
            got: bytes.len(),
        })?;
        let sig = Signature::from_bytes(array).map_err(|_| CryptoError::InvalidPoint {
            what: "proof of possession",
        })?;
        // The identity proves nothing (found by fuzzing: it decoded).
        if crate::ciphertext::is_identity_encoding(&array) {
            return Err(CryptoError::InvalidPoint {
                what: "proof of possession (the identity)",
            });
        }
        Ok(PossessionProof(sig))
    }

    /// The 96-byte encoding.
    pub fn to_bytes(&self) -> [u8; SIG_SIZE] {
        self.0.to_bytes()
    }
}

impl fmt::Debug for PossessionProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PossessionProof({})", hex::encode(self.0.to_bytes()))
    }
}

/// Checks a workstation's proof of possession of the secret behind `share`: a BLS signature
/// with that secret over `"kss onboard pop v1" || keyserver id || device public key ||
/// share` (all fixed length). Without it, a workstation could choose `P_w = (X + P_k)/2` for
/// an `X` whose secret it knows, and own the profile's master key alone.
pub fn verify_possession(
    keyserver: &KeyserverId,
    device_pk: &DevicePublicKey,
    share: &WorkstationPublicShare,
    proof: &PossessionProof,
) -> Result<(), CryptoError> {
    let msg = pop_message(keyserver, device_pk, &share.0);
    let public = PublicKey::from(share.point());
    // `PublicKey::verify` also refuses the identity key.
    if public.verify(&proof.0, msg) {
        Ok(())
    } else {
        Err(CryptoError::BadProof)
    }
}

/// The transcript the keyserver signs with its share at onboarding (all fields fixed length):
/// `"kss keyserver share pop v1" || keyserver id || profile id || device public key ||
/// workstation public share || keyserver public share`.
fn kss_pop_message(
    keyserver: &KeyserverId,
    profile: &ProfileId,
    device_pk: &DevicePublicKey,
    ws_share: &WorkstationPublicShare,
    kss_share: &KssPublicShare,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(KSS_POP_TAG.len() + 16 + 16 + 32 + 2 * PK_SIZE);
    msg.extend_from_slice(KSS_POP_TAG);
    msg.extend_from_slice(keyserver.as_bytes());
    msg.extend_from_slice(profile.as_bytes());
    msg.extend_from_slice(device_pk.as_bytes());
    msg.extend_from_slice(&ws_share.0);
    msg.extend_from_slice(&kss_share.0);
    msg
}

/// Checks the keyserver's proof that it holds the secret behind `kss_share`, made over the
/// onboarding transcript (see [`KssShare::onboarding_proof`]). A workstation refuses a
/// profile whose keyserver share does not come with it: without the proof, a dishonest
/// keyserver could answer with a rogue share (e.g. `P_k = 2·P_w − X` for an `X` it knows) and
/// own the profile's whole key.
pub fn verify_keyserver_share(
    keyserver: &KeyserverId,
    profile: &ProfileId,
    device_pk: &DevicePublicKey,
    ws_share: &WorkstationPublicShare,
    kss_share: &KssPublicShare,
    proof: &PossessionProof,
) -> Result<(), CryptoError> {
    let msg = kss_pop_message(keyserver, profile, device_pk, ws_share, kss_share);
    let public = PublicKey::from(kss_share.point());
    if public.verify(&proof.0, msg) {
        Ok(())
    } else {
        Err(CryptoError::BadProof)
    }
}

/// The keyserver's secret share `s_k` of one profile (zeroized on drop, not `Clone`, `Debug`
/// redacted). Derived, never stored: see [`RootSecret::profile_share`].
pub struct KssShare(SecretShare);

impl KssShare {
    pub(crate) fn from_share(share: SecretShare) -> Self {
        KssShare(share)
    }

    /// `P_k = g1·s_k`.
    pub fn public(&self) -> KssPublicShare {
        KssPublicShare(self.0.key().public_key_share().to_bytes())
    }

    /// Proof of possession of this share over the onboarding transcript: a BLS signature with
    /// `s_k`, checked by the workstation with [`verify_keyserver_share`].
    pub fn onboarding_proof(
        &self,
        keyserver: &KeyserverId,
        profile: &ProfileId,
        device_pk: &DevicePublicKey,
        ws_share: &WorkstationPublicShare,
    ) -> PossessionProof {
        let msg = kss_pop_message(keyserver, profile, device_pk, ws_share, &self.public());
        PossessionProof(self.0.key().sign(msg).0)
    }

    /// The keyserver's decryption share of a verified ciphertext.
    ///
    /// This is where the server skips blsttc's per-share ciphertext re-verification (what
    /// `decrypt_share` would do; see `VerifiedCiphertext::decryption_share`): it is
    /// sound only because a [`VerifiedCiphertext`] can be constructed solely by verification:
    /// the pairing check of one ciphertext, a batched check that every ciphertext of the batch
    /// passed (see `ciphertext::pairing`), or the cache of digests of ciphertexts that passed
    /// one of those. Never produce a share for an unverified ciphertext: that is a decryption
    /// oracle for chosen ciphertexts.
    pub fn decryption_share(&self, ct: &VerifiedCiphertext) -> DecryptionShareBytes {
        ct.decryption_share(&self.0)
    }
}

impl fmt::Debug for KssShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KssShare(<redacted>)")
    }
}

/// A profile's public key set (threshold 1: both shares are needed).
#[derive(Clone, PartialEq, Eq)]
pub struct ProfilePublicKeys(PublicKeySet);

impl ProfilePublicKeys {
    /// The degree-1 commitment through `(x=1, P_w)` and `(x=2, P_k)`:
    /// `C0 = 2·P_w − P_k`, `C1 = P_k − P_w`.
    ///
    /// Does not check for degenerate sets; [`onboard`] and [`ProfilePublicKeys::from_bytes`] do
    /// (see [`ProfilePublicKeys::validate`]).
    pub fn from_shares(ws: &WorkstationPublicShare, kss: &KssPublicShare) -> Self {
        let p_w = ws.point();
        let p_k = kss.point();
        let c0 = (p_w.double() - p_k).to_affine();
        let c1 = (p_k - p_w).to_affine();
        ProfilePublicKeys(PublicKeySet::from(Commitment::from(vec![c0, c1])))
    }

    /// Refuses degenerate key sets: master key `C0` or slope `C1` the identity (the latter
    /// would mean `P_w = P_k`).
    pub fn validate(&self) -> Result<(), CryptoError> {
        let bytes = self.to_bytes();
        if is_identity_encoding(&bytes[..PK_SIZE]) {
            return Err(CryptoError::InvalidPoint {
                what: "profile master public key",
            });
        }
        if is_identity_encoding(&bytes[PK_SIZE..]) {
            return Err(CryptoError::InvalidPoint {
                what: "profile public key set (workstation and kss shares are equal)",
            });
        }
        Ok(())
    }

    /// The 96-byte encoding `C0 || C1` (compressed G1; blsttc's `PublicKeySet::to_bytes`).
    pub fn to_bytes(&self) -> [u8; PROFILE_PUBLIC_KEYS_LEN] {
        let mut out = [0u8; PROFILE_PUBLIC_KEYS_LEN];
        let bytes = self.0.to_bytes();
        if bytes.len() == PROFILE_PUBLIC_KEYS_LEN {
            out.copy_from_slice(&bytes);
        }
        out
    }

    /// Decodes and validates 96 bytes: two valid, non-identity G1 points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != PROFILE_PUBLIC_KEYS_LEN {
            return Err(CryptoError::BadLength {
                what: "profile public keys",
                expected: PROFILE_PUBLIC_KEYS_LEN,
                got: bytes.len(),
            });
        }
        let c0 = g1_from_slice(&bytes[..PK_SIZE], "profile master public key")?;
        let c1 = g1_from_slice(&bytes[PK_SIZE..], "profile public key set")?;
        Ok(ProfilePublicKeys(PublicKeySet::from(Commitment::from(
            vec![c0, c1],
        ))))
    }

    /// The master public key `C0` (what clients encrypt to).
    pub fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }

    /// The underlying blsttc key set.
    pub fn public_key_set(&self) -> &PublicKeySet {
        &self.0
    }

    /// `P_w`, the workstation's public share (index 0).
    pub fn workstation_public_share(&self) -> WorkstationPublicShare {
        WorkstationPublicShare(self.0.public_key_share(WORKSTATION_INDEX).to_bytes())
    }

    /// `P_k`, the keyserver's public share (index 1).
    pub fn kss_public_share(&self) -> KssPublicShare {
        KssPublicShare(self.0.public_key_share(KSS_INDEX).to_bytes())
    }

    /// Encrypts `msg` (typically a 32-byte file key) to the master public key.
    pub fn encrypt(&self, msg: &[u8]) -> CiphertextBytes {
        CiphertextBytes::from_ciphertext(&self.0.public_key().encrypt(msg))
    }

    /// Checks that `share` is share `index`'s ([`WORKSTATION_INDEX`] or [`KSS_INDEX`])
    /// decryption share of `ct`.
    pub fn verify_share(
        &self,
        index: usize,
        share: &DecryptionShareBytes,
        ct: &VerifiedCiphertext,
    ) -> Result<(), CryptoError> {
        self.check_share(index, &share.to_blsttc()?, &ct.to_blsttc()?)
    }

    /// Verifies both decryption shares, then combines them to decrypt `ct`.
    pub fn combine(
        &self,
        ws_share: &DecryptionShareBytes,
        kss_share: &DecryptionShareBytes,
        ct: &VerifiedCiphertext,
    ) -> Result<Vec<u8>, CryptoError> {
        let (ws_share, kss_share, ct) = (
            ws_share.to_blsttc()?,
            kss_share.to_blsttc()?,
            ct.to_blsttc()?,
        );
        self.check_share(WORKSTATION_INDEX, &ws_share, &ct)?;
        self.check_share(KSS_INDEX, &kss_share, &ct)?;
        self.0
            .decrypt(
                [(WORKSTATION_INDEX, &ws_share), (KSS_INDEX, &kss_share)],
                &ct,
            )
            .map_err(|e| CryptoError::Malformed(format!("combining decryption shares: {e}")))
    }

    /// [`ProfilePublicKeys::verify_share`] on blsttc's decoded share and ciphertext.
    fn check_share(
        &self,
        index: usize,
        share: &DecryptionShare,
        ct: &Ciphertext,
    ) -> Result<(), CryptoError> {
        if index != WORKSTATION_INDEX && index != KSS_INDEX {
            return Err(CryptoError::Malformed(format!(
                "profile share index {index} (only 0 = workstation and 1 = kss exist)"
            )));
        }
        if self
            .0
            .public_key_share(index)
            .verify_decryption_share(share, ct)
        {
            Ok(())
        } else {
            Err(CryptoError::ShareInvalid)
        }
    }
}

impl fmt::Debug for ProfilePublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProfilePublicKeys({})", hex::encode(self.to_bytes()))
    }
}

/// The keyserver's side of onboarding: verifies the workstation's proof of possession, derives
/// the KSS share from the root secret, and builds the profile's public key set.
pub fn onboard(
    root: &RootSecret,
    keyserver: &KeyserverId,
    profile: &ProfileId,
    device_pk: &DevicePublicKey,
    ws_share: &WorkstationPublicShare,
    proof: &PossessionProof,
) -> Result<(ProfilePublicKeys, KssShare), CryptoError> {
    verify_possession(keyserver, device_pk, ws_share, proof)?;
    let kss = root.profile_share(keyserver, profile);
    let keys = ProfilePublicKeys::from_shares(ws_share, &kss.public());
    keys.validate()?;
    Ok((keys, kss))
}
