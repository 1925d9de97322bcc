//! The schema: its version, the migrations from every older version, and the checks that
//! refuse a newer, foreign or damaged database.
//!
//! Each migration step takes the schema from version n to n + 1 inside one transaction; a
//! version is never edited once released (a store written by it is checked in under
//! `tests/fixtures/`).

use super::{SCHEMA_VERSION, SqliteStore, StoreError, classify};

pub(super) const SCHEMA_V1: &str = "
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

/// Version 3: the run-time watch list (`watch add`, `POST /v1/watch`), what discovery knows of
/// each space and `documents: all` knowledge base (so a restart never re-baselines), and small
/// facts such as the last reload's outcome.
const SCHEMA_V3: &str = "
CREATE TABLE watch_entries (
    dataset_id  TEXT NOT NULL,
    document_id TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, document_id)
);
CREATE TABLE discovery (
    scope      TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

impl SqliteStore {
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
    pub(super) fn check_version(&self, allow_empty: bool) -> Result<i64, StoreError> {
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

    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
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
        if version < 3 {
            tx.execute_batch(SCHEMA_V3)
                .map_err(|e| classify(&path, e))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| classify(&path, e))?;
        tx.commit().map_err(|e| classify(&path, e))
    }
}
