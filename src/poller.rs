//! One poll of one dataset: ask for its live documents, feed every answer to the tracker, and
//! resolve what the answers leave open (a bad id in a batch, an absence to confirm).
//!
//! The only polling implementation: the daemon and `wait` both call [`poll_dataset`]. It talks
//! to the API through the client and to the tracker; it never writes the store, never sleeps
//! and never decides when to poll next.

use std::collections::HashMap;

use crate::coze::error::Reply;
use crate::coze::{ApiError, CozeClient, DocumentProgress};
use crate::ids::{DatasetId, DocumentId};
use crate::schedule::Processing;
use crate::tracker::{self, DocState, Observation, Step, TrackerPolicy};
use crate::wall::UnixMs;

/// What one poll of a dataset found.
#[derive(Debug, Default)]
pub struct PollReport {
    /// One step per document that got an observation, in the order asked.
    pub steps: Vec<Step>,
    /// The first request that failed (the dataset backs off when there is one).
    pub failure: Option<ApiError>,
    /// Requests sent, including bisections and confirmations.
    pub requests: u32,
    /// The kind ([`ApiError::kind`]) of every request that failed, bisections and
    /// confirmations included: the metrics count each.
    pub refused: Vec<&'static str>,
    /// The dataset was not found (4200). Its documents were observed as absent; the daemon
    /// lets the missing rules decide, `wait` gives up.
    pub dataset_not_found: Option<ApiError>,
}

impl PollReport {
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.changed)
    }

    /// The documents still processing after this poll, with their hints: what the schedule
    /// aims at (see [`DocState::is_processing`]).
    pub fn processing(&self) -> Vec<Processing> {
        self.steps
            .iter()
            .filter(|s| s.state.is_processing())
            .map(|s| Processing {
                document_id: s.state.document_id.clone(),
                remaining_time: s.state.remaining_time,
                progress: s.state.progress,
            })
            .collect()
    }
}

/// Polls the live documents `docs` of `dataset` at wall time `now`.
pub async fn poll_dataset(
    client: &CozeClient,
    dataset: &DatasetId,
    docs: &[DocState],
    policy: &TrackerPolicy,
    now: UnixMs,
) -> PollReport {
    let mut report = PollReport::default();
    let ids: Vec<DocumentId> = docs.iter().map(|d| d.document_id.clone()).collect();
    let mut seen: HashMap<DocumentId, Seen> = HashMap::new();
    for batch in client.process(dataset, &ids).await {
        report.requests += 1;
        match batch.result {
            Ok(answer) => note_answer(&mut seen, &batch.ids, answer.documents, false),
            Err(ApiError::BadRequest { reply, .. }) if too_many(&reply.msg) => {
                report.refused.push("bad_request");
                learn_and_retry(client, dataset, batch.ids, &reply, &mut seen, &mut report).await
            }
            Err(ApiError::BadRequest { reply, .. }) => {
                refused_batch(dataset, batch.ids.len(), &reply, &mut report);
                bisect(client, dataset, batch.ids, &mut seen, &mut report).await
            }
            Err(e) => note_error(&mut seen, &batch.ids, e, &mut report, false),
        }
    }
    let mut to_confirm = Vec::new();
    for doc in docs {
        let Some(obs) = seen.get(&doc.document_id) else {
            continue;
        };
        let step = tracker::observe(doc, obs.as_observation(), now, policy);
        if step.needs_confirmation {
            to_confirm.push(step);
        } else {
            report.steps.push(step);
        }
    }
    if !to_confirm.is_empty() {
        confirm(client, dataset, to_confirm, policy, now, &mut report).await;
    }
    report
}

/// What the answers said about one id.
#[derive(Debug)]
enum Seen {
    Present(Box<DocumentProgress>),
    Absent { confirming: bool },
    DatasetNotFound { confirming: bool },
    Rejected,
}

impl Seen {
    fn as_observation(&self) -> Observation<'_> {
        match self {
            Seen::Present(p) => Observation::Seen(p),
            Seen::Absent { confirming } => Observation::Absent {
                confirming: *confirming,
            },
            Seen::DatasetNotFound { confirming } => Observation::DatasetNotFound {
                confirming: *confirming,
            },
            Seen::Rejected => Observation::Rejected,
        }
    }
}

fn note_answer(
    seen: &mut HashMap<DocumentId, Seen>,
    asked: &[DocumentId],
    documents: Vec<DocumentProgress>,
    confirming: bool,
) {
    let mut by_id: HashMap<DocumentId, DocumentProgress> = documents
        .into_iter()
        .map(|d| (d.document_id.clone(), d))
        .collect();
    for id in asked {
        let s = match by_id.remove(id) {
            Some(p) => Seen::Present(Box::new(p)),
            None => Seen::Absent { confirming },
        };
        seen.insert(id.clone(), s);
    }
}

