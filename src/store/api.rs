//! [`Store`]: the one store interface the rest of the program uses, over either backend:
//! SQLite in the state directory (the default) or a PostgreSQL database (`state.url`). Every
//! method does what its backend's twin does; this file only chooses the twin.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pg::PgStore;
use super::{
    Delivery, DeliveryRow, NewEvent, RecordedAttempt, RuntimeEntry, SqliteStore, StoreError,
    Stored, StoredSchedule,
};
use crate::config::{PostgresConfig, StateConfig};
use crate::discover::{Scope, ScopeState};
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::{DocState, Lifecycle};
use crate::wall::UnixMs;

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// SQLite in this state directory (one instance per directory: [`super::DirLock`]).
    Dir(PathBuf),
    /// A PostgreSQL database, shared by every instance pointed at it.
    Postgres(PostgresConfig),
}

impl Location {
    pub fn of(state: &StateConfig) -> Location {
        match &state.postgres {
            Some(pg) => Location::Postgres(pg.clone()),
            None => Location::Dir(state.dir.clone()),
        }
    }
}

/// One connection to the store.
#[derive(Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    /// Boxed: a PostgreSQL connection is larger than an SQLite one.
    Postgres(Box<PgStore>),
}

/// Runs the same expression on whichever backend `$store` is.
macro_rules! either {
    ($store:expr, $s:ident => $e:expr) => {
        match $store {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens (creating and migrating if needed) the SQLite store in `dir` for writing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        SqliteStore::open(dir).map(Store::Sqlite)
    }

    /// Opens the SQLite store in `dir` read-only (see [`SqliteStore::open_read_only`]).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        SqliteStore::open_read_only(dir).map(Store::Sqlite)
    }

    /// Opens the existing SQLite store in `dir` for writing, migrating nothing.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        SqliteStore::open_existing(dir).map(Store::Sqlite)
    }

    /// Opens the store at `at` for writing, creating or migrating its schema (the daemon).
    pub fn open_at(at: &Location) -> Result<Store, StoreError> {
        match at {
            Location::Dir(dir) => Self::open(dir),
            Location::Postgres(pg) => PgStore::open(pg).map(|s| Store::Postgres(Box::new(s))),
        }
    }

    /// Opens the store at `at` to read it, changing nothing (`status`).
    pub fn open_read_only_at(at: &Location) -> Result<Store, StoreError> {
        match at {
            Location::Dir(dir) => Self::open_read_only(dir),
            Location::Postgres(pg) => {
                PgStore::open_existing(pg).map(|s| Store::Postgres(Box::new(s)))
            }
        }
    }

    /// Opens the existing store at `at` for small writes, migrating nothing (`deliveries`,
    /// `watch`).
    pub fn open_existing_at(at: &Location) -> Result<Store, StoreError> {
        match at {
            Location::Dir(dir) => Self::open_existing(dir),
            Location::Postgres(pg) => {
                PgStore::open_existing(pg).map(|s| Store::Postgres(Box::new(s)))
            }
        }
    }

    /// Another connection beside a running daemon's, waiting up to `busy` for SQLite's locks.
    pub(crate) fn open_reader(at: &Location, busy: Duration) -> Result<Store, StoreError> {
        match at {
            Location::Dir(dir) => {
                SqliteStore::open_reader(&dir.join(super::DB_FILE), busy).map(Store::Sqlite)
            }
            Location::Postgres(pg) => {
                PgStore::open_existing(pg).map(|s| Store::Postgres(Box::new(s)))
            }
        }
    }

    /// Whether a read may run on the async runtime's thread: SQLite's short reads may, a
    /// network round trip may not.
    pub(crate) fn reads_inline(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// Fences this connection's writes with a leader's epoch (PostgreSQL; SQLite has one
    /// writer by its state-dir lock).
    pub fn set_fence(&self, fence: Option<super::Fence>) {
        if let Store::Postgres(s) = self {
            s.set_fence(fence);
        }
    }

    pub fn path(&self) -> &Path {
        either!(self, s => s.path())
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        either!(self, s => s.ping())
    }

    pub fn verify(&self) -> Result<(), StoreError> {
        either!(self, s => s.verify())
    }

    pub fn load_documents(&self) -> Result<Vec<DocState>, StoreError> {
        either!(self, s => s.load_documents())
    }

    pub fn for_each_document_state(
        &self,
        f: impl FnMut(&str, &str, Lifecycle),
    ) -> Result<(), StoreError> {
        either!(self, s => s.for_each_document_state(f))
    }

    pub fn load_dataset(
        &self,
        dataset: &DatasetId,
        wanted: &[DocumentId],
    ) -> Result<Vec<Stored>, StoreError> {
        either!(self, s => s.load_dataset(dataset, wanted))
    }

    pub fn insert_new_documents(
        &mut self,
        docs: &[(DatasetId, DocumentId)],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        either!(self, s => s.insert_new_documents(docs, now))
    }

    pub fn load_schedules(&self) -> Result<HashMap<DatasetId, StoredSchedule>, StoreError> {
        either!(self, s => s.load_schedules())
    }

    pub fn document(
        &self,
        dataset: &DatasetId,
        document: &DocumentId,
    ) -> Result<Option<DocState>, StoreError> {
        either!(self, s => s.document(dataset, document))
    }

    pub fn count_by_state(&self) -> Result<HashMap<Lifecycle, u64>, StoreError> {
        either!(self, s => s.count_by_state())
    }

    /// Document states, their events with one pending delivery per notifier, and the
    /// dataset's schedule, in one transaction (the transactional outbox).
    pub fn commit(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        either!(self, s => s.commit(documents, events, schedule, now))
    }

    /// [`Store::commit`] with `meta` facts in the same transaction.
    pub fn commit_with_meta(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        meta: &[(String, String)],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        either!(self, s => s.commit_with_meta(documents, events, schedule, meta, now))
    }

    pub fn due_deliveries(
        &self,
        notifier: &str,
        now: UnixMs,
        limit: usize,
        busy: &HashSet<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        either!(self, s => s.due_deliveries(notifier, now, limit, busy))
    }

    pub fn next_delivery_after(&self, now: UnixMs) -> Result<Option<UnixMs>, StoreError> {
        either!(self, s => s.next_delivery_after(now))
    }

    pub fn record_attempts(
        &mut self,
        attempts: &[RecordedAttempt],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        either!(self, s => s.record_attempts(attempts, now))
    }

    pub fn kill_removed_notifiers(
        &self,
        keep: &[String],
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        either!(self, s => s.kill_removed_notifiers(keep, now))
    }

    pub fn prune(&self, now: UnixMs, retention: Duration) -> Result<usize, StoreError> {
        either!(self, s => s.prune(now, retention))
    }

    pub fn deliveries(&self, status: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        either!(self, s => s.deliveries(status, limit))
    }

    pub fn requeue_dead(
        &self,
        event_ids: Option<&[String]>,
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        either!(self, s => s.requeue_dead(event_ids, now))
    }

    pub fn drop_dead(&self, event_ids: Option<&[String]>) -> Result<usize, StoreError> {
        either!(self, s => s.drop_dead(event_ids))
    }

    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        either!(self, s => s.outbox_depth())
    }

    pub fn add_watch_entries(&mut self, entries: &[RuntimeEntry]) -> Result<usize, StoreError> {
        either!(self, s => s.add_watch_entries(entries))
    }

    pub fn remove_watch_entries(
        &mut self,
        dataset: &DatasetId,
        documents: Option<&[DocumentId]>,
    ) -> Result<usize, StoreError> {
        either!(self, s => s.remove_watch_entries(dataset, documents))
    }

    pub fn watch_entries(&self) -> Result<Vec<RuntimeEntry>, StoreError> {
        either!(self, s => s.watch_entries())
    }

    pub fn load_scopes(&self) -> Result<HashMap<Scope, ScopeState>, StoreError> {
        either!(self, s => s.load_scopes())
    }

    pub fn commit_discovery(
        &mut self,
        scope: &Scope,
        state: &ScopeState,
        documents: &[DocState],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        either!(self, s => s.commit_discovery(scope, state, documents, now))
    }

    pub fn known_documents(&self, dataset: &DatasetId) -> Result<HashSet<DocumentId>, StoreError> {
        either!(self, s => s.known_documents(dataset))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        either!(self, s => s.meta(key))
    }

    pub fn set_meta(&mut self, key: &str, value: &str, now: UnixMs) -> Result<(), StoreError> {
        either!(self, s => s.set_meta(key, value, now))
    }
}
