//! Profile key sets end to end: onboarding, encryption, two-share decryption, rogue keys.
#![allow(clippy::unwrap_used)]

use blsttc::group::ff::Field;
use blsttc::group::{Curve, Group};
use blsttc::{G1Projective, SecretKey};
use kss_crypto::profile::{KSS_INDEX, WORKSTATION_INDEX};
use kss_crypto::{
    CryptoError, DeviceKey, KeyserverId, KssPublicShare, PossessionProof, ProfileId,
    ProfilePublicKeys, RootSecret, WorkstationPublicShare, WorkstationShare, onboard,
    verify_possession,
};
use rand::RngCore;

struct Setup {
    root: RootSecret,
    keyserver: KeyserverId,
    profile: ProfileId,
    ws: WorkstationShare,
    keys: ProfilePublicKeys,
    kss: kss_crypto::KssShare,
}

fn setup() -> Setup {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = ProfileId::random();
    let device = DeviceKey::generate().public();
    let ws = WorkstationShare::generate();
    let proof = ws.proof_of_possession(&keyserver, &device);
    let (keys, kss) = onboard(&root, &keyserver, &profile, &device, &ws.public(), &proof).unwrap();
    Setup {
        root,
        keyserver,
        profile,
        ws,
        keys,
        kss,
    }
}

fn file_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

#[test]
fn end_to_end_two_shares_recover_the_file_key() {
    let s = setup();
    let key = file_key();
    let ct_bytes = s.keys.encrypt(&key);
    assert_eq!(ct_bytes.as_bytes().len(), 48 + 96 + 32);
    let ct = ct_bytes.verify().unwrap();

    let ws_share = s.ws.decryption_share(&ct);
    let kss_share = s.kss.decryption_share(&ct);
    s.keys
        .verify_share(WORKSTATION_INDEX, &ws_share, &ct)
        .unwrap();
    s.keys.verify_share(KSS_INDEX, &kss_share, &ct).unwrap();
    assert_eq!(s.keys.combine(&ws_share, &kss_share, &ct).unwrap(), key);

    // The public key set round-trips and still decrypts.
    let again = ProfilePublicKeys::from_bytes(&s.keys.to_bytes()).unwrap();
    assert_eq!(again, s.keys);
    assert_eq!(again.combine(&ws_share, &kss_share, &ct).unwrap(), key);
    // Shares round-trip through bytes.
    let ws_share2 = kss_crypto::DecryptionShareBytes::from_bytes(&ws_share.to_bytes()).unwrap();
    assert_eq!(ws_share2, ws_share);
    // The public key set's shares are the parties' public shares.
    assert_eq!(s.keys.workstation_public_share(), s.ws.public());
    assert_eq!(s.keys.kss_public_share(), s.kss.public());
}

#[test]
fn one_share_alone_cannot_decrypt() {
    let s = setup();
    let key = file_key();
    let ct = s.keys.encrypt(&key).verify().unwrap();
    let ws_share = s.ws.decryption_share(&ct);
    let kss_share = s.kss.decryption_share(&ct);

    // The same share twice is not two shares.
    assert_eq!(
        s.keys.combine(&ws_share, &ws_share, &ct),
        Err(CryptoError::ShareInvalid)
    );
    assert_eq!(
        s.keys.combine(&kss_share, &kss_share, &ct),
        Err(CryptoError::ShareInvalid)
    );
    // Swapped roles.
    assert_eq!(
        s.keys.combine(&kss_share, &ws_share, &ct),
        Err(CryptoError::ShareInvalid)
    );
    // blsttc itself refuses to interpolate a degree-1 polynomial from one sample, either one.
    let pks = s.keys.public_key_set();
    for (i, share) in [(WORKSTATION_INDEX, &ws_share), (KSS_INDEX, &kss_share)] {
        let one = blsttc::DecryptionShare::from_bytes(share.to_bytes()).unwrap();
        let ct_raw = blsttc::Ciphertext::from_bytes(&ct.to_bytes()).unwrap();
        assert!(pks.decrypt([(i, &one)], &ct_raw).is_err());
    }
    // Neither party's share is the master key: decrypting with it alone gives garbage.
    let ct_raw = blsttc::Ciphertext::from_bytes(&ct.to_bytes()).unwrap();
    let ws_alone = SecretKey::from_bytes(*s.ws.to_bytes()).unwrap();
    assert_ne!(ws_alone.decrypt(&ct_raw).unwrap(), key);
}

