//! What can go wrong in a store, in terms the server can act on.

/// A store error. `Unavailable` is the one to retry; the others are answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The data in the database is not what this version of kss writes.
    #[error("database holds invalid data: {0}")]
    Corrupt(String),
    /// The database could not be reached or failed; nothing was changed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A write under a lease this process no longer holds; nothing was changed.
    #[error("fenced off: {0}")]
    Fenced(String),
    /// The audit chain cannot be extended or pruned (its head does not verify, or no audit
    /// key was given): nothing was written.
    #[error("audit chain: {0}")]
    AuditChain(String),
}

impl StoreError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::AlreadyExists(_) => "already_exists",
            StoreError::NotFound(_) => "not_found",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Migration(_) => "migration",
            StoreError::Fenced(_) => "fenced",
            StoreError::AuditChain(_) => "audit_chain",
        }
    }
}

/// What rustls says (in its `Display`) when it rejects the server's certificate: unknown
/// issuer, bad signature, expired, not valid for the host name, ...
const RUSTLS_CERT_REJECTED: &str = "invalid peer certificate";

/// The rejection, if `e` is the TLS handshake refusing the database server's certificate.
fn untrusted_certificate(e: &sqlx::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if let Some(at) = text.find(RUSTLS_CERT_REJECTED) {
            return Some(text[at..].to_string());
        }
        source = err.source();
    }
    None
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(why) = untrusted_certificate(&e) {
            return StoreError::Unavailable(format!(
                "TLS: the database server's certificate is not trusted ({why}); name the CA \
                 that signed it (ssl-ca in the database address, or a CA file), or check \
                 that the address's host is a name in the certificate"
            ));
        }
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists(db.message().to_string())
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(e.to_string())
    }
}
