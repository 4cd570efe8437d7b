//! The kss Kubernetes e2e harness (see `e2e/README.md`).
//!
//! The shell scripts beside this crate build and start a real control plane and a real
//! node (containerd, runc, kubelet, kube-proxy, CoreDNS) in namespaces of their own;
//! [`node`] reads and acts on the pods' containers there, [`provisioner`] gives their
//! claims volumes, and [`harness`] has the helpers the tests share.

pub mod error;
pub mod harness;
pub mod kubectl;
pub mod node;
pub mod provisioner;

pub use error::{Error, Result};
