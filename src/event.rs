//! The event vocabulary: which kinds of events exist and how they are named on the wire.
//!
//! Building event bodies belongs to the notifier layer; this module only names the types, so the
//! config (event filters), the tracker (which emits them) and the notifiers agree on one list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "document.completed")]
    Completed,
    #[serde(rename = "document.failed")]
    Failed,
    #[serde(rename = "document.stalled")]
    Stalled,
    #[serde(rename = "document.missing")]
    Missing,
    #[serde(rename = "document.timed_out")]
    TimedOut,
    #[serde(rename = "document.progress")]
    Progress,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Completed,
        EventType::Failed,
        EventType::Stalled,
        EventType::Missing,
        EventType::TimedOut,
        EventType::Progress,
    ];

    /// What a notifier subscribes to when its `events` key is absent: everything but the chatty
    /// `document.progress`.
    pub fn default_subscription() -> Vec<EventType> {
        Self::ALL
            .into_iter()
            .filter(|t| *t != EventType::Progress)
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Completed => "document.completed",
            EventType::Failed => "document.failed",
            EventType::Stalled => "document.stalled",
            EventType::Missing => "document.missing",
            EventType::TimedOut => "document.timed_out",
            EventType::Progress => "document.progress",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type {s:?} (known: {})", names.join(", "))
            })
    }
}

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
    pub event_id: String,
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
    pub labels: std::collections::BTreeMap<String, String>,
    /// Only on `notify-test` events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// A new, globally unique, time-ordered event id: `evt_` + UUID v7.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

impl EventBody {
    /// Builds the body of an event the tracker fired for `doc` at `now`.
    pub fn build(
        event_id: String,
        doc: &crate::tracker::DocState,
        draft: &crate::tracker::EventDraft,
        labels: &std::collections::BTreeMap<String, String>,
        now: crate::wall::UnixMs,
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
                status: doc.status,
                progress: doc.progress,
                remaining_time: doc.remaining_time,
                status_descript: doc.info.status_descript.clone(),
                file_type: doc.info.file_type.clone(),
                size: doc.info.size,
                url: doc.info.url.clone(),
                update_type: doc.info.update_type,
                update_interval: doc.info.update_interval,
                previous_status: draft.previous_status,
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
    pub fn test_event(now: crate::wall::UnixMs) -> Self {
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

    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail; fall back to an empty object
        // rather than panic if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DatasetId, DocumentId};
    use crate::tracker::{DocState, EventDraft};
    use crate::wall::UnixMs;

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
