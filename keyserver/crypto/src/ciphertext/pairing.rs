//! The pairing check that makes a ciphertext valid, one at a time or in a batch.
//!
//! A blsttc ciphertext `(U, V, W)` is valid when `e(g1, W) = e(U, H(U, V))`, which is what
//! `blsttc::Ciphertext::verify` checks; here it is computed as `e(g1, W) · e(−U, H) = 1`
//! (two Miller loops, one final exponentiation). A batch is checked at once with random
//! exponents (`check_batch`). A failed batch says only that some ciphertext is invalid: the
//! caller then checks each one alone ([`super::cache::VerificationCache::verify_batch`]).
//!
//! Products of pairings are computed by [`pairing_product_is_one`]: one Miller loop over all
//! pairs at once (blst's `miller_loop_n`, which squares the accumulator once per step for
//! all of them), where blstrs's `multi_miller_loop` runs a whole Miller loop per pair and
//! multiplies the results.

use blst::{MultiPoint, blst_fp12, blst_p1_affine, blst_p2_affine};
use blsttc::blstrs::{G1Affine, G1Projective, G2Affine, G2Projective};
use blsttc::group::prime::PrimeCurveAffine;
use blsttc::group::{Curve, Group};
use blsttc::{PK_SIZE, SIG_SIZE};
use rand::RngCore;

/// Offsets of the encoding `U (G1, 48) ‖ W (G2, 96) ‖ V` (blsttc's `Ciphertext::to_bytes`).
const U_END: usize = PK_SIZE;
const W_END: usize = PK_SIZE + SIG_SIZE;

/// Bits of each random exponent of the batch check.
const EXPONENT_BITS: usize = 64;
const EXPONENT_BYTES: usize = EXPONENT_BITS / 8;

/// The points the pairing check of one ciphertext needs.
#[derive(Clone)]
pub(super) struct CheckInput {
    u: G1Affine,
    w: G2Affine,
    hash: G2Affine,
}

impl CheckInput {
    /// Decodes U and W as blsttc's `Ciphertext::from_bytes` does (compressed, on the curve,
    /// in their prime-order subgroups) and hashes `(U, V)` to G2. `None` if a point does not
    /// decode or V is empty. Does not refuse U = identity: the caller does.
    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let u = bytes
            .get(..U_END)
            .and_then(|b| <&[u8; PK_SIZE]>::try_from(b).ok())?;
        let w = bytes
            .get(U_END..W_END)
            .and_then(|b| <&[u8; SIG_SIZE]>::try_from(b).ok())?;
        let v = bytes.get(W_END..).filter(|v| !v.is_empty())?;
        let u = Option::<G1Affine>::from(G1Affine::from_compressed(u))?;
        let w = Option::<G2Affine>::from(G2Affine::from_compressed(w))?;
        let hash = hash_g1_g2(&u, v);
        Some(CheckInput { u, w, hash })
    }

    /// The ciphertext's U.
    pub(super) fn u(&self) -> G1Affine {
        self.u
    }
}

/// One ciphertext's check: `e(g1, W) · e(−U, H) = 1`.
pub(super) fn check_one(input: &CheckInput) -> bool {
    pairing_product_is_one(&[(generator(), input.w), (-input.u, input.hash)])
}

