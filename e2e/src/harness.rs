//! Helpers for e2e tests: whether to run at all, the Kubernetes client, the `kss`
//! binary, state directories and throwaway namespaces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Printed (to stderr) by a test that does not run.
pub const SKIP_MESSAGE: &str =
    "skipped: KUBECONFIG for the e2e control plane not set; run e2e/run.sh";

/// Whether the e2e tests should run: `KSS_E2E=1` (set by `e2e/run.sh`, which also
/// exports `KUBECONFIG`). Without it a test prints [`SKIP_MESSAGE`] and passes, so that
/// `cargo test --workspace` never touches whatever cluster a developer's KUBECONFIG
/// names. With `KSS_E2E=1` but no readable KUBECONFIG file this is an error: a run that
/// asked for the e2e tests must not silently skip them.
pub fn enabled(test: &str) -> Result<bool> {
    if std::env::var("KSS_E2E").as_deref() != Ok("1") {
        // Straight to the process's stderr: `eprintln!` in a passing test is captured
        // by the test harness, and the skip would go unseen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{test}: {SKIP_MESSAGE}");
        return Ok(false);
    }
    match std::env::var_os("KUBECONFIG") {
        Some(path) if Path::new(&path).is_file() => Ok(true),
        Some(path) => Err(Error::Kubeconfig(format!(
            "KSS_E2E=1 but KUBECONFIG={} is not a file",
            Path::new(&path).display()
        ))),
        None => Err(Error::Kubeconfig(
            "KSS_E2E=1 but KUBECONFIG is not set; run e2e/run.sh".to_string(),
        )),
    }
}

/// A client for the cluster KUBECONFIG names (TLS through ring, like the rest of kss).
pub async fn client() -> Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(Client::try_default().await?)
}

/// The workspace root (this crate lives in `<root>/e2e`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `kss` binary: `$KSS_BIN`, else `$CARGO_TARGET_DIR/debug/kss` (relative to the
/// workspace root if relative), else `<workspace>/target/debug/kss`. Build it with
/// `cargo build -p kss-server --bin kss` (`e2e/run.sh` does).
pub fn kss_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KSS_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(Error::Setup(format!(
                "KSS_BIN={} is not a file",
                bin.display()
            )))
        };
    }
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let bin = target.join("debug").join("kss");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::Setup(format!(
            "{} not found: build it with `cargo build -p kss-server --bin kss` or set KSS_BIN",
            bin.display()
        )))
    }
}

/// A state directory for a test's volumes: `$KSS_E2E_STATE/volumes/<name>` (the
/// control plane's state dir, thrown away by the next `up`), else
/// `<tmp>/kss-e2e-volumes/<name>`. Emptied first.
pub fn state_dir(name: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("KSS_E2E_STATE") {
        Some(state) => PathBuf::from(state).join("volumes"),
        None => std::env::temp_dir().join("kss-e2e-volumes"),
    };
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Creates a namespace named `<prefix>-<random suffix>` and waits until its `default`
/// ServiceAccount exists (pods are rejected before that).
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = namespaces.create(&PostParams::default(), &ns).await?;
    let name = created
        .metadata
        .name
        .ok_or_else(|| Error::Setup("created namespace has no name".to_string()))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    poll(
        &format!("ServiceAccount default in namespace {name}"),
        Duration::from_secs(60),
        || async { Ok(accounts.get_opt("default").await?.is_some()) },
    )
    .await?;
    Ok(name)
}

/// The start of a test that works in a namespace of its own: `None` when the e2e
/// environment is absent (the skip is reported, see [`enabled`]); otherwise tracing is on
/// and there are a client and a fresh namespace `<prefix>-<suffix>`.
pub async fn start_in_namespace(test: &str, prefix: &str) -> Result<Option<(Client, String)>> {
    if !enabled(test)? {
        return Ok(None);
    }
    init_tracing();
    let client = client().await?;
    let ns = create_namespace(&client, prefix).await?;
    Ok(Some((client, ns)))
}

/// Deletes a namespace (without waiting for it to go).
pub async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Polls `check` every 200 ms until it returns true; errors from `check` are retried
/// too, and the last one is reported on timeout.
pub async fn poll<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
        if tokio::time::Instant::now() >= deadline {
            let what = match last_error {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_string(),
            };
            return Err(Error::Timeout {
                what,
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs of the harness (and of anything else `RUST_LOG` names, default `kss_e2e=info`)
/// into the test's captured output. Safe to call from every test.
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "kss_e2e=info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}
