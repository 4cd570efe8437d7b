//! Ciphertext verification and the verification cache.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use kss_crypto::ciphertext::{MAX_CIPHERTEXT_LEN, ciphertext_digest, verify};
use kss_crypto::{
    CiphertextBytes, CryptoError, KeyserverId, ProfileId, ProfilePublicKeys, RootSecret,
    VerificationCache, WorkstationShare,
};

fn keys() -> ProfilePublicKeys {
    let root = RootSecret::generate();
    let kss = root.profile_share(&KeyserverId::random(), &ProfileId::random());
    ProfilePublicKeys::from_shares(&WorkstationShare::generate().public(), &kss.public())
}

#[test]
fn valid_ciphertexts_verify_with_their_digest() {
    let ct = keys().encrypt(&[7u8; 32]);
    let verified = verify(ct.as_bytes()).unwrap();
    assert_eq!(verified.digest(), &ciphertext_digest(ct.as_bytes()));
    assert_eq!(verified.to_bytes(), ct.as_bytes());
    assert_eq!(ct.verify().unwrap(), verified);
}

#[test]
fn tampering_in_any_region_fails() {
    let ct = keys().encrypt(&[7u8; 32]).into_vec();
    // U (G1, 0..48), W (G2, 48..144), V (payload, 144..): first, middle and last byte of each.
    for i in [0, 1, 24, 47, 48, 49, 100, 143, 144, 160, 175] {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        let err = verify(&bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::CiphertextInvalid),
            "byte {i}: {err:?}"
        );
    }
    // Truncated / extended payloads change the hash input: invalid too.
    assert_eq!(
        verify(&ct[..ct.len() - 1]).unwrap_err(),
        CryptoError::CiphertextInvalid
    );
    let mut longer = ct.clone();
    longer.push(0);
    assert_eq!(verify(&longer).unwrap_err(), CryptoError::CiphertextInvalid);
}

#[test]
fn size_limits() {
    assert!(matches!(verify(&[]), Err(CryptoError::Malformed(_))));
    assert!(matches!(
        verify(&[0u8; 144]),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        verify(&vec![0u8; MAX_CIPHERTEXT_LEN + 1]),
        Err(CryptoError::TooLarge { .. })
    ));
    // A legitimate but large payload up to the limit is fine.
    let big = keys().encrypt(&vec![1u8; MAX_CIPHERTEXT_LEN - 144]);
    verify(big.as_bytes()).unwrap();
    let cache = VerificationCache::new(4);
    assert!(matches!(
        cache.verify(&vec![0u8; MAX_CIPHERTEXT_LEN + 1]),
        Err(CryptoError::TooLarge { .. })
    ));
}

#[test]
fn identity_u_is_refused() {
    // U = W = identity passes blsttc's pairing check; we refuse it.
    let mut ct = vec![0u8; 48 + 96 + 32];
    ct[0] = 0xc0;
    ct[48] = 0xc0;
    assert!(blsttc::Ciphertext::from_bytes(&ct).unwrap().verify());
    assert_eq!(verify(&ct).unwrap_err(), CryptoError::CiphertextInvalid);
    let cache = VerificationCache::new(4);
    assert_eq!(
        cache.verify(&ct).unwrap_err(),
        CryptoError::CiphertextInvalid
    );
    assert!(cache.is_empty());
}

#[test]
fn cache_hits_skip_verification_and_failures_are_not_cached() {
    let keys = keys();
    let cache = VerificationCache::new(100);
    let ct = keys.encrypt(&[9u8; 32]);

    let first = cache.verify(ct.as_bytes()).unwrap();
    assert_eq!((cache.hits(), cache.misses()), (0, 1));
    let second = cache.verify(ct.as_bytes()).unwrap();
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    assert_eq!(first.digest(), second.digest());
    assert_eq!(first, second);
    assert_eq!(cache.len(), 1);

    // A tampered ciphertext misses, fails, and is not cached: the next try misses again.
    let mut bad = ct.as_bytes().to_vec();
    bad[150] ^= 0x40;
    assert!(cache.verify(&bad).is_err());
    assert_eq!((cache.hits(), cache.misses()), (1, 2));
    assert!(cache.verify(&bad).is_err());
    assert_eq!((cache.hits(), cache.misses()), (1, 3));
    assert_eq!(cache.len(), 1);

    // The cached VerifiedCiphertext works for decryption shares like a fresh one.
    let root = RootSecret::generate();
    let kss = root.profile_share(&KeyserverId::random(), &ProfileId::random());
    assert_eq!(kss.decryption_share(&first), kss.decryption_share(&second));
}

