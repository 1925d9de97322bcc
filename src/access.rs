//! Who this process is, and whether it may read or write a path: the words of every
//! "permission denied" message, and the state-directory check `check` shares with `run`.
//!
//! It asks the kernel (`access(2)`, as the real user), never changes a file, and never decides
//! what to do about a refusal: callers turn the answer into their own error.

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Uid, User, access};

/// `user alice (uid 1000)`, or `uid 1000` when the user has no name.
pub fn whoami() -> String {
    let uid = Uid::current();
    match User::from_uid(uid) {
        Ok(Some(u)) => format!("user {} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Whether `dir` exists as a directory this process may write in, or can be created (the
/// nearest existing ancestor is writable). `Err` says why not, naming the directory that
/// refuses and the user.
pub fn state_dir_usable(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => writable(dir, dir),
        Ok(_) => Err(format!("{} exists and is not a directory", dir.display())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            let parent = nearest_existing(dir).ok_or_else(|| {
                format!(
                    "{} cannot be created: no parent directory exists",
                    dir.display()
                )
            })?;
            writable(dir, &parent)
        }
        Err(e) => Err(format!("{}: {}", dir.display(), denied_or(e))),
    }
}

fn writable(dir: &Path, checked: &Path) -> Result<(), String> {
    if !checked.is_dir() {
        return Err(format!(
            "{} cannot be created: {} is not a directory",
            dir.display(),
            checked.display()
        ));
    }
    match access(checked, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) => Ok(()),
        Err(_) if checked == dir => {
            Err(format!("{} is not writable by {}", dir.display(), whoami()))
        }
        Err(_) => Err(format!(
            "{} cannot be created: {} is not writable by {}",
            dir.display(),
            checked.display(),
            whoami()
        )),
    }
}

fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .skip(1)
        .find(|a| std::fs::symlink_metadata(a).is_ok())
        .map(Path::to_path_buf)
}

/// Whether the error is a refusal of permission.
pub fn is_denied(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

/// Whether this process may open `path` for reading (and writing, with `write`); `false` also
/// when the path does not exist.
pub fn may_open(path: &Path, write: bool) -> bool {
    let mut flags = AccessFlags::R_OK;
    if write {
        flags |= AccessFlags::W_OK;
    }
    access(path, flags).is_ok()
}

fn denied_or(e: io::Error) -> String {
    if is_denied(&e) {
        format!("permission denied for {}", whoami())
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_under_a_file_cannot_be_created() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = state_dir_usable(&file.join("state")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(
            state_dir_usable(&file)
                .unwrap_err()
                .contains("is not a directory")
        );
    }

    #[test]
    fn an_existing_or_creatable_dir_is_usable() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(state_dir_usable(tmp.path()), Ok(()));
        assert_eq!(state_dir_usable(&tmp.path().join("a/b")), Ok(()));
    }

    #[test]
    fn whoami_names_the_uid() {
        assert!(whoami().contains(&format!("uid {}", Uid::current())));
    }
}
