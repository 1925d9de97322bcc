//! The dispatcher: drains due deliveries from the outbox into notifiers, with each notifier's
//! concurrency limit and retry policy, and records every outcome in the store.
//!
//! It runs as its own task, so a slow or failing notifier never blocks polling or the other
//! notifiers. It never creates deliveries (the run loop does, with the events, in one
//! transaction) and never judges documents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Job, Notifier, Outcome, retry_delay};
use crate::config::RetryPolicy;
use crate::metrics::Metrics;
use crate::store::{Delivery, StoreHandle};
use crate::wall::UnixMs;

/// Deliveries started and not yet finished, at most; the rest wait in the outbox.
const MAX_IN_FLIGHT: usize = 256;

struct Entry {
    notifier: Arc<dyn Notifier>,
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
}

fn entries(list: Vec<Arc<dyn Notifier>>) -> HashMap<String, Entry> {
    list.into_iter()
        .map(|n| {
            let entry = Entry {
                permits: Arc::new(Semaphore::new(n.concurrency().max(1))),
                retry: n.retry_policy(),
                notifier: n,
            };
            (entry.notifier.name().to_string(), entry)
        })
        .collect()
}

pub struct Dispatcher {
    store: StoreHandle,
    metrics: Arc<Metrics>,
    notifiers: HashMap<String, Entry>,
    wake: Arc<Notify>,
    updates: mpsc::UnboundedReceiver<Vec<Arc<dyn Notifier>>>,
}

/// Talks to a running dispatcher.
#[derive(Clone)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
    updates: mpsc::UnboundedSender<Vec<Arc<dyn Notifier>>>,
}

impl DispatcherHandle {
    /// New deliveries were committed: look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Replaces the notifier set (after a reload).
    pub fn set_notifiers(&self, list: Vec<Arc<dyn Notifier>>) {
        let _ = self.updates.send(list);
        self.wake();
    }
}

type TaskResult = (Delivery, Outcome);

impl Dispatcher {
    pub fn new(
        store: StoreHandle,
        notifiers: Vec<Arc<dyn Notifier>>,
        metrics: Arc<Metrics>,
    ) -> (Self, DispatcherHandle) {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Dispatcher {
            store,
            metrics,
            notifiers: entries(notifiers),
            wake: wake.clone(),
            updates: rx,
        };
        (d, DispatcherHandle { wake, updates: tx })
    }

