//! The seed inputs of every target, built from the [`Fixture`]: valid requests, documents
//! and key material, and variants at and past each bound.

use kss_client::{Profile, ProfileParts};
use kss_crypto::identity::Era;
use kss_crypto::profile::WorkstationShare;
use kss_crypto::{DeviceId, DeviceKey, KeyserverId, ProfileClaims, SealedIdentity, SignDomain};
use kss_proto::v1 as pb;
use prost::Message;

use crate::fixture::{Fixture, encrypt};

/// Named inputs of one target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target's seeds, by target name.
pub fn all(fx: &Fixture) -> Vec<(&'static str, Seeds)> {
    vec![
        ("approve_request", approve_requests(fx)),
        ("onboard_request", onboard_requests(fx)),
        ("ciphertext", ciphertexts(fx)),
        ("key_material", key_material(fx)),
        ("profile_file", profile_files(fx)),
        ("bootstrap_identity", bootstrap_identities(fx)),
        ("db_uri", db_uris()),
    ]
}

fn signed(device: &DeviceKey, domain: SignDomain, body: Vec<u8>) -> Vec<u8> {
    pb::SignedMessage {
        signature: device.sign(domain, &body).to_vec(),
        body,
    }
    .encode_to_vec()
}

fn meta(path: &str, complete: bool) -> pb::MetaInfo {
    pb::MetaInfo {
        meta: path.into(),
        complete,
    }
}

fn request(fx: &Fixture, request_type: pb::RequestType) -> pb::RequestBody {
    pb::RequestBody {
        keyserver_id: fx.keyserver.to_string(),
        profile_id: fx.profile.to_string(),
        device_id: DeviceId::of(&fx.device.public()).to_string(),
        request_type: request_type as i32,
        auth_meta: vec![meta("/public/report.pdf", true)],
        cryptographic_id: vec![0xcd; 32],
        ciphertext: Vec::new(),
        timestamp_ms: 1_764_585_000_000,
        nonce: vec![7; 16],
        registration: None,
    }
}

fn approve_requests(fx: &Fixture) -> Seeds {
    let mut out = Seeds::new();
    let mut add = |name: &str, body: pb::RequestBody| {
        out.push((
            name.to_string(),
            signed(&fx.device, SignDomain::Request, body.encode_to_vec()),
        ));
    };
    let mut decrypt = request(fx, pb::RequestType::Decrypt);
    decrypt.ciphertext = encrypt(&fx.keys, 1, &[0x11; 32]);
    add("decrypt", decrypt.clone());
    let mut docx = decrypt.clone();
    docx.auth_meta = vec![meta("/team/notes/plan.docx", true), meta("/a/x42", false)];
    add("decrypt-regex-paths", docx);
    let mut bad_ct = decrypt.clone();
    if let Some(b) = bad_ct.ciphertext.last_mut() {
        *b ^= 1;
    }
    add("decrypt-tampered-ciphertext", bad_ct);
    let mut no_ct = decrypt.clone();
    no_ct.ciphertext.clear();
    add("decrypt-without-ciphertext", no_ct);
    for (name, t) in [
        ("search", pb::RequestType::Search),
        ("start-session", pb::RequestType::StartSession),
        ("create-location", pb::RequestType::CreateLocation),
        ("rename", pb::RequestType::Rename),
        ("secure-export", pb::RequestType::SecureExport),
        ("change-profile", pb::RequestType::ChangeProfile),
        ("create-profile", pb::RequestType::CreateProfile),
        ("unspecified", pb::RequestType::Unspecified),
    ] {
        add(name, request(fx, t));
    }
    let mut registered = request(fx, pb::RequestType::Search);
    let claims = ProfileClaims {
        keyserver: fx.keyserver,
        profile: fx.profile,
        device_public_key: fx.device.public(),
        workstation_share: fx.workstation.public(),
    };
    registered.registration = Some(pb::ProfileRegistration {
        device_public_key: fx.device.public().to_bytes().to_vec(),
        workstation_share: fx.workstation.public().to_bytes().to_vec(),
        profile_name: "laptop".into(),
        profile_words: vec!["humble".into(); 12],
        profile_token: fx.root.token_key(&fx.keyserver).issue(&claims).to_vec(),
    });
    add("search-with-registration", registered);
    let mut many = request(fx, pb::RequestType::Search);
    many.auth_meta = (0..256)
        .map(|i| meta(&format!("/p/{i}"), i % 2 == 0))
        .collect();
    add("auth-meta-at-bound", many.clone());
    many.auth_meta.push(meta("/one/more", true));
    add("auth-meta-over-bound", many);
    let mut long = request(fx, pb::RequestType::Search);
    long.auth_meta = vec![meta(&format!("/{}", "\"\\\u{1}".repeat(1365)), true)];
    add("meta-escape-heavy", long);
    let mut upper = request(fx, pb::RequestType::Search);
    upper.profile_id = upper.profile_id.to_uppercase();
    add("profile-id-upper-case", upper);
    let mut spaced = request(fx, pb::RequestType::Search);
    spaced.device_id = format!(" {}", spaced.device_id);
    add("device-id-spaced", spaced);
    let mut short_nonce = request(fx, pb::RequestType::Search);
    short_nonce.nonce.pop();
    add("nonce-short", short_nonce);
    let mut big_id = request(fx, pb::RequestType::Search);
    big_id.cryptographic_id = vec![1; 65];
    add("cryptographic-id-over-bound", big_id);
    let mut other = request(fx, pb::RequestType::Search);
    other.keyserver_id = KeyserverId::from_array([1; 16]).to_string();
    add("other-keyserver", other);
    out.push(("empty".into(), Vec::new()));
    out.push((
        "unsigned".into(),
        pb::SignedMessage {
            body: request(fx, pb::RequestType::Search).encode_to_vec(),
            signature: Vec::new(),
        }
        .encode_to_vec(),
    ));
    out
}

