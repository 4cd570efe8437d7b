//! The backup key: the root secret protected by an M-of-N threshold of administrator keys.
//!
//! [`create_backup`] makes a fresh blsttc [`SecretKeySet`] of polynomial degree `M − 1`,
//! encrypts `keyserver id || root secret` to its master public key, encrypts holder `i`'s
//! secret key share (index `i`) to that holder's [`AdminPublicKey`], and then drops the set:
//! nobody ever keeps the backup's master secret or anyone else's share.
//!
//! To recover, `M` holders each run [`approve`] with their [`AdminKey`]: it decrypts their share
//! and produces a decryption share of the root ciphertext — an [`Approval`], which reveals
//! neither the administrator's key nor their share. [`recover`] verifies every approval against
//! the public key set, combines `M` of them and checks the embedded keyserver id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use blsttc::{Ciphertext, PK_SIZE, PublicKey, PublicKeySet, SecretKey, SecretKeySet};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ciphertext::{
    DecryptionShareBytes, MAX_CIPHERTEXT_LEN, VerifiedCiphertext, is_identity_encoding,
};
use crate::error::CryptoError;
use crate::ids::{KEYSERVER_ID_LEN, KeyserverId};
use crate::root::{ROOT_SECRET_LEN, RootSecret};
use crate::scalar::{SecretShare, fr_from_be_nonzero, random_nonzero_fr};

/// The `format` of a backup key document.
pub const BACKUP_KEY_FORMAT: &str = "kss-backup-key/v1";
/// The `format` of an approval document.
pub const APPROVAL_FORMAT: &str = "kss-backup-approval/v1";
/// The most holders a backup key may have.
pub const MAX_HOLDERS: usize = 1024;
/// Length of an administrator public key (compressed G1).
pub const ADMIN_PUBLIC_KEY_LEN: usize = PK_SIZE;

/// An administrator's secret key (a blsttc `SecretKey`; zeroized on drop, `Debug` redacted).
pub struct AdminKey(SecretKey);

impl AdminKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut fr = random_nonzero_fr();
        AdminKey(SecretKey::from_mut(&mut fr))
    }

    /// The key from its 32 big-endian bytes; rejects out-of-range and zero scalars.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut fr = fr_from_be_nonzero(bytes)?;
        Ok(AdminKey(SecretKey::from_mut(&mut fr)))
    }

    /// The 32 big-endian bytes, for the administrator's key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The key from 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let text = text.trim();
        if text.len() != 64 {
            return Err(CryptoError::Malformed(format!(
                "administrator key must be 64 hex characters, got {}",
                text.len()
            )));
        }
        hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| CryptoError::InvalidHex {
            what: "administrator key",
        })?;
        Self::from_bytes(&bytes[..])
    }

    /// The 64 hex characters, for the administrator's key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.to_bytes()))
    }

    /// The public key that a backup is made for.
    pub fn public(&self) -> AdminPublicKey {
        AdminPublicKey(self.0.public_key().to_bytes())
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// An administrator's public key: a valid, non-identity compressed G1 point (48 bytes), written
/// as 96 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdminPublicKey([u8; PK_SIZE]);

impl AdminPublicKey {
    /// Decodes and validates 48 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; PK_SIZE] = bytes.try_into().map_err(|_| CryptoError::BadLength {
            what: "administrator public key",
            expected: PK_SIZE,
            got: bytes.len(),
        })?;
        if PublicKey::from_bytes(array).is_err() || is_identity_encoding(&array) {
            return Err(CryptoError::InvalidPoint {
                what: "administrator public key",
            });
        }
        Ok(AdminPublicKey(array))
    }

    /// The 48 bytes.
    pub fn to_bytes(&self) -> [u8; PK_SIZE] {
        self.0
    }

    /// Decodes 96 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        if text.len() != 2 * PK_SIZE {
            return Err(CryptoError::Malformed(format!(
                "administrator public key must be {} hex characters, got {}",
                2 * PK_SIZE,
                text.len()
            )));
        }
        let bytes = hex::decode(text).map_err(|_| CryptoError::InvalidHex {
            what: "administrator public key",
        })?;
        Self::from_bytes(&bytes)
    }

    /// The 96 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn key(&self) -> Result<PublicKey, CryptoError> {
        PublicKey::from_bytes(self.0).map_err(|_| CryptoError::InvalidPoint {
            what: "administrator public key",
        })
    }
}

