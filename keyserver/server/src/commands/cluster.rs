//! Cluster mode: `kss initialize` (join an instance to a cluster database),
//! `kss clone-db` (turn a standalone keyserver into a cluster), `kss instance list`.
//!
//! What an instance needs to join is the cluster's database address and its **master
//! key**: the database holds the keyserver's root secret sealed with that key, so the
//! database alone (a dump, a replica, a stolen backup) reveals nothing, and an instance
//! without the key cannot serve. The key travels out of band, as a secret: a file of mode
//! 0600 copied from the first instance, or a Kubernetes Secret mounted read-only
//! (`--master-key-file`), which is what the operator does. `kss initialize` proves the key
//! opens this cluster's identity before the instance is set up.

use anyhow::{Context, Result, bail};
use kss_store::{
    LeaseClaim, MysqlStore, Registry, SqliteStore, Store, clone_sqlite_into_mysql, parse_db_uri,
};

use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;
use crate::rollout;
use crate::standalone;

/// How long `clone-db` holds the standalone lease (released when it ends).
const CLONE_LEASE_MS: i64 = 10 * 60 * 1000;

async fn connect(uri: &str) -> Result<MysqlStore> {
    let options = parse_db_uri(uri).context("the database address")?;
    MysqlStore::connect(options)
        .await
        .context("connecting to the cluster database")
}

/// Refuses a data directory that holds a standalone keyserver's database.
async fn refuse_standalone_data(data_dir: &DataDir, what: &str) -> Result<()> {
    if !data_dir.database().exists() {
        return Ok(());
    }
    let sqlite = SqliteStore::open(&data_dir.database()).await?;
    let identity = sqlite.identity().await?;
    sqlite.close().await;
    if let Some(id) = identity {
        bail!(
            "{} holds standalone keyserver {}; {what}",
            data_dir.root.display(),
            id.keyserver_id
        );
    }
    Ok(())
}

/// `kss initialize --db-uri URI`: sets this data directory up as one more instance of the
/// cluster whose database is URI (same keyserver ID). Nothing is written to the database.
pub async fn initialize(data_dir: &DataDir) -> Result<()> {
    let uri = data_dir.given_db_uri()?.context(
        "kss initialize needs --db-uri (or --db-uri-file): the cluster's shared database",
    )?;
    data_dir.ensure()?;
    refuse_standalone_data(
        data_dir,
        "an instance joins with a data directory of its own (to turn this keyserver into a \
         cluster, run `kss clone-db`)",
    )
    .await?;
    let store = connect(&uri).await?;
    let row = store.identity().await?;
    store.close().await;
    let row = row.context(
        "this database holds no keyserver yet: create one with `kss create --db-uri` first",
    )?;
    let master = data_dir.read_master_key().with_context(|| {
        format!(
            "the cluster's master key is needed to join: copy it (mode 0600) from the \
             instance that ran `kss create` to {}, or pass --master-key-file",
            data_dir.master_key.display()
        )
    })?;
    let identity = KeyserverIdentity::unseal(&row, &master)?;
    // An address given inline is saved for later commands; a file stays the one source.
    let saved_in = match &data_dir.given_db_uri_file {
        Some(path) => format!("read from {} at every start", path.display()),
        None => {
            data_dir.save_db_uri(&uri)?;
            format!("saved in {}", data_dir.db_uri_file().display())
        }
    };
    println!("{}", identity.id);
    eprintln!(
        "instance initialized: it serves keyserver {} from the cluster database (address \
         {saved_in}); start it with `kss serve`",
        identity.id,
    );
    Ok(())
}

/// `kss clone-db NEW_URI`: copies this standalone keyserver (its SQLite database) into an
/// empty cluster database; from then on this data directory uses the cluster database.
pub async fn clone_db(data_dir: &DataDir, new_uri: &str) -> Result<()> {
    if data_dir.shared_db_uri()?.is_some() {
        bail!(
            "{} already uses a shared database ({}); clone-db converts a standalone keyserver",
            data_dir.root.display(),
            data_dir.db_uri_file().display()
        );
    }
    let path = data_dir.database();
    if !path.exists() {
        bail!(
            "no standalone keyserver in {} (no {})",
            data_dir.root.display(),
            path.display()
        );
    }
    let source = SqliteStore::open(&path).await?;
    if source.identity().await?.is_none() {
        bail!("{} holds no keyserver identity", data_dir.root.display());
    }
    // No server may decide anything while the copy is made.
    let holder = format!("kss clone-db/{}", std::process::id());
    let lease = match source
        .claim_lease(standalone::LEASE_NAME, &holder, CLONE_LEASE_MS)
        .await?
    {
        LeaseClaim::Granted { lease, .. } => lease,
        LeaseClaim::HeldBy { holder, .. } => bail!(
            "a kss server ({holder}) is running on {}: stop it first, so that no decision is \
             made during the copy",
            data_dir.root.display()
        ),
    };
    let target = connect(new_uri).await?;
    let copied = clone_sqlite_into_mysql(&source, &target).await;
    target.close().await;
    let counts = match copied {
        Ok(counts) => counts,
        Err(e) => {
            let _ = source.release_lease(&lease).await;
            source.close().await;
            return Err(e).context("copying into the cluster database (it was left unchanged)");
        }
    };
    source.close().await;
    // The standalone database must never serve again: its ID now lives in the cluster.
    let retired = path.with_extension("db.cloned");
    std::fs::rename(&path, &retired)
        .with_context(|| format!("renaming {} to {}", path.display(), retired.display()))?;
    data_dir.save_db_uri(new_uri)?;
    println!("{}", counts.keyserver_id);
    eprintln!(
        "keyserver {} is now a cluster: copied {} profiles, {} policy versions, {} quota \
         counters, {} audit records. The SQLite file was kept as {}. Start this instance with \
         `kss serve`; add instances with `kss initialize --db-uri` and this master key.",
        counts.keyserver_id,
        counts.profiles,
        counts.policy_versions,
        counts.quota_counters,
        counts.audit_records,
        retired.display()
    );
    Ok(())
}

/// `kss instance list`.
pub async fn list(store: &dyn Store, as_json: bool) -> Result<()> {
    let report = rollout::instances(store)
        .await
        .context("reading the instance registry")?;
    if as_json {
        let value = serde_json::json!({
            "policy_version": report.policy_version,
            "online": report.online,
            "up_to_date": report.up_to_date,
            "instances": report
                .instances
                .iter()
                .map(|i| rollout::instance_json(i, report.now_ms))
                .collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    print!("{}", rollout::instance_table(&report));
    println!(
        "{} online; {} applied the policy version in force ({})",
        report.online, report.up_to_date, report.policy_version
    );
    Ok(())
}
