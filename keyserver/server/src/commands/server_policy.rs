//! `kss policy load` and `kss policy dump --current`: the policy in the keyserver's
//! database. A running server applies a new version within its poll interval.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use kss_policy::Policy;
use kss_store::Store;
use sha2::{Digest, Sha256};

use crate::identity::now_ms;

pub async fn load(store: &dyn Store, file: &Path) -> Result<()> {
    // Validate whole before storing: an invalid policy changes nothing.
    let (text, policy) = crate::policy_cmd::read(file)
        .map_err(|e| anyhow!("{e:#}; the policy in force is unchanged"))?;
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    if let Some(current) = store.policy(None).await?
        && current.sha256 == sha
    {
        println!(
            "policy unchanged (version {} has the same text)",
            current.version
        );
        return Ok(());
    }
    let version = store.add_policy(&text, &sha, now_ms()).await?;
    println!("policy version {version} stored ({})", policy.summary());
    Ok(())
}

pub async fn dump_current(store: &dyn Store, out: &Path) -> Result<()> {
    let current = store
        .policy(None)
        .await?
        .context("no policy has been loaded (`kss policy load FILE`)")?;
    let policy = Policy::load(&current.text).map_err(|e| {
        anyhow!(
            "stored policy version {} does not load: {e}",
            current.version
        )
    })?;
    std::fs::write(out, policy.dump()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "policy version {} written to {}",
        current.version,
        out.display()
    );
    Ok(())
}
