//! Client tests that need no keyserver: the keyserver's side is simulated with kss-crypto.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use kss_client::protocol::{
    ApproveOutcome, DecryptOutcome, OnboardRequest, RequestSpec, finish_decrypt, sign_onboard,
};
use kss_client::{
    ClientError, Profile, build_request, combine_file_key, encrypt_file_key, sign_request,
    verify_ciphertext,
};
use kss_crypto::words::profile_words;
use kss_crypto::{
    DeviceId, DevicePublicKey, KeyserverId, PossessionProof, ProfileClaims, ProfileId,
    ProfilePublicKeys, RootSecret, SignDomain, WorkstationPublicShare,
};
use kss_proto::v1::{
    ApproveResponse, Decision, DenyReason, OnboardBody, OnboardResponse, RequestBody, RequestType,
};
use prost::Message;

/// What a keyserver does on `Onboard`, with kss-crypto: check the signature and the proof,
/// derive its share, build the key set, issue the token.
fn simulate_onboard(
    root: &RootSecret,
    keyserver: &KeyserverId,
    request: &OnboardRequest,
) -> (OnboardResponse, ProfileId) {
    let message = request.signed_message();
    let body = OnboardBody::decode(message.body.as_slice()).unwrap();
    let device_pk = DevicePublicKey::from_bytes(&body.device_public_key).unwrap();
    device_pk
        .verify(SignDomain::Onboard, &message.body, &message.signature)
        .unwrap();
    assert_eq!(body.keyserver_id, keyserver.to_hex());
    let ws = WorkstationPublicShare::from_bytes(&body.workstation_share).unwrap();
    let proof = PossessionProof::from_bytes(&body.possession_proof).unwrap();
    let profile_id = ProfileId::random();
    let (keys, kss) =
        kss_crypto::onboard(root, keyserver, &profile_id, &device_pk, &ws, &proof).unwrap();
    let token = root.token_key(keyserver).issue(&ProfileClaims {
        keyserver: *keyserver,
        profile: profile_id,
        device_public_key: device_pk,
        workstation_share: ws,
    });
    let response = OnboardResponse {
        profile_id: profile_id.to_hex(),
        device_id: DeviceId::of(&device_pk).to_hex(),
        public_key_set: keys.to_bytes().to_vec(),
        keyserver_share: kss.public().to_bytes().to_vec(),
        profile_token: token.to_vec(),
        keyserver_share_proof: kss
            .onboarding_proof(keyserver, &profile_id, &device_pk, &ws)
            .to_bytes()
            .to_vec(),
        profile_words: profile_words(keyserver, &profile_id, &keys),
    };
    (response, profile_id)
}

fn new_profile(root: &RootSecret, keyserver: &KeyserverId) -> Profile {
    let request = OnboardRequest::new(keyserver, "alice@ws", None);
    let (response, _) = simulate_onboard(root, keyserver, &request);
    request.finish(response).unwrap()
}

#[test]
fn onboard_body_is_signed_for_onboarding_and_carries_a_valid_proof() {
    let keyserver = KeyserverId::random();
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let message = request.signed_message();
    let body = OnboardBody::decode(message.body.as_slice()).unwrap();
    assert_eq!(body.device_public_key.len(), 32);
    assert_eq!(body.workstation_share.len(), 48);
    assert_eq!(body.possession_proof.len(), 96);
    assert_eq!(body.nonce.len(), 16);
    assert_eq!(body.profile_name, "alice@ws");
    // The keyserver derives the words: none are claimed.
    assert!(body.profile_words.is_empty());
    assert!(body.enrollment_token.is_empty());
    assert!((body.timestamp_ms - kss_client::protocol::now_ms()).abs() < 10_000);
    let pk = DevicePublicKey::from_bytes(&body.device_public_key).unwrap();
    pk.verify(SignDomain::Onboard, &message.body, &message.signature)
        .unwrap();
    assert!(
        pk.verify(SignDomain::Request, &message.body, &message.signature)
            .is_err()
    );
    kss_crypto::verify_possession(
        &keyserver,
        &pk,
        &WorkstationPublicShare::from_bytes(&body.workstation_share).unwrap(),
        &PossessionProof::from_bytes(&body.possession_proof).unwrap(),
    )
    .unwrap();
    // Re-signing the same body gives a message that verifies too (for forging tests).
    let again = sign_onboard(request.device_key(), &body);
    assert_eq!(again.body, message.body);
}

