//! Where a keyserver keeps its files: the SQLite database, the master key, the
//! self-signed TLS material and the admin socket.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use kss_crypto::seal::MasterKey;
use kss_store::{Durability, MysqlStore, SqliteStore, Store, parse_db_uri_with_ca};

/// Options every command that works on a keyserver's state takes.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// The keyserver's data directory (SQLite database, master key, TLS material).
    #[arg(
        long,
        env = "KSS_DATA_DIR",
        default_value = "./kss-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The master key that seals the keyserver's secrets at rest. Defaults to
    /// `<data-dir>/master.key`; keep it elsewhere (e.g. a Kubernetes Secret) so that a copy
    /// of the database alone reveals nothing.
    #[arg(long, env = "KSS_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// A shared MySQL/MariaDB database instead of the data directory's SQLite file:
    /// `mysql://user:pass@host:port/db` or `mysql:host=H,port=P,user=U,password=W,database=D`.
    /// Every instance of a cluster uses the same database and the same master key.
    /// `kss create --db-uri`, `kss initialize` and `kss clone-db` save it in
    /// `<data-dir>/db-uri` (mode 0600), so later commands need not repeat it.
    /// TLS to it is verified: with no `ssl-mode` in the address the server's certificate
    /// must verify (VERIFY_IDENTITY); plaintext only with `ssl-mode=DISABLED`.
    #[arg(long, env = "KSS_DB_URI", global = true, hide_env_values = true)]
    pub db_uri: Option<String>,
    /// The shared database's address read from a file (e.g. a mounted Kubernetes Secret),
    /// which keeps its password out of the process's arguments and environment. Read at
    /// every start, never copied into the data directory; surrounding whitespace (the
    /// trailing newline of `kubectl create secret --from-file`) is ignored.
    #[arg(long, env = "KSS_DB_URI_FILE", global = true)]
    pub db_uri_file: Option<PathBuf>,
    /// The CA certificate (PEM) that the shared database's server certificate must chain
    /// to, unless the address names an `ssl-ca` itself.
    #[arg(long, env = "KSS_DB_CA_FILE", global = true)]
    pub db_ca_file: Option<PathBuf>,
}

impl DataDirArgs {
    pub fn data_dir(&self) -> DataDir {
        DataDir {
            db_uri: self.db_uri.clone(),
            given_db_uri_file: self.db_uri_file.clone(),
            db_ca_file: self.db_ca_file.clone(),
            root: self.data_dir.clone(),
            master_key: self
                .master_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("master.key")),
        }
    }
}

/// The files of one keyserver.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
    pub master_key: PathBuf,
    /// The shared database, when not the SQLite file (`--db-uri`).
    pub db_uri: Option<String>,
    /// The file that holds the shared database's address (`--db-uri-file`).
    pub given_db_uri_file: Option<PathBuf>,
    /// The CA that verifies the shared database's certificate.
    pub db_ca_file: Option<PathBuf>,
}

impl DataDir {
    /// Opens the keyserver's database: the shared one of `--db-uri`, else the data
    /// directory's SQLite file (created if missing), with `durability` for SQLite.
    pub async fn open_store_with(&self, durability: Durability) -> Result<Arc<dyn Store>> {
        self.ensure()?;
        if let Some(uri) = self.shared_db_uri()? {
            let options = parse_db_uri_with_ca(&uri, self.db_ca_file.as_deref())
                .context("the shared database's address")?;
            let store = MysqlStore::connect(options)
                .await
                .context("opening the shared database (--db-uri)")?;
            return Ok(Arc::new(store));
        }
        let store = SqliteStore::open_with(&self.database(), durability)
            .await
            .with_context(|| format!("opening {}", self.database().display()))?;
        Ok(Arc::new(store))
    }

