//! The admin commands of `kss`, each working on a data directory.

pub mod admin_client;
pub mod admin_key;
pub mod audit;
pub mod cluster;
pub mod create;
pub mod policy;
pub mod profiles;
pub mod quota;
pub mod state;