#[test]
fn onboarding_answer_is_checked() {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();

    // A good answer makes a profile that matches it.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (response, profile_id) = simulate_onboard(&root, &keyserver, &request);
    let profile = request.finish(response.clone()).unwrap();
    assert_eq!(*profile.profile_id(), profile_id);
    assert_eq!(*profile.keyserver_id(), keyserver);
    assert_eq!(
        *profile.device_id(),
        DeviceId::of(profile.device_public_key())
    );
    assert_eq!(profile.profile_token(), response.profile_token.as_slice());

    // Another device id is refused.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.device_id = DeviceId::random().to_hex();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::DeviceIdMismatch { .. })
    ));

    // A key set that is not through our share and the keyserver's is refused: here the
    // keyserver's share and key set belong to another profile.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    let other = OnboardRequest::new(&keyserver, "bob@ws", None);
    let (other_response, _) = simulate_onboard(&root, &keyserver, &other);
    response.public_key_set = other_response.public_key_set.clone();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::PublicKeySetMismatch)
    ));
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.keyserver_share = other_response.keyserver_share.clone();
    // (Another share than the one proven: the proof no longer verifies.)
    assert!(matches!(
        request.finish(response),
        Err(ClientError::KeyserverShareUnproven)
    ));

    // A keyserver share without its proof, or with a proof over another transcript (here:
    // another profile's), is refused: the keyserver must show it holds the share it names.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.keyserver_share_proof.clear();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::KeyserverShareUnproven)
    ));
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.keyserver_share_proof = other_response.keyserver_share_proof.clone();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::KeyserverShareUnproven)
    ));
    // A rogue share chosen by the keyserver, consistent with the key set it sends, but
    // proven over nothing of ours (the other request's transcript) is refused too.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    let rogue = RootSecret::generate();
    let rogue_share = rogue.profile_share(&keyserver, &response.profile_id.parse().unwrap());
    let ws = request.workstation_share().public();
    response.keyserver_share = rogue_share.public().to_bytes().to_vec();
    response.public_key_set = ProfilePublicKeys::from_shares(&ws, &rogue_share.public())
        .to_bytes()
        .to_vec();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::KeyserverShareUnproven)
    ));
    // Words other than the ones derived from the key set are refused.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.profile_words[0] = "abandon".into();
    response.profile_words[1] = "zoo".into();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::WordsMismatch)
    ));

    // Garbage fields are malformed responses.
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.public_key_set = vec![1, 2, 3];
    assert!(matches!(
        request.finish(response),
        Err(ClientError::MalformedResponse(_))
    ));
    let request = OnboardRequest::new(&keyserver, "alice@ws", None);
    let (mut response, _) = simulate_onboard(&root, &keyserver, &request);
    response.profile_id = "nothex".into();
    assert!(matches!(
        request.finish(response),
        Err(ClientError::MalformedResponse(_))
    ));
}

