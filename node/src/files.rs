//! Directories that hold secrets are created owner-only (0700); their files are written
//! by `crypto::write_private` (0600, never overwritten).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates `dir` and its missing parents, owner-only; an existing directory is left
/// as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}
