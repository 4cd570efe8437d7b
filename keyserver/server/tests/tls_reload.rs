//! The workstation listener's certificate renewed on disk while the server runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{DataDir, Server};
use kss_client::KssClient;

/// Whether a new connection trusting only `ca_pem` gets an answer.
async fn answers(server: &Server, ca_pem: &[u8]) -> bool {
    match KssClient::connect(&server.endpoint(), ca_pem, Some("localhost")).await {
        Err(_) => false,
        Ok(client) => client.info().await.is_ok(),
    }
}

/// Replaces `to` with a copy of `from` in one step (a rename, as a Secret volume's
/// update is), so a reload never reads a half-written file.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// A certificate of a new CA written over the server's files (as cert-manager renewing a
/// Secret does): first a certificate without its key, which is refused and leaves the old
/// certificate in use, then the key too, which new connections are then served with. A
/// connection made before the renewal keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let data = DataDir::new();
    let id = data.create();
    let server = Server::start_with(&data, &["--tls-reload-secs", "1"]);
    let old_ca = data.ca_pem();
    let before = server.client(&data).await;
    assert_eq!(before.info().await.unwrap().keyserver_id, id);

    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = kss_server::tls::self_signed(renewed_dir.path(), &[]).unwrap();
    let new_ca = std::fs::read(&renewed.ca).unwrap();
    assert!(!answers(&server, &new_ca).await, "not yet trusted");

    // The new certificate with the old key: refused, the old certificate stays.
    let tls_dir = data.path().join("tls");
    replace_file(&renewed.cert, &tls_dir.join("server.pem"));
    common::wait_until(
        "the mismatched files are refused",
        Duration::from_secs(20),
        || {
            server
                .log_text()
                .contains("the key does not fit the certificate")
        },
    );
    assert!(answers(&server, &old_ca).await);
    assert!(!answers(&server, &new_ca).await);

    // Now the key too: new connections get the new certificate.
    replace_file(&renewed.key, &tls_dir.join("server.key"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers(&server, &new_ca).await {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not taken up:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !answers(&server, &old_ca).await,
        "the old CA no longer verifies"
    );
    assert_eq!(before.info().await.unwrap().keyserver_id, id);

    // Logged and counted just after the swap: waited for, not raced.
    common::wait_until("the reload logged", Duration::from_secs(20), || {
        server
            .log_text()
            .contains("TLS files changed: new connections use the new certificate")
    });
    assert!(
        !server.log_text().contains("PRIVATE KEY"),
        "no key material in the log"
    );

    // One refused change and one reload counted; the expiry of the certificate in use
    // (`self_signed`'s: 2036-01-01).
    let reloaded = "kss_tls_reloads_total{listener=\"workstation\",result=\"reloaded\"} 1";
    common::wait_until("the reload counted", Duration::from_secs(20), || {
        server.metrics().lines().any(|l| l == reloaded)
    });
    let metrics = server.metrics();
    for line in [
        "kss_tls_reloads_total{listener=\"workstation\",result=\"refused\"} 1",
        "kss_tls_reloads_total{listener=\"workstation\",result=\"reloaded\"} 1",
        "kss_tls_certificate_not_after_timestamp_seconds{listener=\"workstation\"} 2082758400",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}