#[test]
fn a_share_of_another_profile_fails_verification() {
    let s = setup();
    let other_profile = ProfileId::random();
    let other_kss = s.root.profile_share(&s.keyserver, &other_profile);
    let ct = s.keys.encrypt(&file_key()).verify().unwrap();
    let ws_share = s.ws.decryption_share(&ct);
    let wrong = other_kss.decryption_share(&ct);
    assert_eq!(
        s.keys.verify_share(KSS_INDEX, &wrong, &ct),
        Err(CryptoError::ShareInvalid)
    );
    assert_eq!(
        s.keys.combine(&ws_share, &wrong, &ct),
        Err(CryptoError::ShareInvalid)
    );
    // Another workstation's share too.
    let other_ws = WorkstationShare::generate().decryption_share(&ct);
    assert_eq!(
        s.keys.verify_share(WORKSTATION_INDEX, &other_ws, &ct),
        Err(CryptoError::ShareInvalid)
    );
    // Shares for another ciphertext of the same profile.
    let ct2 = s.keys.encrypt(&file_key()).verify().unwrap();
    let kss_share2 = s.kss.decryption_share(&ct2);
    assert_eq!(
        s.keys.verify_share(KSS_INDEX, &kss_share2, &ct),
        Err(CryptoError::ShareInvalid)
    );
    assert!(s.keys.verify_share(2, &kss_share2, &ct2).is_err());
}

#[test]
fn master_key_is_neither_share() {
    let s = setup();
    let master = s.keys.public_key().to_bytes();
    assert_ne!(master, s.ws.public().to_bytes());
    assert_ne!(master, s.kss.public().to_bytes());
    // And it is 2·P_w − P_k.
    let p_w = G1Projective::from_compressed(&s.ws.public().to_bytes()).unwrap();
    let p_k = G1Projective::from_compressed(&s.kss.public().to_bytes()).unwrap();
    assert_eq!(master, (p_w.double() - p_k).to_affine().to_compressed());
}

#[test]
fn profile_share_is_deterministic_and_separated() {
    let s = setup();
    let copy = RootSecret::from_bytes(s.root.expose_bytes()).unwrap();
    let a = s.root.profile_share(&s.keyserver, &s.profile).public();
    let b = copy.profile_share(&s.keyserver, &s.profile).public();
    assert_eq!(a, b);
    assert_eq!(a, s.kss.public());
    assert_ne!(
        a,
        copy.profile_share(&s.keyserver, &ProfileId::random())
            .public()
    );
    assert_ne!(
        a,
        copy.profile_share(&KeyserverId::random(), &s.profile)
            .public()
    );
    assert_ne!(
        a,
        RootSecret::generate()
            .profile_share(&s.keyserver, &s.profile)
            .public()
    );
    // Onboarding again after losing the database rebuilds the same key set.
    let device = DeviceKey::generate().public();
    let proof = s.ws.proof_of_possession(&s.keyserver, &device);
    let (keys, _) = onboard(
        &copy,
        &s.keyserver,
        &s.profile,
        &device,
        &s.ws.public(),
        &proof,
    )
    .unwrap();
    assert_eq!(keys, s.keys);
}

