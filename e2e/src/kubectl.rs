//! `kubectl`, as the e2e tests run it against the control plane KUBECONFIG names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Whether `out` succeeded, and its stdout then stderr.
fn outcome(out: &Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kubectl ARGS`: whether it succeeded, and its output.
pub fn run(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .map_err(|e| Error::io("kubectl", e))?;
    Ok(outcome(&out))
}

/// `kubectl ARGS`, which must succeed: its standard output.
pub fn ok(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .map_err(|e| Error::io("kubectl", e))?;
    match outcome(&out) {
        (true, _) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        (false, text) => Err(Error::Setup(format!("kubectl {args:?} failed: {text}"))),
    }
}

/// `kubectl apply -n NS -f -` of `yaml`: whether it succeeded, and its output.
pub fn apply(ns: &str, yaml: &str) -> Result<(bool, String)> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("kubectl", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(yaml.as_bytes())
            .map_err(|e| Error::io("kubectl stdin", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("kubectl", e))?;
    Ok(outcome(&out))
}

/// A kubeconfig in `dir` for ServiceAccount `sa` of `ns` (its RBAC, nothing more): the
/// admin kubeconfig's cluster entry and a fresh token valid for `duration` (`2h`).
pub fn service_account_kubeconfig(
    dir: &Path,
    ns: &str,
    sa: &str,
    duration: &str,
) -> Result<PathBuf> {
    let token = ok(&[
        "create",
        "token",
        sa,
        "-n",
        ns,
        &format!("--duration={duration}"),
    ])?;
    let view = |field: &str| {
        ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "--flatten",
            "-o",
            &format!("jsonpath={{.clusters[0].cluster.{field}}}"),
        ])
    };
    let (server, ca) = (view("server")?, view("certificate-authority-data")?);
    let path = dir.join(format!("{ns}-{sa}.kubeconfig"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context: {{cluster: e2e, user: {sa}}}\ncurrent-context: sa\n",
        token.trim()
    );
    std::fs::write(&path, config).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The files of `manifests/install` but the operator's Deployment (`30-operator.yaml`):
/// CRDs, namespace, ServiceAccount, RBAC, admission policy. Tests that run their own
/// operator process apply these; on the real node the bundle's Deployment would run a
/// second operator beside it.
pub const BUNDLE_WITHOUT_OPERATOR: [&str; 4] = [
    "00-crds.yaml",
    "10-namespace.yaml",
    "20-rbac.yaml",
    "40-admission.yaml",
];

/// `kubectl apply` of [`BUNDLE_WITHOUT_OPERATOR`] (idempotent).
pub fn apply_bundle_without_operator() -> Result<()> {
    let dir = crate::harness::workspace_root().join("manifests/install");
    let files: Vec<String> = BUNDLE_WITHOUT_OPERATOR
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    let mut args = vec!["apply"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    ok(&args).map(drop)
}
