//! The audit log as evidence: one keyed hash chain over every audit row, in commit order,
//! with MACed checkpoints and a MACed head.
//!
//! * Each row carries `chain_hash = MAC(key, "audit row v1", previous chain_hash, id, every
//!   field)`. The MAC is keyed (a key derived from the root secret, see [`AuditKey`]): whoever
//!   can write the database but lacks the root secret cannot recompute it, so an edited,
//!   inserted, deleted or moved row breaks the chain at that very row.
//! * The head (`audit_head`, one row, locked by every append) holds the last row's id and
//!   chain hash under a MAC: a deleted tail no longer ends where the head says.
//! * Checkpoints (`audit_checkpoints`) are MACed statements "the chain hash after row N is
//!   H", chained to each other: a genesis (where the chain starts, after the rows written
//!   before it existed), one every [`CHECKPOINT_EVERY`] rows, and one per prune (it stands
//!   for the rows pruned). The oldest checkpoint left is where verification starts.
//!
//! Rows get their ids from the chain (the largest id so far plus one, under the head's
//! lock), not from AUTO_INCREMENT, so that the MAC can cover the id in the same INSERT.
//!
//! The store never holds the key: the server hands it an [`AuditKey`], as it hands
//! row MACs to [`crate::Store::add_policy`].

use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::{AuditEntry, AuditRecord, Result, StoreError};

/// Length of a chain hash, a checkpoint MAC and the head's MAC.
pub const CHAIN_HASH_LEN: usize = 32;
/// A periodic checkpoint is written once this many rows were appended since the last one.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// The chain hash "before the first row" of a genesis.
const GENESIS_HASH: [u8; CHAIN_HASH_LEN] = [0; CHAIN_HASH_LEN];

const ROW_DOMAIN: &str = "audit row v1";
const CHECKPOINT_DOMAIN: &str = "audit checkpoint v1";
const HEAD_DOMAIN: &str = "audit head v1";

/// The keyed half of the chain: HMAC-SHA256 over a domain and fields, each length-prefixed
/// (an unambiguous encoding). The server implements it with a key derived from the root
/// secret; the store only calls it.
pub trait AuditKey: Send + Sync {
    fn mac(&self, domain: &str, fields: &[&[u8]]) -> [u8; CHAIN_HASH_LEN];

    /// Whether the keyserver's identity says its audit chain has started (sealed under
    /// the master key, so whoever can write the database cannot make it say otherwise).
    /// Then a chain that looks as if it never started, over audit rows, was stripped: no
    /// genesis is made after them and verification fails.
    fn chain_started(&self) -> bool {
        false
    }
}

/// Where a store keeps the key it was given (shared by its clones).
#[derive(Clone, Default)]
pub(crate) struct KeySlot(Arc<RwLock<Option<Arc<dyn AuditKey>>>>);

impl KeySlot {
    pub fn set(&self, key: Arc<dyn AuditKey>) {
        // Whole-value writes: a poisoned lock still holds a consistent value.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    pub fn get(&self) -> Result<Arc<dyn AuditKey>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::AuditChain(
                    "this process has not loaded the audit key (the keyserver identity)".into(),
                )
            })
    }
}

impl std::fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySlot(<key>)")
    }
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Where the chain starts; rows at or before it were written before the chain existed.
    Genesis,
    Periodic,
    /// Rows at or before it were pruned; it stands for them.
    Prune,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Genesis => "genesis",
            CheckpointKind::Periodic => "periodic",
            CheckpointKind::Prune => "prune",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "genesis" => Ok(CheckpointKind::Genesis),
            "periodic" => Ok(CheckpointKind::Periodic),
            "prune" => Ok(CheckpointKind::Prune),
            other => Err(StoreError::Corrupt(format!(
                "audit checkpoint kind '{other}'"
            ))),
        }
    }
}

/// "The chain hash after row `last_id` is `last_hash`", MACed and chained to the checkpoint
/// before it (`prev_mac`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub kind: CheckpointKind,
    pub last_id: u64,
    pub last_hash: Vec<u8>,
    pub at_ms: i64,
    pub prev_mac: Vec<u8>,
    pub mac: Vec<u8>,
}

