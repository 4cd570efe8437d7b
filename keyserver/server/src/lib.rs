//! The kss keyserver: the daemon (`kss serve`) and the admin CLI.
//!
//! A request goes: [`service`] (gRPC: converts only) → [`requests`] (decode, bounds,
//! identity, signature, freshness, ciphertext; no transport types) → [`decider`] (policy,
//! quotas, audit, one transaction per batch) → [`requests`] (the decryption share) →
//! [`service`] (encode). [`verdict`] is what a request got, in the words of the answer,
//! the audit log and the metrics; [`switches`] follows the database for the policy in
//! force; [`integrity`] checks the MACs of the rows read from it.
#![forbid(unsafe_code)]

pub mod admin_socket;
pub mod audit_log;
pub mod backup_key;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod connections;
pub mod contracts;
pub mod data_dir;
pub mod db_deadline;
pub mod decider;
pub mod identity;
pub mod integrity;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod pod;
pub mod policy_store;
pub mod reloading_tls;
pub mod requests;
pub mod rollout;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod standalone;
pub mod switches;
pub mod tls;
pub mod verdict;
