//! What discovery remembers per scope (a space, or a `documents: all` knowledge base), and
//! small facts (`meta`: the last reload's outcome).
//!
//! Stored as [`ScopeRow`], versioned, converted from and to `discover::ScopeState`.
//! [`Store::commit_discovery`] writes a scope's new state and the documents it found in one
//! transaction: a crash either loses the whole listing (it is redone) or keeps all of it.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::documents::{INSERT_NEW_DOCUMENT, put_document};
use super::{SqliteStore, StoreError, classify};
use crate::discover::{KbState, Scope, ScopeState, Skip};
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::DocState;
use crate::wall::UnixMs;

#[derive(Debug, Default, Serialize, Deserialize)]
struct ScopeRow {
    #[serde(default = "one")]
    v: u32,
    #[serde(default)]
    baselined: bool,
    #[serde(default)]
    datasets: BTreeMap<String, KbRow>,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KbRow {
    #[serde(default)]
    doc_count: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default)]
    listed_at: Option<i64>,
    #[serde(default)]
    baseline_pending: bool,
    #[serde(default)]
    skipped: Option<String>,
}

fn one() -> u32 {
    1
}

impl From<&ScopeState> for ScopeRow {
    fn from(s: &ScopeState) -> Self {
        ScopeRow {
            v: 1,
            baselined: s.baselined,
            last_error: s.last_error.clone(),
            datasets: s
                .datasets
                .iter()
                .map(|(ds, kb)| {
                    let row = KbRow {
                        doc_count: kb.doc_count,
                        update_time: kb.update_time,
                        listed_at: kb.listed_at.map(|t| t.0),
                        baseline_pending: kb.baseline_pending,
                        skipped: kb.skipped.map(|s| s.as_str().to_string()),
                    };
                    (ds.to_string(), row)
                })
                .collect(),
        }
    }
}

impl From<ScopeRow> for ScopeState {
    fn from(r: ScopeRow) -> Self {
        ScopeState {
            baselined: r.baselined,
            last_error: r.last_error,
            datasets: r
                .datasets
                .into_iter()
                .map(|(ds, kb)| {
                    let state = KbState {
                        doc_count: kb.doc_count,
                        update_time: kb.update_time,
                        listed_at: kb.listed_at.map(UnixMs),
                        baseline_pending: kb.baseline_pending,
                        skipped: kb.skipped.as_deref().and_then(Skip::parse),
                    };
                    (DatasetId::new(ds), state)
                })
                .collect(),
        }
    }
}

/// A scope's `data` column.
pub(super) fn encode_scope(state: &ScopeState) -> String {
    serde_json::to_string(&ScopeRow::from(state)).unwrap_or_else(|_| "{}".into())
}

/// A scope from its columns (`None`: a key this build does not know); `Corrupt` names it.
pub(super) fn decode_scope(
    key: &str,
    data: &str,
    path: &std::path::Path,
) -> Result<Option<(Scope, ScopeState)>, StoreError> {
    let Some(scope) = Scope::parse(key) else {
        return Ok(None);
    };
    let row: ScopeRow = serde_json::from_str(data).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("discovery state of {key}: {e}"),
    })?;
    Ok(Some((scope, ScopeState::from(row))))
}

impl SqliteStore {
    /// Every scope discovery has seen, by scope.
    /// A store older than schema 3 (opened read-only by `status` before a daemon migrated it)
    /// has none: empty.
    pub fn load_scopes(&self) -> Result<HashMap<Scope, ScopeState>, StoreError> {
        if !self.has_table("discovery")? {
            return Ok(HashMap::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT scope, data FROM discovery")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (key, data) = row.map_err(|e| self.err(e))?;
            if let Some((scope, state)) = decode_scope(&key, &data, self.path())? {
                out.insert(scope, state);
            }
        }
        Ok(out)
    }

    /// Writes a scope's state and the documents discovery found, in one transaction. A
    /// document the store knows already is left as it is.
    pub fn commit_discovery(
        &mut self,
        scope: &Scope,
        state: &ScopeState,
        documents: &[DocState],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let path = self.path().to_path_buf();
        let data = encode_scope(state);
        self.write(|tx| {
            for d in documents {
                put_document(tx, INSERT_NEW_DOCUMENT, d, &path, now)?;
            }
            tx.prepare_cached(
                "INSERT INTO discovery (scope, data, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            )
            .and_then(|mut st| st.execute(params![scope.key(), data, now.0]))
            .map(|_| ())
            .map_err(|e| classify(&path, e))
        })
    }

    /// The documents of `dataset` the store knows (any state).
    pub fn known_documents(&self, dataset: &DatasetId) -> Result<HashSet<DocumentId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT document_id FROM documents INDEXED BY documents_state WHERE dataset_id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![dataset.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map(DocumentId::new).map_err(|e| self.err(e)))
            .collect()
    }

    /// A small fact (`meta` table), if set.
    /// `None` too on a store older than schema 3, which has no `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        if !self.has_table("meta")? {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&mut self, key: &str, value: &str, now: UnixMs) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, value, now.0],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}
