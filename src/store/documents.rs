//! Document rows and dataset schedules.
//!
//! A document's state is stored as [`Row`], this module's own versioned type, converted from
//! and to the tracker's [`DocState`] (which is not serializable): a field added to the state
//! machine never changes what an old row decodes to. Every field a row may lack has a serde
//! default, and the rows written by 0.1.0 (`tests/fixtures/store-0.1.0`) must always decode.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{SqliteStore, StoreError, classify};
use crate::coze::DocumentStatus;
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::{DocInfo, DocState, Lifecycle};
use crate::wall::UnixMs;

/// The row version this build writes. Rows without `v` are version 1 (0.1.0).
pub const ROW_VERSION: u32 = 1;

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

/// The stored form of one document (the `data` column, JSON). Field names are the stored
/// format: never rename one; add fields with a default; bump [`ROW_VERSION`] only with a
/// conversion for the older rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    #[serde(default = "version_1")]
    pub v: u32,
    pub dataset_id: String,
    pub document_id: String,
    /// `watching`, `completed`, `failed`, `missing` or `timed_out`.
    pub state: String,
    #[serde(default)]
    pub stalled: bool,
    pub watched_since: i64,
    pub last_change: i64,
    #[serde(default)]
    pub last_seen: Option<i64>,
    /// The API's status code, as received.
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub progress: Option<i64>,
    #[serde(default)]
    pub remaining_time: Option<i64>,
    #[serde(default)]
    pub progress_reported: Option<i64>,
    #[serde(default)]
    pub info: InfoRow,
    #[serde(default)]
    pub absent_count: u32,
    #[serde(default)]
    pub absent_since: Option<i64>,
    #[serde(default)]
    pub unknown_status_warned: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub terminal_at: Option<i64>,
    /// Events fired so far, by event type (`document.completed`: 1): the occurrence numbers
    /// that derive event ids. Absent in rows written before 0.2.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fired: BTreeMap<String, u32>,
}

fn version_1() -> u32 {
    1
}

/// The stored form of [`DocInfo`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InfoRow {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub update_type: Option<i64>,
    #[serde(default)]
    pub update_interval: Option<i64>,
    #[serde(default)]
    pub status_descript: Option<String>,
}

impl From<&DocState> for Row {
    fn from(d: &DocState) -> Self {
        let i = &d.info;
        Row {
            v: ROW_VERSION,
            dataset_id: d.dataset_id.to_string(),
            document_id: d.document_id.to_string(),
            state: d.state.as_str().to_string(),
            stalled: d.stalled,
            watched_since: d.watched_since.0,
            last_change: d.last_change.0,
            last_seen: d.last_seen.map(|t| t.0),
            status: d.status.map(DocumentStatus::code),
            progress: d.progress,
            remaining_time: d.remaining_time,
            progress_reported: d.progress_reported,
            info: InfoRow {
                name: i.name.clone(),
                file_type: i.file_type.clone(),
                size: i.size,
                url: i.url.clone(),
                update_type: i.update_type,
                update_interval: i.update_interval,
                status_descript: i.status_descript.clone(),
            },
            absent_count: d.absent_count,
            absent_since: d.absent_since.map(|t| t.0),
            unknown_status_warned: d.unknown_status_warned,
            reason: d.reason.clone(),
            terminal_at: d.terminal_at.map(|t| t.0),
            fired: d
                .fired
                .iter()
                .map(|(t, n)| (t.as_str().to_string(), *n))
                .collect(),
        }
    }
}

/// Why a stored row cannot become a [`DocState`].
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("cannot decode the row: {0}")]
    Json(#[from] serde_json::Error),
    #[error("row version {0} is newer than this coze-watch reads ({ROW_VERSION})")]
    TooNew(u32),
    #[error("unknown state {0:?}")]
    UnknownState(String),
    #[error("{0}")]
    UnknownEvent(String),
}

