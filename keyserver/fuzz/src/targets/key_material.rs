//! The key material a workstation or a keyserver sends: decryption shares, proofs,
//! public shares, key sets and device keys. The first byte picks the decoder, the rest is
//! its input. What decodes has one encoding (re-encoding gives the input back), and a
//! decoded share or proof that is not the fixture's own never verifies as it.

use kss_crypto::ciphertext::DecryptionShareBytes;
use kss_crypto::profile::{
    KSS_INDEX, KssPublicShare, PossessionProof, ProfilePublicKeys, WorkstationPublicShare,
    WorkstationShare,
};
use kss_crypto::{DeviceKey, DevicePublicKey};

use super::assert_bounded;
use crate::fixture::fixture;

const DECODERS: u8 = 7;

/// A compressed curve point with its infinity flag (bit 6 of the first byte) set.
fn is_identity(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0x40 != 0)
}

pub fn key_material(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let refused =
        |e: kss_crypto::CryptoError| assert_bounded("refused key material", &e.to_string());
    let decoded_point = |what: &str| {
        assert!(!is_identity(bytes), "{what}: the identity decoded");
    };
    match which % DECODERS {
        0 => match DecryptionShareBytes::from_bytes(bytes) {
            Ok(share) => {
                decoded_point("decryption share");
                assert_eq!(share.to_bytes().as_slice(), bytes);
                let ct = &fx.ciphertext;
                let real = fx.kss.decryption_share(ct);
                let verifies = fx.keys.verify_share(KSS_INDEX, &share, ct).is_ok();
                assert_eq!(
                    verifies,
                    share == real,
                    "a forged decryption share verified"
                );
                if share != real {
                    let ws = fx.workstation.decryption_share(ct);
                    assert!(fx.keys.combine(&ws, &share, ct).is_err());
                }
            }
            Err(e) => refused(e),
        },
        1 => match PossessionProof::from_bytes(bytes) {
            Ok(proof) => {
                decoded_point("proof of possession");
                assert_eq!(proof.to_bytes().as_slice(), bytes);
                let pk = fx.device.public();
                let ws = fx.workstation.public();
                let verifies =
                    kss_crypto::profile::verify_possession(&fx.keyserver, &pk, &ws, &proof).is_ok();
                assert_eq!(verifies, proof == fx.proof, "a forged proof verified");
            }
            Err(e) => refused(e),
        },
        2 => match WorkstationPublicShare::from_bytes(bytes) {
            Ok(share) => {
                decoded_point("workstation public share");
                assert_eq!(share.to_bytes().as_slice(), bytes);
            }
            Err(e) => refused(e),
        },
        3 => match KssPublicShare::from_bytes(bytes) {
            Ok(share) => {
                decoded_point("keyserver public share");
                assert_eq!(share.to_bytes().as_slice(), bytes);
            }
            Err(e) => refused(e),
        },
        4 => match ProfilePublicKeys::from_bytes(bytes) {
            Ok(keys) => {
                assert_eq!(keys.to_bytes().as_slice(), bytes);
                let again = ProfilePublicKeys::from_shares(
                    &keys.workstation_public_share(),
                    &keys.kss_public_share(),
                );
                assert_eq!(
                    again.to_bytes(),
                    keys.to_bytes(),
                    "two key sets, one pair of shares"
                );
                let _ = keys.validate();
            }
            Err(e) => refused(e),
        },
        5 => match DevicePublicKey::from_bytes(bytes) {
            Ok(key) => {
                assert_eq!(key.to_bytes().as_slice(), bytes);
                let sig = fx.device.sign(kss_crypto::SignDomain::Request, b"body");
                if key != fx.device.public() {
                    assert!(
                        key.verify(kss_crypto::SignDomain::Request, b"body", &sig)
                            .is_err()
                    );
                }
            }
            Err(e) => refused(e),
        },
        _ => {
            // Secrets from a profile file: decoded, never echoed.
            if let Err(e) = WorkstationShare::from_bytes(bytes) {
                let message = e.to_string();
                assert_bounded("a refused workstation share", &message);
                assert!(bytes.len() < 4 || !message.contains(&hex::encode(bytes)));
            }
            if let Err(e) = DeviceKey::from_slice(bytes) {
                refused(e);
            }
        }
    }
}
