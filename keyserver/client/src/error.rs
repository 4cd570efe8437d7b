//! The one error type of the client library.
//!
//! Messages name what is wrong; they never contain secret bytes (device keys, shares,
//! file keys).

use std::path::PathBuf;

use kss_crypto::CryptoError;

/// Everything that can go wrong in `kss-client`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading or writing a file failed.
    // The cause is the error's source: `{:#}` (anyhow) prints it after this.
    #[error("{what} {}", path.display())]
    Io {
        /// What the file is ("profile file", "ciphertext file", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A profile file already exists where a new profile would be written.
    #[error("profile file {} already exists; refusing to overwrite it", .0.display())]
    ProfileExists(PathBuf),
    /// A profile file is not valid JSON of the expected shape.
    #[error("profile file {}: {detail}", path.display())]
    ProfileFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the secret values).
        detail: String,
    },
    /// A field of a profile does not decode (bad hex, bad length, invalid point, ...).
    #[error("profile field {field}: {detail}")]
    InvalidProfile {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A cryptographic operation failed.
    #[error("{what}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: CryptoError,
    },
    /// The endpoint is not a usable `https://host:port` URI.
    #[error("invalid endpoint {endpoint:?}: {detail}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
    /// The CA certificate (PEM) is unusable.
    #[error("invalid CA certificate: {0}")]
    InvalidCa(String),
    /// Setting up or making the TLS connection failed.
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport error, with its causes.
        detail: String,
    },
    /// The keyserver answered a call with a gRPC error.
    #[error("{method} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC ("GetInfo", "Onboard", "Approve").
        method: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message sent by the keyserver.
        message: String,
    },
    /// The keyserver's onboarding answer names another device id than ours.
    #[error("keyserver returned device id {got}, but this device's id is {expected}")]
    DeviceIdMismatch {
        /// `DeviceId::of(our device public key)`.
        expected: String,
        /// What the keyserver sent.
        got: String,
    },
    /// The keyserver's public key set does not match the workstation's own share together
    /// with the keyserver's share.
    #[error(
        "keyserver returned a public key set that does not combine the workstation's share with the keyserver's share"
    )]
    PublicKeySetMismatch,
    /// The keyserver did not prove that it holds the secret behind the share it returned:
    /// its share could be a rogue one that gives it the profile's whole key. Refused; no
    /// profile is made.
    #[error(
        "keyserver did not prove possession of its key share (keyserver_share_proof missing or invalid): profile refused"
    )]
    KeyserverShareUnproven,
    /// The keyserver's verification words are not the ones derived from the key set.
    #[error(
        "keyserver returned verification words that are not derived from the profile's key set"
    )]
    WordsMismatch,
    /// The keyserver's answer is missing a field or has one that does not decode.
    #[error("malformed response from the keyserver: {0}")]
    MalformedResponse(String),
    /// The ciphertext failed local verification; no request was sent for it.
    #[error("ciphertext does not verify: {0}")]
    InvalidCiphertext(#[source] CryptoError),
    /// An approved decrypt came with a decryption share that does not verify against the
    /// keyserver's public share.
    #[error("the keyserver's decryption share does not verify: {0}")]
    InvalidShare(#[source] CryptoError),
    /// A request cannot be built as asked (e.g. decrypt without a ciphertext).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The gRPC status code, when the keyserver answered with an error.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn rpc(method: &'static str, status: tonic::Status) -> Self {
        ClientError::Rpc {
            method,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    pub(crate) fn crypto(what: &'static str) -> impl FnOnce(CryptoError) -> Self {
        move |source| ClientError::Crypto { what, source }
    }
}

/// Results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
