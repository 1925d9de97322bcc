//! The outbox on PostgreSQL: the same transactional outbox as the SQLite store's (see
//! `store::outbox`), in PostgreSQL's words.

use std::collections::HashSet;
use std::time::Duration;

use super::PgStore;
use super::documents::{UPSERT_DOCUMENT, col, put_document};
use crate::event::{EventId, EventType};
use crate::ids::{DatasetId, DocumentId};
use crate::store::outbox::{Delivery, DeliveryRow, DeliveryUpdate, NewEvent, RecordedAttempt};
use crate::store::{StoreError, StoredSchedule};
use crate::tracker::DocState;
use crate::wall::UnixMs;

const DUE_SQL: &str =
    "SELECT d.event_seq, e.event_id, e.type, e.dataset_id, e.document_id, d.notifier,
        d.attempts, e.created_at, e.body
 FROM deliveries d JOIN events e ON e.seq = d.event_seq
 WHERE d.status = 'pending' AND d.notifier = $3 AND d.next_attempt_at <= $1
   AND NOT EXISTS (
     SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq
     WHERE d2.status = 'pending' AND d2.notifier = d.notifier
       AND e2.dataset_id = e.dataset_id AND e2.document_id = e.document_id
       AND d2.event_seq < d.event_seq)
 ORDER BY d.next_attempt_at, d.event_seq
 LIMIT $2";

impl PgStore {
    pub fn commit(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.commit_with_meta(documents, events, schedule, &[], now)
    }