/// The end of the chain. An empty `mac` (and `checkpoint_seq` 0): the chain has not started
/// (a database migrated from before the chain, until its first keyed write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub last_id: u64,
    pub last_hash: Vec<u8>,
    pub checkpoint_seq: u64,
    pub checkpoint_mac: Vec<u8>,
    /// Rows appended since the latest checkpoint.
    pub since_checkpoint: u64,
    pub at_ms: i64,
    pub mac: Vec<u8>,
}

fn tagged(value: Option<&[u8]>) -> [&[u8]; 2] {
    match value {
        Some(v) => [&[1], v],
        None => [&[0], &[]],
    }
}

/// The chain hash of row `id` holding `r`, after a row whose chain hash is `prev`.
pub fn row_hash(key: &dyn AuditKey, prev: &[u8], id: u64, r: &AuditRecord) -> [u8; 32] {
    let id = id.to_be_bytes();
    let at = r.at_ms.to_be_bytes();
    let rule_set = r.rule_set.map(|v| u64::from(v).to_be_bytes());
    let policy_version = r.policy_version.map(u64::to_be_bytes);
    let mut fields: Vec<&[u8]> = vec![
        prev,
        &id,
        &at,
        r.instance_id.as_bytes(),
        r.request_type.as_bytes(),
        r.meta.as_bytes(),
        r.cryptographic_id.as_bytes(),
        r.decision.as_str().as_bytes(),
    ];
    for value in [
        r.profile_id.as_deref().map(str::as_bytes),
        r.device_id.as_deref().map(str::as_bytes),
        rule_set.as_ref().map(|v| v.as_slice()),
        r.reason.as_deref().map(str::as_bytes),
        policy_version.as_ref().map(|v| v.as_slice()),
        r.nonce.as_deref(),
        r.ciphertext_sha256.as_deref(),
        r.actor.as_deref().map(str::as_bytes),
    ] {
        fields.extend(tagged(value));
    }
    key.mac(ROW_DOMAIN, &fields)
}

fn checkpoint_mac(key: &dyn AuditKey, c: &Checkpoint) -> [u8; 32] {
    key.mac(
        CHECKPOINT_DOMAIN,
        &[
            &c.seq.to_be_bytes(),
            c.kind.as_str().as_bytes(),
            &c.last_id.to_be_bytes(),
            &c.last_hash,
            &c.at_ms.to_be_bytes(),
            &c.prev_mac,
        ],
    )
}

fn head_mac(key: &dyn AuditKey, h: &ChainHead) -> [u8; 32] {
    key.mac(
        HEAD_DOMAIN,
        &[
            &h.last_id.to_be_bytes(),
            &h.last_hash,
            &h.checkpoint_seq.to_be_bytes(),
            &h.checkpoint_mac,
            &h.since_checkpoint.to_be_bytes(),
            &h.at_ms.to_be_bytes(),
        ],
    )
}

/// Compares a computed MAC with a stored one in constant time.
fn same(computed: &[u8; 32], stored: &[u8]) -> bool {
    stored.len() == computed.len()
        && computed
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl Checkpoint {
    fn sealed(mut self, key: &dyn AuditKey) -> Self {
        self.mac = checkpoint_mac(key, &self).to_vec();
        self
    }
}

impl ChainHead {
    fn sealed(mut self, key: &dyn AuditKey) -> Self {
        self.mac = head_mac(key, &self).to_vec();
        self
    }

    fn is_started(&self) -> bool {
        !self.mac.is_empty() || self.checkpoint_seq != 0
    }

    /// The head's own MAC holds.
    fn verifies(&self, key: &dyn AuditKey) -> bool {
        same(&head_mac(key, self), &self.mac)
    }
}

/// What one append writes: the rows' ids and chain hashes, the checkpoints to insert and
/// the new head.
#[derive(Debug)]
pub(crate) struct Extension {
    pub rows: Vec<(u64, [u8; 32])>,
    pub checkpoints: Vec<Checkpoint>,
    pub head: ChainHead,
}

impl Extension {
    /// Nothing to write (no rows, and the chain had started).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.checkpoints.is_empty()
    }
}