impl TryFrom<Row> for DocState {
    type Error = RowError;

    fn try_from(r: Row) -> Result<Self, RowError> {
        if r.v > ROW_VERSION {
            return Err(RowError::TooNew(r.v));
        }
        let state = Lifecycle::parse(&r.state).ok_or(RowError::UnknownState(r.state.clone()))?;
        let i = r.info;
        Ok(DocState {
            dataset_id: DatasetId::new(r.dataset_id),
            document_id: DocumentId::new(r.document_id),
            state,
            stalled: r.stalled,
            watched_since: UnixMs(r.watched_since),
            last_change: UnixMs(r.last_change),
            last_seen: r.last_seen.map(UnixMs),
            status: r.status.map(DocumentStatus::from),
            progress: r.progress,
            remaining_time: r.remaining_time,
            progress_reported: r.progress_reported,
            info: DocInfo {
                name: i.name,
                file_type: i.file_type,
                size: i.size,
                url: i.url,
                update_type: i.update_type,
                update_interval: i.update_interval,
                status_descript: i.status_descript,
            },
            absent_count: r.absent_count,
            absent_since: r.absent_since.map(UnixMs),
            unknown_status_warned: r.unknown_status_warned,
            reason: r.reason,
            terminal_at: r.terminal_at.map(UnixMs),
            fired: r
                .fired
                .iter()
                .map(|(t, n)| Ok((t.parse().map_err(RowError::UnknownEvent)?, *n)))
                .collect::<Result<_, RowError>>()?,
        })
    }
}

pub(super) const INSERT_NEW_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dataset_id, document_id) DO NOTHING";
pub(super) const UPSERT_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dataset_id, document_id) DO UPDATE
     SET state = excluded.state, data = excluded.data, updated_at = excluded.updated_at";

/// A document's `data` column (JSON of [`Row`]); `Err` names the document.
pub(super) fn encode_document(d: &DocState, path: &Path) -> Result<String, StoreError> {
    serde_json::to_string(&Row::from(d)).map_err(|err| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode document {}: {err}", d.document_id),
    })
}

/// Decodes one stored row; a row that cannot be read is `Corrupt`, naming the document.
pub(super) fn decode_document(
    dataset: &str,
    document: &str,
    data: &str,
    path: &Path,
) -> Result<DocState, StoreError> {
    serde_json::from_str::<Row>(data)
        .map_err(RowError::from)
        .and_then(DocState::try_from)
        .map_err(|detail| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("document {document} of dataset {dataset}: {detail}"),
        })
}

/// A stored state name, or `Corrupt` naming the document.
pub(super) fn parse_state(
    dataset: &str,
    document: &str,
    state: &str,
    path: &Path,
) -> Result<Lifecycle, StoreError> {
    Lifecycle::parse(state).ok_or_else(|| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("document {document} of dataset {dataset}: unknown state {state:?}"),
    })
}

/// Writes one document row with `sql` ([`INSERT_NEW_DOCUMENT`] or [`UPSERT_DOCUMENT`]).
pub(super) fn put_document(
    tx: &Connection,
    sql: &str,
    d: &DocState,
    path: &Path,
    now: UnixMs,
) -> Result<(), StoreError> {
    let data = encode_document(d, path)?;
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

impl SqliteStore {
    /// Every stored document, decoded (for `status`; the daemon never loads them all).
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
            out.push(self.decode(&ds, &doc, &data)?);
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
            let state = parse_state(ds, doc, state, &self.path)?;
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
            let state = self.decode(dataset.as_str(), doc, text(2)?)?;
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
        data.map(|d| self.decode(dataset.as_str(), document.as_str(), &d))
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

impl SqliteStore {
    /// Decodes one stored row; a row that cannot be read is `Corrupt`, naming the document.
    fn decode(&self, dataset: &str, document: &str, data: &str) -> Result<DocState, StoreError> {
        decode_document(dataset, document, data, &self.path)
    }
}