/// All of `inputs` at once: `true` only if, except with probability at most 2⁻⁶³, every
/// one of them is valid. An empty batch is trivially valid.
///
/// The "small exponents" batch test, with a random 64-bit `rᵢ` per ciphertext:
///
/// ```text
/// e(g1, Σ rᵢ·Wᵢ) · Π e(−rᵢ·Uᵢ, Hᵢ) = 1
/// ```
///
/// n + 1 Miller loops and one final exponentiation instead of 2n and n. If every
/// ciphertext is valid the product is 1. If one is not, its factor
/// `zⱼ = e(g1, Wⱼ) · e(−Uⱼ, Hⱼ)` is a non-identity element of the prime-order group GT, and
/// whatever the other exponents, exactly one value of `rⱼ` modulo the group order makes the
/// product 1. `rⱼ` is drawn from the operating system's generator after the ciphertexts are
/// fixed, uniformly from 2⁶⁴ values but for a zero draw, which becomes 1: it hits that
/// value with probability at most 2⁻⁶³. This needs U and W in their prime-order subgroups,
/// which [`CheckInput::from_bytes`] checks, and H hashed into G2.
pub(super) fn check_batch(inputs: &[&CheckInput]) -> bool {
    match inputs {
        [] => return true,
        [one] => return check_one(one),
        _ => {}
    }
    let exponents = random_exponents(inputs.len());

    // Σ rᵢ·Wᵢ, one multi-scalar multiplication.
    let ws: Vec<blst_p2_affine> = inputs.iter().map(|i| *i.w.as_ref()).collect();
    let mut w_sum = G2Projective::identity();
    *w_sum.as_mut() = ws.as_slice().mult(&exponents, EXPONENT_BITS);

    // −rᵢ·Uᵢ, each paired with its own Hᵢ.
    let scaled_us: Vec<G1Affine> = inputs
        .iter()
        .zip(exponents.chunks_exact(EXPONENT_BYTES))
        .map(|(input, exponent)| {
            let u: [blst_p1_affine; 1] = [*input.u.as_ref()];
            let mut scaled = G1Projective::identity();
            *scaled.as_mut() = u.as_slice().mult(exponent, EXPONENT_BITS);
            -scaled.to_affine()
        })
        .collect();

    let pairs: Vec<(G1Affine, G2Affine)> = std::iter::once((generator(), w_sum.to_affine()))
        .chain(scaled_us.into_iter().zip(inputs.iter().map(|i| i.hash)))
        .collect();
    pairing_product_is_one(&pairs)
}

/// Whether `Π e(pᵢ, qᵢ) = 1`: one Miller loop over all pairs, one final exponentiation. A
/// pair with the identity on either side is 1 (as `e(O, q) = e(p, O) = 1`) and is left out,
/// as blstrs's pairing does: blst's Miller loop is only defined on points other than the
/// identity.
fn pairing_product_is_one(pairs: &[(G1Affine, G2Affine)]) -> bool {
    let (ps, qs): (Vec<blst_p1_affine>, Vec<blst_p2_affine>) = pairs
        .iter()
        .filter(|(p, q)| !bool::from(p.is_identity() | q.is_identity()))
        .map(|(p, q)| (*p.as_ref(), *q.as_ref()))
        .unzip();
    if ps.is_empty() {
        return true;
    }
    // blst's `Default` for an element of GT is 1, the identity.
    blst_fp12::miller_loop_n(&qs, &ps).final_exp() == blst_fp12::default()
}

/// `n` exponents of [`EXPONENT_BITS`] bits (little-endian, concatenated), each non-zero.
fn random_exponents(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n * EXPONENT_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    for exponent in bytes.chunks_exact_mut(EXPONENT_BYTES) {
        if exponent.iter().all(|b| *b == 0) {
            exponent[0] = 1;
        }
    }
    bytes
}

fn generator() -> G1Affine {
    G1Affine::from(G1Projective::generator())
}