#[test]
fn profile_file_round_trip_mode_0600_and_redacted_debug() {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = new_profile(&root, &keyserver);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.json");
    profile.save(&path).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let loaded = Profile::load(&path).unwrap();
    assert_eq!(*loaded.to_json(), *profile.to_json());
    assert_eq!(loaded.profile_id(), profile.profile_id());
    assert_eq!(loaded.device_id(), profile.device_id());
    assert_eq!(loaded.keyserver_id(), profile.keyserver_id());
    assert_eq!(loaded.public_keys(), profile.public_keys());
    assert_eq!(loaded.keyserver_share(), profile.keyserver_share());
    assert_eq!(loaded.profile_token(), profile.profile_token());
    assert_eq!(loaded.name(), "alice@ws");
    assert_eq!(loaded.words(), profile.words());
    assert_eq!(
        loaded.words(),
        profile_words(&keyserver, profile.profile_id(), profile.public_keys()).as_slice()
    );
    assert_eq!(
        *loaded.device_key().to_bytes(),
        *profile.device_key().to_bytes()
    );
    assert_eq!(
        *loaded.workstation_share().to_bytes(),
        *profile.workstation_share().to_bytes()
    );

    // The file has the secrets as hex; Debug has none of them.
    let text = std::fs::read_to_string(&path).unwrap();
    let device_key_hex = hex::encode(*profile.device_key().to_bytes());
    let share_hex = hex::encode(*profile.workstation_share().to_bytes());
    assert!(text.contains(&device_key_hex));
    assert!(text.contains(&share_hex));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["format"], kss_client::PROFILE_FORMAT);
    assert_eq!(json["profile_id"], profile.profile_id().to_hex());
    let debug = format!("{profile:?}");
    assert!(!debug.contains(&device_key_hex));
    assert!(!debug.contains(&share_hex));
    assert!(debug.contains("<redacted>"));
    assert!(debug.contains(&profile.profile_id().to_hex()));

    // An existing file is never overwritten.
    assert!(matches!(
        profile.save(&path),
        Err(ClientError::ProfileExists(_))
    ));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn damaged_profile_files_are_refused_without_echoing_secrets() {
    let root = RootSecret::generate();
    let profile = new_profile(&root, &KeyserverId::random());
    let good: serde_json::Value = serde_json::from_str(&profile.to_json()).unwrap();
    let share_hex = hex::encode(*profile.workstation_share().to_bytes());

    // Wrong device id for the key.
    let mut v = good.clone();
    v["device_id"] = DeviceId::random().to_hex().into();
    assert!(matches!(
        Profile::from_json(&v.to_string()),
        Err(ClientError::InvalidProfile {
            field: "device_id",
            ..
        })
    ));
    // Truncated share.
    let mut v = good.clone();
    v["workstation_share"] = share_hex[..62].into();
    let err = Profile::from_json(&v.to_string()).unwrap_err();
    assert!(matches!(
        err,
        ClientError::InvalidProfile {
            field: "workstation_share",
            ..
        }
    ));
    // A share of another profile does not match the key set.
    let other = new_profile(&root, &KeyserverId::random());
    let mut v = good.clone();
    v["workstation_share"] = hex::encode(*other.workstation_share().to_bytes()).into();
    assert!(matches!(
        Profile::from_json(&v.to_string()),
        Err(ClientError::PublicKeySetMismatch)
    ));
    // A secret in a field of the wrong type is not quoted in the error.
    let mut v = good.clone();
    v["name"] = serde_json::json!([share_hex.clone()]);
    v["device_key"] = serde_json::json!({ "x": share_hex.clone() });
    let err = Profile::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(!err.contains(&share_hex[..16]), "{err}");
    // Unknown format.
    let mut v = good.clone();
    v["format"] = "something-else".into();
    assert!(matches!(
        Profile::from_json(&v.to_string()),
        Err(ClientError::ProfileFormat { .. })
    ));
    // Missing file.
    let dir = tempfile::tempdir().unwrap();
    let err = Profile::load(dir.path().join("none.json")).unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }));
    assert!(err.to_string().contains("none.json"));
}

