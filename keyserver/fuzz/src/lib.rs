//! Fuzz targets for the parsers of untrusted input: a workstation's signed requests, the
//! ciphertexts and key material inside them, profile files, the bootstrap identity
//! document and database addresses.
//!
//! Each target is a plain function of bytes that panics when a property fails. The
//! cargo-fuzz crate (`cargo-fuzz/`, nightly) drives them with libFuzzer; on stable,
//! `tests/corpus.rs` runs every committed input under `corpus/<target>/` (seeds and what
//! fuzzing found worth keeping) and every past finding under `crashes/<target>/`.
//! `kss-fuzz-seeds` writes the seeds, made from [`fixture`]'s fixed keys.

pub mod fixture;
pub mod seeds;
pub mod targets;

/// A fuzz target: its name (the corpus directory and the cargo-fuzz binary) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "approve_request",
        run: targets::request::approve_request,
    },
    Target {
        name: "onboard_request",
        run: targets::request::onboard_request,
    },
    Target {
        name: "ciphertext",
        run: targets::ciphertext::ciphertext,
    },
    Target {
        name: "key_material",
        run: targets::key_material::key_material,
    },
    Target {
        name: "profile_file",
        run: targets::documents::profile_file,
    },
    Target {
        name: "bootstrap_identity",
        run: targets::documents::bootstrap_identity,
    },
    Target {
        name: "db_uri",
        run: targets::db_uri::db_uri,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