impl fmt::Display for AdminPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AdminPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminPublicKey({})", self.to_hex())
    }
}

impl FromStr for AdminPublicKey {
    type Err = CryptoError;

    fn from_str(s: &str) -> Result<Self, CryptoError> {
        Self::from_hex(s)
    }
}

impl Serialize for AdminPublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for AdminPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// One holder of a backup key.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupHolder {
    index: usize,
    name: String,
    admin_public_key: AdminPublicKey,
    encrypted_share: Ciphertext,
}

impl BackupHolder {
    /// The holder's share index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The holder's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's administrator public key.
    pub fn admin_public_key(&self) -> &AdminPublicKey {
        &self.admin_public_key
    }
}

impl fmt::Debug for BackupHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupHolder")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("admin_public_key", &self.admin_public_key)
            .finish_non_exhaustive()
    }
}

/// The backup key document (JSON, see [`BackupKey::to_json`]). Holds no secret in the clear.
///
/// ```json
/// { "format": "kss-backup-key/v1", "keyserver_id": "<hex>", "threshold": 3,
///   "public_key_set": "<hex>", "root_ciphertext": "<hex>",
///   "holders": [{"index": 0, "name": "alice", "admin_public_key": "<hex>",
///                "encrypted_share": "<hex>"}, ...] }
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BackupKeyDoc", into = "BackupKeyDoc")]
pub struct BackupKey {
    keyserver_id: KeyserverId,
    threshold: usize,
    public_key_set: PublicKeySet,
    root_ciphertext: VerifiedCiphertext,
    holders: Vec<BackupHolder>,
}

impl BackupKey {
    /// The keyserver whose root secret this protects.
    pub fn keyserver_id(&self) -> &KeyserverId {
        &self.keyserver_id
    }

    /// How many approvals recovery needs.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The holders, in index order as created.
    pub fn holders(&self) -> &[BackupHolder] {
        &self.holders
    }

    /// The holder with this administrator public key, if any.
    pub fn holder_for(&self, admin: &AdminPublicKey) -> Option<&BackupHolder> {
        self.holders.iter().find(|h| &h.admin_public_key == admin)
    }

    /// The JSON document (pretty-printed).
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and validates a JSON document; errors name the bad field.
    pub fn from_json(text: &str) -> Result<Self, CryptoError> {
        serde_json::from_str(text).map_err(|e| CryptoError::Malformed(format!("backup key: {e}")))
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupKey")
            .field("keyserver_id", &self.keyserver_id)
            .field("threshold", &self.threshold)
            .field("holders", &self.holders)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct BackupKeyDoc {
    format: String,
    keyserver_id: String,
    threshold: usize,
    public_key_set: String,
    root_ciphertext: String,
    holders: Vec<HolderDoc>,
}

#[derive(Serialize, Deserialize)]
struct HolderDoc {
    index: usize,
    name: String,
    admin_public_key: String,
    encrypted_share: String,
}

impl From<BackupKey> for BackupKeyDoc {
    fn from(key: BackupKey) -> Self {
        BackupKeyDoc {
            format: BACKUP_KEY_FORMAT.to_owned(),
            keyserver_id: key.keyserver_id.to_hex(),
            threshold: key.threshold,
            public_key_set: hex::encode(key.public_key_set.to_bytes()),
            root_ciphertext: hex::encode(key.root_ciphertext.to_bytes()),
            holders: key
                .holders
                .iter()
                .map(|h| HolderDoc {
                    index: h.index,
                    name: h.name.clone(),
                    admin_public_key: h.admin_public_key.to_hex(),
                    encrypted_share: hex::encode(h.encrypted_share.to_bytes()),
                })
                .collect(),
        }
    }
}

fn field_err(field: &str, e: impl fmt::Display) -> CryptoError {
    CryptoError::Malformed(format!("field `{field}`: {e}"))
}

fn decode_hex(field: &str, text: &str) -> Result<Vec<u8>, CryptoError> {
    if text.len() > 2 * MAX_CIPHERTEXT_LEN {
        return Err(field_err(field, "too long"));
    }
    hex::decode(text).map_err(|_| field_err(field, "not valid hexadecimal"))
}

fn check_holder_names_and_keys<'a>(
    holders: impl Iterator<Item = (&'a str, &'a AdminPublicKey)>,
) -> Result<(), CryptoError> {
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (name, key) in holders {
        if name.trim().is_empty() {
            return Err(CryptoError::Malformed("a holder has an empty name".into()));
        }
        if !names.insert(name) {
            return Err(CryptoError::Malformed(format!(
                "holder name {name:?} appears more than once"
            )));
        }
        if !keys.insert(*key) {
            return Err(CryptoError::Malformed(format!(
                "holder {name:?} has the same administrator key as another holder"
            )));
        }
    }
    Ok(())
}

impl TryFrom<BackupKeyDoc> for BackupKey {
    type Error = CryptoError;

