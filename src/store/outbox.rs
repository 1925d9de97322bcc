//! The outbox: events (with a store sequence number, so one document's events go out in
//! order), one delivery per subscribed notifier, the dispatcher's recorded attempts, and the
//! operator's commands on dead deliveries (`deliveries --retry/--drop`).
//!
//! [`Store::commit`] is the transactional outbox itself: a poll's document rows, its events and
//! their deliveries, and the dataset's schedule, in one transaction. Nothing here decides when
//! to retry; it records what the dispatcher decided.

use std::collections::HashSet;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::documents::{UPSERT_DOCUMENT, put_document};
use super::{SqliteStore, StoreError, StoredSchedule, classify};
use crate::event::{EventId, EventType};
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::DocState;
use crate::wall::UnixMs;

/// A new event with the notifiers that must get it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: EventType,
    pub dataset_id: DatasetId,
    pub document_id: DocumentId,
    pub created_at: UnixMs,
    /// The event body (JSON), exactly as it will be delivered.
    pub body: String,
    pub notifiers: Vec<String>,
}

/// One pending delivery, ready to attempt.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub seq: i64,
    pub event_id: EventId,
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
    /// The last change: for a dead delivery, when it died.
    pub updated_at: UnixMs,
}

/// A notifier's due deliveries (see [`Store::due_deliveries`]).
pub(super) const DUE_SQL: &str =
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

impl SqliteStore {
    /// Writes new document states, their events with one pending delivery per notifier, and
    /// the dataset's schedule, in one transaction.
    pub fn commit(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.commit_with_meta(documents, events, schedule, &[], now)
    }

    /// [`Store::commit`], also setting `meta` facts (a batch's fired mark) in the same
    /// transaction. An event whose id is already stored is skipped with its deliveries: an
    /// event is never stored twice.
    pub fn commit_with_meta(
        &mut self,
        documents: &[DocState],
        events: &[NewEvent],
        schedule: Option<(&DatasetId, StoredSchedule)>,
        meta: &[(String, String)],
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
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING",
                )
                .map_err(e)?;
            let mut put_delivery = tx
                .prepare_cached(
                    "INSERT INTO deliveries (event_seq, notifier, status, attempts, next_attempt_at, updated_at)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
                )
                .map_err(e)?;
            for ev in events {
                let inserted = put_event
                    .execute(params![
                        ev.event_id.as_str(),
                        ev.event_type.as_str(),
                        ev.dataset_id.as_str(),
                        ev.document_id.as_str(),
                        ev.created_at.0,
                        ev.body
                    ])
                    .map_err(e)?;
                if inserted == 0 {
                    continue;
                }
                let seq = tx.last_insert_rowid();
                for n in &ev.notifiers {
                    put_delivery
                        .execute(params![seq, n, ev.created_at.0])
                        .map_err(e)?;
                }
            }
            for (key, value) in meta {
                tx.prepare_cached(
                    "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .and_then(|mut stmt| stmt.execute(params![key, value, now.0]))
                .map_err(e)?;
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
                event_id: EventId::new(event_id),
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
                        d.status, d.attempts, d.next_attempt_at, d.last_error, d.updated_at
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
                    updated_at: UnixMs(r.get(10)?),
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
}
