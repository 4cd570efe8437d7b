//! The one error type of this crate.
//!
//! Messages name what is wrong; they never contain secret bytes.

/// Everything that can go wrong in `kss-crypto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A byte string has the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    BadLength {
        /// What was being decoded.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An input is larger than anything legitimate.
    #[error("{what}: {got} bytes is more than the maximum of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The maximum accepted length.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// Text that should be hexadecimal is not.
    #[error("{what}: not valid hexadecimal")]
    InvalidHex {
        /// What was being decoded.
        what: &'static str,
    },
    /// Bytes that do not encode a valid group element (or encode the identity).
    #[error("{what}: not a valid curve point")]
    InvalidPoint {
        /// What was being decoded.
        what: &'static str,
    },
    /// Bytes that do not encode a valid, non-zero secret scalar.
    #[error("invalid secret scalar (out of range or zero)")]
    InvalidScalar,
    /// A proof of possession did not verify.
    #[error("proof of possession does not verify")]
    BadProof,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A profile token did not verify against its claims.
    #[error("profile token does not verify")]
    BadToken,
    /// A database row's MAC does not verify: the row was not written by this keyserver.
    #[error("row MAC does not verify (the row was changed outside the keyserver)")]
    BadRowMac,
    /// A threshold ciphertext failed its validity check.
    #[error("ciphertext is invalid")]
    CiphertextInvalid,
    /// A decryption share does not match its public key share and the ciphertext.
    #[error("decryption share is invalid")]
    ShareInvalid,
    /// Opening a sealed value failed (wrong key, wrong associated data, damaged or truncated).
    #[error("sealed data cannot be opened (wrong key, wrong associated data, or damaged)")]
    Sealed,
    /// Fewer backup approvals than the threshold.
    #[error("not enough approvals: {needed} needed, {got} given")]
    NotEnoughApprovals {
        /// The backup threshold.
        needed: usize,
        /// Valid, distinct approvals given.
        got: usize,
    },
    /// The same holder's approval was given twice.
    #[error("the same holder's approval was given more than once")]
    DuplicateApproval,
    /// An approval does not verify against the backup key (wrong backup, or forged).
    #[error(
        "approval of holder {holder:?} (index {index}) does not verify against this backup key"
    )]
    ApprovalRejected {
        /// The holder the approval claims to be from.
        holder: String,
        /// The holder's share index.
        index: usize,
    },
    /// An administrator key or approval names a holder the backup key does not have.
    #[error("{0}")]
    UnknownHolder(String),
    /// A threshold that cannot work for the number of holders.
    #[error(
        "threshold {threshold} is impossible with {holders} holders (need 1 <= threshold <= holders)"
    )]
    BadThreshold {
        /// The threshold asked for.
        threshold: usize,
        /// The number of holders.
        holders: usize,
    },
    /// Recovered material belongs to another keyserver.
    #[error("the backup belongs to a different keyserver")]
    WrongKeyserver,
    /// Anything else that is structurally wrong; the message names the field.
    #[error("malformed: {0}")]
    Malformed(String),
}
