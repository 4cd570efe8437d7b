//! The keyserver's identity at rest: its ID and its root secret sealed with the master key.
//!
//! The keyserver stores exactly this in its database; the operator produces it (without
//! the server's stack) to bootstrap a cluster, as a JSON document:
//!
//! ```json
//! {"format":"kss-bootstrap-identity/v1","keyserver_id":"<32 hex>","sealed_root":"<hex>"}
//! ```
//!
//! The root secret is sealed (XChaCha20-Poly1305, see [`seal`](mod@crate::seal)) with the
//! associated data `"kss root secret v1\0" || keyserver id bytes`, so a sealed root copied
//! under another keyserver ID does not open.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::CryptoError;
use crate::ids::KeyserverId;
use crate::root::{ROOT_SECRET_LEN, RootSecret};
use crate::seal::{self, MasterKey, SEAL_OVERHEAD};

/// The `format` of the JSON document.
pub const BOOTSTRAP_IDENTITY_FORMAT: &str = "kss-bootstrap-identity/v1";

/// Length of a sealed root secret.
pub const SEALED_ROOT_LEN: usize = ROOT_SECRET_LEN + SEAL_OVERHEAD;

/// Binds a sealed root secret to its keyserver ID, and to the era of the database it is
/// stored in: `v3` since its audit chain has started; `v2` since every profile and policy
/// row carries a MAC; `v1` before (a database whose rows without a MAC may be adopted
/// once, see [`Era`]).
fn seal_aad(id: &KeyserverId, era: Era) -> Vec<u8> {
    let tag: &[u8] = match era {
        Era::RowsUnmacked => b"kss root secret v1\0",
        Era::RowsMacked => b"kss root secret v2\0",
        Era::ChainStarted => b"kss root secret v3\0",
    };
    let mut aad = tag.to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// What a sealed root says about the database rows beside it. Only the holder of the master
/// key can turn one into the other, so whoever can write the database cannot make a keyserver
/// believe its rows predate MACs (and so adopt rows it never wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// Sealed before row MACs existed: rows without a MAC were written by this keyserver and
    /// may be adopted, once.
    RowsUnmacked,
    /// Sealed since: every row must carry its MAC.
    RowsMacked,
    /// Sealed once the audit chain had started (and rows carry MACs): a chain that looks
    /// as if it never started, over audit rows, was stripped, not written before the chain.
    ChainStarted,
}

impl Era {
    /// Whether every profile and policy row must carry its MAC.
    pub fn rows_macked(self) -> bool {
        self != Era::RowsUnmacked
    }

    /// Whether the audit chain has started.
    pub fn chain_started(self) -> bool {
        self == Era::ChainStarted
    }
}

/// A keyserver ID and its root secret sealed with a master key. Holds no secret in the
/// clear (`Debug` shows the ID and the sealed length only).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedIdentity {
    /// The keyserver.
    pub keyserver_id: KeyserverId,
    /// The root secret, sealed with the master key and bound to `keyserver_id`.
    pub sealed_root: Vec<u8>,
}

impl SealedIdentity {
    /// Seals `root` for keyserver `id` with `master` (a fresh random nonce each time), in
    /// the current era ([`Era::ChainStarted`]: what a new database is, once its audit
    /// chain is started).
    pub fn seal(id: &KeyserverId, root: &RootSecret, master: &MasterKey) -> Self {
        Self::seal_in(id, root, master, Era::ChainStarted)
    }

    /// As [`SealedIdentity::seal`], in `era` (the steps of an upgrade).
    pub fn seal_in(id: &KeyserverId, root: &RootSecret, master: &MasterKey, era: Era) -> Self {
        SealedIdentity {
            keyserver_id: *id,
            sealed_root: seal::seal(master, &seal_aad(id, era), root.expose_bytes()),
        }
    }

    /// Opens the root secret with `master`. [`CryptoError::Sealed`] if the key is not the
    /// one it was sealed with, the ID is not the one it was sealed for, or it is damaged.
    pub fn open(&self, master: &MasterKey) -> Result<RootSecret, CryptoError> {
        self.open_with_era(master).map(|(root, _)| root)
    }

    /// As [`SealedIdentity::open`], and the era it was sealed in.
    pub fn open_with_era(&self, master: &MasterKey) -> Result<(RootSecret, Era), CryptoError> {
        for era in [Era::ChainStarted, Era::RowsMacked, Era::RowsUnmacked] {
            let aad = seal_aad(&self.keyserver_id, era);
            if let Ok(bytes) = seal::open(master, &aad, &self.sealed_root) {
                return Ok((RootSecret::from_bytes(&bytes)?, era));
            }
        }
        Err(CryptoError::Sealed)
    }

    /// The JSON document (one line).
    pub fn to_json(&self) -> String {
        let mut doc = Map::new();
        doc.insert("format".into(), BOOTSTRAP_IDENTITY_FORMAT.into());
        doc.insert("keyserver_id".into(), self.keyserver_id.to_hex().into());
        doc.insert("sealed_root".into(), hex::encode(&self.sealed_root).into());
        Value::Object(doc).to_string()
    }

