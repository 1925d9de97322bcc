//! Batches (SPEC section 13): when the last document of a batch becomes terminal,
//! `batch.completed` fires once, committed in the same transaction as that document's state,
//! with a mark in `meta` saying which membership fired.
//!
//! It decides from the effective watch list (who is in which batch), this poll's steps and the
//! stored states of the other members; it writes nothing itself (the run loop commits what it
//! returns) and never fires a batch whose membership already fired.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use crate::event::{EventId, EventType};
use crate::ids::{DatasetId, DocumentId};
use crate::notify::BatchBody;
use crate::poller::PollReport;
use crate::store::{NewEvent, StoreError};
use crate::tracker::DocState;
use crate::wall::UnixMs;

/// What `meta` keeps per batch (key `batch/<name>`): how often it fired, and for how many
/// documents the last time. A batch that gains documents after firing fires again when those
/// are done too, with the next occurrence's id.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BatchMark {
    #[serde(default = "one")]
    v: u32,
    #[serde(default)]
    fired: u32,
    #[serde(default)]
    members: usize,
}

fn one() -> u32 {
    1
}

/// The events and `meta` facts to commit with a poll.
#[derive(Default)]
pub(super) struct BatchOutcome {
    pub events: Vec<NewEvent>,
    pub meta: Vec<(String, String)>,
}

impl Engine {
    /// The `batch.completed` events this poll completes. `Err` when the stored states cannot
    /// be read: the caller redoes the poll rather than miss the batch.
    pub(super) async fn batch_events(
        &self,
        report: &PollReport,
        now: UnixMs,
    ) -> Result<BatchOutcome, StoreError> {
        let touched: BTreeSet<String> = report
            .steps
            .iter()
            .filter(|s| !s.state.is_live() && !s.events.is_empty())
            .filter_map(|s| {
                let rule = self
                    .watch_list
                    .rule(&s.state.dataset_id, &s.state.document_id)?;
                rule.batch.as_deref().map(str::to_string)
            })
            .collect();
        let mut out = BatchOutcome::default();
        if touched.is_empty() {
            return Ok(out);
        }
        let fresh: HashMap<(DatasetId, DocumentId), &DocState> = report
            .steps
            .iter()
            .map(|s| {
                (
                    (s.state.dataset_id.clone(), s.state.document_id.clone()),
                    &s.state,
                )
            })
            .collect();
        for name in touched {
            let Some(members) = self.watch_list.batches.get(&name).cloned() else {
                continue;
            };
            let key = format!("batch/{name}");
            let (stored, mark) = {
                let members = members.clone();
                let key = key.clone();
                self.store
                    .read_inline(move |s| {
                        let mut docs = Vec::with_capacity(members.len());
                        for (ds, doc) in &members {
                            docs.push(s.document(ds, doc)?);
                        }
                        Ok((docs, s.meta(&key)?))
                    })
                    .await?
            };
            let mut docs = Vec::with_capacity(members.len());
            for ((ds, doc), stored) in members.iter().zip(stored) {
                match fresh.get(&(ds.clone(), doc.clone())) {
                    Some(d) => docs.push((*d).clone()),
                    None => match stored {
                        Some(d) => docs.push(d),
                        None => break,
                    },
                }
            }
            if docs.len() < members.len() || docs.iter().any(DocState::is_live) {
                continue;
            }
            let mark: BatchMark = mark
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default();
            if mark.fired > 0 && mark.members == members.len() {
                continue;
            }
            if let Some(event) = self.batch_event(&name, &docs, mark.fired + 1, now) {
                out.events.push(event);
                let fired = BatchMark {
                    v: 1,
                    fired: mark.fired + 1,
                    members: members.len(),
                };
                out.meta
                    .push((key, serde_json::to_string(&fired).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    /// The stored event of one completed batch; `None` when no notifier subscribes.
    fn batch_event(
        &self,
        name: &str,
        docs: &[DocState],
        occurrence: u32,
        now: UnixMs,
    ) -> Option<NewEvent> {
        let first = docs.first()?;
        let rule = self.watch_list.rule(&first.dataset_id, &first.document_id);
        let notifiers = self.subscribers(
            EventType::BatchCompleted,
            rule.and_then(|w| w.notify.as_deref()),
        );
        if notifiers.is_empty() {
            return None;
        }
        let labels = rule.map(|w| (*w.labels).clone()).unwrap_or_default();
        let batch_id = crate::event::batch_id(name);
        let event_id = EventId::for_batch(&batch_id, occurrence);
        let body = BatchBody::build(event_id.clone(), name, docs, &labels, now);
        Some(NewEvent {
            event_id,
            event_type: EventType::BatchCompleted,
            // Its own ordering lane: no document's events wait for it, nor it for them.
            dataset_id: DatasetId::new(""),
            document_id: DocumentId::new(batch_id),
            created_at: now,
            body: body.to_json(),
            notifiers,
        })
    }
}
