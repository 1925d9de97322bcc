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
use crate::store::{Delivery, DeliveryUpdate, RecordedAttempt, StoreHandle};
use crate::wall::{Clock, UnixMs};

/// Deliveries started per notifier (running, or waiting for one of its `concurrency`
/// permits), at most; the rest wait in the outbox. Per notifier, so a slow one never holds
/// back the others.
const QUEUE_PER_NOTIFIER: usize = 64;
/// A notifier's outbox is read again only once its started deliveries fell to this many: each
/// read then starts a batch, instead of re-reading the outbox after every delivery.
const LOW_WATER: usize = QUEUE_PER_NOTIFIER / 2;
/// The most events one digest covers.
const DIGEST_MAX: usize = 256;
/// How often outcomes the store could not take are written again.
const RECORD_RETRY: Duration = Duration::from_secs(2);

struct Entry {
    notifier: Arc<dyn Notifier>,
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
    /// Event sequences of its deliveries started and not yet recorded (an outcome the store
    /// could not take stays here until it is written).
    started: HashSet<i64>,
    /// Something may have become due since its outbox was last read.
    dirty: bool,
}

fn entries(list: Vec<Arc<dyn Notifier>>) -> HashMap<String, Entry> {
    list.into_iter()
        .map(|n| {
            let entry = Entry {
                permits: Arc::new(Semaphore::new(n.concurrency().max(1))),
                retry: n.retry_policy(),
                notifier: n,
                started: HashSet::new(),
                dirty: true,
            };
            (entry.notifier.name().to_string(), entry)
        })
        .collect()
}