/// The head as stored must be authentic before anything is chained to it: chaining to a
/// forged or rolled-back head would vouch for it.
fn trusted_state(key: &dyn AuditKey, head: &ChainHead) -> Result<()> {
    if !head.verifies(key) {
        return Err(StoreError::AuditChain(format!(
            "the head of the audit chain (row {}, checkpoint {}) does not verify: it was \
             edited or rolled back in the database. No audit record is written until this \
             is resolved; `kss audit verify` names the damage",
            head.last_id, head.checkpoint_seq
        )));
    }
    Ok(())
}

/// What a backend found around the head before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Surroundings {
    /// The audit table's largest id.
    pub max_id: u64,
    /// The chain has left no trace (no checkpoint, no chained row); asked only when the
    /// head says the chain has not started.
    pub genesis_allowed: bool,
    /// A chained row exists after the head's last row; asked only when `max_id` is past
    /// the head.
    pub chained_after_head: bool,
    /// An operator's `kss audit restart`: a new genesis after whatever rows there are.
    pub restart: bool,
}

/// Plans appending `records` after `head` (read under its lock).
pub(crate) fn extend(
    key: &dyn AuditKey,
    head: &ChainHead,
    around: Surroundings,
    records: &[AuditRecord],
    now_ms: i64,
) -> Result<Extension> {
    let Surroundings {
        max_id,
        genesis_allowed,
        chained_after_head,
        restart,
    } = around;
    let mut checkpoints = Vec::new();
    let mut next = if head.is_started() {
        trusted_state(key, head)?;
        if chained_after_head {
            // Only a chained writer writes chained rows, and it moves the head: this head
            // is an older one put back.
            return Err(StoreError::AuditChain(format!(
                "chained audit rows exist after the head of the audit chain (row {}): the \
                 head was rolled back in the database. No audit record is written until \
                 this is resolved; `kss audit verify` names the damage",
                head.last_id
            )));
        }
        head.clone()
    } else {
        if key.chain_started() && max_id > 0 && !restart {
            return Err(StoreError::AuditChain(
                "the audit chain looks as if it never started (its head has no MAC) over \
                 existing audit rows, but the keyserver's identity says it has started: the \
                 chain was stripped in the database. No audit record is written until this is \
                 resolved; `kss audit verify` names the damage"
                    .into(),
            ));
        }
        if !genesis_allowed {
            return Err(StoreError::AuditChain(
                "the head of the audit chain was reset (it has no MAC) although the chain \
                 has checkpoints or chained rows: the audit log was tampered with. No audit \
                 record is written until this is resolved; `kss audit verify` names the \
                 damage"
                    .into(),
            ));
        }
        // The rows there are were written before the chain: it starts after them.
        let genesis = Checkpoint {
            seq: 1,
            kind: CheckpointKind::Genesis,
            last_id: head.last_id.max(max_id),
            last_hash: GENESIS_HASH.to_vec(),
            at_ms: now_ms,
            prev_mac: Vec::new(),
            mac: Vec::new(),
        }
        .sealed(key);
        let started = ChainHead {
            last_id: genesis.last_id,
            last_hash: genesis.last_hash.clone(),
            checkpoint_seq: genesis.seq,
            checkpoint_mac: genesis.mac.clone(),
            since_checkpoint: 0,
            at_ms: now_ms,
            mac: Vec::new(),
        };
        checkpoints.push(genesis);
        started
    };
    // Rows a writer without the chain added after the head (an older kss during an
    // upgrade) keep their ids; verification reports them.
    let mut id = next.last_id.max(max_id);
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        id += 1;
        let hash = row_hash(key, &next.last_hash, id, r);
        rows.push((id, hash));
        next.last_id = id;
        next.last_hash = hash.to_vec();
        next.since_checkpoint += 1;
    }
    if next.since_checkpoint >= CHECKPOINT_EVERY {
        let periodic = Checkpoint {
            seq: next.checkpoint_seq + 1,
            kind: CheckpointKind::Periodic,
            last_id: next.last_id,
            last_hash: next.last_hash.clone(),
            at_ms: now_ms,
            prev_mac: next.checkpoint_mac.clone(),
            mac: Vec::new(),
        }
        .sealed(key);
        next.checkpoint_seq = periodic.seq;
        next.checkpoint_mac = periodic.mac.clone();
        next.since_checkpoint = 0;
        checkpoints.push(periodic);
    }
    next.at_ms = now_ms;
    Ok(Extension {
        rows,
        checkpoints,
        head: next.sealed(key),
    })
}

