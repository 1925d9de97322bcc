//! The durable state: documents, events and deliveries (the outbox), in SQLite (WAL) in the
//! state directory. The only module with SQL.
//!
//! A poll's new document states, the events they fire and one pending delivery per subscribed
//! notifier are written in one transaction, before any delivery starts (transactional outbox):
//! a crash at any point either loses the whole poll (it is redone) or keeps all of it. The
//! store never decides anything; it records what the tracker and the dispatcher decided.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use thiserror::Error;

use crate::event::EventType;
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::{DocState, Lifecycle};
use crate::wall::UnixMs;

/// The schema this build writes. Older stores are migrated; newer ones refused.
pub const SCHEMA_VERSION: i64 = 2;
pub const DB_FILE: &str = "coze-watch.db";
pub const LOCK_FILE: &str = "coze-watch.lock";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state directory {dir} is in use by another coze-watch ({holder}); one instance per state directory"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "store {path} is corrupt or not a coze-watch database ({detail}); it was left untouched"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "store {path} has schema version {found}, newer than this coze-watch supports ({SCHEMA_VERSION}); run a newer coze-watch"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Corrupt or from a newer version: exit 65, never retried, never thrown away.
    pub fn is_unusable(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. } | StoreError::TooNew { .. })
    }
}

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

/// A new event with the notifiers that must get it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: EventType,
    pub dataset_id: DatasetId,
    pub document_id: DocumentId,
    pub created_at: UnixMs,
    /// The event body (JSON), exactly as it will be delivered.
    pub body: String,
    pub notifiers: Vec<String>,
}

/// A document as [`Store::load_dataset`] found it.
#[derive(Debug)]
pub enum Stored {
    Live(Box<DocState>),
    Terminal(DocumentId),
}

/// The persisted part of a dataset's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredSchedule {
    pub next_poll_at: UnixMs,
    pub failures: u32,
}

/// One pending delivery, ready to attempt.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub seq: i64,
    pub event_id: String,
    pub event_type: EventType,
    pub dataset_id: DatasetId,
    pub document_id: DocumentId,
    pub notifier: String,
    pub attempts: u32,
    pub created_at: UnixMs,
    pub body: String,
}

/// What an attempt's outcome does to its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryUpdate {
    Delivered,
    Retry {
        next_attempt_at: UnixMs,
        error: String,
    },
    Dead {
        error: String,
    },
}

impl DeliveryUpdate {
    /// The metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryUpdate::Delivered => "delivered",
            DeliveryUpdate::Retry { .. } => "retry",
            DeliveryUpdate::Dead { .. } => "dead",
        }
    }
}

/// One finished attempt, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedAttempt {
    pub seq: i64,
    pub notifier: String,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    pub update: DeliveryUpdate,
}

/// A delivery as `status` and `deliveries` show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryRow {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub dataset_id: String,
    pub document_id: String,
    pub notifier: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: UnixMs,
    pub last_error: Option<String>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE documents (
    dataset_id  TEXT NOT NULL,
    document_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    data        TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, document_id)
);
CREATE TABLE datasets (
    dataset_id   TEXT PRIMARY KEY,
    next_poll_at INTEGER NOT NULL,
    failures     INTEGER NOT NULL
);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    dataset_id  TEXT NOT NULL,
    document_id TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT
);
CREATE TABLE deliveries (
    event_seq       INTEGER NOT NULL REFERENCES events(seq),
    notifier        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (event_seq, notifier)
);
CREATE INDEX deliveries_pending ON deliveries (status, next_attempt_at);
CREATE INDEX events_document ON events (dataset_id, document_id, seq);
";

/// Version 2: indexes for the hot reads. The dispatcher reads one notifier's due deliveries
/// in due order; start-up reads every document's state in key order without reading the rows
/// (with 100,000 documents the rows are ~80 MB, this index ~6 MB).
const SCHEMA_V2: &str = "
CREATE INDEX deliveries_queue ON deliveries (status, notifier, next_attempt_at);
CREATE INDEX documents_state ON documents (dataset_id, document_id, state);
";

const INSERT_NEW_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dataset_id, document_id) DO NOTHING";
const UPSERT_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dataset_id, document_id) DO UPDATE
     SET state = excluded.state, data = excluded.data, updated_at = excluded.updated_at";

