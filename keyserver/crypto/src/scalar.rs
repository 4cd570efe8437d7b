//! Scalar helpers on top of blsttc's `Fr` (blstrs `Scalar`).

use blsttc::Fr;
use blsttc::group::ff::Field;

use crate::error::CryptoError;

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
