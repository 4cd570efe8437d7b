//! The async runtime a command runs on: one per process, with one TLS provider.

use anyhow::Result;

/// Runs `future` to completion on a fresh multi-thread runtime.
pub fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    // One TLS provider for the whole process (ring), before any TLS is set up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
