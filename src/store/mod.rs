//! The durable state: documents, events and deliveries (the outbox), in SQLite (WAL) in the
//! state directory, or in a PostgreSQL database (`state.url`, `pg/`) that several instances
//! share. The only module with SQL (a test checks that no other file names a database
//! driver).
//!
//! A poll's new document states, the events they fire and one pending delivery per subscribed
//! notifier are written in one transaction, before any delivery starts (transactional outbox):
//! a crash at any point either loses the whole poll (it is redone) or keeps all of it. The
//! store never decides anything; it records what the tracker and the dispatcher decided.
//!
//! Layout: `api` is the one interface over both backends ([`Store`], [`Location`]); this
//! file opens SQLite connections and sorts errors; `lock` is the state-dir lock;
//! `schema` the versions and migrations; `documents` the document rows (their stored form is
//! [`documents::Row`], never the tracker's type) and schedules; `outbox` events, deliveries
//! and the operator's commands on them; `pg` the same for PostgreSQL, with the lease and
//! the fence; `handle` the async doors the daemon uses.

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use thiserror::Error;

mod api;
pub mod discovery;
pub mod documents;
pub mod entries;
mod handle;
mod lock;
pub mod outbox;
mod pg;
mod schema;
#[doc(hidden)]
pub mod testdb;

pub use api::{Location, Store};
pub use documents::{Stored, StoredSchedule};
pub use entries::RuntimeEntry;
pub use handle::StoreHandle;
pub use lock::{DirLock, daemon_pid, ensure_dir};
pub use outbox::{Delivery, DeliveryRow, DeliveryUpdate, NewEvent, RecordedAttempt};
pub use pg::{Acquired, Fence, PgStore};

/// The SQLite schema this build writes. Older stores are migrated; newer ones refused.
pub const SCHEMA_VERSION: i64 = 3;
pub const DB_FILE: &str = "coze-watch.db";
pub const LOCK_FILE: &str = "coze-watch.lock";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state directory {dir}: {}", io_text(source))]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state directory {dir} is in use by another coze-watch ({holder}); one instance per state directory"
    )]
    Locked { dir: PathBuf, holder: String },
    /// A write of a leader whose lease another instance has taken since: nothing written.
    #[error(
        "store {}: this instance's lease (epoch {epoch}) was taken over; nothing written",
        at.display()
    )]
    Fenced { at: PathBuf, epoch: i64 },
    #[error(
        "store {path} is corrupt or not a coze-watch database ({detail}); it was left untouched"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "store {path} has schema version {found}, newer than this coze-watch supports ({SCHEMA_VERSION}); run a newer coze-watch"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "store {path} has schema version {found}; this coze-watch needs {SCHEMA_VERSION}: it needs migration: start the daemon once"
    )]
    NeedsMigration { path: PathBuf, found: i64 },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// `at` is the database's URL, never with a password.
    #[error("store {}: {}", at.display(), pg_text(source))]
    Postgres {
        at: PathBuf,
        source: postgres::Error,
    },
}

/// A PostgreSQL error in words: the server's message and detail when it sent one.
fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({d})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

/// An I/O error in words; a refused permission names the user this process runs as.
fn io_text(e: &std::io::Error) -> String {
    if crate::access::is_denied(e) {
        format!("permission denied for {}", crate::access::whoami())
    } else {
        e.to_string()
    }
}

/// The error for a store file this process may not open.
fn denied(dir: &Path) -> StoreError {
    StoreError::Dir {
        dir: dir.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    }
}

impl StoreError {
    /// Corrupt or from a newer version: exit 65, never retried, never thrown away.
    pub fn is_unusable(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. } | StoreError::TooNew { .. })
    }
}

