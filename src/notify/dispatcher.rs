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
/// How often outcomes the store could not take are written again.
const RECORD_RETRY: Duration = Duration::from_secs(2);

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
    /// Outcomes known but not yet written (the store failed, e.g. a full disk). They are
    /// written again every [`RECORD_RETRY`], never delivered again meanwhile; a restart before
    /// then redoes them (at least once).
    unrecorded: Vec<(Delivery, Outcome)>,
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

/// A finished task: the deliveries it covered (one, or a digest's many) and how it went.
type TaskResult = (Vec<Delivery>, Outcome);

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
            unrecorded: Vec::new(),
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
        let mut running: HashMap<tokio::task::Id, Vec<Delivery>> = HashMap::new();
        loop {
            self.record_again().await;
            let throttled = self.start_due(&mut tasks, &mut running).await;
            let mut next = match (self.next_wake().await, throttled) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !self.unrecorded.is_empty() {
                let again = Instant::now() + RECORD_RETRY;
                next = Some(next.map_or(again, |n| n.min(again)));
            }
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

    /// Starts what is due. A throttled notifier gets one message at a time, and a backlog
    /// larger than its per-minute allowance goes out as one digest. Returns when a throttled
    /// notifier with due deliveries may send again.
    async fn start_due(
        &self,
        tasks: &mut JoinSet<TaskResult>,
        running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    ) -> Option<Instant> {
        let room = MAX_IN_FLIGHT.saturating_sub(running.values().map(Vec::len).sum());
        if room == 0 {
            return None;
        }
        let busy: HashSet<(i64, String)> = running
            .values()
            .flatten()
            .chain(self.unrecorded.iter().map(|(d, _)| d))
            .map(Delivery::key)
            .collect();
        let busy_notifiers: HashSet<String> = running
            .values()
            .flatten()
            .map(|d| d.notifier.clone())
            .collect();
        let due = match self
            .store
            .call(move |s| s.due_deliveries(UnixMs::now(), room, &busy))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; retrying");
                return Some(Instant::now() + Duration::from_secs(5));
            }
        };
        let mut groups: Vec<(String, Vec<Delivery>)> = Vec::new();
        for d in due {
            match groups.iter_mut().find(|(n, _)| *n == d.notifier) {
                Some((_, list)) => list.push(d),
                None => groups.push((d.notifier.clone(), vec![d])),
            }
        }
        let mut wake: Option<Instant> = None;
        for (name, list) in groups {
            // A delivery for a notifier that is not configured (removed while we were down,
            // before the start-up sweep) stays for `deliveries` to show.
            let Some(entry) = self.notifiers.get(&name) else {
                continue;
            };
            let now = Instant::now();
            match entry.notifier.ready_at(now) {
                None => {
                    for d in list {
                        self.spawn(tasks, running, entry, vec![d]);
                    }
                }
                Some(_) if busy_notifiers.contains(&name) => {}
                Some(at) if at > now => wake = Some(wake.map_or(at, |w| w.min(at))),
                Some(_) => {
                    let above = entry.notifier.digest_above().unwrap_or(usize::MAX);
                    if list.len() > above {
                        tracing::info!(notifier = %name, events = list.len(), "backlog above the throttle: sending one digest");
                        self.spawn(tasks, running, entry, list);
                    } else if let Some(first) = list.into_iter().next() {
                        self.spawn(tasks, running, entry, vec![first]);
                    }
                }
            }
        }
        wake
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<TaskResult>,
        running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
        entry: &Entry,
        deliveries: Vec<Delivery>,
    ) {
        let jobs: Vec<Job> = deliveries
            .iter()
            .map(|d| Job {
                event_id: d.event_id.clone(),
                event_type: d.event_type,
                body: d.body.clone(),
                attempt: d.attempts + 1,
            })
            .collect();
        let notifier = entry.notifier.clone();
        let permits = entry.permits.clone();
        let covered = deliveries.clone();
        let handle = tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let outcome = match jobs.as_slice() {
                [one] => notifier.deliver(one).await,
                many => notifier.deliver_digest(many).await,
            };
            (covered, outcome)
        });
        running.insert(handle.id(), deliveries);
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
        &mut self,
        done: Result<(tokio::task::Id, TaskResult), tokio::task::JoinError>,
        running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    ) {
        let (deliveries, outcome) = match done {
            Ok((id, (deliveries, outcome))) => {
                running.remove(&id);
                (deliveries, outcome)
            }
            Err(join) => {
                let Some(deliveries) = running.remove(&join.id()) else {
                    return;
                };
                let error = if join.is_panic() {
                    "the notifier panicked".to_string()
                } else {
                    "cancelled".to_string()
                };
                (
                    deliveries,
                    Outcome::Retry {
                        error,
                        retry_after: None,
                    },
                )
            }
        };
        for delivery in deliveries {
            self.record_outcome(delivery, outcome.clone()).await;
        }
    }

    async fn record_outcome(&mut self, delivery: Delivery, outcome: Outcome) {
        let retry = self
            .notifiers
            .get(&delivery.notifier)
            .map(|e| e.retry.clone())
            .unwrap_or_else(RetryPolicy::webhook_default);
        match record(&self.store, delivery.clone(), outcome.clone(), &retry).await {
            Ok(label) => self.metrics.delivery(&delivery.notifier, label),
            Err(e) => {
                tracing::error!(notifier = %delivery.notifier, event_id = %delivery.event_id, error = %e,
                    "cannot record a delivery outcome; keeping it to record again (not delivering again)");
                self.unrecorded.push((delivery, outcome));
            }
        }
    }

    async fn record_again(&mut self) {
        for (delivery, outcome) in std::mem::take(&mut self.unrecorded) {
            self.record_outcome(delivery, outcome).await;
        }
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
) -> Result<&'static str, crate::store::StoreError> {
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
    result.map(|()| label)
}
