//! Files of `secret`, `configMap`, `projected` and `downwardAPI` volumes, written into a
//! host directory and kept in sync with the objects they come from.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// One file of a volume: its path relative to the volume's root, content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub rel: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Makes `dir` hold exactly `entries`: writes new or changed files (content or mode)
/// through a temporary file renamed into place, so a reader never sees half a file, and
/// removes files (and then-empty directories) that are no longer part of the volume.
/// Returns whether anything changed.
pub(crate) fn sync_dir(dir: &Path, entries: &[FileEntry]) -> Result<bool> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut changed = false;
    let mut wanted = BTreeSet::new();
    for entry in entries {
        let rel = safe_relative(&entry.rel).ok_or_else(|| {
            Error::Setup(format!(
                "volume file path {:?} must be relative without '..'",
                entry.rel
            ))
        })?;
        let target = dir.join(&rel);
        wanted.insert(target.clone());
        if file_matches(&target, &entry.data, entry.mode) {
            continue;
        }
        let parent = target.parent().unwrap_or(dir);
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{file_name}.tmp"));
        let write = || -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
            file.write_all(&entry.data)?;
            file.sync_all()?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(entry.mode & 0o7777))?;
            fs::rename(&tmp, &target)
        };
        write().map_err(|e| Error::io(&target, e))?;
        changed = true;
    }
    changed |= remove_unwanted(dir, &wanted)?;
    Ok(changed)
}

fn file_matches(path: &Path, data: &[u8], mode: u32) -> bool {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o7777 == mode & 0o7777 => {
            fs::read(path).is_ok_and(|content| content == data)
        }
        _ => false,
    }
}

fn remove_unwanted(dir: &Path, wanted: &BTreeSet<PathBuf>) -> Result<bool> {
    let mut changed = false;
    let listing = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for item in listing {
        let item = item.map_err(|e| Error::io(dir, e))?;
        let path = item.path();
        let kind = item.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            changed |= remove_unwanted(&path, wanted)?;
            let empty = fs::read_dir(&path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if empty && !wanted.iter().any(|w| w.starts_with(&path)) {
                fs::remove_dir(&path).map_err(|e| Error::io(&path, e))?;
                changed = true;
            }
        } else if !wanted.contains(&path) {
            // A secret file may be read-only: removing it needs only the directory.
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// A relative path with only normal components (the API server validates item paths
/// the same way).
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let path = Path::new(rel);
    if rel.is_empty() || path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(rel: &str, data: &str, mode: u32) -> FileEntry {
        FileEntry {
            rel: rel.to_string(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn sync_writes_updates_and_removes() {
        let root = std::env::temp_dir().join(format!("kss-e2e-volumes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("vol");
        let first = [entry("a", "1", 0o400), entry("sub/b", "2", 0o440)];
        assert!(sync_dir(&dir, &first).expect("first sync"));
        assert_eq!(fs::read_to_string(dir.join("a")).expect("read a"), "1");
        let mode = fs::metadata(dir.join("sub/b"))
            .expect("stat b")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o440);
        assert!(
            !sync_dir(&dir, &first).expect("second sync"),
            "nothing changed"
        );

        // A read-only file is replaced; a vanished key disappears with its directory.
        assert!(sync_dir(&dir, &[entry("a", "3", 0o400)]).expect("third sync"));
        assert_eq!(fs::read_to_string(dir.join("a")).expect("read a"), "3");
        assert!(!dir.join("sub").exists());

        assert!(sync_dir(&dir, &[]).expect("empty"));
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 0);
        assert!(sync_dir(&dir, &[entry("../x", "", 0o644)]).is_err());
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
