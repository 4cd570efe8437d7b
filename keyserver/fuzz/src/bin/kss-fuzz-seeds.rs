//! Writes the seed inputs of every target into `corpus/<target>/seed-*` (replacing the
//! seeds, keeping what fuzzing added). Run after a change of the fixture or the wire format:
//!   cargo run -p kss-fuzz --bin kss-fuzz-seeds
//! Ciphertexts and seals are randomized: a run rewrites those seeds with new bytes of the
//! same meaning.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kss_fuzz::fixture::{Fixture, fixture};
use kss_fuzz::seeds;

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let fx: &Fixture = fixture();
    for (target, inputs) in seeds::all(fx) {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_seeds(&dir)?;
        for (name, bytes) in &inputs {
            let path = dir.join(format!("seed-{name}"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{target}: {} seeds", inputs.len());
    }
    Ok(())
}

fn remove_seeds(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
