//! kss-client: the workstation side of the kss keyserver protocol.
//!
//! * [`Profile`] — what onboarding produced (device key, workstation share, public key set,
//!   keyserver share, profile token), saved as a JSON file with mode 0600.
//! * [`KssClient`] — a TLS connection to a keyserver: [`KssClient::info`],
//!   [`KssClient::onboard`], [`KssClient::request`], [`KssClient::decrypt`], and the raw
//!   [`KssClient::approve_raw`] / [`KssClient::onboard_raw`] for tests that forge messages.
//! * [`protocol`] — offline building, signing and checking of messages ([`sign_request`],
//!   [`build_request`], [`OnboardRequest`], [`encrypt_file_key`], [`combine_file_key`]).
//! * [`cli`] — the `kss client …` subcommands; [`loadgen`](mod@loadgen) — `kss loadgen`.
//!
//! Cryptography is kss-crypto's; this crate only calls it.

pub mod cli;
mod connection;
mod error;
pub mod flood;
pub mod loadgen;
mod profile;
pub mod protocol;

pub use cli::{ClientCommand, ConnectArgs, run};
pub use connection::{
    CONNECT_TIMEOUT, Connection, KssClient, REQUEST_TIMEOUT, ServerInfo, connect_channel,
    install_crypto_provider,
};
pub use error::{ClientError, Result};
pub use loadgen::{LoadReport, LoadgenArgs, loadgen};
pub use profile::{PROFILE_FORMAT, Profile, ProfileParts, create_profile_file};
pub use protocol::{
    ApproveOutcome, DecryptOutcome, OnboardRequest, RequestSpec, build_request, combine_file_key,
    encrypt_file_key, sign_request, verify_ciphertext,
};
