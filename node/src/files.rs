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

/// Refuses a secret file (the KEK, a private key, a token) that the group or others
/// may read or write: `key` names the setting in the error.
pub fn check_secret_file(key: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key}: {} may be read by group or others (mode {mode:03o}); it holds a secret: run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Makes `dir` (created if missing) owner-only, saying so if it was not.
pub fn make_private_dir(key: &str, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("{key}: cannot read {}: {e}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{key}: cannot make {} owner-only: {e}", dir.display()))?;
        tracing::warn!(dir = %dir.display(), was = format!("{mode:03o}"), "{key} was open to group or others; made it 0700");
    }
    Ok(())
}

/// Hardens the node process before it reads any secret: no core dumps (a dump would
/// hold keys and card numbers in clear) and no ptrace by other processes of the same
/// user (`PR_SET_DUMPABLE = 0`); files and directories it creates are owner-only
/// (umask 077); and the open-files limit is raised to its hard limit, so that the
/// listeners' connection caps, not the default soft limit, bound connections.
pub fn harden_process() -> Result<(), String> {
    // SAFETY: plain system calls on this process with valid arguments.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(format!(
                "cannot turn core dumps off: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(format!(
                "cannot mark the process non-dumpable: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::umask(0o077);
        let mut files = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max
        {
            files.rlim_cur = files.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_open_to_others_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kek");
        std::fs::write(&f, "x").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_secret_file("kek_file", &f);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.starts_with("kek_file:"), "{e}");
                assert!(e.contains("chmod 600"), "{e}");
            }
        }
    }

    #[test]
    fn an_open_data_dir_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private_dir("data_dir", &d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
