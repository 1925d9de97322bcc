//! The run-time watch list, what discovery knows, and `meta` facts, on PostgreSQL (see
//! `store::entries` and `store::discovery` for their stored forms, shared by both stores).

use std::collections::{HashMap, HashSet};

use super::PgStore;
use super::documents::{INSERT_NEW_DOCUMENT, col, put_document};
use crate::discover::{Scope, ScopeState};
use crate::ids::{DatasetId, DocumentId};
use crate::store::discovery::{decode_scope, encode_scope};
use crate::store::entries::{ALL, decode_entry, encode_entry};
use crate::store::{RuntimeEntry, StoreError};
use crate::tracker::DocState;
use crate::wall::UnixMs;

impl PgStore {
    /// Adds entries in one transaction; one already there is kept. Returns how many were new.
    pub fn add_watch_entries(&mut self, entries: &[RuntimeEntry]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut added = 0;
            for e in entries {
                let doc = e.document.as_ref().map_or(ALL, DocumentId::as_str);
                added += tx.execute(
                    "INSERT INTO watch_entries (dataset_id, document_id, data, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (dataset_id, document_id) DO NOTHING",
                    &[&e.dataset.as_str(), &doc, &encode_entry(e), &e.created_at.0],
                )?;
            }
            Ok(added as usize)
        })
    }

    /// Removes the entries of `dataset`: those documents, or (`None`) all of them.
    pub fn remove_watch_entries(
        &mut self,
        dataset: &DatasetId,
        documents: Option<&[DocumentId]>,
    ) -> Result<usize, StoreError> {
        let n = match documents {
            None => self.execute(
                "DELETE FROM watch_entries WHERE dataset_id = $1",
                &[&dataset.as_str()],
            )?,
            Some(docs) => {
                let docs: Vec<&str> = docs.iter().map(DocumentId::as_str).collect();
                self.execute(
                    "DELETE FROM watch_entries WHERE dataset_id = $1 AND document_id = ANY($2)",
                    &[&dataset.as_str(), &docs],
                )?
            }
        };
        Ok(n as usize)
    }

    /// Every run-time entry, in key order.
    pub fn watch_entries(&self) -> Result<Vec<RuntimeEntry>, StoreError> {
        let rows = self.query(
            "SELECT dataset_id, document_id, data, created_at FROM watch_entries
             ORDER BY dataset_id, document_id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let data: &str = col(self, r, 2)?;
                decode_entry(
                    col(self, r, 0)?,
                    col(self, r, 1)?,
                    data,
                    col(self, r, 3)?,
                    self.path(),
                )
            })
            .collect()
    }

    /// Every scope discovery has seen, by scope.
    pub fn load_scopes(&self) -> Result<HashMap<Scope, ScopeState>, StoreError> {
        let rows = self.query("SELECT scope, data FROM discovery", &[])?;
        let mut out = HashMap::new();
        for r in &rows {
            let (key, data): (&str, &str) = (col(self, r, 0)?, col(self, r, 1)?);
            if let Some((scope, state)) = decode_scope(key, data, self.path())? {
                out.insert(scope, state);
            }
        }
        Ok(out)
    }

    /// A scope's state and the documents discovery found, in one transaction.
    pub fn commit_discovery(
        &mut self,
        scope: &Scope,
        state: &ScopeState,
        documents: &[DocState],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let data = encode_scope(state);
        self.write(|tx| {
            for d in documents {
                put_document(tx, INSERT_NEW_DOCUMENT, d, now)?;
            }
            tx.execute(
                "INSERT INTO discovery (scope, data, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (scope) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                &[&scope.key(), &data, &now.0],
            )
            .map(|_| ())
        })
    }

    /// The documents of `dataset` the store knows (any state).
    pub fn known_documents(&self, dataset: &DatasetId) -> Result<HashSet<DocumentId>, StoreError> {
        let rows = self.query(
            "SELECT document_id FROM documents WHERE dataset_id = $1",
            &[&dataset.as_str()],
        )?;
        rows.iter()
            .map(|r| col::<&str>(self, r, 0).map(DocumentId::new))
            .collect()
    }

    /// A small fact (`meta` table), if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.query("SELECT value FROM meta WHERE key = $1", &[&key])?;
        rows.first().map(|r| col(self, r, 0)).transpose()
    }

    pub fn set_meta(&mut self, key: &str, value: &str, now: UnixMs) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&key, &value, &now.0],
            )
        })
        .map(|_| ())
    }
}
