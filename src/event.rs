//! The event vocabulary: which kinds of events exist, how they are named on the wire, and the
//! event id type.
//!
//! It depends on no other module of the crate, so the config (event filters), the tracker
//! (which emits events), the store and the notifiers can all name events without importing
//! each other. Building event bodies belongs to the notifier side (`notify::body`).

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
    /// Every document of a batch is terminal (one event for the batch).
    #[serde(rename = "batch.completed")]
    BatchCompleted,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Completed,
        EventType::Failed,
        EventType::Stalled,
        EventType::Missing,
        EventType::TimedOut,
        EventType::Progress,
        EventType::BatchCompleted,
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
            EventType::BatchCompleted => "batch.completed",
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

/// A batch's id: `bat_` + 32 hex digits of the SHA-256 of `batch/<name>`, the same for the
/// batch name on any store and any instance.
pub fn batch_id(name: &str) -> String {
    let evt = EventId::from_key(&format!("batch/{name}"));
    format!("bat_{}", evt.as_str().trim_start_matches("evt_"))
}

/// An event's id (`evt_...`): the same for the event forever, across retries and restarts;
/// receivers deduplicate by it (`webhook-id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn new(id: impl Into<String>) -> Self {
        EventId(id.into())
    }

    /// The id of the `occurrence`-th event of `event_type` for a document (1 for the first):
    /// `evt_` + the first 16 bytes, in lowercase hex, of the SHA-256 of
    /// `<dataset_id>/<document_id>/<event type>/<occurrence>`. Derived, not random, so the same
    /// event has the same id on a rebuilt store and on any instance.
    pub fn derive(
        dataset_id: &str,
        document_id: &str,
        event_type: EventType,
        occurrence: u32,
    ) -> Self {
        let key = format!("{dataset_id}/{document_id}/{event_type}/{occurrence}");
        Self::from_key(&key)
    }

    /// The id of the `occurrence`-th `batch.completed` of the batch `batch_id`: `evt_` + 32
    /// hex digits of the SHA-256 of `<batch_id>/batch.completed/<occurrence>`.
    pub fn for_batch(batch_id: &str, occurrence: u32) -> Self {
        Self::from_key(&format!("{batch_id}/batch.completed/{occurrence}"))
    }

    /// `evt_` + 32 hex digits of the SHA-256 of `key`.
    pub fn from_key(key: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        EventId(format!("evt_{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_fixed_width_and_differ_by_every_input() {
        let id = EventId::derive("7", "42", EventType::Completed, 1);
        assert_eq!(id.as_str().len(), 4 + 32);
        assert!(id.as_str().starts_with("evt_"));
        assert_eq!(id, EventId::derive("7", "42", EventType::Completed, 1));
        for other in [
            EventId::derive("8", "42", EventType::Completed, 1),
            EventId::derive("7", "43", EventType::Completed, 1),
            EventId::derive("7", "42", EventType::Failed, 1),
            EventId::derive("7", "42", EventType::Completed, 2),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn the_derivation_is_the_documented_one() {
        // printf '7/42/document.completed/1' | sha256sum | cut -c1-32
        assert_eq!(
            EventId::derive("7", "42", EventType::Completed, 1).as_str(),
            "evt_58a0ba1cbeff6c7f4ebd489e93d5c9c0"
        );
    }
}
