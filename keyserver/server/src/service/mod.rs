//! The gRPC services: decode, check, decide, encode. Errors become `Status` here only.

pub mod admin;
pub mod keyserver;
pub mod profiles;
pub mod shares;
pub mod verifier;