#[test]
fn rogue_keys_cannot_prove_possession() {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = ProfileId::random();
    let device = DeviceKey::generate().public();
    let p_k = root.profile_share(&keyserver, &profile).public();

    // The rogue-key attack: choose P_w = (X + P_k)/2 for an X whose secret x the attacker knows,
    // so that the master key 2·P_w − P_k = X. The attacker does not know P_w's scalar.
    let attacker = WorkstationShare::generate();
    let x = G1Projective::from_compressed(&attacker.public().to_bytes()).unwrap();
    let p_k_point = G1Projective::from_compressed(&p_k.to_bytes()).unwrap();
    let half = blsttc::Fr::from(2u64).invert().unwrap();
    let rogue = ((x + p_k_point) * half).to_affine().to_compressed();
    let rogue = WorkstationPublicShare::from_bytes(&rogue).unwrap();
    // Had it been accepted, the master key would have been the attacker's X.
    assert_eq!(
        ProfilePublicKeys::from_shares(&rogue, &p_k)
            .public_key()
            .to_bytes(),
        attacker.public().to_bytes()
    );
    // A proof made with a different scalar (the only ones the attacker has) is rejected.
    for proof in [
        attacker.proof_of_possession(&keyserver, &device),
        WorkstationShare::generate().proof_of_possession(&keyserver, &device),
    ] {
        assert_eq!(
            verify_possession(&keyserver, &device, &rogue, &proof),
            Err(CryptoError::BadProof)
        );
        assert!(matches!(
            onboard(&root, &keyserver, &profile, &device, &rogue, &proof),
            Err(CryptoError::BadProof)
        ));
    }
}

#[test]
fn proofs_are_bound_to_device_keyserver_and_share() {
    let keyserver = KeyserverId::random();
    let device = DeviceKey::generate().public();
    let ws = WorkstationShare::generate();
    let proof = ws.proof_of_possession(&keyserver, &device);
    verify_possession(&keyserver, &device, &ws.public(), &proof).unwrap();
    let round = PossessionProof::from_bytes(&proof.to_bytes()).unwrap();
    verify_possession(&keyserver, &device, &ws.public(), &round).unwrap();

    let other_device = DeviceKey::generate().public();
    assert_eq!(
        verify_possession(&keyserver, &other_device, &ws.public(), &proof),
        Err(CryptoError::BadProof)
    );
    assert_eq!(
        verify_possession(&KeyserverId::random(), &device, &ws.public(), &proof),
        Err(CryptoError::BadProof)
    );
    let other_share = WorkstationShare::generate().public();
    assert_eq!(
        verify_possession(&keyserver, &device, &other_share, &proof),
        Err(CryptoError::BadProof)
    );
}

#[test]
fn encodings_are_validated() {
    let ws = WorkstationShare::generate();
    let again = WorkstationShare::from_bytes(&*ws.to_bytes()).unwrap();
    assert_eq!(again.public(), ws.public());
    assert_eq!(
        WorkstationShare::from_bytes(&[0xff; 32]).err(),
        Some(CryptoError::InvalidScalar)
    );
    assert_eq!(
        WorkstationShare::from_bytes(&[0; 32]).err(),
        Some(CryptoError::InvalidScalar)
    );
    assert!(matches!(
        WorkstationShare::from_bytes(&[1; 31]),
        Err(CryptoError::BadLength { .. })
    ));
    assert_eq!(format!("{ws:?}"), "WorkstationShare(<redacted>)");

    let mut identity = [0u8; 48];
    identity[0] = 0xc0;
    assert!(matches!(
        WorkstationPublicShare::from_bytes(&identity),
        Err(CryptoError::InvalidPoint { .. })
    ));
    assert!(matches!(
        KssPublicShare::from_bytes(&[0x12; 48]),
        Err(CryptoError::InvalidPoint { .. })
    ));
    assert!(matches!(
        ProfilePublicKeys::from_bytes(&[0u8; 95]),
        Err(CryptoError::BadLength { .. })
    ));
    let mut with_identity = [0u8; 96];
    with_identity[..48].copy_from_slice(&ws.public().to_bytes());
    with_identity[48..].copy_from_slice(&identity);
    assert!(ProfilePublicKeys::from_bytes(&with_identity).is_err());
    assert!(PossessionProof::from_bytes(&[0x12; 96]).is_err());
    assert!(PossessionProof::from_bytes(&[0x12; 95]).is_err());
}