/// Plans a restart: a new genesis after every row there is (they are then reported as not
/// covered), with `record` (saying why) as the new chain's first row. For an operator who
/// has examined a broken chain and must let the keyserver write again.
pub(crate) fn restart(
    key: &dyn AuditKey,
    max_id: u64,
    record: &AuditRecord,
    now_ms: i64,
) -> Result<Extension> {
    let pending = ChainHead {
        last_id: max_id,
        last_hash: Vec::new(),
        checkpoint_seq: 0,
        checkpoint_mac: Vec::new(),
        since_checkpoint: 0,
        at_ms: 0,
        mac: Vec::new(),
    };
    let around = Surroundings {
        max_id,
        genesis_allowed: true,
        chained_after_head: false,
        restart: true,
    };
    extend(key, &pending, around, std::slice::from_ref(record), now_ms)
}

/// What a prune writes: the checkpoint that stands for the rows pruned (none when only
/// rows from before the chain go) and the new head.
#[derive(Debug)]
pub(crate) struct PruneWrite {
    pub checkpoint: Option<Checkpoint>,
    pub head: ChainHead,
}

/// Plans pruning every row up to `through`, whose verified chain hash is `hash` (`None`:
/// the rows are from before the chain), after `head` (read under its lock).
pub(crate) fn prune_write(
    key: &dyn AuditKey,
    head: &ChainHead,
    through: u64,
    hash: Option<&[u8]>,
    now_ms: i64,
) -> Result<PruneWrite> {
    trusted_state(key, head)?;
    let Some(hash) = hash else {
        return Ok(PruneWrite {
            checkpoint: None,
            head: head.clone(),
        });
    };
    let checkpoint = Checkpoint {
        seq: head.checkpoint_seq + 1,
        kind: CheckpointKind::Prune,
        last_id: through,
        last_hash: hash.to_vec(),
        at_ms: now_ms,
        prev_mac: head.checkpoint_mac.clone(),
        mac: Vec::new(),
    }
    .sealed(key);
    let next = ChainHead {
        checkpoint_seq: checkpoint.seq,
        checkpoint_mac: checkpoint.mac.clone(),
        at_ms: now_ms,
        ..head.clone()
    }
    .sealed(key);
    Ok(PruneWrite {
        checkpoint: Some(checkpoint),
        head: next,
    })
}

/// Reads the chain, in one consistent snapshot (a read transaction).
#[async_trait]
pub(crate) trait ChainReader: Send {
    async fn head(&mut self) -> Result<Option<ChainHead>>;
    /// Every checkpoint, by sequence number.
    async fn checkpoints(&mut self) -> Result<Vec<Checkpoint>>;
    /// How many rows have an id at most `id`.
    async fn count_through(&mut self, id: u64) -> Result<u64>;
    /// Up to `limit` rows with an id above `after`, by id.
    async fn page(&mut self, after: u64, limit: u32) -> Result<Vec<AuditEntry>>;
    /// The id of the first row stamped at or after `at_ms`, if any.
    async fn first_id_since(&mut self, at_ms: i64) -> Result<Option<u64>>;
}

/// What a verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// `false`: the chain has not started (a database from before the chain that no keyed
    /// process has written to yet); only `uncovered` is meaningful.
    pub started: bool,
    /// Rows verified in the chain.
    pub rows: u64,
    /// Their first and last ids (`None` when there are none).
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Where verification started (the oldest checkpoint: a genesis or a prune).
    pub anchor: Option<Checkpoint>,
    /// Rows at or before a genesis: written before the chain existed, not covered.
    pub uncovered: u64,
    /// When the head was last written.
    pub head_at_ms: Option<i64>,
    /// The chain hash after the last row verified.
    pub last_hash: Vec<u8>,
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampering {
    /// The first bad (edited, missing, inserted, moved) row, when one row can be named.
    pub row: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Tampering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    Intact(ChainReport),
    Tampered(Tampering),
}

