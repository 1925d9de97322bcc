//! The event body (SPEC section 5): the webhook body and the exec stdin, built once when the
//! event fires and stored with it, so every attempt sends the same bytes.
//!
//! [`EventBody::build`] is the one serializer of tracker events; [`EventBody::decode`] the one
//! reader of stored bodies (the dispatcher decodes each body once; a body it cannot read makes
//! its delivery dead, whatever the notifier).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::coze::DocumentStatus;
use crate::event::{EventId, EventType};
use crate::tracker::{DocState, EventDraft, Lifecycle};
use crate::wall::UnixMs;

/// A stored body that does not decode: its delivery is dead, whatever the notifier.
#[derive(Debug, thiserror::Error)]
#[error("stored event body is unreadable: {0}")]
pub struct UnreadableBody(serde_json::Error);

/// The event body: the webhook body and the exec stdin (SPEC section 5). Every key is always
/// present; `null` where there is no value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: String,
    pub data: EventData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub event_id: EventId,
    pub dataset_id: String,
    pub document_id: String,
    pub document_name: Option<String>,
    pub status: Option<i64>,
    pub progress: Option<i64>,
    pub remaining_time: Option<i64>,
    pub status_descript: Option<String>,
    pub file_type: Option<String>,
    pub size: Option<i64>,
    pub url: Option<String>,
    pub update_type: Option<i64>,
    pub update_interval: Option<i64>,
    pub previous_status: Option<i64>,
    pub previous_progress: Option<i64>,
    pub reason: Option<String>,
    pub watched_since: String,
    pub elapsed_seconds: f64,
    pub labels: BTreeMap<String, String>,
    /// Only on `notify-test` events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// A new, globally unique, time-ordered event id: `evt_` + UUID v7.
pub fn new_event_id() -> EventId {
    EventId::new(format!("evt_{}", uuid::Uuid::now_v7().simple()))
}

impl EventBody {
    /// Builds the body of an event the tracker fired for `doc` at `now`.
    pub fn build(
        event_id: EventId,
        doc: &DocState,
        draft: &EventDraft,
        labels: &BTreeMap<String, String>,
        now: UnixMs,
    ) -> Self {
        let elapsed_ms = now.0.saturating_sub(doc.watched_since.0).max(0);
        EventBody {
            event_type: draft.event_type,
            timestamp: now.rfc3339_millis(),
            data: EventData {
                event_id,
                dataset_id: doc.dataset_id.to_string(),
                document_id: doc.document_id.to_string(),
                document_name: doc.info.name.clone(),
                status: doc.status.map(DocumentStatus::code),
                progress: doc.progress,
                remaining_time: doc.remaining_time,
                status_descript: doc.info.status_descript.clone(),
                file_type: doc.info.file_type.clone(),
                size: doc.info.size,
                url: doc.info.url.clone(),
                update_type: doc.info.update_type,
                update_interval: doc.info.update_interval,
                previous_status: draft.previous_status.map(DocumentStatus::code),
                previous_progress: draft.previous_progress,
                reason: draft.reason.clone(),
                watched_since: doc.watched_since.rfc3339_seconds(),
                elapsed_seconds: elapsed_ms as f64 / 1000.0,
                labels: labels.clone(),
                test: false,
            },
        }
    }

    /// The synthetic `document.completed` event of `notify-test`, marked `"test": true`.
    pub fn test_event(now: UnixMs) -> Self {
        EventBody {
            event_type: EventType::Completed,
            timestamp: now.rfc3339_millis(),
            data: EventData {
                event_id: new_event_id(),
                dataset_id: "0".into(),
                document_id: "0".into(),
                document_name: Some("coze-watch-test.pdf".into()),
                status: Some(1),
                progress: Some(100),
                remaining_time: Some(0),
                status_descript: None,
                file_type: Some("pdf".into()),
                size: Some(0),
                url: None,
                update_type: Some(0),
                update_interval: Some(0),
                previous_status: Some(0),
                previous_progress: Some(50),
                reason: None,
                watched_since: now.rfc3339_seconds(),
                elapsed_seconds: 0.0,
                labels: Default::default(),
                test: true,
            },
        }
    }

