//! Ciphertexts as a decrypt request carries them: decoding, the pairing check alone, in a
//! batch and through the cache (which must all agree), the canonical encoding, and the
//! shares released for what passed.

use kss_crypto::ciphertext::{VerificationCache, ciphertext_digest, verify};
use kss_crypto::profile::{KSS_INDEX, WORKSTATION_INDEX};

use super::assert_bounded;
use crate::fixture::fixture;

/// The input is one ciphertext; a batch puts it beside a valid one and a copy of itself.
pub fn ciphertext(data: &[u8]) {
    let fx = fixture();
    let single = verify(data);
    if let Err(e) = &single {
        assert_bounded("a refused ciphertext", &e.to_string());
    }
    let valid = fx.ciphertext.to_bytes();
    let batch = VerificationCache::new(8).verify_batch(&[data, &valid, data]);
    assert_eq!(
        batch[0].is_ok(),
        single.is_ok(),
        "batch and single disagree"
    );
    assert!(
        batch[1].is_ok(),
        "a valid ciphertext refused beside this input"
    );
    assert_eq!(
        batch[2].is_ok(),
        single.is_ok(),
        "the copy was decided otherwise"
    );
    assert_eq!(
        fx.cache.verify(data).is_ok(),
        single.is_ok(),
        "the cache disagrees"
    );
    let Ok(ct) = single else {
        return;
    };
    // One encoding per ciphertext: the digest the audit records is of these bytes.
    assert_eq!(ct.to_bytes(), data, "a non-canonical encoding was accepted");
    assert_eq!(ct.digest(), &ciphertext_digest(data));
    let kss = fx.kss.decryption_share(&ct);
    let workstation = fx.workstation.decryption_share(&ct);
    fx.keys
        .verify_share(KSS_INDEX, &kss, &ct)
        .expect("the keyserver's share verifies");
    fx.keys
        .verify_share(WORKSTATION_INDEX, &workstation, &ct)
        .expect("the workstation's share verifies");
    // The shares are not interchangeable.
    assert!(fx.keys.verify_share(WORKSTATION_INDEX, &kss, &ct).is_err());
    fx.keys
        .combine(&workstation, &kss, &ct)
        .expect("two valid shares combine");
}
