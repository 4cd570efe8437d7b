//! The checked-in CRDs (`crds/` and the install bundle) are exactly what `crdgen` writes:
//! CI fails when a type changed and `kss-operator crdgen` was not run.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stale = kss_operator::crdgen::stale(&root.join("crds")).expect("compare crds/");
    assert!(
        stale.is_empty(),
        "stale CRDs, run `cargo run -p kss-operator -- crdgen`: {stale:?}"
    );
    let bundle = root.join("manifests/install/00-crds.yaml");
    assert!(
        !kss_operator::crdgen::bundle_is_stale(&bundle).expect("compare bundle"),
        "stale {}, run `cargo run -p kss-operator -- crdgen`",
        bundle.display()
    );
    let readme = root.join("README.md");
    assert!(
        !kss_operator::crdgen::reference_is_stale(&readme).expect("compare README"),
        "the CRD reference in README.md is stale, run `cargo run -p kss-operator -- crdgen`"
    );
}