fn tampered(row: Option<u64>, what: String) -> Result<ChainVerdict> {
    Ok(ChainVerdict::Tampered(Tampering { row, what }))
}

const VERIFY_PAGE: u32 = 500;

/// Verifies the whole chain (`through: None`), or its rows up to `through` only (what a
/// prune is about to remove).
pub(crate) async fn verify(
    reader: &mut dyn ChainReader,
    key: &dyn AuditKey,
    through: Option<u64>,
) -> Result<ChainVerdict> {
    let Some(head) = reader.head().await? else {
        return tampered(None, "the audit chain's head row is missing".into());
    };
    let checkpoints = reader.checkpoints().await?;
    if !head.is_started() {
        if let Some(c) = checkpoints.first() {
            return tampered(
                None,
                format!(
                    "the audit chain's head was reset (no MAC) while checkpoint {} exists",
                    c.seq
                ),
            );
        }
        let verdict = not_started(reader).await?;
        if key.chain_started()
            && let ChainVerdict::Intact(report) = &verdict
            && report.uncovered > 0
        {
            let first = reader.page(0, 1).await?;
            return tampered(
                first.first().map(|e| e.id),
                format!(
                    "the audit chain looks as if it never started (no checkpoint, no MAC on \
                     its head) over {} row(s), but the keyserver's identity says it has \
                     started: the chain was stripped",
                    report.uncovered
                ),
            );
        }
        return Ok(verdict);
    }
    if !head.verifies(key) {
        return tampered(
            None,
            format!(
                "the audit chain's head (row {}, checkpoint {}) does not verify: it was edited, \
                 forged or replaced",
                head.last_id, head.checkpoint_seq
            ),
        );
    }
    if let Some(verdict) = check_checkpoints(key, &head, &checkpoints) {
        return Ok(verdict);
    }
    let Some(anchor) = checkpoints.first() else {
        return tampered(None, "no checkpoint left".into());
    };
    let uncovered = reader.count_through(anchor.last_id).await?;
    if anchor.kind == CheckpointKind::Prune && uncovered > 0 {
        let first = reader.page(0, 1).await?;
        return tampered(
            first.first().map(|e| e.id),
            format!(
                "{uncovered} row(s) at or before the prune checkpoint {} (rows up to {} were \
                 pruned) exist: inserted",
                anchor.seq, anchor.last_id
            ),
        );
    }

    let mut prev_id = anchor.last_id;
    let mut prev_hash = anchor.last_hash.clone();
    let mut rows = 0u64;
    let mut first_id = None;
    let mut ahead = checkpoints.iter().skip(1).peekable();
    'pages: loop {
        let page = reader.page(prev_id, VERIFY_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if through.is_some_and(|t| e.id > t) {
                break 'pages;
            }
            if e.id > head.last_id {
                return tampered(
                    Some(e.id),
                    format!(
                        "row {} is after the end of the chain (row {}): inserted",
                        e.id, head.last_id
                    ),
                );
            }
            if let Some(c) = ahead.peek()
                && c.last_id < e.id
            {
                return tampered(
                    Some(c.last_id),
                    format!(
                        "row {} (covered by checkpoint {}) is missing: deleted",
                        c.last_id, c.seq
                    ),
                );
            }
            let Some(stored) = &e.chain_hash else {
                return tampered(
                    Some(e.id),
                    format!(
                        "row {} is not in the chain (no chain hash): inserted without the audit \
                         key (or by a kss older than the chain)",
                        e.id
                    ),
                );
            };
            let hash = row_hash(key, &prev_hash, e.id, &e.record);
            if !same(&hash, stored) {
                return if e.id != prev_id + 1 {
                    tampered(
                        Some(prev_id + 1),
                        format!(
                            "row {} is missing (deleted): row {} does not follow row {prev_id}",
                            prev_id + 1,
                            e.id
                        ),
                    )
                } else {
                    tampered(
                        Some(e.id),
                        format!(
                            "row {} does not verify: it was edited, replaced, or moved (rows \
                             reordered)",
                            e.id
                        ),
                    )
                };
            }
            while let Some(c) = ahead.next_if(|c| c.last_id == e.id) {
                if !same(&hash, &c.last_hash) {
                    return tampered(
                        Some(e.id),
                        format!(
                            "row {} is not the row checkpoint {} vouches for",
                            e.id, c.seq
                        ),
                    );
                }
            }
            first_id.get_or_insert(e.id);
            prev_id = e.id;
            prev_hash = hash.to_vec();
            rows += 1;
        }
    }
    if through.is_none() {
        if let Some(c) = ahead.next() {
            return tampered(
                Some(c.last_id.min(prev_id + 1)),
                format!(
                    "row {} (covered by checkpoint {}) is missing: deleted",
                    prev_id + 1,
                    c.seq
                ),
            );
        }
        if prev_id < head.last_id {
            return tampered(
                Some(prev_id + 1),
                format!(
                    "rows {}..={} are missing (the tail was deleted): the chain's head ends at \
                     row {}",
                    prev_id + 1,
                    head.last_id,
                    head.last_id
                ),
            );
        }
        if prev_hash != head.last_hash {
            return tampered(
                Some(prev_id),
                format!("row {prev_id} is not the row the chain's head vouches for"),
            );
        }
    }
    Ok(ChainVerdict::Intact(ChainReport {
        started: true,
        rows,
        first_id,
        last_id: first_id.map(|_| prev_id),
        checkpoints: checkpoints.len() as u64,
        anchor: Some(anchor.clone()),
        uncovered,
        head_at_ms: Some(head.at_ms),
        last_hash: prev_hash,
    }))
}