    fn try_from(doc: BackupKeyDoc) -> Result<Self, CryptoError> {
        if doc.format != BACKUP_KEY_FORMAT {
            return Err(field_err(
                "format",
                format!("{:?}, expected {BACKUP_KEY_FORMAT:?}", doc.format),
            ));
        }
        let keyserver_id: KeyserverId = doc
            .keyserver_id
            .parse()
            .map_err(|e| field_err("keyserver_id", e))?;
        let n = doc.holders.len();
        if n == 0 || n > MAX_HOLDERS {
            return Err(field_err(
                "holders",
                format!("{n} holders (1 to {MAX_HOLDERS} allowed)"),
            ));
        }
        if doc.threshold == 0 || doc.threshold > n {
            return Err(field_err(
                "threshold",
                CryptoError::BadThreshold {
                    threshold: doc.threshold,
                    holders: n,
                },
            ));
        }
        let pks_bytes = decode_hex("public_key_set", &doc.public_key_set)?;
        if pks_bytes.len() != doc.threshold * PK_SIZE {
            return Err(field_err(
                "public_key_set",
                format!(
                    "{} bytes, expected {} for threshold {}",
                    pks_bytes.len(),
                    doc.threshold * PK_SIZE,
                    doc.threshold
                ),
            ));
        }
        if is_identity_encoding(&pks_bytes) {
            return Err(field_err("public_key_set", "master key is the identity"));
        }
        let public_key_set = PublicKeySet::from_bytes(pks_bytes)
            .map_err(|_| field_err("public_key_set", "not valid curve points"))?;
        let root_ciphertext =
            VerifiedCiphertext::verify(&decode_hex("root_ciphertext", &doc.root_ciphertext)?)
                .map_err(|e| field_err("root_ciphertext", e))?;

        let mut holders = Vec::with_capacity(n);
        let mut indices = BTreeSet::new();
        for (i, h) in doc.holders.into_iter().enumerate() {
            let field = |name: &str| format!("holders[{i}].{name}");
            if h.index >= MAX_HOLDERS || !indices.insert(h.index) {
                return Err(field_err(
                    &field("index"),
                    format!("{} is out of range or repeated", h.index),
                ));
            }
            let admin_public_key = AdminPublicKey::from_hex(&h.admin_public_key)
                .map_err(|e| field_err(&field("admin_public_key"), e))?;
            let share_bytes = decode_hex(&field("encrypted_share"), &h.encrypted_share)?;
            let encrypted_share = Ciphertext::from_bytes(&share_bytes)
                .ok()
                .filter(|ct| ct.verify())
                .ok_or_else(|| field_err(&field("encrypted_share"), "invalid ciphertext"))?;
            holders.push(BackupHolder {
                index: h.index,
                name: h.name,
                admin_public_key,
                encrypted_share,
            });
        }
        check_holder_names_and_keys(
            holders
                .iter()
                .map(|h| (h.name.as_str(), &h.admin_public_key)),
        )
        .map_err(|e| field_err("holders", e))?;
        Ok(BackupKey {
            keyserver_id,
            threshold: doc.threshold,
            public_key_set,
            root_ciphertext,
            holders,
        })
    }
}

/// Makes a backup key for `root`: any `threshold` of `holders` can recover it.
///
/// Refuses threshold 0, a threshold above the number of holders, empty or repeated names and
/// repeated administrator keys.
pub fn create_backup(
    root: &RootSecret,
    keyserver: &KeyserverId,
    holders: &[(String, AdminPublicKey)],
    threshold: usize,
) -> Result<BackupKey, CryptoError> {
    if threshold == 0 || threshold > holders.len() || holders.len() > MAX_HOLDERS {
        return Err(CryptoError::BadThreshold {
            threshold,
            holders: holders.len(),
        });
    }
    check_holder_names_and_keys(holders.iter().map(|(n, k)| (n.as_str(), k)))?;
    let admin_keys = holders
        .iter()
        .map(|(_, k)| k.key())
        .collect::<Result<Vec<_>, _>>()?;

    let mut rng = rand::rngs::OsRng;
    let set = SecretKeySet::try_random(threshold - 1, &mut rng)
        .map_err(|e| CryptoError::Malformed(format!("creating the backup key set: {e}")))?;
    let public_key_set = set.public_keys();

    let mut plaintext = Zeroizing::new(Vec::with_capacity(KEYSERVER_ID_LEN + ROOT_SECRET_LEN));
    plaintext.extend_from_slice(keyserver.as_bytes());
    plaintext.extend_from_slice(root.expose_bytes());
    let root_ciphertext =
        VerifiedCiphertext::from_ciphertext(public_key_set.public_key().encrypt(&plaintext[..]))?;

    let holders = holders
        .iter()
        .zip(admin_keys)
        .enumerate()
        .map(|(index, ((name, admin_public_key), key))| {
            let share = set.secret_key_share(index);
            let share_bytes = Zeroizing::new(share.to_bytes());
            BackupHolder {
                index,
                name: name.clone(),
                admin_public_key: *admin_public_key,
                encrypted_share: key.encrypt(&share_bytes[..]),
            }
        })
        .collect();
    // The set (the only copy of the backup's master secret and of all shares) is zeroized here.
    drop(set);

    Ok(BackupKey {
        keyserver_id: *keyserver,
        threshold,
        public_key_set,
        root_ciphertext,
        holders,
    })
}

/// An administrator's approval of a recovery: their decryption share of the root ciphertext.
/// JSON: `{"format": "kss-backup-approval/v1", "index": i, "holder": name, "share": hex}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "ApprovalDoc", into = "ApprovalDoc")]
pub struct Approval {
    /// The holder's share index.
    pub index: usize,
    /// The holder's name.
    pub holder: String,
    /// The decryption share of the backup's root ciphertext.
    pub share: DecryptionShareBytes,
}

#[derive(Serialize, Deserialize)]
struct ApprovalDoc {
    format: String,
    index: usize,
    holder: String,
    share: String,
}

impl From<Approval> for ApprovalDoc {
    fn from(a: Approval) -> Self {
        ApprovalDoc {
            format: APPROVAL_FORMAT.to_owned(),
            index: a.index,
            holder: a.holder,
            share: hex::encode(a.share.to_bytes()),
        }
    }
}

impl TryFrom<ApprovalDoc> for Approval {
    type Error = CryptoError;