/// Writes one document row with `sql` ([`INSERT_NEW_DOCUMENT`] or [`UPSERT_DOCUMENT`]).
fn put_document(
    tx: &Connection,
    sql: &str,
    d: &DocState,
    path: &Path,
    now: UnixMs,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(d).map_err(|err| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode document {}: {err}", d.document_id),
    })?;
    tx.prepare_cached(sql)
        .and_then(|mut st| {
            st.execute(params![
                d.dataset_id.as_str(),
                d.document_id.as_str(),
                d.state.as_str(),
                data,
                now.0
            ])
        })
        .map(|_| ())
        .map_err(|e| classify(path, e))
}

/// A notifier's due deliveries (see [`Store::due_deliveries`]).
const DUE_SQL: &str =
    "SELECT d.event_seq, e.event_id, e.type, e.dataset_id, e.document_id, d.notifier,
                        d.attempts, e.created_at, e.body
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.status = 'pending' AND d.notifier = ?3 AND d.next_attempt_at <= ?1
                   AND NOT EXISTS (
                     SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq
                     WHERE d2.status = 'pending' AND d2.notifier = d.notifier
                       AND e2.dataset_id = e.dataset_id AND e2.document_id = e.document_id
                       AND d2.event_seq < d.event_seq)
                 ORDER BY d.next_attempt_at, d.rowid
                 LIMIT ?2";