/// Checks the checkpoints' MACs, their sequence and that the head names the latest.
fn check_checkpoints(
    key: &dyn AuditKey,
    head: &ChainHead,
    checkpoints: &[Checkpoint],
) -> Option<ChainVerdict> {
    let bad = |what: String| Some(ChainVerdict::Tampered(Tampering { row: None, what }));
    let Some(first) = checkpoints.first() else {
        return bad(format!(
            "every audit checkpoint is missing (the head names checkpoint {})",
            head.checkpoint_seq
        ));
    };
    if first.kind == CheckpointKind::Periodic {
        return bad(format!(
            "the oldest audit checkpoint left ({}) is neither a genesis nor a prune: the \
             checkpoints before it were deleted",
            first.seq
        ));
    }
    let mut before: Option<&Checkpoint> = None;
    for c in checkpoints {
        if !same(&checkpoint_mac(key, c), &c.mac) {
            return bad(format!(
                "audit checkpoint {} does not verify: edited or forged",
                c.seq
            ));
        }
        if let Some(b) = before {
            if c.seq != b.seq + 1 {
                return bad(format!(
                    "audit checkpoint {} is missing: deleted",
                    b.seq + 1
                ));
            }
            if c.prev_mac != b.mac || c.last_id < b.last_id || c.kind != CheckpointKind::Periodic {
                return bad(format!(
                    "audit checkpoint {} does not follow checkpoint {}",
                    c.seq, b.seq
                ));
            }
        }
        before = Some(c);
    }
    let last = before?;
    if last.seq != head.checkpoint_seq || last.mac != head.checkpoint_mac {
        return if last.seq > head.checkpoint_seq {
            bad(format!(
                "audit checkpoint {} is newer than the chain's head (which names checkpoint {}): \
                 the head was rolled back",
                last.seq, head.checkpoint_seq
            ))
        } else {
            bad(format!(
                "audit checkpoint {} is missing (the chain's head names it): deleted",
                head.checkpoint_seq
            ))
        };
    }
    None
}

/// The chain has not started: every row must be from before it.
async fn not_started(reader: &mut dyn ChainReader) -> Result<ChainVerdict> {
    let mut after = 0;
    let mut uncovered = 0;
    loop {
        let page = reader.page(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        if let Some(e) = page.iter().find(|e| e.chain_hash.is_some()) {
            return tampered(
                Some(e.id),
                format!(
                    "row {} carries a chain hash but the chain's head says the chain has not \
                     started: the head was reset",
                    e.id
                ),
            );
        }
        uncovered += page.len() as u64;
    }
    Ok(ChainVerdict::Intact(ChainReport {
        started: false,
        rows: 0,
        first_id: None,
        last_id: None,
        checkpoints: 0,
        anchor: None,
        uncovered,
        head_at_ms: None,
        last_hash: Vec::new(),
    }))
}

/// What a prune is to do, decided on a verified snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrunePlan {
    /// Rows with an id up to this one go.
    pub through: u64,
    /// The verified chain hash of row `through`; `None` when only rows from before the
    /// chain go.
    pub hash: Option<Vec<u8>>,
}

