//! The PostgreSQL store (`state.url`): the same tables and the same operations as the SQLite
//! store, for several instances sharing one database. One [`PgStore`] is one connection
//! (the synchronous `postgres` client, run on the blocking pool like SQLite's).
//!
//! Layout: this file connects, sorts errors and creates or migrates the schema under an
//! advisory lock (two instances starting together do not race); `documents`, `outbox` and
//! `rest` (run-time entries, discovery, meta) hold the operations, beside their SQLite twins'
//! names. Text ids are `COLLATE "C"`: key order is byte order, as in SQLite.
//!
//! It decides nothing; it records what the engine and the dispatcher decided.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};

use super::StoreError;
use crate::config::PostgresConfig;

mod documents;
mod lease;
mod outbox;
mod rest;

pub use lease::{Acquired, Fence};

/// The PostgreSQL schema this build writes. Older ones are migrated; newer ones refused.
pub const PG_SCHEMA_VERSION: i64 = 1;

/// The advisory lock key of schema changes (any constant; "coze" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_7a65;

const SCHEMA_V1: &str = r#"
CREATE TABLE schema_version (version BIGINT NOT NULL);
CREATE TABLE documents (
    dataset_id  TEXT COLLATE "C" NOT NULL,
    document_id TEXT COLLATE "C" NOT NULL,
    state       TEXT NOT NULL,
    data        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, document_id)
);
CREATE INDEX documents_state ON documents (dataset_id, document_id) INCLUDE (state);
CREATE TABLE datasets (
    dataset_id   TEXT PRIMARY KEY,
    next_poll_at BIGINT NOT NULL,
    failures     BIGINT NOT NULL
);
CREATE TABLE events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    dataset_id  TEXT NOT NULL,
    document_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    body        TEXT
);
CREATE INDEX events_document ON events (dataset_id, document_id, seq);
CREATE TABLE deliveries (
    event_seq       BIGINT NOT NULL REFERENCES events(seq),
    notifier        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (event_seq, notifier)
);
CREATE INDEX deliveries_queue ON deliveries (status, notifier, next_attempt_at, event_seq);
CREATE TABLE watch_entries (
    dataset_id  TEXT COLLATE "C" NOT NULL,
    document_id TEXT COLLATE "C" NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, document_id)
);
CREATE TABLE discovery (
    scope      TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE lease (
    id         INT PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO schema_version (version) VALUES (1);
"#;

/// Query parameters.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// One connection to the PostgreSQL store. Interior mutability, because the store's reads
/// take `&self` (SQLite's do) and the driver's take `&mut`; a store is used by one thread at
/// a time (behind `StoreHandle`'s mutexes).
pub struct PgStore {
    /// `None` only while dropping (see `Drop`).
    client: RefCell<Option<Client>>,
    /// The URL without a password, for messages (`StoreError` names it as a path).
    at: PathBuf,
    /// Statements prepared on this connection, by their SQL.
    prepared: RefCell<HashMap<&'static str, Statement>>,
    /// Checked first by every write transaction (see `lease`).
    fence: RefCell<Option<Fence>>,
    /// To connect again after the server ended the connection (a restart, a failover, a
    /// terminated backend).
    cfg: PostgresConfig,
}

/// A transaction on a [`PgStore`]'s connection, with its statement cache.
pub(super) struct PgTx<'a> {
    tx: Transaction<'a>,
    prepared: &'a RefCell<HashMap<&'static str, Statement>>,
    at: &'a Path,
}

impl PgTx<'_> {
    pub(super) fn err(&self, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            at: self.at.to_path_buf(),
            source,
        }
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(|e| self.err(e))?;
        self.prepared.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn execute(&mut self, sql: &'static str, p: &Params) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        self.tx.execute(&st, p).map_err(|e| self.err(e))
    }

    pub(super) fn query(&mut self, sql: &'static str, p: &Params) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        self.tx.query(&st, p).map_err(|e| self.err(e))
    }

    pub(super) fn path(&self) -> &Path {
        self.at
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("at", &self.at).finish()
    }
}

impl PgStore {
    /// Connects and creates or migrates the schema (under the advisory lock).
    pub fn open(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let mut store = Self::connect(cfg)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects to a store whose schema must be this build's (for `status`, `deliveries`,
    /// `watch`, and the daemon's reading connections).
    pub fn open_existing(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let store = Self::connect(cfg)?;
        match store.version()? {
            None => Err(StoreError::Dir {
                dir: store.at.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no coze-watch tables in this database (has the daemon run yet?)",
                ),
            }),
            Some(v) if v == PG_SCHEMA_VERSION => Ok(store),
            Some(v) if v > PG_SCHEMA_VERSION => Err(StoreError::TooNew {
                path: store.at.clone(),
                found: v,
            }),
            Some(v) => Err(StoreError::NeedsMigration {
                path: store.at.clone(),
                found: v,
            }),
        }
    }

