//! Scalar helpers on top of blsttc's `Fr` (blstrs `Scalar`), and the secret share held as one.

use blst::blst_fr;
use blsttc::group::ff::Field;
use blsttc::{Fr, SecretKeyShare};
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// A secret share twice over: as blsttc's `SecretKeyShare` (its public share, signatures,
/// its encoding) and as its scalar `x`, for decryption shares `U·x` computed on a ciphertext's
/// decoded U without a blsttc `Ciphertext` (see `VerifiedCiphertext::decryption_share`).
/// Both are zeroized on drop; neither is `Clone` or `Debug`.
pub(crate) struct SecretShare {
    key: SecretKeyShare,
    /// `x` in Montgomery form, as blst keeps it (so turning it back into an `Fr` cannot fail).
    limbs: Zeroizing<[u64; 4]>,
}

impl SecretShare {
    /// The share `fr`, which is overwritten with zero (as blsttc's `SecretKeyShare::from_mut`
    /// does).
    pub(crate) fn from_mut(fr: &mut Fr) -> Self {
        let limbs = Zeroizing::new(blst_fr::from(*fr).l);
        SecretShare {
            key: SecretKeyShare::from_mut(fr),
            limbs,
        }
    }

    pub(crate) fn key(&self) -> &SecretKeyShare {
        &self.key
    }

    /// The scalar `x` (a copy on the caller's stack, for one multiplication).
    pub(crate) fn scalar(&self) -> Fr {
        Fr::from(blst_fr { l: *self.limbs })
    }
}

/// Reduces 64 uniformly random bytes (big-endian) modulo the BLS12-381 group order r.
///
/// blsttc / blstrs 0.6 have no `from_bytes_wide`, so this is a plain wide reduction with field
/// arithmetic: Horner's rule over the eight big-endian 64-bit limbs,
/// `acc = acc * 2^64 + limb`, which computes the 512-bit integer mod r exactly. The bias of a
/// 512-bit value reduced mod a 255-bit prime is below 2^-256.
pub(crate) fn fr_from_wide_be(bytes: &[u8; 64]) -> Fr {
    let two_64 = Fr::from(u64::MAX) + Fr::one();
    let mut acc = Fr::zero();
    for chunk in bytes.chunks_exact(8) {
        let mut limb = [0u8; 8];
        limb.copy_from_slice(chunk);
        acc = acc * two_64 + Fr::from(u64::from_be_bytes(limb));
    }
    acc
}

/// A canonical (< r), non-zero big-endian scalar.
pub(crate) fn fr_from_be_nonzero(bytes: &[u8]) -> Result<Fr, CryptoError> {
    let array: &[u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadLength {
        what: "secret scalar",
        expected: 32,
        got: bytes.len(),
    })?;
    let fr = Option::<Fr>::from(Fr::from_bytes_be(array)).ok_or(CryptoError::InvalidScalar)?;
    if bool::from(fr.is_zero()) {
        return Err(CryptoError::InvalidScalar);
    }
    Ok(fr)
}

/// A uniformly random non-zero scalar.
pub(crate) fn random_nonzero_fr() -> Fr {
    let mut rng = rand::rngs::OsRng;
    loop {
        let fr = Fr::random(&mut rng);
        if !bool::from(fr.is_zero()) {
            return fr;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wide_reduction_matches_small_values_and_wraps() {
        let mut bytes = [0u8; 64];
        bytes[63] = 5;
        assert_eq!(fr_from_wide_be(&bytes), Fr::from(5u64));
        // 2^64 (limb 6 = 1).
        let mut bytes = [0u8; 64];
        bytes[55] = 1;
        assert_eq!(fr_from_wide_be(&bytes), Fr::from(u64::MAX) + Fr::one());
        // r itself (as the low 32 bytes) reduces to zero.
        let r_minus_1 = -Fr::one();
        let mut bytes = [0u8; 64];
        bytes[32..].copy_from_slice(&r_minus_1.to_bytes_be());
        assert_eq!(fr_from_wide_be(&bytes) + Fr::one(), Fr::zero());
        // A value above 2^256: 2^256 mod r = (2^64)^4.
        let mut bytes = [0u8; 64];
        bytes[31] = 1;
        let two_64 = Fr::from(u64::MAX) + Fr::one();
        assert_eq!(fr_from_wide_be(&bytes), two_64 * two_64 * two_64 * two_64);
    }

    #[test]
    fn a_secret_share_keeps_its_scalar_and_clears_the_source() {
        let fr = random_nonzero_fr();
        let mut source = fr;
        let share = SecretShare::from_mut(&mut source);
        assert_eq!(source, Fr::zero());
        assert_eq!(share.scalar(), fr);
        assert_eq!(share.key().to_bytes(), fr.to_bytes_be());
    }

    #[test]
    fn canonical_scalars_only() {
        assert_eq!(
            fr_from_be_nonzero(&[0u8; 32]),
            Err(CryptoError::InvalidScalar)
        );
        assert_eq!(
            fr_from_be_nonzero(&[0xffu8; 32]),
            Err(CryptoError::InvalidScalar)
        );
        let fr = random_nonzero_fr();
        assert_eq!(fr_from_be_nonzero(&fr.to_bytes_be()).unwrap(), fr);
    }
}
