#![allow(clippy::unwrap_used)]
//! Every committed input of every target, on stable: the seeds and what fuzzing kept
//! (`corpus/<target>/`) and every past finding (`crashes/<target>/`). A target with no
//! seeds fails: its corpus must be written (`cargo run -p kss-fuzz --bin kss-fuzz-seeds`).

use std::path::{Path, PathBuf};

use kss_fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
}

fn run_all(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut total = 0;
    for target in TARGETS {
        let paths = inputs(&root.join(target.name));
        for path in &paths {
            let data = std::fs::read(path).expect("reading an input");
            let outcome = std::panic::catch_unwind(|| (target.run)(&data));
            assert!(outcome.is_ok(), "{}: {} fails", target.name, path.display());
        }
        if kind == "corpus" {
            let seeds = paths
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                })
                .count();
            assert!(seeds > 0, "{}: no seeds in corpus/", target.name);
        }
        println!("{kind}/{}: {} inputs", target.name, paths.len());
        total += paths.len();
    }
    total
}

#[test]
fn every_corpus_input_passes() {
    assert!(run_all("corpus") > 0);
}

#[test]
fn every_past_finding_passes() {
    run_all("crashes");
}

/// The seeds reach the code past each check: a valid request's signature verifies and its
/// ciphertext passes, a valid onboarding passes the pairing check, the documents parse.
#[test]
fn the_valid_seeds_pass_every_check() {
    use kss_crypto::SignDomain;
    use kss_fuzz::fixture::fixture;
    use kss_proto::v1 as pb;
    use prost::Message;

    let fx = fixture();
    let seed = |target: &str, name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let signed = pb::SignedMessage::decode(seed("approve_request", "decrypt").as_slice()).unwrap();
    let fields = kss_server::requests::parse_approval(&signed.body).unwrap();
    fx.device
        .public()
        .verify(SignDomain::Request, &signed.body, &signed.signature)
        .unwrap();
    kss_crypto::ciphertext::verify(&fields.body.ciphertext).unwrap();

    let signed = pb::SignedMessage::decode(seed("onboard_request", "valid").as_slice()).unwrap();
    let fields = kss_server::requests::parse_onboard(&signed.body).unwrap();
    fields
        .device_key
        .verify(SignDomain::Onboard, &signed.body, &signed.signature)
        .unwrap();
    kss_crypto::profile::onboard(
        &fx.root,
        &fields.keyserver,
        &fx.profile,
        &fields.device_key,
        &fields.workstation_share,
        &fields.proof,
    )
    .unwrap();

    kss_crypto::ciphertext::verify(&seed("ciphertext", "valid-32")).unwrap();
    let profile = String::from_utf8(seed("profile_file", "valid")).unwrap();
    kss_client::Profile::from_json(&profile).unwrap();
    let identity = String::from_utf8(seed("bootstrap_identity", "sealed-v3")).unwrap();
    let sealed = kss_crypto::SealedIdentity::from_json(&identity).unwrap();
    sealed.open_with_era(&fx.master).unwrap();
    let uri = String::from_utf8(seed("db_uri", "00")).unwrap();
    kss_store::parse_db_uri(&uri).unwrap();
}