    fn connect(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let client = client(cfg)?;
        Ok(PgStore {
            client: RefCell::new(Some(client)),
            at: PathBuf::from(cfg.url.as_str()),
            prepared: RefCell::new(HashMap::new()),
            fence: RefCell::new(None),
            cfg: cfg.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }
}

/// A new connection to the database of `cfg`.
fn client(cfg: &PostgresConfig) -> Result<Client, StoreError> {
    let at = PathBuf::from(cfg.url.as_str());
    let err = |source| StoreError::Postgres {
        at: at.clone(),
        source,
    };
    let mut config: postgres::Config = driver_url(&cfg.url).parse().map_err(err)?;
    if let Some(p) = &cfg.password {
        config.password(p.expose());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("coze-watch");
    // A cut connection fails within seconds instead of hanging a lease renewal.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.tcp_user_timeout(Duration::from_secs(10));
    config.connect(tls()?).map_err(err)
}

impl PgStore {
    pub(super) fn err(&self, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            at: self.at.clone(),
            source,
        }
    }

    /// The stored schema version; `None` when the database has no coze-watch tables.
    fn version(&self) -> Result<Option<i64>, StoreError> {
        let exists: bool = self
            .query("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| self.err(e))?
            .unwrap_or(false);
        if !exists {
            return Ok(None);
        }
        let v: Option<i64> = self
            .query("SELECT max(version) FROM schema_version", &[])?
            .first()
            .map(|r| r.try_get::<_, Option<i64>>(0))
            .transpose()
            .map_err(|e| self.err(e))?
            .flatten();
        match v {
            Some(v) => Ok(Some(v)),
            None => Err(StoreError::Corrupt {
                path: self.at.clone(),
                detail: "schema_version holds no version".into(),
            }),
        }
    }

    /// Creates the schema, or migrates an older one, in one transaction holding the
    /// advisory lock; refuses a newer one.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let at = self.at.clone();
        let e = |source| StoreError::Postgres {
            at: at.clone(),
            source,
        };
        let mut client = self.conn()?;
        let mut tx = client.transaction().map_err(e)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(e)?;
        let exists: bool = tx
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .map_err(e)?;
        let version: i64 = if exists {
            tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
                .and_then(|r| r.try_get(0))
                .map_err(e)?
        } else {
            0
        };
        if version > PG_SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: at.clone(),
                found: version,
            });
        }
        if version < 1 {
            tx.batch_execute(SCHEMA_V1).map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// The connection, opened again first when the server closed it (the call that met the
    /// closed connection failed; this one gets a new one, with no statement prepared yet).
    fn conn(&self) -> Result<RefMut<'_, Client>, StoreError> {
        {
            let mut slot = self.client.borrow_mut();
            if slot.as_ref().is_some_and(Client::is_closed) {
                *slot = Some(client(&self.cfg)?);
                self.prepared.borrow_mut().clear();
            }
        }
        RefMut::filter_map(self.client.borrow_mut(), Option::as_mut).map_err(|_| StoreError::Dir {
            dir: self.at.clone(),
            source: std::io::Error::other("the connection is closed"),
        })
    }

    /// A prepared statement for `sql`, prepared once per connection.
    fn statement(&self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.conn()?.prepare(sql).map_err(|e| self.err(e))?;
        self.prepared.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn query(&self, sql: &'static str, p: &Params) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        let rows = self.conn()?.query(&st, p);
        rows.map_err(|e| self.err(e))
    }

    pub(super) fn execute(&self, sql: &'static str, p: &Params) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        let n = self.conn()?.execute(&st, p);
        n.map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction, rolled back if it fails.
    pub(super) fn write<R>(
        &self,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut client = self.conn()?;
        let tx = client.transaction().map_err(|e| self.err(e))?;
        let mut t = PgTx {
            tx,
            prepared: &self.prepared,
            at: &self.at,
        };
        if let Some(fence) = self.fence.borrow().as_ref() {
            lease::check_fence(&mut t, fence)?;
        }
        let r = f(&mut t)?;
        t.tx.commit().map_err(|e| self.err(e))?;
        Ok(r)
    }

    /// A cheap round trip, for the watchdog.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn()?
            .simple_query("SELECT 1")
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The database checks itself; nothing to read through.
    pub fn verify(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Drop for PgStore {
    /// Closing a connection blocks on the driver's own runtime, which must not start on an
    /// async runtime's thread (a daemon dropping its store handle): it closes on a thread of
    /// its own there.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// The URL as the driver reads it: it knows `sslmode` disable, prefer and require; ours
/// always verifies the server's certificate and name, so verify-ca and verify-full are
/// `require` to it.
fn driver_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = match (k.as_ref(), v.as_ref()) {
                ("sslmode", "verify-ca" | "verify-full") => "require".to_string(),
                _ => v.into_owned(),
            };
            (k.into_owned(), v)
        })
        .collect();
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// rustls with the platform's trust store and the ring provider (no OpenSSL).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::with_platform_verifier().map_err(|e| StoreError::Dir {
        dir: PathBuf::from("postgres TLS"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
