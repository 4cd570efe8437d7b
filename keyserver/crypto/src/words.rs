//! A profile's verification words: derived by the keyserver from the profile's public key
//! set, never chosen by a client.
//!
//! `profile-id-rule` phrases match the first words of a profile. If a workstation could pick
//! its own words it could claim a phrase the policy grants to somebody else; derived words
//! are a function of the key set alone, so both sides compute the same words and a person
//! can compare them (`kss client info --profile`, `kss profile show`).
//!
//! # Derivation (fixed; changing it changes every profile's words)
//!
//! `entropy = SHA-256("kss profile words v1" || 0x00 || keyserver id (16 bytes) ||
//! profile id (16 bytes) || public key set (C0 || C1, 96 bytes))[..16]`, encoded as a
//! 12-word BIP-39 mnemonic with the English word list (the `bip39` crate: 128 bits of
//! entropy and a 4-bit checksum).

use sha2::{Digest, Sha256};

use crate::ids::{KeyserverId, ProfileId};
use crate::profile::ProfilePublicKeys;

/// How many words a profile has.
pub const PROFILE_WORD_COUNT: usize = 12;

const WORDS_TAG: &[u8] = b"kss profile words v1\0";

/// The verification words of a profile.
pub fn profile_words(
    keyserver: &KeyserverId,
    profile: &ProfileId,
    keys: &ProfilePublicKeys,
) -> Vec<String> {
    let digest = Sha256::new()
        .chain_update(WORDS_TAG)
        .chain_update(keyserver.as_bytes())
        .chain_update(profile.as_bytes())
        .chain_update(keys.to_bytes())
        .finalize();
    let mut entropy = [0u8; 16];
    entropy.copy_from_slice(&digest[..16]);
    // 16 bytes is a valid BIP-39 entropy length, so encoding cannot fail; the fallback (hex
    // pairs) is unreachable and still deterministic.
    match bip39::Mnemonic::from_entropy(&entropy) {
        Ok(mnemonic) => mnemonic.words().map(str::to_owned).collect(),
        Err(_) => entropy.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::profile::{KssPublicShare, WorkstationShare};
    use crate::root::RootSecret;
    use crate::signing::DeviceKey;

    fn keys(root: &RootSecret, ks: &KeyserverId, profile: &ProfileId) -> ProfilePublicKeys {
        let ws = WorkstationShare::generate();
        let _ = DeviceKey::generate();
        let kss: KssPublicShare = root.profile_share(ks, profile).public();
        ProfilePublicKeys::from_shares(&ws.public(), &kss)
    }

    #[test]
    fn words_are_twelve_bip39_words_and_depend_on_every_input() {
        let root = RootSecret::generate();
        let ks = KeyserverId::random();
        let profile = ProfileId::random();
        let set = keys(&root, &ks, &profile);
        let words = profile_words(&ks, &profile, &set);
        assert_eq!(words.len(), PROFILE_WORD_COUNT);
        let list = bip39::Language::English.word_list();
        assert!(words.iter().all(|w| list.contains(&w.as_str())));
        // A valid mnemonic (its checksum holds).
        bip39::Mnemonic::parse_normalized(&words.join(" ")).unwrap();
        assert_eq!(profile_words(&ks, &profile, &set), words);
        assert_ne!(profile_words(&KeyserverId::random(), &profile, &set), words);
        assert_ne!(profile_words(&ks, &ProfileId::random(), &set), words);
        assert_ne!(
            profile_words(&ks, &profile, &keys(&root, &ks, &profile)),
            words
        );
    }

    #[test]
    fn derivation_is_fixed() {
        // The derivation is part of the product: profiles' words must not change between
        // versions. Recomputed here by hand from its definition.
        let ks = KeyserverId::from_array([1; 16]);
        let profile = ProfileId::from_array([2; 16]);
        let root = RootSecret::from_bytes(&[3; 32]).unwrap();
        let ws = WorkstationShare::from_bytes(&[4; 32]).unwrap();
        let set = ProfilePublicKeys::from_shares(
            &ws.public(),
            &root.profile_share(&ks, &profile).public(),
        );
        let mut input = b"kss profile words v1\0".to_vec();
        input.extend_from_slice(&[1; 16]);
        input.extend_from_slice(&[2; 16]);
        input.extend_from_slice(&set.to_bytes());
        let digest = Sha256::digest(&input);
        let expected = bip39::Mnemonic::from_entropy(&digest[..16]).unwrap();
        assert_eq!(
            profile_words(&ks, &profile, &set).join(" "),
            expected.to_string()
        );
    }
}