    fn try_from(doc: ApprovalDoc) -> Result<Self, CryptoError> {
        if doc.format != APPROVAL_FORMAT {
            return Err(field_err(
                "format",
                format!("{:?}, expected {APPROVAL_FORMAT:?}", doc.format),
            ));
        }
        let bytes = decode_hex("share", &doc.share)?;
        let share = DecryptionShareBytes::from_bytes(&bytes).map_err(|e| field_err("share", e))?;
        Ok(Approval {
            index: doc.index,
            holder: doc.holder,
            share,
        })
    }
}

impl Approval {
    /// The JSON document (pretty-printed).
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and validates a JSON document; errors name the bad field.
    pub fn from_json(text: &str) -> Result<Self, CryptoError> {
        serde_json::from_str(text).map_err(|e| CryptoError::Malformed(format!("approval: {e}")))
    }
}

/// An administrator approves recovery: decrypts their share of the backup key and returns
/// their decryption share of the root ciphertext.
pub fn approve(backup: &BackupKey, admin: &AdminKey) -> Result<Approval, CryptoError> {
    let public = admin.public();
    let holder = backup.holder_for(&public).ok_or_else(|| {
        CryptoError::UnknownHolder(format!(
            "administrator key {public} is not a holder of the backup key for keyserver {}",
            backup.keyserver_id
        ))
    })?;
    let plaintext = Zeroizing::new(
        admin
            .0
            .decrypt(&holder.encrypted_share)
            .ok_or(CryptoError::CiphertextInvalid)?,
    );
    let mut fr = fr_from_be_nonzero(&plaintext)?;
    let share = SecretShare::from_mut(&mut fr);
    if share.key().public_key_share() != backup.public_key_set.public_key_share(holder.index) {
        return Err(CryptoError::Malformed(format!(
            "the encrypted share of holder {:?} does not match the backup's public key set",
            holder.name
        )));
    }
    Ok(Approval {
        index: holder.index,
        holder: holder.name.clone(),
        share: backup.root_ciphertext.decryption_share(&share),
    })
}

/// Recovers the root secret from at least `threshold` distinct, valid approvals.
///
/// Every approval given is checked; an invalid one is an error naming its holder (it is not
/// skipped), as is a repeated holder.
pub fn recover(backup: &BackupKey, approvals: &[Approval]) -> Result<RootSecret, CryptoError> {
    let ct = backup.root_ciphertext.to_blsttc()?;
    let mut shares = BTreeMap::new();
    for approval in approvals {
        let holder = backup
            .holders
            .iter()
            .find(|h| h.index == approval.index)
            .ok_or_else(|| {
                CryptoError::UnknownHolder(format!(
                    "approval from {:?} has index {}, which no holder of this backup key has",
                    approval.holder, approval.index
                ))
            })?;
        if holder.name != approval.holder {
            return Err(CryptoError::Malformed(format!(
                "approval names holder {:?}, but index {} belongs to {:?}",
                approval.holder, approval.index, holder.name
            )));
        }
        if shares.contains_key(&approval.index) {
            return Err(CryptoError::DuplicateApproval);
        }
        let share = approval.share.to_blsttc()?;
        if !backup
            .public_key_set
            .public_key_share(approval.index)
            .verify_decryption_share(&share, &ct)
        {
            return Err(CryptoError::ApprovalRejected {
                holder: holder.name.clone(),
                index: holder.index,
            });
        }
        shares.insert(approval.index, share);
    }
    if shares.len() < backup.threshold {
        return Err(CryptoError::NotEnoughApprovals {
            needed: backup.threshold,
            got: shares.len(),
        });
    }
    let plaintext = Zeroizing::new(
        backup
            .public_key_set
            .decrypt(shares.iter().map(|(i, s)| (*i, s)), &ct)
            .map_err(|e| CryptoError::Malformed(format!("combining approvals: {e}")))?,
    );
    if plaintext.len() != KEYSERVER_ID_LEN + ROOT_SECRET_LEN {
        return Err(CryptoError::Malformed(format!(
            "recovered {} bytes, expected {}",
            plaintext.len(),
            KEYSERVER_ID_LEN + ROOT_SECRET_LEN
        )));
    }
    if plaintext[..KEYSERVER_ID_LEN] != backup.keyserver_id.as_bytes()[..] {
        return Err(CryptoError::WrongKeyserver);
    }
    RootSecret::from_bytes(&plaintext[KEYSERVER_ID_LEN..])
}