#[test]
fn sign_request_verifies_for_requests_only() {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = new_profile(&root, &keyserver);
    let spec = RequestSpec::new(RequestType::Search).with_path("batch/file.txt", true);
    let body = build_request(&profile, &spec);
    let message = sign_request(&profile, &body);
    assert_eq!(message.body, body.encode_to_vec());
    assert_eq!(message.signature.len(), 64);

    let pk = profile.device_public_key();
    pk.verify(SignDomain::Request, &message.body, &message.signature)
        .unwrap();
    assert!(
        pk.verify(SignDomain::Onboard, &message.body, &message.signature)
            .is_err()
    );
    let mut tampered = message.body.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(
        pk.verify(SignDomain::Request, &tampered, &message.signature)
            .is_err()
    );

    // The body says who is asking, for what, now, with a fresh nonce.
    let decoded = RequestBody::decode(message.body.as_slice()).unwrap();
    assert_eq!(decoded.keyserver_id, keyserver.to_hex());
    assert_eq!(decoded.profile_id, profile.profile_id().to_hex());
    assert_eq!(decoded.device_id, profile.device_id().to_hex());
    assert_eq!(decoded.request_type, RequestType::Search as i32);
    assert_eq!(decoded.auth_meta.len(), 1);
    assert_eq!(decoded.auth_meta[0].meta, "batch/file.txt");
    assert!(decoded.auth_meta[0].complete);
    assert!(decoded.registration.is_none());
    assert!(decoded.ciphertext.is_empty());
    assert_eq!(decoded.nonce.len(), 16);
    assert!((decoded.timestamp_ms - kss_client::protocol::now_ms()).abs() < 10_000);
    let second = build_request(&profile, &spec);
    assert_ne!(second.nonce, decoded.nonce);

    // With registration: what a recovered keyserver needs, and a token that verifies.
    let mut spec = spec;
    spec.include_registration = true;
    let body = build_request(&profile, &spec);
    let registration = body.registration.unwrap();
    assert_eq!(
        registration.device_public_key,
        profile.device_public_key().to_bytes()
    );
    assert_eq!(
        registration.workstation_share,
        profile.workstation_share().public().to_bytes()
    );
    assert_eq!(registration.profile_name, "alice@ws");
    assert_eq!(registration.profile_words, profile.words());
    root.token_key(&keyserver)
        .verify(
            &ProfileClaims {
                keyserver,
                profile: *profile.profile_id(),
                device_public_key: *profile.device_public_key(),
                workstation_share: profile.workstation_share().public(),
            },
            &registration.profile_token,
        )
        .unwrap();
}

