//! The gRPC services: convert messages, call the core ([`crate::requests`], the admin
//! service), and turn errors into `Status` (only here).

pub mod admin;
pub mod keyserver;
