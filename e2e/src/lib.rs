//! The kss Kubernetes e2e harness (see `e2e/README.md`).
//!
//! The shell scripts beside this crate build and start a real control plane whose only
//! node is faked by kwok; [`podrunner::PodRunner`] turns the pods it "runs" into real
//! `kss` processes on their pod IPs, and [`harness`] has the helpers the tests share.

pub mod error;
pub mod expand;
pub mod harness;
pub mod kubectl;
pub mod podrunner;
mod podspec;
pub mod provisioner;
mod volumes;

pub use error::{Error, Result};
pub use podrunner::{PodRunner, PodRunnerConfig, Process};