fn onboard_body(fx: &Fixture) -> pb::OnboardBody {
    pb::OnboardBody {
        keyserver_id: fx.keyserver.to_string(),
        device_public_key: fx.device.public().to_bytes().to_vec(),
        workstation_share: fx.workstation.public().to_bytes().to_vec(),
        possession_proof: fx.proof.to_bytes().to_vec(),
        profile_name: "laptop".into(),
        profile_words: vec!["humble".into(); 12],
        timestamp_ms: 1_764_585_000_000,
        nonce: vec![9; 16],
        enrollment_token: format!("kssenroll_{}", "ab".repeat(32)),
    }
}

fn onboard_requests(fx: &Fixture) -> Seeds {
    let mut out = Seeds::new();
    let mut add = |name: &str, body: pb::OnboardBody| {
        out.push((
            name.to_string(),
            signed(&fx.device, SignDomain::Onboard, body.encode_to_vec()),
        ));
    };
    add("valid", onboard_body(fx));
    let mut no_token = onboard_body(fx);
    no_token.enrollment_token.clear();
    add("without-token", no_token);
    let mut bad_token = onboard_body(fx);
    bad_token.enrollment_token = "kssenroll_zz".into();
    add("malformed-token", bad_token);
    let other_ws = WorkstationShare::from_bytes(&[0x23; 32]).expect("a scalar");
    let mut wrong_proof = onboard_body(fx);
    wrong_proof.possession_proof = other_ws
        .proof_of_possession(&fx.keyserver, &fx.device.public())
        .to_bytes()
        .to_vec();
    add("proof-of-another-share", wrong_proof);
    let mut identity_proof = onboard_body(fx);
    identity_proof.possession_proof = identity_g2();
    add("identity-proof", identity_proof);
    let mut short_key = onboard_body(fx);
    short_key.device_public_key.pop();
    add("short-device-key", short_key);
    let mut words = onboard_body(fx);
    words.profile_words = vec!["w".into(); 25];
    add("words-over-bound", words);
    out
}

/// The compressed encoding of the G2 identity (a BLS signature of nothing).
fn identity_g2() -> Vec<u8> {
    let mut bytes = vec![0u8; 96];
    bytes[0] = 0xc0;
    bytes
}

fn ciphertexts(fx: &Fixture) -> Seeds {
    let mut out = Seeds::new();
    for len in [1, 32, 100] {
        out.push((
            format!("valid-{len}"),
            encrypt(&fx.keys, len as u64, &vec![0x33; len]),
        ));
    }
    let valid = encrypt(&fx.keys, 44, &[0x44; 32]);
    out.push(("truncated".into(), valid[..valid.len() - 1].to_vec()));
    let mut flipped = valid.clone();
    flipped[150] ^= 0x80;
    out.push(("payload-flipped".into(), flipped));
    let mut identity_u = valid.clone();
    identity_u[..48].fill(0);
    identity_u[0] = 0xc0;
    out.push(("identity-u".into(), identity_u));
    let mut trailing = valid;
    trailing.push(0);
    out.push(("trailing-byte".into(), trailing));
    out.push(("zeros".into(), vec![0; 176]));
    out
}

fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(bytes);
    v
}