fn note_error(
    seen: &mut HashMap<DocumentId, Seen>,
    asked: &[DocumentId],
    e: ApiError,
    report: &mut PollReport,
    confirming: bool,
) {
    report.refused.push(e.kind());
    if let ApiError::DatasetNotFound(_) = e {
        tracing::warn!(error = %e, "dataset not found; its documents count as absent");
        for id in asked {
            seen.insert(id.clone(), Seen::DatasetNotFound { confirming });
        }
        report.dataset_not_found.get_or_insert(e);
        return;
    }
    if report.failure.is_none() {
        report.failure = Some(e);
    }
}

/// Whether a 400's message says the batch was too large (rather than an id malformed).
fn too_many(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "too many", "too much", "exceed", "at most", "maximum", "limit",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// The server takes fewer ids per request than we sent: lower the client's batch size for
/// good (logged once per change, with the server's words) and ask again in smaller batches.
async fn learn_and_retry(
    client: &CozeClient,
    dataset: &DatasetId,
    ids: Vec<DocumentId>,
    reply: &Reply,
    seen: &mut HashMap<DocumentId, Seen>,
    report: &mut PollReport,
) {
    if let Some(size) = client.learn_batch_limit(ids.len(), &reply.msg) {
        tracing::warn!(%dataset, ids_per_request = size, msg = %reply.msg,
            logid = reply.logid.as_deref().unwrap_or(""),
            "the API refused a batch as too large; asking for fewer ids per request from now on");
    }
    let size = client.batch_size().min(ids.len().saturating_sub(1)).max(1);
    for chunk in ids.chunks(size) {
        report.requests += 1;
        match client.process_batch(dataset, chunk).await {
            Ok(answer) => note_answer(seen, chunk, answer.documents, false),
            Err(ApiError::BadRequest { reply, .. }) => {
                refused_batch(dataset, chunk.len(), &reply, report);
                bisect(client, dataset, chunk.to_vec(), seen, report).await
            }
            Err(e) => note_error(seen, chunk, e, report, false),
        }
    }
}

/// A 400 for a batch: split it until the bad ids stand alone; each of those is rejected.
async fn bisect(
    client: &CozeClient,
    dataset: &DatasetId,
    batch: Vec<DocumentId>,
    seen: &mut HashMap<DocumentId, Seen>,
    report: &mut PollReport,
) {
    let mut pending = vec![(batch, None::<Box<Reply>>)];
    while let Some((ids, refusal)) = pending.pop() {
        if ids.len() <= 1 {
            let (msg, logid) = refusal.as_deref().map_or(("", ""), |r| {
                (r.msg.as_str(), r.logid.as_deref().unwrap_or(""))
            });
            for id in ids {
                tracing::warn!(document_id = %id, %dataset, msg, logid,
                    "the API rejects this id as malformed");
                seen.insert(id, Seen::Rejected);
            }
            continue;
        }
        let (left, right) = ids.split_at(ids.len() / 2);
        for half in [left.to_vec(), right.to_vec()] {
            report.requests += 1;
            match client.process_batch(dataset, &half).await {
                Ok(answer) => note_answer(seen, &half, answer.documents, false),
                Err(ApiError::BadRequest { reply, .. }) => {
                    refused_batch(dataset, half.len(), &reply, report);
                    pending.push((half, Some(reply)));
                }
                Err(e) => note_error(seen, &half, e, report, false),
            }
        }
    }
}

/// A batch refused with a 400 that is not about its size: counted, logged with the server's
/// words, then split.
fn refused_batch(dataset: &DatasetId, ids: usize, reply: &Reply, report: &mut PollReport) {
    report.refused.push("bad_request");
    if ids > 1 {
        tracing::info!(%dataset, ids, msg = %reply.msg,
            logid = reply.logid.as_deref().unwrap_or(""),
            "the API refused a batch; splitting it to find the ids it rejects");
    }
}

/// Asks once more for the documents about to go missing, alone, and applies the answer on top
/// of their first step.
async fn confirm(
    client: &CozeClient,
    dataset: &DatasetId,
    first: Vec<Step>,
    policy: &TrackerPolicy,
    now: UnixMs,
    report: &mut PollReport,
) {
    let ids: Vec<DocumentId> = first.iter().map(|s| s.state.document_id.clone()).collect();
    let mut seen: HashMap<DocumentId, Seen> = HashMap::new();
    for batch in client.process(dataset, &ids).await {
        report.requests += 1;
        match batch.result {
            Ok(answer) => note_answer(&mut seen, &batch.ids, answer.documents, true),
            Err(e) => note_error(&mut seen, &batch.ids, e, report, true),
        }
    }
    for step in first {
        let Some(obs) = seen.get(&step.state.document_id) else {
            // The confirming request failed: keep the first step; it is asked again next poll.
            report.steps.push(Step {
                needs_confirmation: false,
                ..step
            });
            continue;
        };
        let second = tracker::observe(&step.state, obs.as_observation(), now, policy);
        let mut events = step.events;
        events.extend(second.events);
        report.steps.push(Step {
            events,
            changed: step.changed || second.changed,
            new_unknown_status: second.new_unknown_status.or(step.new_unknown_status),
            needs_confirmation: false,
            state: second.state,
        });
    }
}