#[test]
fn cache_evicts_oldest_first() {
    let keys = keys();
    let cache = VerificationCache::new(2);
    let cts: Vec<CiphertextBytes> = (0..3u8).map(|i| keys.encrypt(&[i; 32])).collect();
    for ct in &cts {
        cache.verify(ct.as_bytes()).unwrap();
    }
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.misses(), 3);
    // The newest two hit, the oldest was evicted and misses.
    cache.verify(cts[2].as_bytes()).unwrap();
    cache.verify(cts[1].as_bytes()).unwrap();
    assert_eq!(cache.hits(), 2);
    cache.verify(cts[0].as_bytes()).unwrap();
    assert_eq!(cache.misses(), 4);
    assert_eq!(cache.len(), 2);

    let disabled = VerificationCache::new(0);
    disabled.verify(cts[0].as_bytes()).unwrap();
    disabled.verify(cts[0].as_bytes()).unwrap();
    assert_eq!((disabled.hits(), disabled.misses()), (0, 2));
}

#[test]
fn cache_is_shareable_across_threads() {
    let keys = keys();
    let cache = Arc::new(VerificationCache::new(1000));
    let cts: Arc<Vec<CiphertextBytes>> =
        Arc::new((0..8u8).map(|i| keys.encrypt(&[i; 32])).collect());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let cts = Arc::clone(&cts);
            std::thread::spawn(move || {
                for ct in cts.iter() {
                    cache.verify(ct.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(cache.hits() + cache.misses(), 32);
    assert_eq!(cache.len(), 8);
}

/// The one-final-exponentiation check accepts and rejects exactly what blsttc's own
/// `Ciphertext::verify` does: valid ciphertexts (short and long V), and mixes of the parts of
/// two valid ciphertexts, which decode but do not belong together.
#[test]
fn verification_agrees_with_blsttc() {
    use kss_crypto::blsttc::{Ciphertext, SecretKey};
    let key = SecretKey::random().public_key();
    let cts: Vec<Vec<u8>> = [32usize, 64, 65, 200]
        .iter()
        .map(|len| key.encrypt(vec![7u8; *len]).to_bytes())
        .collect();
    for ct in &cts {
        assert!(Ciphertext::from_bytes(ct).unwrap().verify());
        assert!(kss_crypto::ciphertext::verify(ct).is_ok());
    }
    // U of one, W and V of another, and so on: every pairing of parts.
    let parts = |ct: &Vec<u8>| (ct[..48].to_vec(), ct[48..144].to_vec(), ct[144..].to_vec());
    let mut checked = 0;
    for a in &cts {
        for b in &cts {
            for c in &cts {
                let (u, _, _) = parts(a);
                let (_, w, _) = parts(b);
                let (_, _, v) = parts(c);
                let mixed = [u, w, v].concat();
                let theirs = Ciphertext::from_bytes(&mixed)
                    .map(|ct| ct.verify())
                    .unwrap_or(false);
                let ours = kss_crypto::ciphertext::verify(&mixed).is_ok();
                assert_eq!(ours, theirs, "disagreement on a mix");
                checked += usize::from(!theirs);
            }
        }
    }
    assert!(checked > 50, "mixes must include invalid ones: {checked}");

    // Encodings that decode or not, as blsttc decides: W = identity (decodes, fails the
    // pairing check), the compression flag cleared on U or W, the infinity flag set on W
    // with the rest left, the sign flag flipped on U or W (another point), and x ≥ p.
    let valid = &cts[0];
    let mut w_identity = valid.clone();
    w_identity[48..144].fill(0);
    w_identity[48] = 0xc0;
    let mut variants = vec![w_identity];
    for (at, flip) in [
        (0usize, 0x80u8),
        (48, 0x80),
        (48, 0x40),
        (0, 0x20),
        (48, 0x20),
    ] {
        let mut variant = valid.clone();
        variant[at] ^= flip;
        variants.push(variant);
    }
    let mut x_too_large = valid.clone();
    x_too_large[..48].fill(0xff);
    x_too_large[0] = 0x9f;
    variants.push(x_too_large);
    for (i, variant) in variants.iter().enumerate() {
        let theirs = Ciphertext::from_bytes(variant)
            .map(|ct| ct.verify())
            .unwrap_or(false);
        let ours = kss_crypto::ciphertext::verify(variant).is_ok();
        assert_eq!(ours, theirs, "disagreement on variant {i}");
        assert!(!ours, "variant {i} must not verify");
    }
}

/// A batch answers for each ciphertext what verifying it alone would: valid ones pass,
/// whatever else is in the batch (invalid, malformed, oversize, identity U, repeats, cached).
#[test]
fn batch_verification_answers_each_ciphertext_like_a_single_check() {
    use kss_crypto::blsttc::{Ciphertext, SecretKey};
    let key = SecretKey::random().public_key();
    let valid: Vec<Vec<u8>> = (0..6u8).map(|i| key.encrypt([i; 32]).to_bytes()).collect();
    // W of another valid ciphertext: decodes, fails the pairing check.
    let swapped = [&valid[0][..48], &valid[1][48..144], &valid[0][144..]].concat();
    assert!(!Ciphertext::from_bytes(&swapped).unwrap().verify());
    let mut identity_u = vec![0u8; 48 + 96 + 32];
    identity_u[0] = 0xc0;
    identity_u[48] = 0xc0;
    let too_short = vec![0u8; 10];
    let oversize = vec![0u8; MAX_CIPHERTEXT_LEN + 1];

    let cache = VerificationCache::new(100);
    cache.verify(&valid[5]).unwrap(); // cached before the batch
    let items: Vec<&[u8]> = vec![
        &valid[0],
        &swapped,
        &valid[1],
        &identity_u,
        &valid[2],
        &too_short,
        &valid[3],
        &oversize,
        &valid[4],
        &valid[5],
        &valid[0], // twice in one batch
    ];
    let results = cache.verify_batch(&items);
    assert_eq!(results.len(), items.len());
    for (item, result) in items.iter().zip(&results) {
        let alone = kss_crypto::ciphertext::verify(item);
        match (result, &alone) {
            (Ok(batched), Ok(single)) => assert_eq!(batched, single),
            (Err(batched), Err(single)) => assert_eq!(batched, single),
            _ => panic!("batch {result:?} but alone {alone:?}"),
        }
    }
    assert!(matches!(results[1], Err(CryptoError::CiphertextInvalid)));
    assert!(matches!(results[5], Err(CryptoError::Malformed(_))));
    assert!(matches!(results[7], Err(CryptoError::TooLarge { .. })));
    // The valid ones are cached now, the invalid ones are not.
    assert_eq!(cache.hits(), 1);
    assert_eq!(cache.len(), 6);
    let again = cache.verify_batch(&[&valid[0], &valid[3], &swapped]);
    assert!(again[0].is_ok() && again[1].is_ok() && again[2].is_err());
    assert_eq!(cache.hits(), 3);
}

/// Batches of valid ciphertexts only, of every size up to 16, all pass; the same batch with
/// any one of them tampered fails only that one.
#[test]
fn batch_verification_isolates_the_one_invalid_ciphertext() {
    let keys = keys();
    for n in [2usize, 3, 8, 16] {
        let cts: Vec<Vec<u8>> = (0..n)
            .map(|i| keys.encrypt(&[i as u8; 32]).into_vec())
            .collect();
        let items: Vec<&[u8]> = cts.iter().map(Vec::as_slice).collect();
        assert!(
            VerificationCache::new(0)
                .verify_batch(&items)
                .iter()
                .all(Result::is_ok)
        );
        let bad_at = n / 2;
        let mut tampered = cts.clone();
        tampered[bad_at][160] ^= 0x01; // in V: decodes, fails the pairing check
        let items: Vec<&[u8]> = tampered.iter().map(Vec::as_slice).collect();
        let results = VerificationCache::new(0).verify_batch(&items);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != bad_at, "n={n}, item {i}: {r:?}");
        }
    }
}

#[test]
fn cached_answers_only_what_was_verified() {
    let keys = keys();
    let cache = VerificationCache::new(10);
    let ct = keys.encrypt(&[3u8; 32]);
    assert!(cache.cached(ct.as_bytes()).is_none());
    assert_eq!((cache.hits(), cache.misses()), (0, 0));
    let verified = cache.verify(ct.as_bytes()).unwrap();
    assert_eq!(cache.cached(ct.as_bytes()), Some(verified));
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    let mut bad = ct.into_vec();
    bad[150] ^= 1;
    assert!(cache.verify(&bad).is_err());
    assert!(cache.cached(&bad).is_none());
    assert!(cache.cached(&[0u8; 5]).is_none());
}