fn key_material(fx: &Fixture) -> Seeds {
    let ct = &fx.ciphertext;
    let mut g1_identity = vec![0u8; 48];
    g1_identity[0] = 0xc0;
    vec![
        (
            "kss-share".into(),
            tagged(0, &fx.kss.decryption_share(ct).to_bytes()),
        ),
        (
            "ws-share".into(),
            tagged(0, &fx.workstation.decryption_share(ct).to_bytes()),
        ),
        ("share-identity".into(), tagged(0, &g1_identity)),
        ("proof".into(), tagged(1, &fx.proof.to_bytes())),
        ("proof-identity".into(), tagged(1, &identity_g2())),
        (
            "ws-public".into(),
            tagged(2, &fx.workstation.public().to_bytes()),
        ),
        ("ws-public-identity".into(), tagged(2, &g1_identity)),
        ("kss-public".into(), tagged(3, &fx.kss.public().to_bytes())),
        ("key-set".into(), tagged(4, &fx.keys.to_bytes())),
        (
            "device-key".into(),
            tagged(5, &fx.device.public().to_bytes()),
        ),
        (
            "device-key-identity".into(),
            tagged(5, &{
                let mut k = [0u8; 32];
                k[0] = 1;
                k
            }),
        ),
        (
            "ws-secret".into(),
            tagged(6, &fx.workstation.to_bytes()[..]),
        ),
        ("ws-secret-over-order".into(), tagged(6, &[0xff; 32])),
    ]
}

fn profile(fx: &Fixture) -> Profile {
    let claims = ProfileClaims {
        keyserver: fx.keyserver,
        profile: fx.profile,
        device_public_key: fx.device.public(),
        workstation_share: fx.workstation.public(),
    };
    Profile::new(ProfileParts {
        keyserver_id: fx.keyserver,
        profile_id: fx.profile,
        device_key: DeviceKey::from_bytes(&fx.device.to_bytes()),
        workstation_share: WorkstationShare::from_bytes(&fx.workstation.to_bytes()[..])
            .expect("the fixture's share"),
        public_keys: fx.keys.clone(),
        keyserver_share: fx.kss.public(),
        profile_token: fx.root.token_key(&fx.keyserver).issue(&claims).to_vec(),
        name: "laptop".into(),
        words: Vec::new(),
    })
    .expect("the fixture's profile")
}

fn profile_files(fx: &Fixture) -> Seeds {
    let text = profile(fx).to_json().to_string();
    let other_device = DeviceId::of(&DeviceKey::from_bytes(&[1; 32]).public()).to_string();
    let device = DeviceId::of(&fx.device.public()).to_string();
    vec![
        ("valid".into(), text.clone().into_bytes()),
        (
            "other-format".into(),
            text.replacen("\"format\":\"", "\"format\":\"x", 1)
                .into_bytes(),
        ),
        (
            "wrong-device-id".into(),
            text.replace(&device, &other_device).into_bytes(),
        ),
        (
            "truncated".into(),
            text.as_bytes()[..text.len() / 2].to_vec(),
        ),
        ("empty-object".into(), b"{}".to_vec()),
    ]
}

fn bootstrap_identities(fx: &Fixture) -> Seeds {
    let mut out = Seeds::new();
    for (name, era) in [
        ("v1", Era::RowsUnmacked),
        ("v2", Era::RowsMacked),
        ("v3", Era::ChainStarted),
    ] {
        let doc = SealedIdentity::seal_in(&fx.keyserver, &fx.root, &fx.master, era).to_json();
        out.push((format!("sealed-{name}"), doc.into_bytes()));
    }
    let doc = SealedIdentity::seal(&fx.keyserver, &fx.root, &fx.master).to_json();
    let other = doc.replace(
        &fx.keyserver.to_string(),
        &KeyserverId::from_array([2; 16]).to_string(),
    );
    out.push(("id-swapped".into(), other.into_bytes()));
    out.push((
        "unknown-field".into(),
        doc.replacen('{', "{\"extra\":1,", 1).into_bytes(),
    ));
    out.push(("not-an-object".into(), b"[\"format\"]".to_vec()));
    out
}

fn db_uris() -> Seeds {
    [
        "mysql://kss:Hunter2Secret@db.example:3306/kss",
        "mysql://kss:p%40ss%23word@db/kss?ssl-mode=VERIFY_CA&ssl-ca=/etc/ca.pem",
        "mysql://kss:pw@db/kss?ssl-mode=DISABLED",
        "mysql://kss:Hunter2Secret@db/kss#x?ssl-mode=DISABLED",
        "mysql://kss:Hunter2Secret@db:99999/kss",
        "mysql:host=db,port=3306,user=kss,password=Hunter2Secret,database=kss",
        "mysql:host=db,user=kss,password=a\\,b\\\\c,database=kss,ssl-mode=REQUIRED",
        "mysql:host=db,user=kss,password=Hunter2Secret,database=kss,port=x",
        "mysql:host=db,user=kss,password=Hunter2,Secret=1,database=kss",
        "mysql:host=db,user=kss,Hunter2Secret,database=kss",
        " mysql:host=db, user = kss ,PASSWORD=Hunter2Secret,database=kss",
        "postgres://kss:Hunter2Secret@db/kss",
    ]
    .iter()
    .enumerate()
    .map(|(i, uri)| (format!("{i:02}"), uri.as_bytes().to_vec()))
    .collect()
}