pub struct Dispatcher {
    /// Due times and attempt times (the run's one clock).
    clock: Clock,
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
        clock: Clock,
    ) -> (Self, DispatcherHandle) {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Dispatcher {
            clock,
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
            if !self.unrecorded.is_empty() {
                let again = std::mem::take(&mut self.unrecorded);
                self.record(again).await;
            }
            let mut next = self.start_due(&mut tasks, &mut running).await;
            if !self.unrecorded.is_empty() {
                let again = Instant::now() + RECORD_RETRY;
                next = Some(next.map_or(again, |n| n.min(again)));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => self.mark_all_dirty(),
                Some(done) = tasks.join_next_with_id() => {
                    let mut batch = vec![done];
                    while let Some(more) = tasks.try_join_next_with_id() {
                        batch.push(more);
                    }
                    self.finished(batch, &mut running).await;
                }
                Some(list) = self.updates.recv() => self.replace_notifiers(list),
                _ = sleep_until_opt(next) => self.mark_all_dirty(),
            }
        }
        let deadline = Instant::now() + grace;
        while !tasks.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => self.finished(vec![done], &mut running).await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(cancelled = tasks.len(), "deliveries still running at shutdown were cancelled; they stay pending");
                    tasks.abort_all();
                    break;
                }
            }
        }
    }

    /// A reload's notifier set. Deliveries already started (or finished and not yet recorded)
    /// stay busy under the new entry of the same name, so none is started a second time.
    fn replace_notifiers(&mut self, list: Vec<Arc<dyn Notifier>>) {
        let mut new = entries(list);
        for (name, entry) in &mut new {
            if let Some(old) = self.notifiers.remove(name) {
                entry.started = old.started;
            }
        }
        self.notifiers = new;
    }

    fn mark_all_dirty(&mut self) {
        for e in self.notifiers.values_mut() {
            e.dirty = true;
        }
    }

    /// Starts what is due, reading the outbox of each notifier that may have something due
    /// and room for it. A throttled notifier gets one message at a time, and a backlog larger
    /// than its per-minute allowance goes out as one digest. Returns when to look again: the
    /// next future attempt, or when a throttled notifier with due deliveries may send again.
    /// One store round trip for all of it.
    async fn start_due(
        &mut self,
        tasks: &mut JoinSet<TaskResult>,
        running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    ) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        let now = Instant::now();
        let mut reads: Vec<(String, usize, HashSet<i64>)> = Vec::new();
        for (name, entry) in &mut self.notifiers {
            let limit = match entry.notifier.ready_at(now) {
                _ if !entry.dirty => continue,
                // One message at a time: its completion marks it dirty again.
                Some(_) if !entry.started.is_empty() => continue,
                Some(t) if t > now => {
                    at(t);
                    continue;
                }
                Some(_) => DIGEST_MAX,
                // Enough under way; finishing ones mark it dirty again.
                None if entry.started.len() > LOW_WATER => continue,
                None => QUEUE_PER_NOTIFIER - entry.started.len(),
            };
            entry.dirty = false;
            // Started includes outcomes not recorded yet: they are never started again.
            let busy = entry.started.clone();
            reads.push((name.clone(), limit, busy));
        }
        let now_wall = self.clock.wall();
        let read = self
            .store
            .read_inline(move |s| {
                let due: Vec<_> = reads
                    .into_iter()
                    .map(|(name, limit, busy)| {
                        let d = s.due_deliveries(&name, now_wall, limit, &busy);
                        (name, d)
                    })
                    .collect();
                Ok((due, s.next_delivery_after(now_wall)))
            })
            .await;
        let (due, next) = match read {
            Ok(r) => r,
            Err(e) => (Vec::new(), Err(e)),
        };
        match next {
            Ok(Some(t)) => at(Instant::now() + t.since(now_wall)),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; looking again in 5 s");
                self.mark_all_dirty();
                at(Instant::now() + Duration::from_secs(5));
            }
        }
        for (name, list) in due {
            let Some(entry) = self.notifiers.get_mut(&name) else {
                continue;
            };
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(notifier = %name, error = %e, "cannot read the outbox; looking again in 5 s");
                    entry.dirty = true;
                    at(Instant::now() + Duration::from_secs(5));
                    continue;
                }
            };
            if entry.notifier.ready_at(now).is_none() {
                for d in list {
                    spawn(tasks, running, entry, vec![d]);
                }
                continue;
            }
            let above = entry.notifier.digest_above().unwrap_or(usize::MAX);
            if list.len() > above {
                tracing::info!(notifier = %name, events = list.len(), "backlog above the throttle: sending one digest");
                spawn(tasks, running, entry, list);
            } else if let Some(first) = list.into_iter().next() {
                // More may be due: look again when this one is done.
                entry.dirty = true;
                spawn(tasks, running, entry, vec![first]);
            }
        }
        wake
    }

    /// Records a batch of finished tasks in one transaction.
    async fn finished(
        &mut self,
        batch: Vec<Result<(tokio::task::Id, TaskResult), tokio::task::JoinError>>,
        running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    ) {
        let mut outcomes = Vec::new();
        for done in batch {
            match done {
                Ok((id, (deliveries, outcome))) => {
                    running.remove(&id);
                    outcomes.extend(deliveries.into_iter().map(|d| (d, outcome.clone())));
                }
                Err(join) => {
                    let Some(deliveries) = running.remove(&join.id()) else {
                        continue;
                    };
                    let error = if join.is_panic() {
                        "the notifier panicked"
                    } else {
                        "cancelled"
                    };
                    let outcome = Outcome::Retry {
                        error: error.to_string(),
                        retry_after: None,
                    };
                    outcomes.extend(deliveries.into_iter().map(|d| (d, outcome.clone())));
                }
            }
        }
        self.record(outcomes).await;
    }

    /// Records outcomes: delivered, retried later, or dead. What the store cannot take is
    /// kept to be written again, and never delivered again meanwhile.
    async fn record(&mut self, outcomes: Vec<(Delivery, Outcome)>) {
        if outcomes.is_empty() {
            return;
        }
        let now = self.clock.wall();
        let attempts: Vec<RecordedAttempt> = outcomes
            .iter()
            .map(|(d, outcome)| {
                let policy = self
                    .notifiers
                    .get(&d.notifier)
                    .map(|e| e.retry.clone())
                    .unwrap_or_else(RetryPolicy::webhook_default);
                resolve(d, outcome, &policy, now)
            })
            .collect();
        let labels: Vec<&'static str> = attempts.iter().map(|a| a.update.label()).collect();
        match self
            .store
            .write(move |s| s.record_attempts(&attempts, now))
            .await
        {
            Ok(()) => {
                for ((d, _), label) in outcomes.iter().zip(labels) {
                    self.metrics.delivery(&d.notifier, label);
                }
                for (d, _) in &outcomes {
                    if let Some(e) = self.notifiers.get_mut(&d.notifier) {
                        e.started.remove(&d.seq);
                        e.dirty = true;
                    }
                }
            }
            Err(e) => {
                tracing::error!(deliveries = outcomes.len(), error = %e,
                    "cannot record delivery outcomes; keeping them to record again (not delivering again)");
                self.unrecorded.extend(outcomes);
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What an attempt's outcome does to its delivery under the notifier's retry policy (and
/// the log line that says so).
fn resolve(d: &Delivery, outcome: &Outcome, policy: &RetryPolicy, now: UnixMs) -> RecordedAttempt {
    let attempts = d.attempts + 1;
    let span = tracing::info_span!("delivery", notifier = %d.notifier, event_id = %d.event_id, document_id = %d.document_id);
    let update = match outcome {
        Outcome::Delivered => DeliveryUpdate::Delivered,
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
                DeliveryUpdate::Dead { error: why }
            } else {
                let delay = retry_delay(policy, attempts, *retry_after);
                span.in_scope(|| {
                    tracing::warn!(attempts, error = %error, retry_in = %humantime::format_duration(delay), "delivery failed; will retry")
                });
                DeliveryUpdate::Retry {
                    next_attempt_at: now.plus(delay),
                    error: error.clone(),
                }
            }
        }
        Outcome::Permanent { error } => {
            span.in_scope(|| tracing::error!(attempts, error = %error, "delivery is dead"));
            DeliveryUpdate::Dead {
                error: error.clone(),
            }
        }
    };
    RecordedAttempt {
        seq: d.seq,
        notifier: d.notifier.clone(),
        attempts,
        update,
    }
}

/// Starts one task for `deliveries` (one, or a digest's many) of one notifier.
fn spawn(
    tasks: &mut JoinSet<TaskResult>,
    running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    entry: &mut Entry,
    deliveries: Vec<Delivery>,
) {
    let mut jobs = Vec::with_capacity(deliveries.len());
    let mut readable = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let job = Job::new(
            d.event_id.clone(),
            d.event_type,
            d.body.clone(),
            d.attempts + 1,
        );
        match job {
            Ok(job) => {
                jobs.push(job);
                readable.push(d);
            }
            // The one rule for a body that cannot be read: dead, whatever the notifier.
            Err(unreadable) => {
                let error = unreadable.to_string();
                start(tasks, running, entry, vec![d], async move {
                    Outcome::Permanent { error }
                })
            }
        }
    }
    if jobs.is_empty() {
        return;
    }
    let notifier = entry.notifier.clone();
    let permits = entry.permits.clone();
    start(tasks, running, entry, readable, async move {
        let _permit = permits.acquire_owned().await;
        match jobs.as_slice() {
            [one] => notifier.deliver(one).await,
            many => notifier.deliver_digest(many).await,
        }
    });
}

/// Runs `outcome` as the task that covers `deliveries`.
fn start(
    tasks: &mut JoinSet<TaskResult>,
    running: &mut HashMap<tokio::task::Id, Vec<Delivery>>,
    entry: &mut Entry,
    deliveries: Vec<Delivery>,
    outcome: impl std::future::Future<Output = Outcome> + Send + 'static,
) {
    let covered = deliveries.clone();
    let handle = tasks.spawn(async move { (covered, outcome.await) });
    entry.started.extend(deliveries.iter().map(|d| d.seq));
    running.insert(handle.id(), deliveries);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::event::EventType;
    use crate::ids::{DatasetId, DocumentId};
    use crate::notify::BoxFuture;
    use crate::store::{NewEvent, Store};

    /// A notifier whose deliveries wait until the test lets them go.
    struct Gated {
        calls: AtomicUsize,
        release: Semaphore,
    }

    struct GatedNotifier(Arc<Gated>);

    impl Notifier for GatedNotifier {
        fn name(&self) -> &str {
            "gated"
        }

        fn deliver<'a>(&'a self, _job: &'a Job) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                self.0.calls.fetch_add(1, Ordering::SeqCst);
                let _go = self.0.release.acquire().await;
                Outcome::Delivered
            })
        }
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A store in a temp dir holding one event with `body` for the "gated" notifier.
    fn store_with_event(body: String) -> (tempfile::TempDir, StoreHandle) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let event = NewEvent {
            event_id: crate::event::EventId::new("evt_1"),
            event_type: EventType::Completed,
            dataset_id: DatasetId::new("1"),
            document_id: DocumentId::new("2"),
            created_at: UnixMs::now(),
            body,
            notifiers: vec!["gated".into()],
        };
        store.commit(&[], &[event], None, UnixMs::now()).unwrap();
        let at = crate::store::Location::Dir(dir.path().to_path_buf());
        (dir, StoreHandle::new(store, at))
    }

    #[tokio::test]
    async fn an_unreadable_body_makes_the_delivery_dead_without_calling_the_notifier() {
        let (dir, store) = store_with_event("{not json".into());
        let gate = Arc::new(Gated {
            calls: AtomicUsize::new(0),
            release: Semaphore::new(1),
        });
        let (dispatcher, _handle) = Dispatcher::new(
            store.clone(),
            vec![Arc::new(GatedNotifier(gate.clone()))],
            Arc::new(Metrics::new()),
            Clock::system(),
        );
        let stop = CancellationToken::new();
        let run = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(1)));
        let dead = || {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                Store::open_read_only(&dir)
                    .and_then(|s| s.deliveries("dead", 10))
                    .unwrap_or_default()
            })
            .join()
            .unwrap_or_default()
        };
        eventually("the delivery to die", || !dead().is_empty()).await;
        let rows = dead();
        assert!(
            rows[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("stored event body is unreadable")),
            "{rows:?}"
        );
        assert_eq!(gate.calls.load(Ordering::SeqCst), 0);
        stop.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn a_reload_never_starts_a_running_delivery_again() {
        let (dir, store) =
            store_with_event(crate::notify::EventBody::test_event(UnixMs::now()).to_json());
        let gate = Arc::new(Gated {
            calls: AtomicUsize::new(0),
            release: Semaphore::new(0),
        });
        let notifier = || -> Vec<Arc<dyn Notifier>> { vec![Arc::new(GatedNotifier(gate.clone()))] };
        let (dispatcher, handle) = Dispatcher::new(
            store.clone(),
            notifier(),
            Arc::new(Metrics::new()),
            Clock::system(),
        );
        let stop = CancellationToken::new();
        let run = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(1)));
        eventually("the first attempt", || {
            gate.calls.load(Ordering::SeqCst) == 1
        })
        .await;
        // A reload brings the same notifier anew while its delivery is still running.
        handle.set_notifiers(notifier());
        let again = tokio::time::timeout(
            Duration::from_millis(500),
            eventually("a second attempt", || gate.calls.load(Ordering::SeqCst) > 1),
        )
        .await;
        assert!(again.is_err(), "the running delivery was started again");
        gate.release.add_permits(10);
        eventually("the delivery recorded", || {
            let (pending, _) = Store::open_existing(dir.path())
                .and_then(|s| s.outbox_depth())
                .unwrap();
            pending == 0
        })
        .await;
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
        stop.cancel();
        run.await.unwrap();
    }
}
