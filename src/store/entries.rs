//! The run-time watch list (SPEC section 13): entries added by `watch add` or
//! `POST /v1/watch`, kept beside the documents so they survive restarts and reloads.
//!
//! One row per (dataset, document); a whole knowledge base is the document id `""`. Adding an
//! entry twice keeps the first (idempotent). The stored form is [`EntryRow`], versioned.

use std::collections::BTreeMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{SqliteStore, StoreError};
use crate::ids::{DatasetId, DocumentId};
use crate::wall::UnixMs;

/// One run-time entry: a document, or (`document: None`) every document of a knowledge base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEntry {
    pub dataset: DatasetId,
    pub document: Option<DocumentId>,
    pub labels: BTreeMap<String, String>,
    /// Notifier names; `None`: every notifier.
    pub notify: Option<Vec<String>>,
    /// The batch its document belongs to (`batch.completed`); only on document entries.
    pub batch: Option<String>,
    pub created_at: UnixMs,
}

/// The stored form of an entry's settings (the `data` column).
#[derive(Debug, Default, Serialize, Deserialize)]
struct EntryRow {
    #[serde(default = "one")]
    v: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    notify: Option<Vec<String>>,
    /// Absent in entries written before batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<String>,
}

fn one() -> u32 {
    1
}

/// The document id column of a whole-knowledge-base entry.
pub(super) const ALL: &str = "";

/// An entry's `data` column.
pub(super) fn encode_entry(e: &RuntimeEntry) -> String {
    serde_json::to_string(&EntryRow {
        v: 1,
        labels: e.labels.clone(),
        notify: e.notify.clone(),
        batch: e.batch.clone(),
    })
    .unwrap_or_else(|_| "{}".into())
}

/// An entry from its columns; `Corrupt` names it.
pub(super) fn decode_entry(
    ds: String,
    doc: String,
    data: &str,
    created: i64,
    path: &std::path::Path,
) -> Result<RuntimeEntry, StoreError> {
    let settings: EntryRow = serde_json::from_str(data).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("watch entry {ds}/{doc}: {e}"),
    })?;
    Ok(RuntimeEntry {
        dataset: DatasetId::new(ds),
        document: (doc != ALL).then(|| DocumentId::new(doc)),
        labels: settings.labels,
        notify: settings.notify,
        batch: settings.batch,
        created_at: UnixMs(created),
    })
}

impl SqliteStore {
    /// Adds entries in one transaction; an entry already there is kept as it is. Returns how
    /// many were new.
    pub fn add_watch_entries(&mut self, entries: &[RuntimeEntry]) -> Result<usize, StoreError> {
        let path = self.path().to_path_buf();
        self.write(|tx| {
            let mut added = 0;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO watch_entries (dataset_id, document_id, data, created_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (dataset_id, document_id) DO NOTHING",
                )
                .map_err(|e| super::classify(&path, e))?;
            for e in entries {
                let data = encode_entry(e);
                let doc = e.document.as_ref().map_or(ALL, DocumentId::as_str);
                added += stmt
                    .execute(params![e.dataset.as_str(), doc, data, e.created_at.0])
                    .map_err(|e| super::classify(&path, e))?;
            }
            Ok(added)
        })
    }

    /// Removes the entries of `dataset`: those documents, or (`None`) every entry of the
    /// knowledge base, its whole-knowledge-base entry included. Returns how many were removed.
    pub fn remove_watch_entries(
        &mut self,
        dataset: &DatasetId,
        documents: Option<&[DocumentId]>,
    ) -> Result<usize, StoreError> {
        let path = self.path().to_path_buf();
        self.write(|tx| {
            let e = |err| super::classify(&path, err);
            match documents {
                None => tx
                    .execute(
                        "DELETE FROM watch_entries WHERE dataset_id = ?1",
                        params![dataset.as_str()],
                    )
                    .map_err(e),
                Some(docs) => {
                    let mut n = 0;
                    for d in docs {
                        n += tx
                            .execute(
                                "DELETE FROM watch_entries WHERE dataset_id = ?1 AND document_id = ?2",
                                params![dataset.as_str(), d.as_str()],
                            )
                            .map_err(e)?;
                    }
                    Ok(n)
                }
            }
        })
    }

    /// Every run-time entry, in key order.
    pub fn watch_entries(&self) -> Result<Vec<RuntimeEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT dataset_id, document_id, data, created_at FROM watch_entries
                 ORDER BY dataset_id, document_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (ds, doc, data, created) = row.map_err(|e| self.err(e))?;
            out.push(decode_entry(ds, doc, &data, created, self.path())?);
        }
        Ok(out)
    }
}