#[test]
fn encrypted_file_key_verifies_and_combines_with_the_keyserver_share() {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = new_profile(&root, &keyserver);
    let key = [0x42u8; 32];
    let ciphertext = encrypt_file_key(&profile, &key);
    let verified = kss_crypto::ciphertext::verify(&ciphertext).unwrap();
    assert_eq!(verify_ciphertext(&ciphertext).unwrap(), verified);

    // The keyserver's share, as the keyserver makes it.
    let kss = root.profile_share(&keyserver, profile.profile_id());
    let share = kss.decryption_share(&verified);
    let recovered = combine_file_key(&profile, &verified, &share.to_bytes()).unwrap();
    assert_eq!(recovered.as_slice(), &key);

    // Through the approval path.
    let approved = ApproveOutcome::from_response(ApproveResponse {
        decision: Decision::Approved as i32,
        reason: 0,
        decryption_share: share.to_bytes().to_vec(),
        audit_id: 7,
        session: None,
    });
    assert!(approved.approved);
    assert_eq!(approved.reason_name(), None);
    let outcome = finish_decrypt(&profile, &verified, &approved).unwrap();
    assert!(outcome.is_approved());
    assert_eq!(outcome.file_key().unwrap(), &key);
    assert_eq!(outcome.audit_id(), 7);
    assert!(!format!("{outcome:?}").contains(&hex::encode(key)));

    // A share for another profile (or another ciphertext) is refused.
    let other = root.profile_share(&keyserver, &ProfileId::random());
    let bad = other.decryption_share(&verified);
    assert!(matches!(
        combine_file_key(&profile, &verified, &bad.to_bytes()),
        Err(ClientError::InvalidShare(_))
    ));
    let other_ct = kss_crypto::ciphertext::verify(&encrypt_file_key(&profile, &key)).unwrap();
    let wrong_ct_share = kss.decryption_share(&other_ct);
    assert!(matches!(
        combine_file_key(&profile, &verified, &wrong_ct_share.to_bytes()),
        Err(ClientError::InvalidShare(_))
    ));
    assert!(matches!(
        combine_file_key(&profile, &verified, &[0u8; 48]),
        Err(ClientError::InvalidShare(_))
    ));
    // An approval without a share is malformed.
    let mut empty = approved.clone();
    empty.decryption_share.clear();
    assert!(matches!(
        finish_decrypt(&profile, &verified, &empty),
        Err(ClientError::MalformedResponse(_))
    ));

    // A denial says why.
    let denied = ApproveOutcome::from_response(ApproveResponse {
        decision: Decision::Denied as i32,
        reason: DenyReason::Quota as i32,
        decryption_share: Vec::new(),
        audit_id: 8,
        session: None,
    });
    assert_eq!(denied.reason_name().as_deref(), Some("quota"));
    assert_eq!(denied.to_json()["decision"], "denied");
    assert_eq!(denied.to_json()["reason"], "quota");
    let outcome = finish_decrypt(&profile, &verified, &denied).unwrap();
    assert!(matches!(
        outcome,
        DecryptOutcome::Denied { audit_id: 8, .. }
    ));
    assert_eq!(outcome.reason_name().as_deref(), Some("quota"));

    // A tampered ciphertext fails local verification.
    let mut tampered = ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        verify_ciphertext(&tampered),
        Err(ClientError::InvalidCiphertext(_))
    ));
}

#[test]
fn deny_reason_names() {
    use kss_client::protocol::deny_reason_name;
    assert_eq!(deny_reason_name(DenyReason::Policy as i32), "policy");
    assert_eq!(
        deny_reason_name(DenyReason::UnknownProfile as i32),
        "unknown_profile"
    );
    assert_eq!(
        deny_reason_name(DenyReason::WrongKeyserver as i32),
        "wrong_keyserver"
    );
    assert_eq!(deny_reason_name(99), "reason_99");
}

#[test]
fn decrypt_spec_uses_the_ciphertext_digest_as_cryptographic_id() {
    let ct = vec![1u8, 2, 3];
    let spec = RequestSpec::decrypt(ct.clone(), &["a/b".to_owned()]);
    assert_eq!(spec.request_type, RequestType::Decrypt);
    assert_eq!(spec.auth_meta, vec![("a/b".to_owned(), true)]);
    assert_eq!(
        spec.cryptographic_id,
        kss_crypto::ciphertext::ciphertext_digest(&ct).to_vec()
    );
    assert_eq!(spec.ciphertext, Some(ct));
}

/// A secret written where a field name goes (a damaged file, a key pasted on the wrong
/// side of a `:`) is not repeated by the error; a field name that looks like one is.
#[test]
fn an_unknown_field_is_named_only_if_it_looks_like_a_field_name() {
    let profile = new_profile(&RootSecret::generate(), &KeyserverId::random());
    let good: serde_json::Value = serde_json::from_str(&profile.to_json()).unwrap();
    let share_hex = hex::encode(*profile.workstation_share().to_bytes());
    for secret in [share_hex.clone(), share_hex[..24].to_string()] {
        let mut v = good.clone();
        v[secret.as_str()] = 1.into();
        let err = Profile::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("an unknown field"), "{err}");
        assert!(!err.contains(&secret[..16]), "{err}");
    }
    let mut v = good.clone();
    v["colour"] = 1.into();
    let err = Profile::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(err.contains("unknown field `colour`"), "{err}");
}