/// blsttc's hash of a ciphertext's U and V to G2: V (its SHA3-256 when longer than 64
/// bytes) followed by U compressed, hashed to the curve with blsttc's domain tag.
fn hash_g1_g2(u: &G1Affine, v: &[u8]) -> G2Affine {
    use sha3::Digest as _;

    let mut msg = if v.len() > 64 {
        sha3::Sha3_256::digest(v).to_vec()
    } else {
        v.to_vec()
    };
    msg.extend_from_slice(&u.to_compressed());
    G2Projective::hash_to_curve(&msg, blsttc::DST, &[]).to_affine()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use blsttc::blstrs::{Bls12, G2Prepared};
    use pairing::{MillerLoopResult, MultiMillerLoop};

    fn input(valid: bool) -> CheckInput {
        let ct = blsttc::SecretKey::random()
            .public_key()
            .encrypt([9u8; 32])
            .to_bytes();
        let mut input = CheckInput::from_bytes(&ct).unwrap();
        if !valid {
            // A W from another ciphertext: both points stay in their subgroups.
            let other = blsttc::SecretKey::random()
                .public_key()
                .encrypt([9u8; 32])
                .to_bytes();
            input.w = CheckInput::from_bytes(&other).unwrap().w;
        }
        input
    }

    /// The compressed encoding of a point on the curve outside the prime-order subgroup: the
    /// first x = 0, 1, 2 … on the curve (the subgroup holds 1 in ~2¹²⁶ of its points).
    fn off_subgroup<const N: usize>(on_curve: impl Fn(&[u8; N]) -> bool) -> [u8; N] {
        for x in 0..=u8::MAX {
            let mut encoding = [0u8; N];
            encoding[0] = 0x80; // compressed
            encoding[N - 1] = x;
            if on_curve(&encoding) {
                return encoding;
            }
        }
        panic!("no point with a small x");
    }

    /// A U or W on the curve but outside its subgroup would let a crafted ciphertext pass
    /// the pairing check (a small-order part of U pairs to 1) and its share leak the secret
    /// modulo that order: decoding refuses it.
    #[test]
    fn points_outside_their_subgroups_do_not_decode() {
        let u = off_subgroup::<PK_SIZE>(|b| {
            bool::from(G1Affine::from_compressed_unchecked(b).is_some())
        });
        let w = off_subgroup::<SIG_SIZE>(|b| {
            bool::from(G2Affine::from_compressed_unchecked(b).is_some())
        });
        assert!(bool::from(G1Affine::from_compressed(&u).is_none()));
        assert!(bool::from(G2Affine::from_compressed(&w).is_none()));

        let ct = blsttc::SecretKey::random()
            .public_key()
            .encrypt([9u8; 32])
            .to_bytes();
        assert!(CheckInput::from_bytes(&ct).is_some());
        let with_u = [&u[..], &ct[U_END..]].concat();
        let with_w = [&ct[..U_END], &w[..], &ct[W_END..]].concat();
        assert!(CheckInput::from_bytes(&with_u).is_none());
        assert!(CheckInput::from_bytes(&with_w).is_none());
        // blsttc refuses them too.
        assert!(blsttc::Ciphertext::from_bytes(&with_u).is_err());
        assert!(blsttc::Ciphertext::from_bytes(&with_w).is_err());
    }

    /// The attack the subgroup check stops, built: U' = r·g1 + T with T of an order that
    /// divides G1's cofactor, and W' = r·H(U', V). The pairing cannot see T, so decoded
    /// without the subgroup check the ciphertext passes the pairing check, and a share
    /// U'·x would carry x·T, x modulo T's order. Decoded as the server decodes, it is
    /// refused.
    #[test]
    fn a_ciphertext_with_a_small_order_part_in_u_passes_the_pairing_but_does_not_decode() {
        use blsttc::blstrs::Scalar;
        use blsttc::group::ff::Field;

        let outside = off_subgroup::<PK_SIZE>(|b| {
            bool::from(G1Affine::from_compressed_unchecked(b).is_some())
        });
        let outside = G1Affine::from_compressed_unchecked(&outside).unwrap();
        // T = q·P for the group order q: what is left of P is its part outside G1.
        let order_le: Vec<u8> = {
            let mut be =
                hex::decode("73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001")
                    .unwrap();
            be.reverse();
            be
        };
        let p: [blst_p1_affine; 1] = [*outside.as_ref()];
        let mut t = G1Projective::identity();
        *t.as_mut() = p.as_slice().mult(&order_le, 255);
        assert!(!bool::from(t.is_identity()), "T is the identity");

        let r = Scalar::random(rand::thread_rng());
        let u = (G1Projective::generator() * r + t).to_affine();
        let v = [7u8; 32];
        let w = (G2Projective::from(hash_g1_g2(&u, &v)) * r).to_affine();
        let bytes = [&u.to_compressed()[..], &w.to_compressed()[..], &v[..]].concat();

        let unchecked = CheckInput {
            u: G1Affine::from_compressed_unchecked(&u.to_compressed()).unwrap(),
            w,
            hash: hash_g1_g2(&u, &v),
        };
        assert!(
            check_one(&unchecked),
            "the crafted ciphertext passes the pairing"
        );
        assert!(CheckInput::from_bytes(&bytes).is_none());
        assert!(blsttc::Ciphertext::from_bytes(&bytes).is_err());
    }

    #[test]
    fn single_check_accepts_valid_and_rejects_invalid() {
        assert!(check_one(&input(true)));
        assert!(!check_one(&input(false)));
    }

    #[test]
    fn batches_of_valid_ciphertexts_pass() {
        for n in [0, 1, 2, 3, 8] {
            let inputs: Vec<_> = (0..n).map(|_| input(true)).collect();
            assert!(
                check_batch(&inputs.iter().collect::<Vec<_>>()),
                "batch of {n}"
            );
        }
    }

    #[test]
    fn one_invalid_ciphertext_fails_the_whole_batch_wherever_it_is() {
        for n in [1, 2, 5] {
            for bad in 0..n {
                let inputs: Vec<_> = (0..n).map(|i| input(i != bad)).collect();
                let refs: Vec<_> = inputs.iter().collect();
                assert!(!check_batch(&refs), "batch of {n}, invalid at {bad}");
            }
        }
    }

    #[test]
    fn invalid_ciphertexts_do_not_cancel_out() {
        // Swapping the W of two valid ciphertexts makes both invalid, but leaves W₁ + W₂
        // unchanged: without the random exponents the batch equation would still hold.
        let mut a = input(true);
        let mut b = input(true);
        std::mem::swap(&mut a.w, &mut b.w);
        assert!(!check_one(&a) && !check_one(&b));
        let w_sum = (G2Projective::from(a.w) + G2Projective::from(b.w)).to_affine();
        let unrandomized = Bls12::multi_miller_loop(&[
            (&generator(), &G2Prepared::from(w_sum)),
            (&(-a.u), &G2Prepared::from(a.hash)),
            (&(-b.u), &G2Prepared::from(b.hash)),
        ])
        .final_exponentiation();
        assert!(bool::from(unrandomized.is_identity()));
        for _ in 0..4 {
            assert!(!check_batch(&[&a, &b]));
        }
    }

    /// blstrs's product of pairings (a Miller loop per pair): the reference.
    fn reference_is_one(pairs: &[(G1Affine, G2Affine)]) -> bool {
        let prepared: Vec<G2Prepared> = pairs.iter().map(|(_, q)| G2Prepared::from(*q)).collect();
        let terms: Vec<(&G1Affine, &G2Prepared)> =
            pairs.iter().map(|(p, _)| p).zip(prepared.iter()).collect();
        bool::from(
            Bls12::multi_miller_loop(&terms)
                .final_exponentiation()
                .is_identity(),
        )
    }

    /// `n` random pairs and one more that makes their product 1: `e(−Σ aᵢbᵢ·g1, g2)`.
    fn product_of_one(n: usize) -> Vec<(G1Affine, G2Affine)> {
        use blsttc::blstrs::Scalar;
        use blsttc::group::ff::Field;
        let mut rng = rand::thread_rng();
        let mut sum = Scalar::zero();
        let mut pairs = Vec::new();
        for _ in 0..n {
            let (a, b) = (Scalar::random(&mut rng), Scalar::random(&mut rng));
            sum += a * b;
            pairs.push((
                (G1Projective::generator() * a).to_affine(),
                (G2Projective::generator() * b).to_affine(),
            ));
        }
        pairs.push((
            (G1Projective::generator() * (-sum)).to_affine(),
            G2Affine::from(G2Projective::generator()),
        ));
        pairs
    }

    #[test]
    fn one_miller_loop_over_all_pairs_agrees_with_a_loop_per_pair() {
        // 17 and 40 pairs cross blst's groups of 16 pairs per loop.
        for n in [1usize, 2, 15, 16, 17, 40] {
            let pairs = product_of_one(n);
            assert!(reference_is_one(&pairs), "{n} pairs");
            assert!(pairing_product_is_one(&pairs), "{n} pairs");

            // One point changed anywhere: the product is no longer 1, in both.
            for at in [0, n / 2, n] {
                let mut changed = pairs.clone();
                changed[at].0 =
                    (G1Projective::from(changed[at].0) + G1Projective::generator()).to_affine();
                assert!(!reference_is_one(&changed), "{n} pairs, changed at {at}");
                assert!(
                    !pairing_product_is_one(&changed),
                    "{n} pairs, changed at {at}"
                );
            }

            // Pairs with the identity on either side are 1 and change nothing.
            let mut with_identities = pairs.clone();
            with_identities.insert(0, (G1Affine::identity(), pairs[0].1));
            with_identities.push((pairs[0].0, G2Affine::identity()));
            assert!(
                reference_is_one(&with_identities),
                "{n} pairs and identities"
            );
            assert!(
                pairing_product_is_one(&with_identities),
                "{n} pairs and identities"
            );
        }
        // Only identities, or nothing: the empty product.
        assert!(pairing_product_is_one(&[]));
        assert!(pairing_product_is_one(&[(
            G1Affine::identity(),
            G2Affine::identity()
        )]));
        // A single pair of points other than the identity is never 1.
        assert!(!pairing_product_is_one(&[(
            generator(),
            G2Affine::generator()
        )]));
    }

    #[test]
    fn exponents_are_fresh_and_non_zero() {
        let a = random_exponents(4);
        let b = random_exponents(4);
        assert_eq!(a.len(), 4 * EXPONENT_BYTES);
        assert_ne!(a, b);
        assert!(
            a.chunks_exact(EXPONENT_BYTES)
                .all(|e| e.iter().any(|b| *b != 0))
        );
    }
}
