//! A real third-party gRPC client: grpcurl lists the services by reflection and calls them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{DataDir, Server, text};

fn grpcurl() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("GRPCURL").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join("go/bin/grpcurl")),
        Some(PathBuf::from("grpcurl")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| Command::new(p).arg("-version").output().is_ok())
}

#[test]
fn grpcurl_lists_and_calls_the_services() {
    let Some(grpcurl) = grpcurl() else {
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "grpcurl not found but KSS_REQUIRE_MYSQL is (make test builds it; or set GRPCURL)"
        );
        common::skipped(
            "grpcurl_lists_and_calls_the_services: grpcurl is not installed (make test builds it)",
        );
        return;
    };
    let data = DataDir::new();
    let id = data.create();
    let server = Server::start(&data);
    let ca = data.path().join("tls/ca.pem");
    let run = |args: &[&str]| {
        let out = Command::new(&grpcurl)
            .arg("-cacert")
            .arg(&ca)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let addr = format!("localhost:{}", server.port);
    let services = run(&[&addr, "list"]);
    assert!(services.contains("kss.v1.KeyServer"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let methods = run(&[&addr, "describe", "kss.v1.KeyServer"]);
    assert!(methods.contains("rpc Approve"), "{methods}");
    assert!(services.contains("kss.v1.Admin"), "{services}");
    let admin = run(&[&addr, "describe", "kss.v1.Admin"]);
    assert!(admin.contains("rpc LoadPolicy"), "{admin}");
    let status = run(&[&addr, "describe", "kss.v1.StatusResponse"]);
    assert!(status.contains("string mode = 9"), "{status}");
    let info = run(&[&addr, "kss.v1.KeyServer/GetInfo"]);
    assert!(info.contains(&id), "{info}");
    let health = run(&[
        "-d",
        r#"{"service":"kss.v1.KeyServer"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");
    // A malformed approval: a clear InvalidArgument, and the server keeps serving.
    let out = Command::new(&grpcurl)
        .arg("-cacert")
        .arg(&ca)
        .args([
            "-d",
            r#"{"body":"AAEC","signature":""}"#,
            &addr,
            "kss.v1.KeyServer/Approve",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("InvalidArgument"),
        "{}",
        text(&out.stderr)
    );
    assert!(run(&[&addr, "kss.v1.KeyServer/GetInfo"]).contains(&id));
}

/// A third-party client reads the typed detail of a rejected policy: grpcurl, given
/// admin.proto, decodes the standard `grpc-status-details-bin` trailer and names the
/// error's kind and line (over the admin socket).
#[test]
fn grpcurl_reads_a_policy_rejection_detail() {
    let Some(grpcurl) = grpcurl() else {
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "grpcurl not found but KSS_REQUIRE_MYSQL is (make test builds it; or set GRPCURL)"
        );
        common::skipped(
            "grpcurl_reads_a_policy_rejection_detail: grpcurl is not installed (make test builds it)",
        );
        return;
    };
    let data = DataDir::new();
    data.create();
    let _server = Server::start(&data);
    let protos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let request = serde_json::json!({
        "source": "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_days: 5\n"
    })
    .to_string();
    let out = Command::new(&grpcurl)
        .arg("-import-path")
        .arg(&protos)
        .args([
            "-proto",
            "kss/v1/admin.proto",
            "-plaintext",
            "-unix",
            "-d",
            &request,
        ])
        .arg(data.path().join("admin.sock"))
        .arg("kss.v1.Admin/LoadPolicy")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("InvalidArgument"), "{err}");
    for what in [
        "type.googleapis.com/kss.v1.PolicyRejection",
        "POLICY_ERROR_KIND_UNKNOWN_ARGUMENT",
        "\"line\": 3",
        "\"argument\": \"per_days\"",
    ] {
        assert!(err.contains(what), "{what} in {err}");
    }
}
