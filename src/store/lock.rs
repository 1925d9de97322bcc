//! The state directory's lock: one daemon per state directory (flock on a lock file holding
//! the holder's pid), and the directory itself (created 0700).
//!
//! Owns no data; it never opens the database.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{LOCK_FILE, StoreError};

/// Holds the state directory for this process: released when dropped (or when the process
/// dies, however it dies).
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    /// Takes the state directory, creating it (0700) when missing.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        ensure_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, _)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| "unknown pid".to_string(), |p| format!("pid {p}"));
                drop(file);
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
        };
        // Best effort: the pid helps the next person's error message.
        let _ = lock.set_len(0);
        let _ = write!(&mut *lock, "{}", std::process::id());
        Ok(DirLock { _lock: lock })
    }
}

/// The pid of the daemon holding `dir`, if one does (read from its lock file, which is opened
/// read-only and never created).
pub fn daemon_pid(dir: &Path) -> Option<i32> {
    let path = dir.join(LOCK_FILE);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // We could take it: nobody holds it.
        Ok(_unlocked_on_drop) => None,
        Err(_) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
    }
}

/// Creates the state directory with mode 0700 when it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })
}