    /// Reads a stored body. The error says what is wrong, for the dead delivery's reason.
    pub fn decode(stored: &str) -> Result<Self, UnreadableBody> {
        serde_json::from_str(stored).map_err(UnreadableBody)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail; fall back to an empty object
        // rather than panic if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// The body of `batch.completed` (SPEC section 13): one event for a batch whose documents
/// are all terminal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchBody {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: String,
    pub data: BatchData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchData {
    pub event_id: EventId,
    pub batch: String,
    pub batch_id: String,
    pub counts: BatchCounts,
    pub documents: Vec<BatchDocument>,
    /// When coze-watch first saw the earliest of them.
    pub first_watched: String,
    /// When the last of them became terminal.
    pub last_finished: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    pub completed: usize,
    pub failed: usize,
    pub missing: usize,
    pub timed_out: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchDocument {
    pub dataset_id: String,
    pub document_id: String,
    pub document_name: Option<String>,
    /// completed, failed, missing or timed_out.
    pub state: String,
    /// The API's failure reason, or why it is missing or timed out.
    pub reason: Option<String>,
}

impl BatchBody {
    /// Builds the body for the batch `name` whose documents (all terminal) are `docs`.
    pub fn build(
        event_id: EventId,
        name: &str,
        docs: &[DocState],
        labels: &BTreeMap<String, String>,
        now: UnixMs,
    ) -> Self {
        let mut counts = BatchCounts::default();
        for d in docs {
            match d.state {
                Lifecycle::Completed => counts.completed += 1,
                Lifecycle::Failed => counts.failed += 1,
                Lifecycle::Missing => counts.missing += 1,
                Lifecycle::TimedOut => counts.timed_out += 1,
                Lifecycle::Watching => {}
            }
        }
        let first = docs.iter().map(|d| d.watched_since).min().unwrap_or(now);
        let last = docs
            .iter()
            .filter_map(|d| d.terminal_at)
            .max()
            .unwrap_or(now);
        BatchBody {
            event_type: EventType::BatchCompleted,
            timestamp: now.rfc3339_millis(),
            data: BatchData {
                event_id,
                batch: name.to_string(),
                batch_id: crate::event::batch_id(name),
                counts,
                documents: docs
                    .iter()
                    .map(|d| BatchDocument {
                        dataset_id: d.dataset_id.to_string(),
                        document_id: d.document_id.to_string(),
                        document_name: d.info.name.clone(),
                        state: d.state.as_str().to_string(),
                        reason: d.info.status_descript.clone().or_else(|| d.reason.clone()),
                    })
                    .collect(),
                first_watched: first.rfc3339_seconds(),
                last_finished: last.rfc3339_seconds(),
                labels: labels.clone(),
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// A stored body of either kind, decoded once by the dispatcher.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Document(EventBody),
    Batch(BatchBody),
}

impl Body {
    /// Reads a stored body by its `type`. The error says what is wrong.
    pub fn decode(stored: &str) -> Result<Self, UnreadableBody> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            event_type: EventType,
        }
        let kind: Kind = serde_json::from_str(stored).map_err(UnreadableBody)?;
        match kind.event_type {
            EventType::BatchCompleted => serde_json::from_str(stored)
                .map(Body::Batch)
                .map_err(UnreadableBody),
            _ => EventBody::decode(stored).map(Body::Document),
        }
    }

    /// The document event, if this is one.
    pub fn document(&self) -> Option<&EventBody> {
        match self {
            Body::Document(b) => Some(b),
            Body::Batch(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DatasetId, DocumentId};

    #[test]
    fn body_has_every_key_of_the_spec() {
        let doc = DocState::new(
            DatasetId::new("1"),
            DocumentId::new("2"),
            UnixMs(1_796_064_000_000),
        );
        let draft = EventDraft {
            event_type: EventType::Completed,
            previous_status: None,
            previous_progress: None,
            reason: None,
            occurrence: 1,
        };
        let body = EventBody::build(
            new_event_id(),
            &doc,
            &draft,
            &Default::default(),
            UnixMs(1_796_064_598_100),
        );
        let v: serde_json::Value = serde_json::from_str(&body.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["data", "timestamp", "type"]);
        assert_eq!(v["type"], "document.completed");
        assert_eq!(v["timestamp"], "2026-11-30T18:49:58.100Z");
        let data = v["data"].as_object().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort();
        let mut want = [
            "event_id",
            "dataset_id",
            "document_id",
            "document_name",
            "status",
            "progress",
            "remaining_time",
            "status_descript",
            "file_type",
            "size",
            "url",
            "update_type",
            "update_interval",
            "previous_status",
            "previous_progress",
            "reason",
            "watched_since",
            "elapsed_seconds",
            "labels",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert!(data["previous_status"].is_null());
        assert_eq!(data["watched_since"], "2026-11-30T18:40:00Z");
        assert_eq!(data["elapsed_seconds"], 598.1);
        assert!(data["event_id"].as_str().unwrap().starts_with("evt_"));
    }
}