/// One connection to an SQLite store. Its methods live beside the tables they touch.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` for writing. The caller holds the
    /// [`DirLock`]. Creates the directory 0700 and the database 0600.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let dir_err = |source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        ensure_dir(dir)?;
        let path = dir.join(DB_FILE);
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(dir_err)?;
        } else if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        if !crate::access::may_open(&path, true) {
            return Err(denied(dir));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let mut store = SqliteStore { conn, path };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store read-only, creating and changing no file (for `status`, which
    /// may run as root: a root-owned `-wal` or `-shm` would lock the service user out).
    ///
    /// While a daemon runs, its `-wal` and `-shm` exist and are used as they are. When there is
    /// no `-wal`, nobody is writing, and the database is opened as immutable, which needs
    /// neither file.
    pub fn open_read_only(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        match std::fs::metadata(&path) {
            Err(e) if crate::access::is_denied(&e) => return Err(denied(dir)),
            Ok(_) if !crate::access::may_open(&path, false) => return Err(denied(dir)),
            _ => {}
        }
        if !path.exists() {
            return Err(StoreError::Dir {
                dir: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no store at {} (has the daemon run yet?)", path.display()),
                ),
            });
        }
        let wal = dir.join(format!("{DB_FILE}-wal"));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let uri = if wal.exists() {
            format!("file:{}?mode=ro", uri_path(&path))
        } else {
            format!("file:{}?mode=ro&immutable=1", uri_path(&path))
        };
        let conn = Connection::open_with_flags(&uri, flags).map_err(|e| classify(&path, e))?;
        let store = SqliteStore { conn, path };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err(e))?;
        store.check_version(false)?;
        Ok(store)
    }

    /// A second connection to the store at `path` that the daemon itself opened (and
    /// migrated) already, for reads beside its writes.
    pub(crate) fn open_reader(path: &Path, busy: Duration) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        let store = SqliteStore {
            conn,
            path: path.to_path_buf(),
        };
        store.conn.busy_timeout(busy).map_err(|e| store.err(e))?;
        store
            .conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// Opens an existing store for writing without creating or migrating anything (for
    /// `deliveries`, safe while the daemon runs: SQLite serialises the writers).
    pub fn open_existing(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        match std::fs::metadata(&path) {
            Err(e) if crate::access::is_denied(&e) => return Err(denied(dir)),
            Ok(_) if !crate::access::may_open(&path, true) => return Err(denied(dir)),
            _ => {}
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let store = SqliteStore { conn, path };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err(e))?;
        let version = store.check_version(false)?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::NeedsMigration {
                path: store.path.clone(),
                found: version,
            });
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    fn configure(&self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| self.err(e))?;
        // WAL: readers (`status`) never block the daemon. synchronous=NORMAL: every commit
        // survives a crash of the process (kill -9), and the database stays consistent after a
        // power cut, which may roll back the last commits; a transition lost that way is seen
        // again at the next poll. FULL would add an fsync per poll and per delivery.
        self.conn
            .pragma_update(None, "journal_mode", "wal")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "synchronous", "normal")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "on")
            .map_err(|e| self.err(e))?;
        // Plans fixed at prepare time: otherwise SQLite re-prepares a cached statement whenever
        // a bound LIMIT changes (the outbox query's), which was ~10 % of the daemon's CPU.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction, rolled back if it fails. BEGIN and COMMIT are cached
    /// statements: rusqlite's `transaction()` parses both anew every time, which was ~8 % of
    /// the daemon's CPU.
    fn write<R>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let run = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut st| st.execute([]))
                .map_err(|e| self.err(e))
        };
        run("BEGIN")?;
        let done = f(&self.conn).and_then(|r| run("COMMIT").map(|_| r));
        if done.is_err() && !self.conn.is_autocommit() {
            let _ = run("ROLLBACK");
        }
        done
    }

    /// A cheap round trip, for the watchdog.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }
}

/// A path for an SQLite `file:` URI: `%`, `?` and `#` escaped.
fn uri_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// Sorts SQLite errors: a database that is not one, or is damaged, is `Corrupt`.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests;
