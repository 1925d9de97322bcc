//! Document rows and dataset schedules on PostgreSQL (see `store::documents` for the rows'
//! stored form, shared by both stores).

use std::collections::HashMap;

use postgres::Row;

use super::{PgStore, PgTx};
use crate::ids::{DatasetId, DocumentId};
use crate::store::documents::{decode_document, encode_document, parse_state};
use crate::store::{StoreError, Stored, StoredSchedule};
use crate::tracker::{DocState, Lifecycle};
use crate::wall::UnixMs;

pub(super) const INSERT_NEW_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dataset_id, document_id) DO NOTHING";
pub(super) const UPSERT_DOCUMENT: &str =
    "INSERT INTO documents (dataset_id, document_id, state, data, updated_at)
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dataset_id, document_id) DO UPDATE
     SET state = excluded.state, data = excluded.data, updated_at = excluded.updated_at";

/// Writes one document row with `sql` ([`INSERT_NEW_DOCUMENT`] or [`UPSERT_DOCUMENT`]).
pub(super) fn put_document(
    tx: &mut PgTx<'_>,
    sql: &'static str,
    d: &DocState,
    now: UnixMs,
) -> Result<(), StoreError> {
    let data = encode_document(d, tx.path())?;
    tx.execute(
        sql,
        &[
            &d.dataset_id.as_str(),
            &d.document_id.as_str(),
            &d.state.as_str(),
            &data,
            &now.0,
        ],
    )
    .map(|_| ())
}

/// Column `i` of a row, or the store's error (never a panic on a surprising type).
pub(super) fn col<'a, T: postgres::types::FromSql<'a>>(
    store: &PgStore,
    row: &'a Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| store.err(e))
}

impl PgStore {
    /// Every stored document, decoded (for `status`; the daemon never loads them all).
    pub fn load_documents(&self) -> Result<Vec<DocState>, StoreError> {
        let rows = self.query("SELECT dataset_id, document_id, data FROM documents", &[])?;
        rows.iter()
            .map(|r| {
                let (ds, doc, data): (&str, &str, &str) =
                    (col(self, r, 0)?, col(self, r, 1)?, col(self, r, 2)?);
                decode_document(ds, doc, data, self.path())
            })
            .collect()
    }

    /// Calls `f(dataset_id, document_id, state)` for every stored document, in key order.
    pub fn for_each_document_state(
        &self,
        mut f: impl FnMut(&str, &str, Lifecycle),
    ) -> Result<(), StoreError> {
        let rows = self.query(
            "SELECT dataset_id, document_id, state FROM documents ORDER BY dataset_id, document_id",
            &[],
        )?;
        for r in &rows {
            let (ds, doc, state): (&str, &str, &str) =
                (col(self, r, 0)?, col(self, r, 1)?, col(self, r, 2)?);
            f(ds, doc, parse_state(ds, doc, state, self.path())?);
        }
        Ok(())
    }

    /// The stored states of `wanted` documents of one dataset (sorted ids); see the SQLite
    /// store's twin.
    pub fn load_dataset(
        &self,
        dataset: &DatasetId,
        wanted: &[DocumentId],
    ) -> Result<Vec<Stored>, StoreError> {
        let rows = self.query(
            "SELECT document_id, state, data FROM documents WHERE dataset_id = $1",
            &[&dataset.as_str()],
        )?;
        let mut out = Vec::with_capacity(wanted.len());
        for r in &rows {
            let doc: &str = col(self, r, 0)?;
            let Ok(at) = wanted.binary_search_by(|w| w.as_str().cmp(doc)) else {
                continue;
            };
            let state: &str = col(self, r, 1)?;
            if state != Lifecycle::Watching.as_str() {
                out.push(Stored::Terminal(wanted[at].clone()));
                continue;
            }
            let data: &str = col(self, r, 2)?;
            let state = decode_document(dataset.as_str(), doc, data, self.path())?;
            out.push(Stored::Live(Box::new(state)));
        }
        Ok(out)
    }

    /// Records documents watched for the first time; one already stored is left as it is.
    pub fn insert_new_documents(
        &mut self,
        docs: &[(DatasetId, DocumentId)],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for (ds, doc) in docs {
                let state = DocState::new(ds.clone(), doc.clone(), now);
                put_document(tx, INSERT_NEW_DOCUMENT, &state, now)?;
            }
            Ok(())
        })
    }

    pub fn load_schedules(&self) -> Result<HashMap<DatasetId, StoredSchedule>, StoreError> {
        let rows = self.query(
            "SELECT dataset_id, next_poll_at, failures FROM datasets",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let failures: i64 = col(self, r, 2)?;
                Ok((
                    DatasetId::new(col::<&str>(self, r, 0)?),
                    StoredSchedule {
                        next_poll_at: UnixMs(col(self, r, 1)?),
                        failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    },
                ))
            })
            .collect()
    }

    /// The state of one document, if known.
    pub fn document(
        &self,
        dataset: &DatasetId,
        document: &DocumentId,
    ) -> Result<Option<DocState>, StoreError> {
        let rows = self.query(
            "SELECT data FROM documents WHERE dataset_id = $1 AND document_id = $2",
            &[&dataset.as_str(), &document.as_str()],
        )?;
        rows.first()
            .map(|r| {
                let data: &str = col(self, r, 0)?;
                decode_document(dataset.as_str(), document.as_str(), data, self.path())
            })
            .transpose()
    }

    /// How many documents are in each lifecycle state.
    pub fn count_by_state(&self) -> Result<HashMap<Lifecycle, u64>, StoreError> {
        let rows = self.query("SELECT state, count(*) FROM documents GROUP BY state", &[])?;
        let mut out = HashMap::new();
        for r in &rows {
            let (s, n): (&str, i64) = (col(self, r, 0)?, col(self, r, 1)?);
            if let Some(l) = Lifecycle::parse(s) {
                out.insert(l, n.max(0) as u64);
            }
        }
        Ok(out)
    }
}