    /// Document states, events (an id already stored is skipped with its deliveries), their
    /// deliveries, `meta` facts and the dataset's schedule, in one transaction.
    pub fn commit_with_meta(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        meta: &[(String, String)],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for d in documents {
                put_document(tx, UPSERT_DOCUMENT, d, now)?;
            }
            for ev in events {
                let inserted = tx.query(
                    "INSERT INTO events (event_id, type, dataset_id, document_id, created_at, body)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING
                     RETURNING seq",
                    &[
                        &ev.event_id.as_str(),
                        &ev.event_type.as_str(),
                        &ev.dataset_id.as_str(),
                        &ev.document_id.as_str(),
                        &ev.created_at.0,
                        &ev.body,
                    ],
                )?;
                let Some(row) = inserted.first() else {
                    continue;
                };
                let seq: i64 = row.try_get(0).map_err(|e| tx.err(e))?;
                for n in &ev.notifiers {
                    tx.execute(
                        "INSERT INTO deliveries (event_seq, notifier, status, attempts, next_attempt_at, updated_at)
                         VALUES ($1, $2, 'pending', 0, $3, $3)",
                        &[&seq, n, &ev.created_at.0],
                    )?;
                }
            }
            for (key, value) in meta {
                tx.execute(
                    "INSERT INTO meta (key, value, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    &[key, value, &now.0],
                )?;
            }
            if let Some((ds, s)) = schedule {
                tx.execute(
                    "INSERT INTO datasets (dataset_id, next_poll_at, failures) VALUES ($1, $2, $3)
                     ON CONFLICT (dataset_id) DO UPDATE
                     SET next_poll_at = excluded.next_poll_at, failures = excluded.failures",
                    &[&ds.as_str(), &s.next_poll_at.0, &i64::from(s.failures)],
                )?;
            }
            Ok(())
        })
    }

    /// A notifier's pending deliveries due at `now` (see the SQLite store's twin).
    pub fn due_deliveries(
        &self,
        notifier: &str,
        now: UnixMs,
        limit: usize,
        busy: &HashSet<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let want = (limit + busy.len()) as i64;
        // In a transaction: with a leader's fence set, the claim checks its epoch first.
        let rows = self.write(|tx| tx.query(DUE_SQL, &[&now.0, &want, &notifier]))?;
        let mut out = Vec::new();
        for r in &rows {
            let seq: i64 = col(self, r, 0)?;
            if busy.contains(&seq) {
                continue;
            }
            let event_id: String = col(self, r, 1)?;
            let ty: &str = col(self, r, 2)?;
            let event_type = ty
                .parse::<EventType>()
                .map_err(|detail| StoreError::Corrupt {
                    path: self.path().to_path_buf(),
                    detail: format!("event {event_id}: {detail}"),
                })?;
            let attempts: i64 = col(self, r, 6)?;
            out.push(Delivery {
                seq,
                event_id: EventId::new(event_id),
                event_type,
                dataset_id: DatasetId::new(col::<&str>(self, r, 3)?),
                document_id: DocumentId::new(col::<&str>(self, r, 4)?),
                notifier: col(self, r, 5)?,
                attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                created_at: UnixMs(col(self, r, 7)?),
                body: col::<Option<String>>(self, r, 8)?.unwrap_or_default(),
            });
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// The earliest future attempt among deliveries next in line for their document.
    pub fn next_delivery_after(&self, now: UnixMs) -> Result<Option<UnixMs>, StoreError> {
        const SQL: &str =
            "SELECT min(d.next_attempt_at) FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.status = 'pending' AND d.next_attempt_at > $1
               AND NOT EXISTS (
                 SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq
                 WHERE d2.status = 'pending' AND d2.notifier = d.notifier
                   AND e2.dataset_id = e.dataset_id AND e2.document_id = e.document_id
                   AND d2.event_seq < d.event_seq)";
        let rows = self.query(SQL, &[&now.0])?;
        match rows.first() {
            Some(r) => Ok(col::<Option<i64>>(self, r, 0)?.map(UnixMs)),
            None => Ok(None),
        }
    }

    /// Records attempts' outcomes, all in one transaction.
    pub fn record_attempts(
        &mut self,
        attempts: &[RecordedAttempt],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for a in attempts {
                let n = i64::from(a.attempts);
                match &a.update {
                    DeliveryUpdate::Delivered => tx.execute(
                        "UPDATE deliveries SET status = 'delivered', attempts = $3, last_error = NULL, updated_at = $4
                         WHERE event_seq = $1 AND notifier = $2",
                        &[&a.seq, &a.notifier, &n, &now.0],
                    ),
                    DeliveryUpdate::Retry {
                        next_attempt_at,
                        error,
                    } => tx.execute(
                        "UPDATE deliveries SET attempts = $3, next_attempt_at = $4, last_error = $5, updated_at = $6
                         WHERE event_seq = $1 AND notifier = $2 AND status = 'pending'",
                        &[&a.seq, &a.notifier, &n, &next_attempt_at.0, error, &now.0],
                    ),
                    DeliveryUpdate::Dead { error } => tx.execute(
                        "UPDATE deliveries SET status = 'dead', attempts = $3, last_error = $4, updated_at = $5
                         WHERE event_seq = $1 AND notifier = $2 AND status = 'pending'",
                        &[&a.seq, &a.notifier, &n, error, &now.0],
                    ),
                }?;
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
        let n = self.write(|tx| {
            tx.execute(
                "UPDATE deliveries SET status = 'dead', last_error = 'notifier removed', updated_at = $2
                 WHERE status = 'pending' AND NOT (notifier = ANY($1))",
                &[&keep, &now.0],
            )
        })?;
        Ok(n as usize)
    }

    /// Drops event bodies older than `retention` of terminal documents whose deliveries are
    /// all settled; the rows stay.
    pub fn prune(&self, now: UnixMs, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = now
            .0
            .saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
        let n = self.write(|tx| tx.execute(
            "UPDATE events SET body = NULL
             WHERE body IS NOT NULL AND created_at < $1
               AND EXISTS (SELECT 1 FROM documents d
                           WHERE d.dataset_id = events.dataset_id AND d.document_id = events.document_id
                             AND d.state <> 'watching')
               AND NOT EXISTS (SELECT 1 FROM deliveries x
                               WHERE x.event_seq = events.seq AND x.status = 'pending')",
            &[&cutoff],
        ))?;
        Ok(n as usize)
    }

    /// Deliveries with the given status, newest first.
    pub fn deliveries(&self, status: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = self.query(
            "SELECT d.event_seq, e.event_id, e.type, e.dataset_id, e.document_id, d.notifier,
                    d.status, d.attempts, d.next_attempt_at, d.last_error, d.updated_at
             FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.status = $1 ORDER BY d.event_seq DESC LIMIT $2",
            &[&status, &(limit as i64)],
        )?;
        rows.iter()
            .map(|r| {
                let attempts: i64 = col(self, r, 7)?;
                Ok(DeliveryRow {
                    seq: col(self, r, 0)?,
                    event_id: col(self, r, 1)?,
                    event_type: col(self, r, 2)?,
                    dataset_id: col(self, r, 3)?,
                    document_id: col(self, r, 4)?,
                    notifier: col(self, r, 5)?,
                    status: col(self, r, 6)?,
                    attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                    next_attempt_at: UnixMs(col(self, r, 8)?),
                    last_error: col(self, r, 9)?,
                    updated_at: UnixMs(col(self, r, 10)?),
                })
            })
            .collect()
    }

    /// Dead deliveries of the given events (all when `None`) become pending, due now.
    pub fn requeue_dead(
        &self,
        event_ids: Option<&[String]>,
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        let ids = event_ids.map(<[String]>::to_vec);
        let n = self.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                    last_error = NULL, updated_at = $2
             WHERE status = 'dead' AND ($1::text[] IS NULL OR event_seq IN
                   (SELECT seq FROM events WHERE event_id = ANY($1)))",
            &[&ids, &now.0],
        )?;
        Ok(n as usize)
    }

    /// Forgets dead deliveries of the given events (all when `None`).
    pub fn drop_dead(&self, event_ids: Option<&[String]>) -> Result<usize, StoreError> {
        let ids = event_ids.map(<[String]>::to_vec);
        let n = self.execute(
            "DELETE FROM deliveries
             WHERE status = 'dead' AND ($1::text[] IS NULL OR event_seq IN
                   (SELECT seq FROM events WHERE event_id = ANY($1)))",
            &[&ids],
        )?;
        Ok(n as usize)
    }

    /// How many deliveries are pending and dead.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        let rows = self.query(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead')
             FROM deliveries",
            &[],
        )?;
        match rows.first() {
            Some(r) => {
                let (p, d): (i64, i64) = (col(self, r, 0)?, col(self, r, 1)?);
                Ok((p.max(0) as u64, d.max(0) as u64))
            }
            None => Ok((0, 0)),
        }
    }
}
