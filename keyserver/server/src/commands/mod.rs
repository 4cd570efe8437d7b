//! The admin commands of `kss`, each working on a data directory.

pub mod admin_client;
pub mod admin_key;
pub mod audit;
pub mod cluster;
pub mod create;
pub mod profiles;
pub mod quota;
pub mod server_policy;
pub mod state;

use std::sync::Arc;

use anyhow::{Context, Result};
use kss_store::{Durability, MysqlStore, SqliteStore, Store, parse_db_uri_with_ca};

use crate::data_dir::DataDir;

/// Opens the keyserver's database: the shared one of `--db-uri`, else the data
/// directory's SQLite file (created if missing), with `durability` for SQLite.
pub async fn open_store_with(data_dir: &DataDir, durability: Durability) -> Result<Arc<dyn Store>> {
    data_dir.ensure()?;
    if let Some(uri) = data_dir.shared_db_uri()? {
        let options = parse_db_uri_with_ca(&uri, data_dir.db_ca_file.as_deref())
            .context("the shared database's address")?;
        let store = MysqlStore::connect(options)
            .await
            .context("opening the shared database (--db-uri)")?;
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open_with(&data_dir.database(), durability)
        .await
        .with_context(|| format!("opening {}", data_dir.database().display()))?;
    Ok(Arc::new(store))
}

/// [`open_store_with`] with every commit synced.
pub async fn open_store(data_dir: &DataDir) -> Result<Arc<dyn Store>> {
    open_store_with(data_dir, Durability::Full).await
}
