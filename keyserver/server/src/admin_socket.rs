//! The admin socket, `<data-dir>/admin.sock`: the admin API for the CLI on the same host.
//!
//! It is never reachable with a looser mode than 0600: it is bound inside a fresh private
//! directory (mode 0700), restricted there, and only then renamed into place. And a
//! connection is served only if its peer (`SO_PEERCRED`) runs as this server's user or as
//! root, whatever the file's mode becomes later.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tracing::warn;

use crate::data_dir::DataDir;

/// A bound admin socket.
pub struct AdminSocket {
    pub listener: UnixListener,
    /// The socket file's inode, to remove only our own at exit.
    pub inode: u64,
}

/// Binds `<data-dir>/admin.sock` (mode 0600). A server holding the standalone lease takes
/// the path over (a previous holder is gone or fenced off); otherwise it refuses if a
/// server already answers on it.
pub async fn bind(data_dir: &DataDir, holds_lease: bool) -> Result<AdminSocket> {
    let path = data_dir.admin_socket();
    if path.exists() {
        if !holds_lease && UnixStream::connect(&path).await.is_ok() {
            bail!(
                "another kss server is running on {} (its admin socket answers)",
                data_dir.root.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Short: a socket path must stay under 108 bytes.
    let staging = data_dir.root.join(format!(".a{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the stale {}", staging.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let bound = bind_in(&staging, &path);
    let _ = std::fs::remove_dir(&staging);
    let listener = bound?;
    let inode = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino();
    Ok(AdminSocket { listener, inode })
}

fn bind_in(staging: &Path, path: &Path) -> Result<UnixListener> {
    let inside = staging.join("s");
    let listener =
        UnixListener::bind(&inside).with_context(|| format!("binding {}", inside.display()))?;
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", inside.display()))?;
    std::fs::rename(&inside, path)
        .with_context(|| format!("moving the socket to {}", path.display()))?;
    Ok(listener)
}

/// The connections to serve: those whose peer runs as this server's user or as root; any
/// other is closed at once (logged with its uid).
pub fn connections(listener: UnixListener) -> impl Stream<Item = std::io::Result<UnixStream>> {
    let own = rustix::process::geteuid().as_raw();
    UnixListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => match stream.peer_cred() {
            Ok(peer) if peer.uid() == own || peer.uid() == 0 => Some(Ok(stream)),
            Ok(peer) => {
                warn!(
                    uid = peer.uid(),
                    "admin socket: a connection from another user refused"
                );
                None
            }
            Err(e) => {
                warn!(error = %e, "admin socket: the peer's credentials are unknown: refused");
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}