/// The result of [`crate::Store::prune_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneOutcome {
    /// Nothing was older than the cut.
    Nothing,
    /// Rows up to `through` were deleted; `checkpoint` stands for them (none if they were
    /// all from before the chain).
    Pruned {
        through: u64,
        rows: u64,
        checkpoint: Option<u64>,
    },
    /// The rows to prune do not verify: nothing deleted, the evidence is kept.
    Refused(Tampering),
}

/// Decides what pruning every row stamped before `before_ms` means: the longest run of
/// rows from the start of the table whose times are all before it (a row stamped later
/// keeps every row after it, whatever their stamps), verified first.
pub(crate) async fn plan_prune(
    reader: &mut dyn ChainReader,
    key: &dyn AuditKey,
    before_ms: i64,
) -> Result<std::result::Result<Option<PrunePlan>, Tampering>> {
    let Some(head) = reader.head().await? else {
        return Ok(Err(Tampering {
            row: None,
            what: "the audit chain's head row is missing".into(),
        }));
    };
    if !head.is_started() {
        return Err(StoreError::AuditChain(
            "the audit chain has not started: start the server once (or write an audit \
             record) before pruning"
                .into(),
        ));
    }
    let Some(first) = reader.page(0, 1).await?.into_iter().next() else {
        return Ok(Ok(None));
    };
    let through = match reader.first_id_since(before_ms).await? {
        Some(id) => id.saturating_sub(1),
        None => head.last_id.max(first.id),
    }
    .min(head.last_id);
    if through < first.id {
        return Ok(Ok(None));
    }
    let anchor_id = reader
        .checkpoints()
        .await?
        .first()
        .map_or(head.last_id, |c| c.last_id);
    if through <= anchor_id {
        // Only rows from before the chain: nothing to vouch for.
        return Ok(Ok(Some(PrunePlan {
            through,
            hash: None,
        })));
    }
    match verify(reader, key, Some(through)).await? {
        ChainVerdict::Tampered(t) => Ok(Err(t)),
        ChainVerdict::Intact(report) => {
            if report.last_id != Some(through) {
                return Ok(Err(Tampering {
                    row: Some(through),
                    what: format!("row {through}, the last to prune, is missing"),
                }));
            }
            Ok(Ok(Some(PrunePlan {
                through,
                hash: Some(report.last_hash),
            })))
        }
    }
}

/// Splits `items` into runs of at most `max_rows` items and about `max_bytes` bytes (an item
/// larger than that goes alone), so one statement stays below the server's packet limit.
pub(crate) fn chunks<T>(
    items: &[T],
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (i - start >= max_rows || bytes + n > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// About how many bytes a record takes in an INSERT.
pub(crate) fn record_bytes(r: &AuditRecord) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    256 + r.instance_id.len()
        + r.request_type.len()
        + r.meta.len()
        + r.cryptographic_id.len()
        + text(&r.profile_id)
        + text(&r.device_id)
        + text(&r.reason)
        + text(&r.actor)
        + r.nonce.as_ref().map_or(0, Vec::len)
        + r.ciphertext_sha256.as_ref().map_or(0, Vec::len)
}

/// Largest INSERT of audit rows (bytes): well below MariaDB's default `max_allowed_packet`
/// (16 MiB) and MySQL 8's (64 MiB).
pub(crate) const MAX_INSERT_BYTES: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunks_split_by_rows_and_by_bytes() {
        let sizes = [1usize, 1, 1, 1, 1];
        let by_rows: Vec<usize> = chunks(&sizes, 2, 100, |s| *s)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(by_rows, [2, 2, 1]);
        let big = [3usize, 3, 10, 1, 1];
        let by_bytes: Vec<usize> = chunks(&big, 100, 6, |s| *s)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(by_bytes, [2, 1, 2]);
        assert!(chunks(&[] as &[usize], 2, 2, |s| *s).is_empty());
    }
}
