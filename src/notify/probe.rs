//! `coze-watch notify-test NAME`: one synthetic `document.completed` event (marked
//! `"test": true`) through one configured notifier, now, outside the outbox.
//!
//! Nothing is stored and nothing is retried: the outcome is reported as it is.

use thiserror::Error;

use super::{EventBody, Job, Outcome};
use crate::config::Config;
use crate::event::EventId;
use crate::wall::UnixMs;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{file}: no notifier named {name:?} (notifiers: {known})")]
    NoSuchNotifier {
        file: String,
        name: String,
        known: String,
    },
    #[error("notifier {name:?}: {source}")]
    Build {
        name: String,
        source: crate::http::BuildError,
    },
}

/// Sends the test event through notifier `name` of `config`.
pub async fn send_test(config: &Config, name: &str) -> Result<(EventId, Outcome), ProbeError> {
    let Some(entry) = config.notifiers.iter().find(|n| n.name == name) else {
        let names: Vec<&str> = config.notifiers.iter().map(|n| n.name.as_str()).collect();
        return Err(ProbeError::NoSuchNotifier {
            file: config.file.display().to_string(),
            name: name.to_string(),
            known: if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
        });
    };
    let notifier =
        super::build(entry, crate::wall::Clock::system()).map_err(|source| ProbeError::Build {
            name: name.to_string(),
            source,
        })?;
    let body = EventBody::test_event(UnixMs::now());
    let job = Job {
        event_id: body.data.event_id.clone(),
        event_type: body.event_type,
        body: body.to_json(),
        event: super::Body::Document(body),
        attempt: 1,
    };
    let outcome = notifier.deliver(&job).await;
    Ok((job.event_id, outcome))
}

/// The outcome for people, one line.
pub fn render_text(name: &str, event_id: &EventId, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered => format!("{name}: delivered test event {event_id}"),
        Outcome::Retry { error, .. } => {
            format!("{name}: not delivered (would be retried): {error}")
        }
        Outcome::Permanent { error } => format!("{name}: not delivered (permanent): {error}"),
    }
}