impl Store {
    /// Opens (creating if needed) the store in `dir` for writing. The caller holds the
    /// [`DirLock`]. Creates the directory 0700 and the database 0600.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
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
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let mut store = Store { conn, path };
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
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
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
        let store = Store { conn, path };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err(e))?;
        store.check_version(false)?;
        Ok(store)
    }

    /// A second connection to the store at `path` that the daemon itself opened (and
    /// migrated) already, for reads beside its writes.
    fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        // Its reads run on the async runtime's thread: a WAL reader almost never waits, and
        // when it must (recovery after a crash), it gives up soon and the caller retries,
        // rather than stalling the runtime for seconds.
        store
            .conn
            .busy_timeout(Duration::from_millis(100))
            .map_err(|e| store.err(e))?;
        store
            .conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// Opens an existing store for writing without creating or migrating anything (for
    /// `deliveries`, safe while the daemon runs: SQLite serialises the writers).
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let store = Store { conn, path };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err(e))?;
        let version = store.check_version(false)?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                path: store.path.clone(),
                detail: format!("schema version {version}; start the daemon once to migrate it"),
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

    /// Checks the whole file (`PRAGMA quick_check`): a damaged page anywhere makes it
    /// `Corrupt`. It reads every page (~0.2 s for 100,000 documents), so the daemon runs it
    /// beside its start, on a connection of its own, rather than before it.
    pub fn verify(&self) -> Result<(), StoreError> {
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: check,
            });
        }
        Ok(())
    }

    /// The schema version, after refusing a newer or foreign database.
    fn check_version(&self, allow_empty: bool) -> Result<i64, StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
            });
        }
        if version == 0 {
            let tables: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if tables > 0 || !allow_empty {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "no coze-watch schema version".into(),
                });
            }
        }
        Ok(version)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version = self.check_version(true)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        // Each step takes the schema from version n to n + 1.
        if version < 1 {
            tx.execute_batch(SCHEMA_V1)
                .map_err(|e| classify(&path, e))?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2)
                .map_err(|e| classify(&path, e))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| classify(&path, e))?;
        tx.commit().map_err(|e| classify(&path, e))
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

    pub fn load_documents(&self) -> Result<Vec<DocState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT dataset_id, document_id, data FROM documents")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (ds, doc, data) = row.map_err(|e| self.err(e))?;
            let state: DocState = serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("document {doc} of dataset {ds}: {e}"),
            })?;
            out.push(state);
        }
        Ok(out)
    }

    /// Calls `f(dataset_id, document_id, state)` for every stored document, in key order
    /// (byte order of dataset id, then document id), reading the `documents_state` index only.
    pub fn for_each_document_state(
        &self,
        mut f: impl FnMut(&str, &str, Lifecycle),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT dataset_id, document_id, state FROM documents INDEXED BY documents_state
                 ORDER BY dataset_id, document_id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let text = |i: usize| -> Result<&str, StoreError> {
                row.get_ref(i)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(|e| self.err(e))
            };
            let (ds, doc, state) = (text(0)?, text(1)?, text(2)?);
            let state = Lifecycle::parse(state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("document {doc} of dataset {ds}: unknown state {state:?}"),
            })?;
            f(ds, doc, state);
        }
        Ok(())
    }

    /// The stored states of `wanted` documents of one dataset (sorted ids). A document that is
    /// terminal in the store comes back as `Terminal` without its row being decoded; one with
    /// no row is left out.
    pub fn load_dataset(
        &self,
        dataset: &DatasetId,
        wanted: &[DocumentId],
    ) -> Result<Vec<Stored>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT document_id, state, data FROM documents WHERE dataset_id = ?1")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![dataset.as_str()])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(wanted.len());
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let text = |i: usize| -> Result<&str, StoreError> {
                row.get_ref(i)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(|e| self.err(e))
            };
            let doc = text(0)?;
            let Ok(at) = wanted.binary_search_by(|w| w.as_str().cmp(doc)) else {
                continue;
            };
            if text(1)? != Lifecycle::Watching.as_str() {
                out.push(Stored::Terminal(wanted[at].clone()));
                continue;
            }
            let state: DocState =
                serde_json::from_str(text(2)?).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("document {doc} of dataset {dataset}: {e}"),
                })?;
            out.push(Stored::Live(Box::new(state)));
        }
        Ok(out)
    }

    /// Records documents watched for the first time, as [`DocState::new`] at `now`, in one
    /// transaction; one already stored is left as it is.
    pub fn insert_new_documents(
        &mut self,
        docs: &[(DatasetId, DocumentId)],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.write(|tx| {
            for (ds, doc) in docs {
                let state = DocState::new(ds.clone(), doc.clone(), now);
                put_document(tx, INSERT_NEW_DOCUMENT, &state, &path, now)?;
            }
            Ok(())
        })
    }

    pub fn load_schedules(&self) -> Result<HashMap<DatasetId, StoredSchedule>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT dataset_id, next_poll_at, failures FROM datasets")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    DatasetId::new(r.get::<_, String>(0)?),
                    StoredSchedule {
                        next_poll_at: UnixMs(r.get(1)?),
                        failures: r.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Writes new document states, their events with one pending delivery per notifier, and
    /// the dataset's schedule, in one transaction.
    pub fn commit(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |err| classify(&path, err);
        self.write(|tx| {
            for d in documents {
                put_document(tx, UPSERT_DOCUMENT, d, &path, now)?;
            }
            let mut put_event = tx
                .prepare_cached(
                    "INSERT INTO events (event_id, type, dataset_id, document_id, created_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(e)?;
            let mut put_delivery = tx
                .prepare_cached(
                    "INSERT INTO deliveries (event_seq, notifier, status, attempts, next_attempt_at, updated_at)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
                )
                .map_err(e)?;
            for ev in events {
                put_event
                    .execute(params![
                        ev.event_id,
                        ev.event_type.as_str(),
                        ev.dataset_id.as_str(),
                        ev.document_id.as_str(),
                        ev.created_at.0,
                        ev.body
                    ])
                    .map_err(e)?;
                let seq = tx.last_insert_rowid();
                for n in &ev.notifiers {
                    put_delivery
                        .execute(params![seq, n, ev.created_at.0])
                        .map_err(e)?;
                }
            }
            if let Some((ds, s)) = schedule {
                tx.prepare_cached(
                    "INSERT INTO datasets (dataset_id, next_poll_at, failures) VALUES (?1, ?2, ?3)
                     ON CONFLICT (dataset_id) DO UPDATE
                     SET next_poll_at = excluded.next_poll_at, failures = excluded.failures",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![ds.as_str(), s.next_poll_at.0, s.failures])
                })
                .map_err(e)?;
            }
            Ok(())
        })
    }

    /// A notifier's pending deliveries due at `now`, longest due first, skipping `busy` ones
    /// (by event sequence) and any delivery whose document has an earlier pending event for
    /// the same notifier (events of one document go out in order).
    ///
    /// The order is the `deliveries_queue` index's own (due time, then insertion), so the
    /// query reads only about as many rows as it returns: ordering by event sequence made
    /// SQLite sort every due row, body included, on every call (63 ms with a 33,000-row
    /// backlog; 1 ms this way).
    pub fn due_deliveries(
        &self,
        notifier: &str,
        now: UnixMs,
        limit: usize,
        busy: &HashSet<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare_cached(DUE_SQL).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![now.0, (limit + busy.len()) as i64, notifier], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, event_id, ty, ds, doc, notifier, attempts, created, body) =
                row.map_err(|e| self.err(e))?;
            if busy.contains(&seq) {
                continue;
            }
            let event_type = ty
                .parse::<EventType>()
                .map_err(|detail| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("event {event_id}: {detail}"),
                })?;
            out.push(Delivery {
                seq,
                event_id,
                event_type,
                dataset_id: DatasetId::new(ds),
                document_id: DocumentId::new(doc),
                notifier,
                attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                created_at: UnixMs(created),
                body: body.unwrap_or_default(),
            });
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// The earliest future attempt (after `now`) among deliveries that are next in line for
    /// their document and notifier. Deliveries due already are found by `due_deliveries`.
    pub fn next_delivery_after(&self, now: UnixMs) -> Result<Option<UnixMs>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT min(d.next_attempt_at) FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.status = 'pending' AND d.next_attempt_at > ?1
                   AND NOT EXISTS (
                     SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq
                     WHERE d2.status = 'pending' AND d2.notifier = d.notifier
                       AND e2.dataset_id = e.dataset_id AND e2.document_id = e.document_id
                       AND d2.event_seq < d.event_seq)",
            )
            .and_then(|mut stmt| stmt.query_row(params![now.0], |r| r.get::<_, Option<i64>>(0)))
            .map(|v| v.map(UnixMs))
            .map_err(|e| self.err(e))
    }

    /// Records attempts' outcomes, all in one transaction.
    pub fn record_attempts(
        &mut self,
        attempts: &[RecordedAttempt],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |err| classify(&path, err);
        self.write(|tx| {
            for a in attempts {
                match &a.update {
                    DeliveryUpdate::Delivered => tx
                        .prepare_cached(
                            "UPDATE deliveries SET status = 'delivered', attempts = ?3, last_error = NULL, updated_at = ?4
                             WHERE event_seq = ?1 AND notifier = ?2",
                        )
                        .and_then(|mut st| st.execute(params![a.seq, a.notifier, a.attempts, now.0])),
                    DeliveryUpdate::Retry {
                        next_attempt_at,
                        error,
                    } => tx
                        .prepare_cached(
                            "UPDATE deliveries SET attempts = ?3, next_attempt_at = ?4, last_error = ?5, updated_at = ?6
                             WHERE event_seq = ?1 AND notifier = ?2 AND status = 'pending'",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                a.seq,
                                a.notifier,
                                a.attempts,
                                next_attempt_at.0,
                                error,
                                now.0
                            ])
                        }),
                    DeliveryUpdate::Dead { error } => tx
                        .prepare_cached(
                            "UPDATE deliveries SET status = 'dead', attempts = ?3, last_error = ?4, updated_at = ?5
                             WHERE event_seq = ?1 AND notifier = ?2 AND status = 'pending'",
                        )
                        .and_then(|mut st| {
                            st.execute(params![a.seq, a.notifier, a.attempts, error, now.0])
                        }),
                }
                .map_err(e)?;
            }
            Ok(())
        })
    }

    /// Pending deliveries of notifiers not in `keep` become dead ("notifier removed").
    pub fn kill_removed_notifiers(
        &self,
        keep: &[String],
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        let pending: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT notifier FROM deliveries WHERE status = 'pending'")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut killed = 0;
        for name in pending.iter().filter(|n| !keep.contains(n)) {
            killed += self
                .conn
                .execute(
                    "UPDATE deliveries SET status = 'dead', last_error = 'notifier removed', updated_at = ?2
                     WHERE notifier = ?1 AND status = 'pending'",
                    params![name, now.0],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(killed)
    }

    /// Drops event bodies older than `retention` of terminal documents whose deliveries are all
    /// settled. The document row stays as a tombstone, so a pruned document never fires again.
    pub fn prune(&self, now: UnixMs, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = UnixMs(
            now.0
                .saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64),
        );
        self.conn
            .execute(
                "UPDATE events SET body = NULL
                 WHERE body IS NOT NULL AND created_at < ?1
                   AND EXISTS (SELECT 1 FROM documents d
                               WHERE d.dataset_id = events.dataset_id AND d.document_id = events.document_id
                                 AND d.state <> 'watching')
                   AND NOT EXISTS (SELECT 1 FROM deliveries x
                                   WHERE x.event_seq = events.seq AND x.status = 'pending')",
                params![cutoff.0],
            )
            .map_err(|e| self.err(e))
    }

    /// Deliveries with the given status, newest first.
    pub fn deliveries(&self, status: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.event_seq, e.event_id, e.type, e.dataset_id, e.document_id, d.notifier,
                        d.status, d.attempts, d.next_attempt_at, d.last_error
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.status = ?1 ORDER BY d.event_seq DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![status, limit as i64], |r| {
                Ok(DeliveryRow {
                    seq: r.get(0)?,
                    event_id: r.get(1)?,
                    event_type: r.get(2)?,
                    dataset_id: r.get(3)?,
                    document_id: r.get(4)?,
                    notifier: r.get(5)?,
                    status: r.get(6)?,
                    attempts: r.get::<_, i64>(7)?.clamp(0, i64::from(u32::MAX)) as u32,
                    next_attempt_at: UnixMs(r.get(8)?),
                    last_error: r.get(9)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Dead deliveries of the given events (all of them when `event_ids` is `None`) become
    /// pending again, due now, with a fresh attempt count.
    pub fn requeue_dead(
        &self,
        event_ids: Option<&[String]>,
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        self.for_dead(event_ids, |conn, seq| {
            conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                        last_error = NULL, updated_at = ?2
                 WHERE event_seq = ?1 AND status = 'dead'",
                params![seq, now.0],
            )
        })
    }

    /// Forgets dead deliveries of the given events (all of them when `event_ids` is `None`).
    pub fn drop_dead(&self, event_ids: Option<&[String]>) -> Result<usize, StoreError> {
        self.for_dead(event_ids, |conn, seq| {
            conn.execute(
                "DELETE FROM deliveries WHERE event_seq = ?1 AND status = 'dead'",
                params![seq],
            )
        })
    }

    fn for_dead(
        &self,
        event_ids: Option<&[String]>,
        f: impl Fn(&Connection, i64) -> rusqlite::Result<usize>,
    ) -> Result<usize, StoreError> {
        let seqs: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT DISTINCT d.event_seq, e.event_id FROM deliveries d
                     JOIN events e ON e.seq = d.event_seq WHERE d.status = 'dead'",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.err(e))?;
            let all: Vec<(i64, String)> =
                rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
            all.into_iter()
                .filter(|(_, id)| event_ids.is_none_or(|ids| ids.contains(id)))
                .map(|(seq, _)| seq)
                .collect()
        };
        let mut n = 0;
        for seq in seqs {
            n += f(&self.conn, seq).map_err(|e| self.err(e))?;
        }
        Ok(n)
    }

    /// How many deliveries are pending and dead.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(status = 'pending'), 0), coalesce(sum(status = 'dead'), 0) FROM deliveries",
                [],
                |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
            )
            .map_err(|e| self.err(e))
    }

    /// The state of one document, if known.
    pub fn document(
        &self,
        dataset: &DatasetId,
        document: &DocumentId,
    ) -> Result<Option<DocState>, StoreError> {
        let data: Option<String> = self
            .conn
            .query_row(
                "SELECT data FROM documents WHERE dataset_id = ?1 AND document_id = ?2",
                params![dataset.as_str(), document.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        data.map(|d| {
            serde_json::from_str(&d).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("document {document}: {e}"),
            })
        })
        .transpose()
    }

    /// How many documents are in each lifecycle state.
    pub fn count_by_state(&self) -> Result<HashMap<Lifecycle, u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, count(*) FROM documents GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (s, n) = row.map_err(|e| self.err(e))?;
            if let Some(l) = Lifecycle::parse(&s) {
                out.insert(l, n.max(0) as u64);
            }
        }
        Ok(out)
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

