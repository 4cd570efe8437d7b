//! The database is not trusted for integrity: every profile row and policy version carries
//! a MAC under a key derived from the root secret ([`kss_crypto::RowKey`]), computed when the
//! keyserver writes the row and checked whenever it reads it. A row that fails the check is
//! refused (the request is denied, the policy version is not applied), logged once and
//! counted in `kss_integrity_failures_total{table}`; it is never used.
//!
//! Whoever can write the database can still delete rows or put back an older row with its
//! old MAC (rollback); see the README's threat model.
//!
//! Rows written before MACs existed (an upgraded database) are adopted once: on the first
//! start after the upgrade, told apart by the era sealed into the keyserver's identity
//! ([`Era`]), this keyserver MACs the rows without one (trust on first use, logged with the
//! counts) and seals its identity anew. From then on a row without a MAC is refused like a
//! forged one, whatever else is in the database.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::{Context, Result};
use kss_crypto::RowKey;
use kss_crypto::identity::{Era, SealedIdentity};
use kss_crypto::seal::MasterKey;
use kss_store::{PolicyVersion, Profile, Store};
use tracing::{info, warn};

use crate::identity::{KeyserverIdentity, sealed_of};
use crate::metrics::Metrics;

const PROFILES: &str = "profiles";
const POLICY_VERSIONS: &str = "policy_versions";

fn profile_fields(row: &Profile) -> Vec<Vec<u8>> {
    vec![
        row.profile_id.as_bytes().to_vec(),
        row.device_id.as_bytes().to_vec(),
        row.device_public_key.clone(),
        row.workstation_share.clone(),
        row.name.as_bytes().to_vec(),
        row.words.join(" ").into_bytes(),
        row.created_at_ms.to_be_bytes().to_vec(),
    ]
}

fn policy_fields(version: u64, text: &str, sha256: &str, at_ms: i64) -> Vec<Vec<u8>> {
    vec![
        version.to_be_bytes().to_vec(),
        text.as_bytes().to_vec(),
        sha256.as_bytes().to_vec(),
        at_ms.to_be_bytes().to_vec(),
    ]
}

