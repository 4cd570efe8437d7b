//! The Helm chart `charts/kss-operator` against the rest of the repository, without a
//! cluster or helm: its CRDs are the repository's (Helm installs them from the chart's
//! `crds/`), its appVersion is the operator's version, its rules are the install
//! bundle's, its CI values use the examples' administrators.
//!
//! Not gated on `KSS_E2E`. Rendering and installing the chart is `tests/helm.rs` (e2e).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kss_e2e::harness;

fn root() -> PathBuf {
    harness::workspace_root()
}

fn chart() -> PathBuf {
    root().join("charts/kss-operator")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `*.yaml` files of a directory, by file name.
fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

/// `key: value` of a top-level line of a YAML file (quotes removed).
fn top_level(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

fn operator_version() -> String {
    read(&root().join("operator/Cargo.toml"))
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("operator/Cargo.toml: [package] version")
}

#[test]
fn chart_crds_are_the_repository_crds() {
    let repo = yaml_files(&root().join("crds"));
    let copies = yaml_files(&chart().join("crds"));
    assert!(!repo.is_empty(), "no CRDs in crds/");
    let fix = "cp crds/*.yaml charts/kss-operator/crds/ (and remove files no longer in crds/)";
    assert_eq!(
        copies.keys().collect::<Vec<_>>(),
        repo.keys().collect::<Vec<_>>(),
        "charts/kss-operator/crds/ holds other files than crds/: {fix}"
    );
    for (name, bytes) in &repo {
        assert!(
            copies.get(name) == Some(bytes),
            "charts/kss-operator/crds/{name} differs from crds/{name}: {fix}"
        );
    }
}

#[test]
fn chart_metadata_follows_the_operator_release() {
    let text = read(&chart().join("Chart.yaml"));
    assert_eq!(top_level(&text, "apiVersion").as_deref(), Some("v2"));
    assert_eq!(top_level(&text, "name").as_deref(), Some("kss-operator"));
    assert_eq!(top_level(&text, "type").as_deref(), Some("application"));
    assert!(
        top_level(&text, "kubeVersion").is_some(),
        "Chart.yaml: no kubeVersion"
    );
    let version = operator_version();
    assert_eq!(
        top_level(&text, "appVersion"),
        Some(version.clone()),
        "Chart.yaml appVersion must be the kss-operator crate version (the image tags \
         default to it)"
    );
    assert!(
        kss_operator::desired::DEFAULT_IMAGE.ends_with(&format!(":{version}")),
        "the chart's default keyserver image (appVersion {version}) is not DEFAULT_IMAGE {}",
        kss_operator::desired::DEFAULT_IMAGE
    );
    let values = read(&chart().join("values.yaml"));
    for repository in [
        "ghcr.io/kss-project/kss-operator",
        "ghcr.io/kss-project/kss",
    ] {
        assert!(
            values
                .lines()
                .any(|l| l.trim() == format!("repository: {repository}")),
            "values.yaml: no `repository: {repository}`"
        );
    }
}

/// Lines of a YAML block, without blank lines and comments, dedented to its first line.
fn dedent(lines: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let indent = lines
        .first()
        .map(|l| l.len() - l.trim_start().len())
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| {
            l.get(indent..)
                .unwrap_or(l.trim_start())
                .trim_end()
                .to_string()
        })
        .collect()
}

#[test]
fn chart_rules_are_the_install_bundles() {
    let bundle = read(&root().join("manifests/install/20-rbac.yaml"));
    let documents: Vec<&str> = bundle.split("\n---").collect();
    let cluster_role = documents
        .iter()
        .find(|d| d.lines().any(|l| l.trim() == "kind: ClusterRole"))
        .expect("manifests/install/20-rbac.yaml: no ClusterRole");
    let lines: Vec<&str> = cluster_role.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "rules:")
        .expect("ClusterRole rules:");
    let bundle_rules = dedent(&lines[start + 1..]);

    let helpers = read(&chart().join("templates/_helpers.tpl"));
    let define = helpers
        .split("{{- define \"kss-operator.rules\" -}}")
        .nth(1)
        .and_then(|rest| rest.split("{{- end }}").next())
        .expect("_helpers.tpl: no define \"kss-operator.rules\"");
    let define_lines: Vec<&str> = define.lines().collect();
    let chart_rules = dedent(&define_lines);
    assert!(!chart_rules.is_empty(), "empty kss-operator.rules");
    assert_eq!(
        chart_rules, bundle_rules,
        "the chart's rules (templates/_helpers.tpl kss-operator.rules) must be the install \
         bundle's ClusterRole rules (manifests/install/20-rbac.yaml)"
    );
}

#[test]
fn ci_values_use_the_examples_administrators() {
    let keys = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("publicKey:"))
            .map(|k| k.trim().to_string())
            .collect()
    };
    let example = keys(&read(&root().join("manifests/examples/cluster.yaml")));
    let values = keys(&read(&chart().join("ci/cluster-values.yaml")));
    assert_eq!(
        example.len(),
        5,
        "manifests/examples/cluster.yaml: 5 holders"
    );
    assert_eq!(
        values, example,
        "charts/kss-operator/ci/cluster-values.yaml: the holders of manifests/examples/cluster.yaml"
    );
}