#[test]
fn the_keyserver_proves_its_share_over_the_onboarding_transcript() {
    use kss_crypto::verify_keyserver_share;
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = ProfileId::random();
    let device = DeviceKey::generate().public();
    let ws = WorkstationShare::generate();
    let kss = root.profile_share(&keyserver, &profile);
    let proof = kss.onboarding_proof(&keyserver, &profile, &device, &ws.public());
    let kss_public = kss.public();
    verify_keyserver_share(
        &keyserver,
        &profile,
        &device,
        &ws.public(),
        &kss_public,
        &proof,
    )
    .unwrap();

    // A rogue share chosen to own the whole key: P_k = 2·P_w − X for an X the attacker knows
    // (then C0 = 2·P_w − P_k = X). Whatever proof comes with it does not verify, because
    // it needs the secret behind P_k.
    let attacker = WorkstationShare::generate();
    let x = G1Projective::from_compressed(&attacker.public().to_bytes()).unwrap();
    let pw = G1Projective::from_compressed(&ws.public().to_bytes()).unwrap();
    let rogue = (pw + pw - x).to_affine().to_compressed();
    let rogue = KssPublicShare::from_bytes(&rogue).unwrap();
    // Had the client accepted it, the master key would have been the attacker's X.
    assert_eq!(
        ProfilePublicKeys::from_shares(&ws.public(), &rogue)
            .public_key()
            .to_bytes(),
        attacker.public().to_bytes()
    );
    for forged in [
        proof.clone(),
        attacker.proof_of_possession(&keyserver, &device),
    ] {
        assert_eq!(
            verify_keyserver_share(&keyserver, &profile, &device, &ws.public(), &rogue, &forged),
            Err(CryptoError::BadProof)
        );
    }

    // The proof is bound to every part of the transcript.
    let other_ws = WorkstationShare::generate().public();
    let other_device = DeviceKey::generate().public();
    let checks = [
        verify_keyserver_share(
            &KeyserverId::random(),
            &profile,
            &device,
            &ws.public(),
            &kss_public,
            &proof,
        ),
        verify_keyserver_share(
            &keyserver,
            &ProfileId::random(),
            &device,
            &ws.public(),
            &kss_public,
            &proof,
        ),
        verify_keyserver_share(
            &keyserver,
            &profile,
            &other_device,
            &ws.public(),
            &kss_public,
            &proof,
        ),
        verify_keyserver_share(
            &keyserver,
            &profile,
            &device,
            &other_ws,
            &kss_public,
            &proof,
        ),
    ];
    for check in checks {
        assert_eq!(check, Err(CryptoError::BadProof));
    }
    // The workstation's own proof is not a keyserver proof (different domain tag).
    let ws_proof = ws.proof_of_possession(&keyserver, &device);
    assert!(verify_possession(&keyserver, &device, &ws.public(), &ws_proof).is_ok());
    assert_eq!(
        verify_keyserver_share(
            &keyserver,
            &profile,
            &device,
            &ws.public(),
            &kss_public,
            &ws_proof
        ),
        Err(CryptoError::BadProof)
    );
}

#[test]
fn row_macs_bind_table_fields_and_keyserver() {
    let root = RootSecret::generate();
    let ks = KeyserverId::random();
    let key = root.row_key(&ks);
    let mac = key.mac("profiles", &[b"a", b"bc"]);
    key.verify("profiles", &[b"a", b"bc"], &mac).unwrap();
    // Field boundaries are part of the encoding.
    assert_eq!(
        key.verify("profiles", &[b"ab", b"c"], &mac),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        key.verify("policy_versions", &[b"a", b"bc"], &mac),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        root.row_key(&KeyserverId::random())
            .verify("profiles", &[b"a", b"bc"], &mac),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        RootSecret::generate()
            .row_key(&ks)
            .verify("profiles", &[b"a", b"bc"], &mac),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        key.verify("profiles", &[b"a", b"bc"], &mac[..31]),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        key.verify("profiles", &[b"a", b"bc"], b""),
        Err(CryptoError::BadRowMac)
    );
}

#[test]
fn the_audit_key_is_not_the_row_key() {
    let root = RootSecret::generate();
    let ks = KeyserverId::random();
    let mac = root.audit_key(&ks).mac("audit", &[b"row"]);
    root.audit_key(&ks)
        .verify("audit", &[b"row"], &mac)
        .unwrap();
    assert_eq!(
        root.row_key(&ks).verify("audit", &[b"row"], &mac),
        Err(CryptoError::BadRowMac)
    );
    assert_eq!(
        root.audit_key(&KeyserverId::random())
            .verify("audit", &[b"row"], &mac),
        Err(CryptoError::BadRowMac)
    );
}
