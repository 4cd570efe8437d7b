//! The admin commands of `kss`, each working on a data directory.

pub mod admin_client;
pub mod admin_key;
pub mod audit;
pub mod create;
pub mod quota;
pub mod server_policy;
pub mod state;

use std::sync::Arc;

use anyhow::{Context, Result};
use kss_store::{SqliteStore, Store};

use crate::data_dir::DataDir;

/// Opens the data directory's database (creating it if missing).
pub async fn open_store(data_dir: &DataDir) -> Result<Arc<dyn Store>> {
    data_dir.ensure()?;
    let store = SqliteStore::open(&data_dir.database())
        .await
        .with_context(|| format!("opening {}", data_dir.database().display()))?;
    Ok(Arc::new(store))
}