    /// [`DataDir::open_store_with`] with every commit synced.
    pub async fn open_store(&self) -> Result<Arc<dyn Store>> {
        self.open_store_with(Durability::Full).await
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("kss.db")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// Where the shared database's address is saved (it holds the password: mode 0600).
    pub fn db_uri_file(&self) -> PathBuf {
        self.root.join("db-uri")
    }

    /// The shared database's address given to this command: `--db-uri` or the file of
    /// `--db-uri-file` (not both), else none.
    pub fn given_db_uri(&self) -> Result<Option<String>> {
        match (&self.db_uri, &self.given_db_uri_file) {
            (Some(_), Some(path)) => bail!(
                "the shared database's address is given twice, by --db-uri (KSS_DB_URI) and \
                 by --db-uri-file (KSS_DB_URI_FILE) {}: give one",
                path.display()
            ),
            (Some(uri), None) => Ok(Some(uri.clone())),
            (None, Some(path)) => read_db_uri(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The shared database: `--db-uri` or `--db-uri-file`, else the saved address, else
    /// none (SQLite).
    pub fn shared_db_uri(&self) -> Result<Option<String>> {
        if let Some(uri) = self.given_db_uri()? {
            return Ok(Some(uri));
        }
        let path = self.db_uri_file();
        if !path.exists() {
            return Ok(None);
        }
        read_db_uri(&path).map(Some)
    }

    /// Saves the shared database's address for later commands (replacing a saved one).
    pub fn save_db_uri(&self, uri: &str) -> Result<()> {
        self.ensure()?;
        let path = self.db_uri_file();
        let tmp = self.root.join("db-uri.tmp");
        let _ = fs::remove_file(&tmp);
        write_private(&tmp, uri.as_bytes())?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates the directory if missing, and restricts it to its owner (mode 0700).
    ///
    /// A directory this user does not own cannot be restricted (a Kubernetes `emptyDir`
    /// belongs to root, mode 0777): it is used as it is, with a warning. Every secret file
    /// kss writes in it is private anyway (mode 0600, the admin socket too).
    pub fn ensure(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating data directory {}", self.root.display()))?;
        match fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !self.owned()? => {
                tracing::warn!(
                    data_dir = %self.root.display(),
                    "the data directory belongs to another user and cannot be restricted to \
                     this one; using it as it is"
                );
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("restricting {}", self.root.display())),
        }
    }

    /// Whether this process's user owns the data directory.
    fn owned(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            fs::metadata(&self.root).with_context(|| format!("reading {}", self.root.display()))?;
        Ok(meta.uid() == rustix::process::geteuid().as_raw())
    }

    /// Reads the master key.
    pub fn read_master_key(&self) -> Result<MasterKey> {
        let path = &self.master_key;
        check_private(path)?;
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading the master key {}", path.display()))?,
        );
        MasterKey::from_hex(&text).with_context(|| format!("{}", path.display()))
    }

    /// Reads the master key, or creates one (mode 0600) if the file does not exist.
    pub fn read_or_create_master_key(&self) -> Result<MasterKey> {
        if self.master_key.exists() {
            return self.read_master_key();
        }
        let key = MasterKey::generate();
        write_private(&self.master_key, key.to_hex().as_bytes())?;
        Ok(key)
    }
}

/// Permission bits a secret file must not have: any bit for other users, and write for
/// its group. Group read is accepted: Kubernetes gives it to Secret volumes of a pod with
/// an `fsGroup` (mode 0440 or 0640).
const NOT_PRIVATE: u32 = 0o027;

/// Refuses a secret file that other users can read or write, or that its group can write.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & NOT_PRIVATE != 0 {
        bail!(
            "{} is open to other users (mode {mode:o}): a secret file may be readable by its \
             owner and group only, and writable by its owner only; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Reads a file that holds the shared database's address (it holds the password, so it
/// must be private). Errors name the file, never its contents.
fn read_db_uri(path: &Path) -> Result<String> {
    check_private(path)?;
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the database address {}", path.display()))?;
    let uri = text.trim();
    if uri.is_empty() {
        bail!(
            "{} holds no database address (the file is empty)",
            path.display()
        );
    }
    Ok(uri.to_string())
}

/// Writes a new secret file readable by its owner only; refuses to overwrite.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a file others may read (public keys, certificates, the backup key, which is
/// encrypted); refuses to overwrite.
pub fn write_new(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