/// The store shared between the run loop and the dispatcher. Writes (and anything that may
/// wait for the disk) run on the blocking pool, so a slow disk never stalls the async runtime;
/// the hot reads run inline on a second connection of their own ([`StoreHandle::read`]). Std
/// mutexes, because they are never held across an await.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    inner: Arc<Mutex<Store>>,
    /// A second connection, for reads only. Under WAL a reader never waits for the writer,
    /// and it sees every transaction committed before the read starts.
    reader: Option<Arc<Mutex<Store>>>,
    path: Arc<Path>,
}

impl StoreHandle {
    /// Wraps the writing connection and opens the reading one; without it (it could not be
    /// opened: logged), reads go through the blocking pool too.
    pub fn new(store: Store) -> Self {
        let reader = match Store::open_reader(&store.path) {
            Ok(r) => Some(Arc::new(Mutex::new(r))),
            Err(e) => {
                tracing::warn!(error = %e, "no second store connection; reads share the writer's");
                None
            }
        };
        StoreHandle {
            path: Arc::from(store.path.as_path()),
            inner: Arc::new(Mutex::new(store)),
            reader,
        }
    }

    /// Runs a read on the reading connection, on the calling thread: no hand-off to the
    /// blocking pool and back, which was a quarter of the daemon's CPU when every poll and
    /// every dispatcher turn did it. Only for short reads (a dataset's rows, the due
    /// deliveries), which never wait for the disk's writes.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        match &self.reader {
            Some(reader) => {
                let store = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&store)
            }
            None => self.call(move |s| f(s)).await,
        }
    }

    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .unwrap_or_else(|join| {
            Err(StoreError::Dir {
                dir: path.to_path_buf(),
                source: std::io::Error::other(format!("store task failed: {join}")),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, state: Lifecycle) -> DocState {
        let mut d = DocState::new(DatasetId::new("1"), DocumentId::new(id), UnixMs(0));
        d.state = state;
        d
    }

    fn event(id: &str, doc: &str, at: i64, notifiers: &[&str]) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            event_type: EventType::Completed,
            dataset_id: DatasetId::new("1"),
            document_id: DocumentId::new(doc),
            created_at: UnixMs(at),
            body: format!("{{\"id\":\"{id}\"}}"),
            notifiers: notifiers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn commit_writes_state_events_and_deliveries_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let sched = StoredSchedule {
            next_poll_at: UnixMs(5),
            failures: 2,
        };
        s.commit(
            &[doc("a", Lifecycle::Completed)],
            &[event("e1", "a", 1, &["log", "hook"])],
            Some((&DatasetId::new("1"), sched)),
            UnixMs(1),
        )
        .unwrap();
        assert_eq!(s.load_documents().unwrap()[0].state, Lifecycle::Completed);
        assert_eq!(s.load_schedules().unwrap()[&DatasetId::new("1")], sched);
        let due = s
            .due_deliveries("log", UnixMs(1), 10, &HashSet::new())
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].body, "{\"id\":\"e1\"}");
        let due = s
            .due_deliveries("hook", UnixMs(1), 10, &HashSet::new())
            .unwrap();
        assert_eq!(due.len(), 1);
    }

    fn attempt(seq: i64, attempts: u32, update: DeliveryUpdate) -> RecordedAttempt {
        RecordedAttempt {
            seq,
            notifier: "hook".into(),
            attempts,
            update,
        }
    }

    #[test]
    fn events_of_one_document_go_out_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(
            &[],
            &[
                event("e1", "a", 1, &["hook"]),
                event("e2", "a", 2, &["hook"]),
                event("e3", "b", 3, &["hook"]),
            ],
            None,
            UnixMs(3),
        )
        .unwrap();
        let none = HashSet::new();
        let due = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        let ids: Vec<&str> = due.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e3"], "e2 waits for e1");
        let retry = DeliveryUpdate::Retry {
            next_attempt_at: UnixMs(100),
            error: "HTTP 500".into(),
        };
        s.record_attempts(&[attempt(due[0].seq, 1, retry)], UnixMs(10))
            .unwrap();
        let due = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        assert_eq!(due.len(), 1, "e2 still waits while e1 is pending");
        let dead = DeliveryUpdate::Dead {
            error: "gone".into(),
        };
        s.record_attempts(&[attempt(due[0].seq, 1, dead)], UnixMs(10))
            .unwrap();
        let first = s.due_deliveries("hook", UnixMs(100), 10, &none).unwrap();
        s.record_attempts(
            &[attempt(first[0].seq, 2, DeliveryUpdate::Delivered)],
            UnixMs(100),
        )
        .unwrap();
        let due = s.due_deliveries("hook", UnixMs(100), 10, &none).unwrap();
        assert_eq!(due[0].event_id, "e2");
    }

    #[test]
    fn due_deliveries_are_per_notifier_and_skip_busy_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(
            &[],
            &[
                event("e1", "a", 1, &["hook", "log"]),
                event("e2", "b", 2, &["hook"]),
            ],
            None,
            UnixMs(3),
        )
        .unwrap();
        let none = HashSet::new();
        let log = s.due_deliveries("log", UnixMs(10), 10, &none).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].notifier, "log");
        let hook = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        let busy: HashSet<i64> = [hook[0].seq].into();
        let rest = s.due_deliveries("hook", UnixMs(10), 10, &busy).unwrap();
        let ids: Vec<&str> = rest.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["e2"]);
    }

    #[test]
    fn documents_are_read_in_key_order_and_per_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let mut other = doc("a", Lifecycle::Watching);
        other.dataset_id = DatasetId::new("0");
        s.commit(
            &[
                doc("b", Lifecycle::Watching),
                doc("a", Lifecycle::Completed),
                other,
            ],
            &[],
            None,
            UnixMs(1),
        )
        .unwrap();
        s.insert_new_documents(
            &[
                (DatasetId::new("1"), DocumentId::new("c")),
                (DatasetId::new("1"), DocumentId::new("a")),
            ],
            UnixMs(2),
        )
        .unwrap();
        let mut seen = Vec::new();
        s.for_each_document_state(|ds, doc, state| {
            seen.push(format!("{ds}/{doc}:{}", state.as_str()))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "0/a:watching",
                "1/a:completed",
                "1/b:watching",
                "1/c:watching"
            ],
            "key order; an existing document is not overwritten as new"
        );
        let wanted = [DocumentId::new("a"), DocumentId::new("c")];
        let got = s.load_dataset(&DatasetId::new("1"), &wanted).unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|x| match x {
                Stored::Live(d) => format!("live {}", d.document_id),
                Stored::Terminal(id) => format!("terminal {id}"),
            })
            .collect();
        assert_eq!(got, ["terminal a", "live c"], "b is not wanted");
    }

    #[test]
    fn the_outbox_query_is_not_prepared_again_for_each_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(&[], &[event("e1", "a", 1, &["hook"])], None, UnixMs(1))
            .unwrap();
        for limit in 1..5 {
            let busy: HashSet<i64> = (0..limit as i64).map(|i| i + 100).collect();
            s.due_deliveries("hook", UnixMs(10 + limit as i64), limit, &busy)
                .unwrap();
        }
        let stmt = s.conn.prepare_cached(DUE_SQL).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "a new LIMIT must not re-prepare the statement"
        );
    }

    #[test]
    fn a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let s = Store::open(dir.path()).unwrap();
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let indexes: i64 = s
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index'
                 AND name IN ('deliveries_queue', 'documents_state')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 2);
    }

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another coze-watch"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, b"this is not a database, but it is somebody's data").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.is_unusable(), "{err}");
        assert!(err.to_string().contains(DB_FILE), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is not a database, but it is somebody's data"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Store::open(&state).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(DB_FILE)), 0o600);
    }

    #[test]
    fn removed_notifiers_lose_their_pending_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(
            &[],
            &[event("e1", "a", 1, &["keep", "gone"])],
            None,
            UnixMs(1),
        )
        .unwrap();
        assert_eq!(
            s.kill_removed_notifiers(&["keep".into()], UnixMs(2))
                .unwrap(),
            1
        );
        let dead = s.deliveries("dead", 10).unwrap();
        assert_eq!(dead[0].notifier, "gone");
        assert_eq!(dead[0].last_error.as_deref(), Some("notifier removed"));
    }

    #[test]
    fn prune_keeps_tombstones_and_pending_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(
            &[
                doc("a", Lifecycle::Completed),
                doc("b", Lifecycle::Completed),
            ],
            &[event("e1", "a", 1, &[]), event("e2", "b", 1, &["hook"])],
            None,
            UnixMs(1),
        )
        .unwrap();
        let pruned = s.prune(UnixMs(100_000), Duration::from_secs(10)).unwrap();
        assert_eq!(pruned, 1, "the pending one keeps its body");
        assert_eq!(s.load_documents().unwrap().len(), 2, "tombstones stay");
    }
}
