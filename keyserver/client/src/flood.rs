//! `kss flood`: hostile traffic against a keyserver, to check its transport bounds from
//! outside (it is what an attacker without a profile can send).
//!
//! * `handshakes`: `--concurrency` workers each open new TLS connections back to back
//!   (a full handshake each, then the connection is dropped).
//! * `streams`: `--concurrency` requests in flight at once over `--connections` HTTP/2
//!   connections, each an `Approve` of a made-up profile with a made-up signature: the
//!   most the keyserver does for a request it refuses (a profile lookup), at the
//!   connections' stream limits. With `--requests-per-connection N`, each connection is
//!   replaced by a new one (a new TLS handshake) after N requests: a sender that does not
//!   stay on a connection whose requests keep being refused.
//!
//! It prints one JSON line: how many handshakes or requests were made, refused, failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use kss_proto::v1::{RequestBody, RequestType, SignedMessage};
use prost::Message;
use rand::RngCore;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::cli::ConnectArgs;
use crate::connection::connect_channel;
use crate::protocol::now_ms;

/// What to flood with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodKind {
    /// New TLS connections, back to back.
    Handshakes,
    /// Refused requests, at the stream limits of a few connections.
    Streams,
}

/// `kss flood` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// What to send.
    #[arg(long, value_enum)]
    pub kind: FloodKind,
    /// Workers (handshakes) or requests in flight (streams).
    #[arg(long, value_name = "C", default_value_t = 8)]
    pub concurrency: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
    /// Streams: replace each connection by a new one after this many requests (0: keep
    /// the connections).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub requests_per_connection: u64,
    /// Seconds to run.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
}

/// One of the flood's connections, replaced after `--requests-per-connection` requests.
struct Rotating {
    channel: tonic::transport::Channel,
    sent: u64,
}

/// What a flood did.
#[derive(Debug, Default, Serialize)]
pub struct FloodReport {
    pub kind: &'static str,
    /// Handshakes completed, or requests answered (all refused, as they should be).
    pub completed: u64,
    /// Requests answered with a decision (should be 0: no made-up request is approved).
    pub approved: u64,
    /// Connections or requests that failed at the transport.
    pub failed: u64,
}

#[derive(Default)]
struct Counts {
    completed: AtomicU64,
    approved: AtomicU64,
    failed: AtomicU64,
}

/// Runs the flood and prints its report.
pub async fn flood(args: FloodArgs) -> Result<FloodReport> {
    let ca = std::fs::read(&args.connect.ca)
        .with_context(|| format!("reading CA file {}", args.connect.ca.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut workers = JoinSet::new();
    let kind = match args.kind {
        FloodKind::Handshakes => {
            for _ in 0..args.concurrency.max(1) {
                let (endpoint, name) = (
                    args.connect.endpoint.clone(),
                    args.connect.server_name.clone(),
                );
                let (ca, stop, counts) = (ca.clone(), Arc::clone(&stop), Arc::clone(&counts));
                workers.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match connect_channel(&endpoint, &ca, Some(&name)).await {
                            Ok(_) => counts.completed.fetch_add(1, Ordering::Relaxed),
                            Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            "handshakes"
        }
        FloodKind::Streams => {
            let keyserver_id = args.connect.connect().await?.info().await?.keyserver_id;
            let mut connections = Vec::new();
            for _ in 0..args.connections.max(1) {
                let name = Some(args.connect.server_name.as_str());
                connections.push(connect_channel(&args.connect.endpoint, &ca, name).await?);
            }
            let connections: Vec<Arc<tokio::sync::Mutex<Rotating>>> = connections
                .into_iter()
                .map(|channel| Arc::new(tokio::sync::Mutex::new(Rotating { channel, sent: 0 })))
                .collect();
            let per_connection = args.requests_per_connection;
            for worker in 0..args.concurrency.max(1) {
                let connection = Arc::clone(&connections[worker % connections.len()]);
                let (keyserver_id, stop, counts) =
                    (keyserver_id.clone(), Arc::clone(&stop), Arc::clone(&counts));
                let (endpoint, name, ca) = (
                    args.connect.endpoint.clone(),
                    args.connect.server_name.clone(),
                    ca.clone(),
                );
                workers.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let channel = {
                            let mut c = connection.lock().await;
                            if per_connection > 0 && c.sent >= per_connection {
                                match connect_channel(&endpoint, &ca, Some(&name)).await {
                                    Ok(fresh) => {
                                        *c = Rotating {
                                            channel: fresh,
                                            sent: 0,
                                        }
                                    }
                                    Err(_) => {
                                        counts.failed.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                }
                            }
                            c.sent += 1;
                            c.channel.clone()
                        };
                        let mut client =
                            kss_proto::v1::key_server_client::KeyServerClient::new(channel);
                        let request = made_up_request(&keyserver_id);
                        match client.approve(request).await {
                            Ok(response) => {
                                let approved = response.into_inner().decision
                                    == kss_proto::v1::Decision::Approved as i32;
                                if approved {
                                    counts.approved.fetch_add(1, Ordering::Relaxed);
                                }
                                counts.completed.fetch_add(1, Ordering::Relaxed)
                            }
                            // A refusal is an answer; only transport failures count as failed.
                            Err(status) if is_answer(&status) => {
                                counts.completed.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            "streams"
        }
    };
    tokio::time::sleep(Duration::from_secs_f64(args.duration.max(0.0))).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let report = FloodReport {
        kind,
        completed: counts.completed.load(Ordering::Relaxed),
        approved: counts.approved.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}

/// Whether a status is the keyserver's answer rather than a transport failure.
fn is_answer(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// An `Approve` of a fresh made-up profile and device, signed with random bytes.
fn made_up_request(keyserver_id: &str) -> SignedMessage {
    let mut rng = rand::thread_rng();
    let mut id = || {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    };
    let (profile_id, device_id) = (id(), id());
    let mut nonce = vec![0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    let body = RequestBody {
        keyserver_id: keyserver_id.to_string(),
        profile_id,
        device_id,
        request_type: RequestType::Search as i32,
        timestamp_ms: now_ms(),
        nonce,
        ..Default::default()
    };
    let mut signature = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut signature);
    SignedMessage {
        body: body.encode_to_vec(),
        signature,
    }
}