    /// Parses the JSON document; an error names the field that is wrong. Surrounding
    /// whitespace is ignored; unknown fields are refused.
    pub fn from_json(text: &str) -> Result<Self, CryptoError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| malformed(format!("not a JSON document: {e}")))?;
        let Value::Object(doc) = value else {
            return Err(malformed("not a JSON object"));
        };
        if let Some(unknown) = doc
            .keys()
            .find(|k| !matches!(k.as_str(), "format" | "keyserver_id" | "sealed_root"))
        {
            return Err(malformed(format!(
                "unknown field {} (expected format, keyserver_id, sealed_root)",
                excerpt(unknown)
            )));
        }
        let format = string_field(&doc, "format")?;
        if format != BOOTSTRAP_IDENTITY_FORMAT {
            return Err(field_err(
                "format",
                format!(
                    "{}, expected {BOOTSTRAP_IDENTITY_FORMAT:?}",
                    excerpt(format)
                ),
            ));
        }
        let keyserver_id = string_field(&doc, "keyserver_id")?
            .parse::<KeyserverId>()
            .map_err(|e| field_err("keyserver_id", e))?;
        let sealed_hex = string_field(&doc, "sealed_root")?;
        if sealed_hex.len() != 2 * SEALED_ROOT_LEN {
            return Err(field_err(
                "sealed_root",
                format!(
                    "{} hex characters, expected {}",
                    sealed_hex.len(),
                    2 * SEALED_ROOT_LEN
                ),
            ));
        }
        let sealed_root = hex::decode(sealed_hex)
            .map_err(|_| field_err("sealed_root", "not valid hexadecimal"))?;
        Ok(SealedIdentity {
            keyserver_id,
            sealed_root,
        })
    }
}

impl fmt::Debug for SealedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedIdentity")
            .field("keyserver_id", &self.keyserver_id)
            .field(
                "sealed_root",
                &format_args!("<{} bytes>", self.sealed_root.len()),
            )
            .finish()
    }
}

fn malformed(what: impl fmt::Display) -> CryptoError {
    CryptoError::Malformed(format!("bootstrap identity: {what}"))
}

fn field_err(field: &str, e: impl fmt::Display) -> CryptoError {
    malformed(format!("field `{field}`: {e}"))
}

/// At most [`EXCERPT_CHARS`] characters of text from the document, quoted and escaped: an
/// error names what it found without echoing an unbounded input.
fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}... ({} characters)", text.chars().count())
    } else {
        format!("{head:?}")
    }
}

const EXCERPT_CHARS: usize = 40;

