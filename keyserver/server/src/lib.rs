//! The kss keyserver: admin CLI commands (so far: the policy dry-run tools).
#![forbid(unsafe_code)]

pub mod cli;
pub mod policy_cmd;