fn refs(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

/// The MAC of a profile row (every field but the MAC itself).
pub fn profile_mac(key: &RowKey, row: &Profile) -> Vec<u8> {
    key.mac(PROFILES, &refs(&profile_fields(row))).to_vec()
}

/// The MAC of a policy version row.
pub fn policy_mac(key: &RowKey, version: u64, text: &str, sha256: &str, at_ms: i64) -> Vec<u8> {
    key.mac(
        POLICY_VERSIONS,
        &refs(&policy_fields(version, text, sha256, at_ms)),
    )
    .to_vec()
}

/// Checks rows read from the database, reporting each bad row once.
pub struct RowChecker {
    failed: Mutex<HashSet<(&'static str, String)>>,
}

impl Default for RowChecker {
    fn default() -> Self {
        RowChecker {
            failed: Mutex::new(HashSet::new()),
        }
    }
}

impl RowChecker {
    fn report(&self, metrics: &Metrics, table: &'static str, row: String) {
        metrics.integrity_failure(table);
        let first = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((table, row.clone()));
        if first {
            warn!(
                table,
                row,
                "a database row fails its integrity check (changed outside the keyserver): refused"
            );
        }
    }

    /// Whether a profile row is the one this keyserver wrote.
    pub fn profile_ok(&self, key: &RowKey, metrics: &Metrics, row: &Profile) -> bool {
        let ok = key
            .verify(PROFILES, &refs(&profile_fields(row)), &row.mac)
            .is_ok();
        if !ok {
            self.report(metrics, PROFILES, row.profile_id.clone());
        }
        ok
    }

    /// Whether a policy version row is the one this keyserver (or another instance with the
    /// same root secret) wrote.
    pub fn policy_ok(&self, key: &RowKey, metrics: &Metrics, row: &PolicyVersion) -> bool {
        let fields = policy_fields(row.version, &row.text, &row.sha256, row.loaded_at_ms);
        let ok = key
            .verify(POLICY_VERSIONS, &refs(&fields), &row.mac)
            .is_ok();
        if !ok {
            self.report(metrics, POLICY_VERSIONS, row.version.to_string());
        }
        ok
    }
}

/// Whether a profile row verifies (no reporting).
pub fn profile_verifies(key: &RowKey, row: &Profile) -> bool {
    key.verify(PROFILES, &refs(&profile_fields(row)), &row.mac)
        .is_ok()
}

/// Whether a policy version row verifies (no reporting).
pub fn policy_verifies(key: &RowKey, row: &PolicyVersion) -> bool {
    let fields = policy_fields(row.version, &row.text, &row.sha256, row.loaded_at_ms);
    key.verify(POLICY_VERSIONS, &refs(&fields), &row.mac)
        .is_ok()
}

/// Adopts rows written before MACs existed (see the module docs): only when the stored
/// identity was sealed before them ([`Era::RowsUnmacked`]), then seals it anew in the MAC
/// era so that it never happens again. Whoever can write the database cannot get a row
/// adopted by clearing MACs: the era is bound into the sealed root, which only the master
/// key's holder can seal.
pub async fn adopt_legacy_rows(
    store: &dyn Store,
    identity: &KeyserverIdentity,
    master: &MasterKey,
) -> Result<()> {
    const PAGE: u32 = 1000;
    let Some((row, era)) = stored_era(store, master).await? else {
        return Ok(());
    };
    if era.rows_macked() {
        return Ok(());
    }
    let key = identity.row_key();
    let mut profiles = 0u64;
    loop {
        let rows = store
            .profiles_without_mac(PAGE)
            .await
            .context("reading profiles")?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            if store
                .set_profile_mac(&row.profile_id, &profile_mac(key, row))
                .await
                .context("writing a profile's MAC")?
            {
                profiles += 1;
            }
        }
    }
    let policies = store
        .policies_without_mac()
        .await
        .context("reading policy versions")?;
    for row in &policies {
        let mac = policy_mac(key, row.version, &row.text, &row.sha256, row.loaded_at_ms);
        store
            .set_policy_mac(row.version, &mac)
            .await
            .context("writing a policy version's MAC")?;
    }
    reseal(store, identity, master, &row, Era::RowsMacked).await?;
    info!(
        profiles,
        policy_versions = policies.len(),
        "rows written before row MACs adopted (once, on the first start after the upgrade)"
    );
    Ok(())
}

/// Seals the stored identity in the chain era once the audit chain has started (the
/// caller has just started it), unless it is sealed so already: from then on, a chain
/// that looks as if it never started over audit rows is known to be stripped.
pub async fn seal_chain_started(
    store: &dyn Store,
    identity: &KeyserverIdentity,
    master: &MasterKey,
) -> Result<()> {
    let Some((row, era)) = stored_era(store, master).await? else {
        return Ok(());
    };
    if era.chain_started() {
        return Ok(());
    }
    reseal(store, identity, master, &row, Era::ChainStarted).await?;
    info!("the keyserver identity now records that the audit chain has started");
    Ok(())
}

/// The stored identity row and the era of its seal (`None`: no identity yet).
async fn stored_era(
    store: &dyn Store,
    master: &MasterKey,
) -> Result<Option<(kss_store::Identity, Era)>> {
    let Some(row) = store
        .identity()
        .await
        .context("reading the keyserver identity")?
    else {
        return Ok(None);
    };
    let (_, era) = sealed_of(&row)?
        .open_with_era(master)
        .context("opening the keyserver identity")?;
    Ok(Some((row, era)))
}

/// Replaces the stored seal (`row`) with one of `era`, if no other instance did first.
async fn reseal(
    store: &dyn Store,
    identity: &KeyserverIdentity,
    master: &MasterKey,
    row: &kss_store::Identity,
    era: Era,
) -> Result<()> {
    let resealed = SealedIdentity::seal_in(&identity.id, identity.root(), master, era);
    // False when another instance resealed first: the same era either way.
    store
        .reseal_identity(&row.keyserver_id, &row.sealed_root, &resealed.sealed_root)
        .await
        .with_context(|| format!("sealing the keyserver identity in the {era:?} era"))?;
    Ok(())
}