    /// Runs until `shutdown`; then lets deliveries in flight finish for up to `grace` and
    /// cancels the rest, which stay pending with no attempt counted.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let mut tasks: JoinSet<TaskResult> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Delivery> = HashMap::new();
        loop {
            let busy: HashSet<(i64, String)> = running.values().map(Delivery::key).collect();
            self.start_due(&mut tasks, &mut running, &busy).await;
            let next = self.next_wake().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                Some(done) = tasks.join_next_with_id() => self.finished(done, &mut running).await,
                Some(list) = self.updates.recv() => self.notifiers = entries(list),
                _ = sleep_until_opt(next) => {}
            }
        }
        let deadline = Instant::now() + grace;
        while !tasks.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => self.finished(done, &mut running).await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(cancelled = tasks.len(), "deliveries still running at shutdown were cancelled; they stay pending");
                    tasks.abort_all();
                    break;
                }
            }
        }
    }

    async fn start_due(
        &self,
        tasks: &mut JoinSet<TaskResult>,
        running: &mut HashMap<tokio::task::Id, Delivery>,
        busy: &HashSet<(i64, String)>,
    ) {
        let room = MAX_IN_FLIGHT.saturating_sub(running.len());
        if room == 0 {
            return;
        }
        let busy_now = busy.clone();
        let due = match self
            .store
            .call(move |s| s.due_deliveries(UnixMs::now(), room, &busy_now))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; retrying");
                return;
            }
        };
        for delivery in due {
            let Some(entry) = self.notifiers.get(&delivery.notifier) else {
                // Its notifier is not configured (removed while we were down, before the
                // start-up sweep): leave it for `deliveries` to show.
                continue;
            };
            let job = Job {
                event_id: delivery.event_id.clone(),
                event_type: delivery.event_type,
                body: delivery.body.clone(),
                attempt: delivery.attempts + 1,
            };
            let notifier = entry.notifier.clone();
            let permits = entry.permits.clone();
            let d = delivery.clone();
            let handle = tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let outcome = notifier.deliver(&job).await;
                (d, outcome)
            });
            running.insert(handle.id(), delivery);
        }
    }

    /// When to look at the outbox again: the next future attempt, if any. Deliveries due now
    /// were started by `start_due`, or wait for a running one, whose completion wakes us.
    async fn next_wake(&self) -> Option<Instant> {
        let now = UnixMs::now();
        match self.store.call(move |s| s.next_delivery_after(now)).await {
            Ok(next) => next.map(|at| Instant::now() + at.since(now)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; looking again in 5 s");
                Some(Instant::now() + Duration::from_secs(5))
            }
        }
    }

    async fn finished(
        &self,
        done: Result<(tokio::task::Id, TaskResult), tokio::task::JoinError>,
        running: &mut HashMap<tokio::task::Id, Delivery>,
    ) {
        let (delivery, outcome) = match done {
            Ok((id, (delivery, outcome))) => {
                running.remove(&id);
                (delivery, outcome)
            }
            Err(join) => {
                let Some(delivery) = running.remove(&join.id()) else {
                    return;
                };
                let error = if join.is_panic() {
                    "the notifier panicked".to_string()
                } else {
                    "cancelled".to_string()
                };
                (
                    delivery,
                    Outcome::Retry {
                        error,
                        retry_after: None,
                    },
                )
            }
        };
        let retry = self
            .notifiers
            .get(&delivery.notifier)
            .map(|e| e.retry.clone())
            .unwrap_or_else(RetryPolicy::webhook_default);
        let result = record(&self.store, delivery.clone(), outcome, &retry).await;
        self.metrics.delivery(&delivery.notifier, result);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records an attempt's outcome: delivered, retried later, or dead. Returns which.
async fn record(
    store: &StoreHandle,
    d: Delivery,
    outcome: Outcome,
    policy: &RetryPolicy,
) -> &'static str {
    let now = UnixMs::now();
    let attempts = d.attempts + 1;
    let (seq, notifier) = (d.seq, d.notifier.clone());
    let span = tracing::info_span!("delivery", notifier = %d.notifier, event_id = %d.event_id, document_id = %d.document_id);
    let mut label = "dead";
    let result = match outcome {
        Outcome::Delivered => {
            label = "delivered";
            store
                .call(move |s| s.record_delivered(seq, &notifier, attempts, now))
                .await
        }
        Outcome::Retry { error, retry_after } => {
            let too_many = attempts >= policy.max_attempts;
            let too_old = now.since(d.created_at) >= policy.max_age;
            if too_many || too_old {
                let why = if too_many {
                    format!("gave up after {attempts} attempts: {error}")
                } else {
                    format!(
                        "gave up after {} (max_age): {error}",
                        humantime::format_duration(policy.max_age)
                    )
                };
                span.in_scope(|| tracing::error!(attempts, error = %why, "delivery is dead"));
                store
                    .call(move |s| s.record_dead(seq, &notifier, attempts, &why, now))
                    .await
            } else {
                label = "retry";
                let delay = retry_delay(policy, attempts, retry_after);
                span.in_scope(|| {
                    tracing::warn!(attempts, error = %error, retry_in = %humantime::format_duration(delay), "delivery failed; will retry")
                });
                let next = now.plus(delay);
                store
                    .call(move |s| s.record_retry(seq, &notifier, attempts, next, &error, now))
                    .await
            }
        }
        Outcome::Permanent { error } => {
            span.in_scope(|| tracing::error!(attempts, error = %error, "delivery is dead"));
            store
                .call(move |s| s.record_dead(seq, &notifier, attempts, &error, now))
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot record a delivery outcome; it stays pending and will be redone");
    }
    label
}
