//! A workstation's signed requests, from the raw `SignedMessage` bytes a gRPC call carries:
//! decoding and field checks ([`parse_approval`], [`parse_onboard`]), the signature, and
//! then, as if the fixture's device had signed the body, what follows authentication: the
//! ciphertext's verification, the decryption share, and the policy's decision over the
//! client-supplied metadata.

use kss_crypto::SignDomain;
use kss_crypto::profile::KSS_INDEX;
use kss_policy::{MemoryQuotaStore, Request, RequestType};
use kss_proto::v1 as pb;
use kss_server::requests::{RequestError, parse_approval, parse_onboard};
use prost::Message;

use super::assert_bounded;
use crate::fixture::fixture;

/// The fields an `INVALID_ARGUMENT` may name.
const FIELDS: &[&str] = &[
    "body",
    "request_type",
    "keyserver_id",
    "profile_id",
    "device_id",
    "nonce",
    "auth_meta",
    "auth_meta.meta",
    "cryptographic_id",
    "ciphertext",
    "registration.profile_name",
    "registration.profile_words",
    "profile_name",
    "profile_words",
    "device_public_key",
    "workstation_share",
    "possession_proof",
    "enrollment_token",
];

fn check_refusal(e: &RequestError) {
    let RequestError::InvalidArgument { field, .. } = e else {
        panic!("field checks answer INVALID_ARGUMENT only, got {e:?}");
    };
    assert!(FIELDS.contains(field), "unknown field named: {field}");
    let message = e.to_string();
    assert!(message.starts_with(field), "{message}");
    assert_bounded("a refused request", &message);
}

/// Whether `signature` over `body` verifies with the fixture's device key. ed25519 is
/// deterministic and verified strictly: a signature that verifies is the device's own.
fn signed_by_fixture(domain: SignDomain, body: &[u8], signature: &[u8]) -> bool {
    let device = &fixture().device;
    let verifies = device.public().verify(domain, body, signature).is_ok();
    if verifies {
        assert_eq!(
            signature,
            device.sign(domain, body),
            "a second signature verified for one body"
        );
    }
    verifies
}

/// `SignedMessage` bytes as `KeyServer/Approve` receives them.
pub fn approve_request(data: &[u8]) {
    let Ok(signed) = pb::SignedMessage::decode(data) else {
        return;
    };
    let fields = match parse_approval(&signed.body) {
        Ok(fields) => fields,
        Err(e) => return check_refusal(&e),
    };
    // One canonical form: the typed ids print as what was sent.
    assert_eq!(fields.keyserver.to_string(), fields.body.keyserver_id);
    assert_eq!(fields.profile.to_string(), fields.body.profile_id);
    assert_eq!(fields.device.to_string(), fields.body.device_id);
    signed_by_fixture(SignDomain::Request, &signed.body, &signed.signature);

    let fx = fixture();
    let body = fields.body;
    if fields.request_type == RequestType::Decrypt {
        let single = kss_crypto::ciphertext::verify(&body.ciphertext);
        let cached = fx.cache.verify(&body.ciphertext);
        assert_eq!(single.is_ok(), cached.is_ok(), "the cache disagrees");
        if let Ok(ct) = single {
            // A share is released only for a verified ciphertext; it is always valid.
            let share = fx.kss.decryption_share(&ct);
            fx.keys
                .verify_share(KSS_INDEX, &share, &ct)
                .expect("the keyserver's share verifies");
        }
    }
    let request = Request {
        request_type: fields.request_type,
        profile_id: fields.profile.as_bytes().to_vec(),
        profile_words: ["humble", "busy", "much", "cactus"]
            .map(String::from)
            .to_vec(),
        device_id: fields.device.as_bytes().to_vec(),
        auth_meta: kss_server::requests::fields::policy_meta(body.auth_meta),
        cryptographic_id: body.cryptographic_id,
    };
    let decide = || {
        fx.policy
            .prepare(&request, fx.at, &fx.time_zone)
            .decide(&MemoryQuotaStore::default())
    };
    assert_eq!(decide(), decide(), "one request, two decisions");
}

/// `SignedMessage` bytes as `KeyServer/Onboard` receives them.
pub fn onboard_request(data: &[u8]) {
    let Ok(signed) = pb::SignedMessage::decode(data) else {
        return;
    };
    let fields = match parse_onboard(&signed.body) {
        Ok(fields) => fields,
        Err(e) => return check_refusal(&e),
    };
    assert_eq!(fields.keyserver.to_string(), fields.body.keyserver_id);
    signed_by_fixture(SignDomain::Onboard, &signed.body, &signed.signature);

    // The pairing check, then what the workstation checks of the keyserver's answer.
    let fx = fixture();
    let Ok((keys, share)) = kss_crypto::profile::onboard(
        &fx.root,
        &fields.keyserver,
        &fx.profile,
        &fields.device_key,
        &fields.workstation_share,
        &fields.proof,
    ) else {
        return;
    };
    keys.validate().expect("an onboarded key set is valid");
    assert_eq!(keys.workstation_public_share(), fields.workstation_share);
    let proof = share.onboarding_proof(
        &fields.keyserver,
        &fx.profile,
        &fields.device_key,
        &fields.workstation_share,
    );
    kss_crypto::profile::verify_keyserver_share(
        &fields.keyserver,
        &fx.profile,
        &fields.device_key,
        &fields.workstation_share,
        &share.public(),
        &proof,
    )
    .expect("the keyserver's proof of its share verifies");
}
