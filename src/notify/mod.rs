//! Notifiers: the `Notifier` trait, the notifiers themselves, and the dispatcher that drains
//! the outbox into them.
//!
//! A notifier gets one delivery (an event body and its id) and says how it went; it never
//! touches the store or decides about retries. The dispatcher owns retries, ordering and
//! concurrency, and records every outcome in the store.

pub mod body;
pub mod chat;
pub mod dispatcher;
pub mod exec;
pub mod log;
pub mod probe;
pub mod signature;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::config::RetryPolicy;
use crate::event::{EventId, EventType};

pub use body::{BatchBody, Body, EventBody, new_event_id};

pub use dispatcher::{Dispatcher, DispatcherHandle};

use std::sync::Arc;

use crate::config::{NotifierConfig, NotifierKind};

/// Builds the notifier a config entry describes.
/// A notifier from its config; `clock` stamps what it sends (the run's one clock).
pub fn build(
    config: &NotifierConfig,
    clock: crate::wall::Clock,
) -> Result<Arc<dyn Notifier>, crate::http::BuildError> {
    let name = config.name.clone();
    match &config.kind {
        NotifierKind::Log => Ok(Arc::new(log::LogNotifier::new(name))),
        NotifierKind::Exec(e) => Ok(Arc::new(exec::ExecNotifier::new(name, e.clone()))),
        NotifierKind::Webhook(w) => Ok(Arc::new(webhook::WebhookNotifier::new(
            name,
            w.clone(),
            clock,
        )?)),
    }
}

/// One attempt to deliver one event to one notifier.
#[derive(Clone, Debug)]
pub struct Job {
    pub event_id: EventId,
    pub event_type: EventType,
    /// The event body as stored (JSON): the exact bytes a webhook sends.
    pub body: String,
    /// The same body, decoded once by the dispatcher.
    pub event: Body,
    /// 1 for the first attempt.
    pub attempt: u32,
}

impl Job {
    /// The job for attempt `attempt` of a stored event; `Err` says why its body is unreadable
    /// (the one rule for every notifier: such a delivery is dead).
    pub fn new(
        event_id: EventId,
        event_type: EventType,
        body: String,
        attempt: u32,
    ) -> Result<Job, body::UnreadableBody> {
        let event = Body::decode(&body)?;
        Ok(Job {
            event_id,
            event_type,
            body,
            event,
            attempt,
        })
    }
}

/// How an attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again later (network error, timeout, 5xx, 429, non-zero exit).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Never worth retrying (a 4xx, a redirect): the delivery becomes dead.
    Permanent {
        error: String,
    },
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Notifier: Send + Sync {
    fn name(&self) -> &str;

    /// Attempts one delivery. Must not panic and must finish in bounded time (its own timeout).
    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome>;

    /// How many deliveries of this notifier may run at once.
    fn concurrency(&self) -> usize {
        1
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::webhook_default()
    }

    /// For a throttled notifier, when its next message may go (`None`: not throttled). The
    /// dispatcher leaves its deliveries in the outbox until then.
    fn ready_at(&self, _now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        None
    }

    /// A backlog larger than this goes out as one digest (`None`: never).
    fn digest_above(&self) -> Option<usize> {
        None
    }

    /// Delivers several events as one message.
    fn deliver_digest<'a>(&'a self, _jobs: &'a [Job]) -> BoxFuture<'a, Outcome> {
        Box::pin(async {
            Outcome::Permanent {
                error: "this notifier sends no digests".into(),
            }
        })
    }
}

/// The delay before attempt `attempts + 1`, after `attempts` failed ones:
/// `min(max, initial * multiplier^(attempts-1))`, or `Retry-After` when that is longer.
pub fn retry_delay(policy: &RetryPolicy, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let d = policy.backoff.delay(attempts);
    retry_after.map_or(d, |r| r.max(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_to_the_maximum_and_honours_retry_after() {
        let p = RetryPolicy::webhook_default();
        assert_eq!(retry_delay(&p, 1, None), Duration::from_secs(5));
        assert_eq!(retry_delay(&p, 2, None), Duration::from_secs(20));
        assert_eq!(retry_delay(&p, 3, None), Duration::from_secs(80));
        assert_eq!(retry_delay(&p, 10, None), Duration::from_secs(3600));
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }
}
