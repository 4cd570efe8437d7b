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

fn undocumented(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (name, field) in props {
        let here = format!("{path}.{name}");
        if field
            .get("description")
            .and_then(|d| d.as_str())
            .is_none_or(str::is_empty)
        {
            out.push(here.clone());
        }
        if name == "resources" {
            continue; // Kubernetes' own ResourceRequirements
        }
        undocumented(&here, field, out);
        if let Some(items) = field.get("items") {
            undocumented(&format!("{here}[]"), items, out);
        }
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    let mut missing = Vec::new();
    for (_, crd) in kss_operator::crdgen::crds() {
        let value = serde_json::to_value(&crd).expect("crd json");
        let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        for part in ["spec", "status"] {
            undocumented(part, &schema["properties"][part], &mut missing);
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}
