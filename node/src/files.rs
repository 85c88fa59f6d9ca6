//! Directories that hold secrets are created owner-only (0700); their files are written
//! by `crypto::write_private` (0600, never overwritten).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Why a secret's file or directory, or the process, could not be made safe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{key}: cannot {action} {}: {source}", path.display())]
    Io {
        /// The setting that names the path.
        key: String,
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {} may be read by group or others (mode {mode:03o}); it holds a secret: run `chmod 600 {}`", path.display(), path.display())]
    Exposed {
        key: String,
        path: PathBuf,
        mode: u32,
    },
    #[error("cannot {action}: {source}")]
    Process {
        action: &'static str,
        source: std::io::Error,
    },
}

fn io(key: &str, action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let (key, path) = (key.to_owned(), path.to_owned());
    move |source| FileError::Io {
        key,
        action,
        path,
        source,
    }
}

/// Creates `dir` and its missing parents, owner-only; an existing directory is left
/// as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("directory", "create", dir))
}

/// Refuses a secret file (the KEK, a private key, a token) that the group or others
/// may read or write: `key` names the setting in the error.
pub fn check_secret_file(key: &str, path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io(key, "read", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::Exposed {
            key: key.to_owned(),
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Makes `dir` (created if missing) owner-only, saying so if it was not.
pub fn make_private_dir(key: &str, dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(key, "create", dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(io(key, "read", dir))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(
            key,
            "make owner-only",
            dir,
        ))?;
        tracing::warn!(dir = %dir.display(), was = format!("{mode:03o}"), "{key} was open to group or others; made it 0700");
    }
    Ok(())
}

/// Hardens the node process before it reads any secret: no core dumps (a dump would
/// hold keys and card numbers in clear) and no ptrace by other processes of the same
/// user (`PR_SET_DUMPABLE = 0`); files and directories it creates are owner-only
/// (umask 077); and the open-files limit is raised to its hard limit, so that the
/// listeners' connection caps, not the default soft limit, bound connections.
pub fn harden_process() -> Result<(), FileError> {
    // SAFETY: plain system calls on this process with valid arguments.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(FileError::Process {
                action: "turn core dumps off",
                source: std::io::Error::last_os_error(),
            });
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(FileError::Process {
                action: "mark the process non-dumpable",
                source: std::io::Error::last_os_error(),
            });
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

/// The CLI's outer edge reports errors as one sentence.
impl From<FileError> for String {
    fn from(e: FileError) -> String {
        e.to_string()
    }
}

/// Bytes `path` takes on disk, as `du` counts them: a file's allocated blocks, or the
/// sum over a directory's files (recursively); 0 for what does not exist or cannot be
/// read. Not the files' lengths: a vault file's tail that redb has reserved but not yet
/// written is a hole, and a log segment is preallocated in full.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| disk_usage(&e.path()))
            .sum()
    })
}

/// This process's open-files limit (the soft one, which the kernel enforces).
pub fn open_files_limit() -> Option<u64> {
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) } == 0).then_some(files.rlim_cur)
}

/// The filesystem holding `path`: (bytes an unprivileged writer may still use, size).
pub fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to a statvfs-sized buffer
    // that statvfs fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // 64-bit Linux: every field is a u64.
    let frsize = st.f_frsize;
    Some((st.f_bavail * frsize, st.f_blocks * frsize))
}

/// True when `e` says the disk (or this process's quota on it) is full — or that what
/// was to be written would eat into a reserve kept free (`StorageFull` too).
pub fn no_room(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn disk_usage_counts_allocated_blocks_not_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::io::Write::write_all(&mut &f, &[1u8; 8192]).unwrap();
        f.sync_all().unwrap();
        let used = disk_usage(dir.path());
        assert!((8192..1 << 20).contains(&used), "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }

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
                let e = e.to_string();
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

    #[test]
    fn disk_usage_sums_a_directory_and_the_filesystem_has_room() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 234]).unwrap();
        // Whole blocks: at least each file's length, and the directory their sum.
        let (a, b) = (
            disk_usage(&dir.path().join("a")),
            disk_usage(&dir.path().join("sub/b")),
        );
        assert!(a >= 1000 && b >= 234 && a % 512 == 0, "{a} {b}");
        assert_eq!(disk_usage(dir.path()), a + b);
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
        let (avail, size) = filesystem_space(dir.path()).unwrap();
        assert!(size > 0 && avail <= size, "{avail} of {size}");
        assert!(filesystem_space(&dir.path().join("missing")).is_none());
    }
}
