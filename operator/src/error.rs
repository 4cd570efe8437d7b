//! The operator's error type: what a reconcile can fail on.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{what} has no namespace")]
    NoNamespace { what: String },
    #[error("Secret {name}: {problem}")]
    Secret { name: String, problem: String },
    #[error("generating certificates: {0}")]
    Pki(String),
    #[error("keyserver identity: {0}")]
    Identity(String),
    #[error("keyserver admin API of {instance}: {message}")]
    Admin { instance: String, message: String },
    /// The object changed since this reconcile read it (a stale cache): nothing was
    /// written; the next reconcile reads it anew.
    #[error("{what} changed since it was read; reconciling it again")]
    Stale { what: String },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A short label for metrics (`kss_operator_reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace { .. } => "namespace",
            Error::Secret { .. } => "secret",
            Error::Pki(_) => "pki",
            Error::Identity(_) => "identity",
            Error::Admin { .. } => "admin",
            Error::Serialize { .. } => "serialize",
            Error::Stale { .. } => "stale",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
