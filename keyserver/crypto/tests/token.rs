//! Profile tokens.
#![allow(clippy::unwrap_used)]

use kss_crypto::{
    CryptoError, DeviceKey, KeyserverId, ProfileClaims, ProfileId, RootSecret, WorkstationShare,
};

fn claims() -> ProfileClaims {
    ProfileClaims {
        keyserver: KeyserverId::random(),
        profile: ProfileId::random(),
        device_public_key: DeviceKey::generate().public(),
        workstation_share: WorkstationShare::generate().public(),
    }
}

#[test]
fn issue_and_verify() {
    let root = RootSecret::generate();
    let claims = claims();
    let key = root.token_key(&claims.keyserver);
    let token = key.issue(&claims);
    key.verify(&claims, &token).unwrap();
    // Re-derivable from the root secret (after database loss).
    let copy = RootSecret::from_bytes(root.expose_bytes()).unwrap();
    let key2 = copy.token_key(&claims.keyserver);
    assert_eq!(key2.issue(&claims), token);
    key2.verify(&claims, &token).unwrap();
    assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    assert_eq!(format!("{root:?}"), "RootSecret(<redacted>)");
}

#[test]
fn any_change_is_rejected() {
    let root = RootSecret::generate();
    let claims = claims();
    let key = root.token_key(&claims.keyserver);
    let token = key.issue(&claims);

    let mut changed = Vec::new();
    let mut c = claims.clone();
    c.keyserver = KeyserverId::random();
    changed.push(c);
    let mut c = claims.clone();
    c.profile = ProfileId::random();
    changed.push(c);
    let mut c = claims.clone();
    c.device_public_key = DeviceKey::generate().public();
    changed.push(c);
    let mut c = claims.clone();
    c.workstation_share = WorkstationShare::generate().public();
    changed.push(c);
    for c in &changed {
        assert_eq!(key.verify(c, &token), Err(CryptoError::BadToken));
    }

    for i in [0, 15, 31] {
        let mut bad = token;
        bad[i] ^= 1;
        assert_eq!(key.verify(&claims, &bad), Err(CryptoError::BadToken));
    }
    assert_eq!(
        key.verify(&claims, &token[..31]),
        Err(CryptoError::BadToken)
    );
    assert_eq!(key.verify(&claims, &[]), Err(CryptoError::BadToken));
    // Another keyserver's key or another root's key.
    let other = root.token_key(&KeyserverId::random());
    assert_eq!(other.verify(&claims, &token), Err(CryptoError::BadToken));
    let other_root = RootSecret::generate().token_key(&claims.keyserver);
    assert_eq!(
        other_root.verify(&claims, &token),
        Err(CryptoError::BadToken)
    );
}