fn string_field<'a>(doc: &'a Map<String, Value>, field: &str) -> Result<&'a str, CryptoError> {
    match doc.get(field) {
        None => Err(field_err(field, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(field_err(field, "must be a string")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sealed() -> (SealedIdentity, MasterKey, [u8; ROOT_SECRET_LEN]) {
        let master = MasterKey::generate();
        let root = RootSecret::generate();
        let id = KeyserverId::random();
        (
            SealedIdentity::seal(&id, &root, &master),
            master,
            *root.expose_bytes(),
        )
    }

    fn err(text: &str) -> String {
        SealedIdentity::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_through_json() {
        let (sealed, master, root) = sealed();
        assert_eq!(sealed.sealed_root.len(), SEALED_ROOT_LEN);
        let json = sealed.to_json();
        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["format"], BOOTSTRAP_IDENTITY_FORMAT);
        assert_eq!(doc["keyserver_id"], sealed.keyserver_id.to_string());
        assert_eq!(doc["sealed_root"], hex::encode(&sealed.sealed_root));
        assert_eq!(doc.as_object().unwrap().len(), 3);
        let parsed = SealedIdentity::from_json(&format!("\n{json}\n")).unwrap();
        assert_eq!(parsed, sealed);
        assert_eq!(parsed.open(&master).unwrap().expose_bytes(), &root);
        // Debug shows no sealed bytes.
        let debug = format!("{parsed:?}");
        assert!(debug.contains(&sealed.keyserver_id.to_string()));
        assert!(!debug.contains(&hex::encode(&sealed.sealed_root[..8])));
    }

    #[test]
    fn sealed_roots_of_every_era_open_and_say_which() {
        // New seals are of the chain era (v3).
        let (sealed, master, root) = sealed();
        let aad = |tag: &[u8]| {
            let mut aad = tag.to_vec();
            aad.extend_from_slice(sealed.keyserver_id.as_bytes());
            aad
        };
        assert_eq!(
            &**seal::open(&master, &aad(b"kss root secret v3\0"), &sealed.sealed_root).unwrap(),
            &root
        );
        let (opened, era) = sealed.open_with_era(&master).unwrap();
        assert_eq!((opened.expose_bytes(), era), (&root, Era::ChainStarted));
        assert!(era.rows_macked() && era.chain_started());
        // Databases written before (v2: MACs but no chain; v1: neither) stay readable,
        // and say so.
        for (tag, expected) in [
            (&b"kss root secret v2\0"[..], Era::RowsMacked),
            (&b"kss root secret v1\0"[..], Era::RowsUnmacked),
        ] {
            let old = SealedIdentity {
                keyserver_id: sealed.keyserver_id,
                sealed_root: seal::seal(&master, &aad(tag), &root),
            };
            let (opened, era) = old.open_with_era(&master).unwrap();
            assert_eq!((opened.expose_bytes(), era), (&root, expected));
            assert!(!era.chain_started());
            assert_eq!(era.rows_macked(), expected == Era::RowsMacked);
            assert_eq!(old.open(&master).unwrap().expose_bytes(), &root);
            // seal_in writes that era.
            let again = SealedIdentity::seal_in(&sealed.keyserver_id, &opened, &master, era);
            assert_eq!(again.open_with_era(&master).unwrap().1, era);
        }
        // Any other tag is not a seal of ours.
        let other = SealedIdentity {
            keyserver_id: sealed.keyserver_id,
            sealed_root: seal::seal(&master, &aad(b"kss root secret v4\0"), &root),
        };
        assert_eq!(other.open(&master).unwrap_err(), CryptoError::Sealed);
    }

    #[test]
    fn wrong_master_key_or_tampered_id_fails() {
        let (sealed, _, _) = sealed();
        assert_eq!(
            sealed.open(&MasterKey::generate()).unwrap_err(),
            CryptoError::Sealed
        );
        let (sealed, master, _) = self::sealed();
        let mut moved = sealed.clone();
        moved.keyserver_id = KeyserverId::random();
        assert_eq!(moved.open(&master).unwrap_err(), CryptoError::Sealed);
        // Also through JSON: the ID edited in the document.
        let json = sealed.to_json().replace(
            &sealed.keyserver_id.to_string(),
            &moved.keyserver_id.to_string(),
        );
        let edited = SealedIdentity::from_json(&json).unwrap();
        assert_eq!(edited.open(&master).unwrap_err(), CryptoError::Sealed);
        let mut damaged = sealed.clone();
        damaged.sealed_root[30] ^= 1;
        assert_eq!(damaged.open(&master).unwrap_err(), CryptoError::Sealed);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let (sealed, _, _) = sealed();
        let id = sealed.keyserver_id.to_string();
        let root = hex::encode(&sealed.sealed_root);
        let doc = |format: &str, id: &str, root: &str| {
            format!(r#"{{"format":"{format}","keyserver_id":"{id}","sealed_root":"{root}"}}"#)
        };
        let e = err(r#"{"format":"kss-bootstrap-identity/v1","keyserver_id":"00"}"#);
        assert!(e.contains("keyserver_id"), "{e}");
        let e = err(&format!(
            r#"{{"format":"kss-bootstrap-identity/v1","keyserver_id":"{id}"}}"#
        ));
        assert!(e.contains("field `sealed_root`: missing"), "{e}");
        let e = err(&format!(
            r#"{{"keyserver_id":"{id}","sealed_root":"{root}"}}"#
        ));
        assert!(e.contains("field `format`: missing"), "{e}");
        let e = err(&doc("kss-backup-key/v1", &id, &root));
        assert!(
            e.contains("field `format`") && e.contains("kss-backup-key/v1"),
            "{e}"
        );
        let e = err(&doc(BOOTSTRAP_IDENTITY_FORMAT, "xyz", &root));
        assert!(e.contains("field `keyserver_id`"), "{e}");
        let e = err(&doc(BOOTSTRAP_IDENTITY_FORMAT, &id, &root[2..]));
        assert!(
            e.contains("field `sealed_root`") && e.contains("hex characters"),
            "{e}"
        );
        let e = err(&doc(
            BOOTSTRAP_IDENTITY_FORMAT,
            &id,
            &format!("zz{}", &root[2..]),
        ));
        assert!(
            e.contains("field `sealed_root`: not valid hexadecimal"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"format":"kss-bootstrap-identity/v1","keyserver_id":{},"sealed_root":"{root}"}}"#,
            7
        ));
        assert!(e.contains("field `keyserver_id`: must be a string"), "{e}");
        let e = err(&format!(
            r#"{{"format":"kss-bootstrap-identity/v1","keyserver_id":"{id}","sealed_root":"{root}","root":"x"}}"#
        ));
        assert!(e.contains("unknown field \"root\""), "{e}");
        // What is echoed of the document is bounded.
        let long = "x".repeat(100_000);
        for doc in [
            format!(r#"{{"format":"{long}","keyserver_id":"{id}","sealed_root":"{root}"}}"#),
            format!(r#"{{"{long}":1}}"#),
        ] {
            let e = err(&doc);
            assert!(e.len() < 200 && e.contains("100000 characters"), "{e}");
        }
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err("{").contains("not a JSON document"));
        // No error echoes the sealed bytes.
        assert!(!e.contains(&root));
    }
}
