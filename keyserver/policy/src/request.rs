//! What a request to the keyserver carries, as far as policy is concerned.

use std::fmt;
use std::str::FromStr;

/// The kinds of request a keyserver approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestType {
    Decrypt,
    Search,
    CreateProfile,
    CreateLocation,
    Rename,
    SecureExport,
    StartSession,
    ChangeProfile,
}

impl RequestType {
    pub const ALL: [RequestType; 8] = [
        RequestType::Decrypt,
        RequestType::Search,
        RequestType::CreateProfile,
        RequestType::CreateLocation,
        RequestType::Rename,
        RequestType::SecureExport,
        RequestType::StartSession,
        RequestType::ChangeProfile,
    ];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Decrypt => "decrypt",
            RequestType::Search => "search",
            RequestType::CreateProfile => "create_profile",
            RequestType::CreateLocation => "create_location",
            RequestType::Rename => "rename",
            RequestType::SecureExport => "secure_export",
            RequestType::StartSession => "start_session",
            RequestType::ChangeProfile => "change_profile",
        }
    }

    /// Approved without restriction when the policy has no section for the type.
    pub fn approved_by_default(self) -> bool {
        matches!(
            self,
            RequestType::CreateProfile | RequestType::CreateLocation
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn names() -> String {
        RequestType::ALL.map(RequestType::as_str).join(", ")
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the request types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown request type '{0}' (expected one of {types})", types = RequestType::names())]
pub struct UnknownRequestType(pub String);

impl FromStr for RequestType {
    type Err = UnknownRequestType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownRequestType(s.to_string()))
    }
}

/// One entry of a request's authenticated metadata, typically a file's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaInfo {
    /// The path without a leading `/`.
    pub meta: String,
    /// Whether the metadata is complete (fully verified) or partial.
    pub complete: bool,
}

/// A request as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub profile_id: Vec<u8>,
    /// The profile's verification words, in order.
    pub profile_words: Vec<String>,
    pub device_id: Vec<u8>,
    pub auth_meta: Vec<MetaInfo>,
    pub cryptographic_id: Vec<u8>,
}

impl Request {
    /// A request of the given type with every other field empty.
    pub fn new(request_type: RequestType) -> Self {
        Request {
            request_type,
            profile_id: Vec::new(),
            profile_words: Vec::new(),
            device_id: Vec::new(),
            auth_meta: Vec::new(),
            cryptographic_id: Vec::new(),
        }
    }
}
