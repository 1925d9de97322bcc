//! The run loop of `coze-watch run`: wires config, schedule, client, tracker, store and
//! dispatcher together, and handles reload and shutdown.
//!
//! One task owns all mutable engine state (which documents are live, each dataset's schedule)
//! and is the only writer of document states and events, so there are no locks around them.
//! Polls run as child tasks that return a report; the loop commits each report in one store
//! transaction and only then updates its memory, so a failed commit loses nothing: the next poll
//! sees the same transition again. It never delivers anything itself (the dispatcher does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Mode, TokenSource, WatchList};
use crate::coze::{ApiError, ClientSettings, CozeClient};
use crate::event::{EventBody, EventType, new_event_id};
use crate::ids::{DatasetId, DocumentId};
use crate::metrics::Metrics;
use crate::notify::{Dispatcher, DispatcherHandle, Notifier};
use crate::ops::OpsState;
use crate::poller::{PollReport, poll_dataset};
use crate::schedule::{DatasetSchedule, DueQueue, Failure, Processing, SchedulePolicy};
use crate::store::{DirLock, NewEvent, Store, StoreError, StoreHandle, Stored, StoredSchedule};
use crate::tracker::{DocState, Lifecycle, Recent, TrackerPolicy};
use crate::wall::UnixMs;

/// How long in-flight polls and deliveries get at shutdown before they are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often old event bodies are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How stale the stored progress of a live document may get.
const REFRESH_STORED: Duration = Duration::from_secs(60);
/// A deadline that never comes (a timer with nothing to wait for).
const NEVER: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("http.listen {listen}: cannot listen: {source}")]
    Listen {
        listen: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] crate::coze::client::BuildError),
}

impl DaemonError {
    /// The process exit code: 65 for an unusable store, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Store(e) if e.is_unusable() => 65,
            _ => 1,
        }
    }
}

/// A notifier added by the program rather than the config (the demo's narrator), subscribed to
/// these event types for every document.
pub struct ExtraNotifier {
    pub notifier: Arc<dyn Notifier>,
    pub events: Vec<EventType>,
}

/// What the daemon is given besides its config.
pub struct RunContext {
    /// Stops the daemon (SIGTERM, SIGINT).
    pub shutdown: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::UnboundedReceiver<()>,
    /// One message per SIGUSR1: look at the outbox now (`deliveries --retry` sends it).
    pub nudge: mpsc::UnboundedReceiver<()>,
    pub extra_notifiers: Vec<ExtraNotifier>,
    /// Counts the run loop's wake-ups (idle means idle).
    pub wakeups: Arc<AtomicU64>,
    /// Called once the store is open and the first schedule is set.
    pub on_ready: Box<dyn FnOnce() + Send>,
}

/// Runs the daemon until `ctx.shutdown`; returns after in-flight work had its grace period.
pub async fn run(config: Config, mut ctx: RunContext) -> Result<(), DaemonError> {
    let dir = config.state.dir.clone();
    let (lock, store) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let lock = DirLock::acquire(&dir)?;
        let store = Store::open(&dir)?;
        Ok((lock, store))
    })
    .await
    .map_err(|e| StoreError::Dir {
        dir: config.state.dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!(store = %store.path().display(), "store open");
    let store = StoreHandle::new(store);
    let client = CozeClient::new(ClientSettings::from(&config.api))?;
    let metrics = Arc::new(Metrics::new());
    let watch = Arc::new(RwLock::new(config.watch.clone()));
    let ops = match config.http.as_ref() {
        Some(http) => {
            let state = OpsState {
                metrics: metrics.clone(),
                store: store.clone(),
                watch: watch.clone(),
            };
            Some(
                crate::ops::serve(http.listen, state, ctx.shutdown.clone())
                    .await
                    .map_err(|source| DaemonError::Listen {
                        listen: http.listen,
                        source,
                    })?,
            )
        }
        None => None,
    };
    let extra = std::mem::take(&mut ctx.extra_notifiers);
    let (dispatcher, dispatch) =
        Dispatcher::new(store.clone(), notifiers(&config, &extra), metrics.clone());
    let mut engine = Engine {
        metrics,
        watch,
        policy: Policies::from(&config),
        config,
        client,
        store: store.clone(),
        dispatch,
        extra,
        live: HashMap::new(),
        schedules: HashMap::new(),
        queue: DueQueue::default(),
        in_flight: HashSet::new(),
        rng: StdRng::from_rng(&mut rand::rng()),
    };
    engine.sweep_removed_notifiers().await;
    engine.adopt_watch_list(true).await;
    let dispatcher_task = tokio::spawn(dispatcher.run(ctx.shutdown.clone(), SHUTDOWN_GRACE));
    let on_ready = std::mem::replace(&mut ctx.on_ready, Box::new(|| {}));
    on_ready();
    sd_notify_state(&[sd_notify::NotifyState::Ready]);
    // Checks after READY, beside the run loop: not needed to start polling, and a damaged
    // page still stops the daemon (exit 65) within a fraction of a second.
    let verify_dir = engine.config.state.dir.clone();
    let mut verify =
        tokio::task::spawn_blocking(move || Store::open_read_only(&verify_dir)?.verify());
    engine.prune().await;
    tracing::info!(
        datasets = engine.config.watch.datasets.len(),
        documents = engine.config.watch.document_count(),
        live = engine.live_count(),
        "watching"
    );
    let unusable = engine.run_loop(&mut ctx, &mut verify).await;
    // Stops the dispatcher and the ops endpoint too when the loop stopped by itself.
    ctx.shutdown.cancel();
    sd_notify_state(&[sd_notify::NotifyState::Stopping]);
    let _ = dispatcher_task.await;
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    drop(lock);
    tracing::info!("stopped");
    match unusable {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

struct Policies {
    tracker: TrackerPolicy,
    schedule: SchedulePolicy,
}

impl From<&Config> for Policies {
    fn from(c: &Config) -> Self {
        Policies {
            tracker: TrackerPolicy::from(&c.poll),
            schedule: SchedulePolicy::from(&c.poll),
        }
    }
}

struct Engine {
    metrics: Arc<Metrics>,
    /// The watch list as `/status` sees it.
    watch: Arc<RwLock<Arc<WatchList>>>,
    config: Config,
    policy: Policies,
    client: Arc<CozeClient>,
    store: StoreHandle,
    dispatch: DispatcherHandle,
    extra: Vec<ExtraNotifier>,
    /// Live (non-terminal) watched documents, per dataset. Their states are in the store; a
    /// poll reads them there.
    live: HashMap<DatasetId, BTreeMap<DocumentId, Hot>>,
    schedules: HashMap<DatasetId, DatasetSchedule>,
    /// Datasets with a schedule and no poll running, by next poll time.
    queue: DueQueue,
    in_flight: HashSet<DatasetId>,
    rng: StdRng,
}

/// What the run loop keeps of a live document between polls, besides its id: the fields of
/// its last answer that are newer than its stored row, and when the row was last written.
/// About 80 bytes, where the whole state would be ~700: 100,000 documents fit in a few MB.
#[derive(Clone, Copy, Debug, Default)]
struct Hot {
    /// `None` until its first poll in this run: the stored row is then current.
    recent: Option<Recent>,
    persisted_at: Option<UnixMs>,
}

/// A finished poll task: the report, and which of its steps to write.
struct Polled {
    report: PollReport,
    /// Per step: write its state now (see [`worth_storing`]).
    store_it: Vec<bool>,
    /// Documents the store already holds as terminal: no longer live.
    terminal: Vec<DocumentId>,
}

type PollResult = (DatasetId, Result<Polled, StoreError>, Instant);

impl Engine {
    fn live_count(&self) -> usize {
        self.live.values().map(BTreeMap::len).sum()
    }

    /// Runs until shutdown, or until `verify` finds the store unusable (returned).
    async fn run_loop(
        &mut self,
        ctx: &mut RunContext,
        verify: &mut tokio::task::JoinHandle<Result<(), StoreError>>,
    ) -> Option<StoreError> {
        let mut verified = false;
        let mut unusable = None;
        let mut polls: JoinSet<PollResult> = JoinSet::new();
        // Timers live across iterations and are reset only when their deadline changes:
        // re-creating them on every wake-up costs more than the wake-up itself.
        let prune = tokio::time::sleep(PRUNE_EVERY);
        // With WATCHDOG_USEC set, the loop itself wakes at half of it and pings from here, so
        // a stuck loop (or store) stops the pings.
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let ping = tokio::time::sleep(watchdog.unwrap_or(NEVER));
        let due = tokio::time::sleep(NEVER);
        tokio::pin!(prune, ping, due);
        let mut due_at: Option<Instant> = None;
        loop {
            ctx.wakeups.fetch_add(1, Ordering::Relaxed);
            self.start_due_polls(&mut polls);
            // With every request slot busy, the next wake-up is a poll finishing, not a due
            // time that has already passed.
            let next = if self.in_flight.len() >= self.config.api.max_concurrent_requests {
                None
            } else {
                self.next_due()
            };
            if next != due_at {
                due.as_mut()
                    .reset(next.unwrap_or_else(|| Instant::now() + NEVER));
                due_at = next;
            }
            tracing::trace!(next_in = ?next.map(|n| n.saturating_duration_since(Instant::now())), "run loop waiting");
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                checked = &mut *verify, if !verified => {
                    verified = true;
                    match checked {
                        Ok(Err(e)) if e.is_unusable() => {
                            tracing::error!(error = %e, "the store is damaged; stopping");
                            unusable = Some(e);
                            break;
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the store"),
                        Err(e) => tracing::warn!(error = %e, "cannot check the store"),
                        Ok(Ok(())) => tracing::debug!("store checked"),
                    }
                }
                Some(done) = polls.join_next() => match done {
                    Ok((ds, polled, started)) => self.finish_poll(ds, polled, started).await,
                    Err(e) => tracing::error!(error = %e, "a poll task failed"),
                },
                Some(()) = ctx.reload.recv() => self.reload().await,
                Some(()) = ctx.nudge.recv() => self.dispatch.wake(),
                _ = &mut ping, if watchdog.is_some() => {
                    self.watchdog_ping().await;
                    ping.as_mut().reset(Instant::now() + watchdog.unwrap_or(NEVER));
                }
                _ = &mut due => {
                    // Fired: park it until the next iteration sets a new deadline.
                    due.as_mut().reset(Instant::now() + NEVER);
                    due_at = None;
                }
                _ = &mut prune => {
                    self.prune().await;
                    prune.as_mut().reset(Instant::now() + PRUNE_EVERY);
                }
            }
        }
        tracing::info!(in_flight = polls.len(), "shutting down");
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !polls.is_empty() {
            tokio::select! {
                Some(done) = polls.join_next() => {
                    if let Ok((ds, polled, started)) = done {
                        self.finish_poll(ds, polled, started).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    polls.abort_all();
                    break;
                }
            }
        }
        unusable
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.next()
    }

    /// Sets a dataset's schedule and queues its next poll (unless a poll of it is running;
    /// it is queued when that finishes).
    fn set_schedule(&mut self, ds: DatasetId, schedule: DatasetSchedule) {
        if !self.in_flight.contains(&ds) {
            self.queue.insert(ds.clone(), schedule.next_poll);
        }
        self.schedules.insert(ds, schedule);
    }

    fn drop_schedule(&mut self, ds: &DatasetId) {
        self.schedules.remove(ds);
        self.queue.remove(ds);
    }

    fn start_due_polls(&mut self, polls: &mut JoinSet<PollResult>) {
        let slots = self
            .config
            .api
            .max_concurrent_requests
            .saturating_sub(self.in_flight.len());
        if slots == 0 {
            return;
        }
        let due = self.queue.pop_due(Instant::now(), slots);
        for ds in due {
            let docs: Vec<(DocumentId, Hot)> = self
                .live
                .get(&ds)
                .map(|m| m.iter().map(|(id, hot)| (id.clone(), *hot)).collect())
                .unwrap_or_default();
            if docs.is_empty() {
                self.drop_schedule(&ds);
                continue;
            }
            self.in_flight.insert(ds.clone());
            let client = self.client.clone();
            let store = self.store.clone();
            let policy = self.policy.tracker.clone();
            polls.spawn(async move {
                let started = Instant::now();
                let span = tracing::debug_span!("poll", dataset_id = %ds, documents = docs.len());
                let polled = tracing::Instrument::instrument(
                    poll_one(&client, &store, &ds, docs, &policy),
                    span,
                )
                .await;
                (ds, polled, started)
            });
        }
    }

    async fn finish_poll(
        &mut self,
        ds: DatasetId,
        polled: Result<Polled, StoreError>,
        started: Instant,
    ) {
        self.in_flight.remove(&ds);
        let now = Instant::now();
        let polled = match polled {
            Ok(p) => p,
            Err(e) => {
                self.metrics.health.store_result(Some(e.to_string()));
                tracing::error!(dataset_id = %ds, error = %e, "cannot read the dataset's documents; polling it later");
                self.store_failed(&ds, now);
                return;
            }
        };
        let Polled {
            report,
            store_it,
            terminal,
        } = polled;
        let now_wall = UnixMs::now();
        self.observe_metrics(&ds, &report, started);
        for step in &report.steps {
            if let Some(n) = step.new_unknown_status {
                tracing::warn!(dataset_id = %ds, document_id = %step.state.document_id, status = n, "unknown document status; still watching");
            }
        }
        let events = self.events_of(&report, now_wall);
        let next = self.reschedule(&ds, &report, now).await;
        let stored = StoredSchedule {
            next_poll_at: now_wall.plus(next.saturating_duration_since(now)),
            failures: self.schedules.get(&ds).map_or(0, |s| s.failures),
        };
        let states: Vec<DocState> = report
            .steps
            .iter()
            .zip(&store_it)
            .filter(|(_, keep)| **keep)
            .map(|(s, _)| s.state.clone())
            .collect();
        let n_events = events.len();
        let ds_for_store = ds.clone();
        let committed = self
            .store
            .call(move |s| s.commit(&states, &events, Some((&ds_for_store, stored)), now_wall))
            .await;
        self.metrics
            .health
            .store_result(committed.as_ref().err().map(ToString::to_string));
        if let Err(e) = committed {
            tracing::error!(dataset_id = %ds, error = %e, "cannot record the poll; it will be redone");
            self.store_failed(&ds, now);
            return;
        }
        tracing::debug!(dataset_id = %ds, requests = report.requests, events = n_events, took_ms = started.elapsed().as_millis() as u64, "poll recorded");
        if let Some(docs) = self.live.get_mut(&ds) {
            for id in &terminal {
                docs.remove(id);
            }
            for (step, stored) in report.steps.iter().zip(store_it) {
                let id = &step.state.document_id;
                if !step.state.is_live() {
                    docs.remove(id);
                } else if let Some(hot) = docs.get_mut(id) {
                    // Only documents still listed: a reload may have removed it meanwhile.
                    hot.recent = Some(step.state.recent());
                    if stored {
                        hot.persisted_at = Some(now_wall);
                    }
                }
            }
            if docs.is_empty() {
                self.live.remove(&ds);
                self.metrics.health.dataset_gone(&ds);
            }
        }
        self.requeue(&ds);
        if n_events > 0 {
            self.dispatch.wake();
        }
    }

    /// The store could not be read or written for a poll: back the dataset off; the poll is
    /// redone later and nothing is lost (memory is updated only after a commit).
    fn store_failed(&mut self, ds: &DatasetId, now: Instant) {
        if let Some(s) = self.schedules.get_mut(ds) {
            let u = self.rng.random::<f64>();
            s.on_failure(now, Failure::Backoff, &self.policy.schedule, u);
        }
        self.requeue(ds);
    }

    /// After a poll: queue the dataset's next poll, or forget its schedule when nothing of it
    /// is live any more (all terminal, or removed by a reload meanwhile).
    fn requeue(&mut self, ds: &DatasetId) {
        match self.schedules.get(ds) {
            Some(s) if self.live.contains_key(ds) => self.queue.insert(ds.clone(), s.next_poll),
            _ => self.drop_schedule(ds),
        }
    }

    fn observe_metrics(&self, ds: &DatasetId, report: &PollReport, started: Instant) {
        let m = &self.metrics;
        m.api_requests.inc_by(u64::from(report.requests));
        m.poll_seconds.observe(started.elapsed().as_secs_f64());
        m.poll(report.failure.is_none());
        match &report.failure {
            Some(e) => {
                m.api_error(e.kind());
                let auth = matches!(e, ApiError::Auth(_) | ApiError::Permission(_));
                m.health.poll_failed(ds, e.to_string(), auth);
            }
            None => m.health.poll_ok(ds),
        }
        for step in &report.steps {
            for e in &step.events {
                m.event(e.event_type.as_str());
            }
        }
    }

    async fn watchdog_ping(&self) {
        match self.store.call(|s| s.ping()).await {
            Ok(()) => sd_notify_state(&[sd_notify::NotifyState::Watchdog]),
            Err(e) => {
                tracing::error!(error = %e, "store round trip failed; withholding the watchdog ping")
            }
        }
    }

    /// Turns the report's event drafts into stored events with their subscribers; a draft no
    /// notifier subscribes to is not stored.
    fn events_of(&self, report: &PollReport, now: UnixMs) -> Vec<NewEvent> {
        let mut out = Vec::new();
        for step in &report.steps {
            let doc = &step.state;
            let watched = self
                .config
                .watch
                .datasets
                .get(&doc.dataset_id)
                .and_then(|m| m.get(&doc.document_id));
            let labels = watched.map(|w| w.labels.clone()).unwrap_or_default();
            for draft in &step.events {
                let notifiers =
                    self.subscribers(draft.event_type, watched.and_then(|w| w.notify.as_deref()));
                if notifiers.is_empty() {
                    // Nobody subscribes (progress events, by default): nothing to deliver, so
                    // nothing to store. The metrics still count it.
                    continue;
                }
                let event_id = new_event_id();
                let body = EventBody::build(event_id.clone(), doc, draft, &labels, now);
                out.push(NewEvent {
                    event_id,
                    event_type: draft.event_type,
                    dataset_id: doc.dataset_id.clone(),
                    document_id: doc.document_id.clone(),
                    created_at: now,
                    body: body.to_json(),
                    notifiers,
                });
            }
        }
        out
    }

    fn subscribers(&self, ty: EventType, only: Option<&[String]>) -> Vec<String> {
        let configured = self
            .config
            .notifiers
            .iter()
            .filter(|n| n.events.contains(&ty))
            .filter(|n| only.is_none_or(|names| names.contains(&n.name)))
            .map(|n| n.name.clone());
        let extra = self
            .extra
            .iter()
            .filter(|e| e.events.contains(&ty))
            .map(|e| e.notifier.name().to_string());
        configured.chain(extra).collect()
    }

    async fn reschedule(&mut self, ds: &DatasetId, report: &PollReport, now: Instant) -> Instant {
        let u = self.rng.random::<f64>();
        let policy = self.policy.schedule.clone();
        let failure = report.failure.as_ref().map(|e| self.failure_of(e, now));
        let processing: Vec<Processing> = report
            .steps
            .iter()
            .filter(|s| s.state.is_live() && s.state.status == Some(0) && s.state.absent_count == 0)
            .map(|s| Processing {
                document_id: s.state.document_id.clone(),
                remaining_time: s.state.remaining_time,
            })
            .collect();
        let changed = report.changed();
        let sched = self
            .schedules
            .entry(ds.clone())
            .or_insert_with(|| DatasetSchedule::new(now, 0));
        match failure {
            Some(f) => sched.on_failure(now, f, &policy, u),
            None => sched.on_success(now, &processing, changed, &policy, u),
        }
    }

    /// Maps an API error to its schedule reaction, and applies the shared ones: auth failures
    /// pause every request (the token is shared) and re-read `token_file`.
    fn failure_of(&self, e: &ApiError, now: Instant) -> Failure {
        tracing::warn!(error = %e, logid = e.logid().unwrap_or(""), kind = e.kind(), "poll failed");
        match e {
            ApiError::Auth(_) => {
                self.client
                    .pause_until(now + self.policy.schedule.backoff.max);
                self.reread_token();
                Failure::AtMaximum
            }
            ApiError::Permission(_) => Failure::AtMaximum,
            ApiError::RateLimited { retry_after, .. } => {
                if retry_after.is_none() {
                    self.client
                        .pause_until(now + self.policy.schedule.backoff.initial);
                }
                Failure::RateLimited {
                    retry_after: *retry_after,
                }
            }
            _ => Failure::Backoff,
        }
    }

    fn reread_token(&self) {
        if let TokenSource::File(_) = &self.config.api.token_source {
            match self.config.api.token_source.read(&config::process_env) {
                Ok(t) => self.client.set_token(t),
                Err(msg) => tracing::error!(error = %msg, "cannot re-read the token"),
            }
        }
    }

    /// Starts watching every document of the config that is not terminal in the store, and
    /// stops polling documents no longer listed (their history stays). Reads only the
    /// store's key-and-state index, merged with the (sorted) watch list; documents never seen
    /// before are recorded as new.
    async fn adopt_watch_list(&mut self, first: bool) {
        let watch = self.config.watch.clone();
        let sorted = self
            .store
            .call(move |s| {
                let mut merge = Adoption::new(&watch);
                s.for_each_document_state(|ds, doc, state| merge.stored(ds, doc, state))?;
                Ok(merge.finish())
            })
            .await;
        let (live_ids, fresh) = match sorted {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read documents from the store");
                return;
            }
        };
        let schedules = self
            .store
            .call(|s| s.load_schedules())
            .await
            .unwrap_or_default();
        let now_wall = UnixMs::now();
        let now = Instant::now();
        if !fresh.is_empty() {
            let n = fresh.len();
            if let Err(e) = self
                .store
                .call(move |s| s.insert_new_documents(&fresh, now_wall))
                .await
            {
                tracing::error!(error = %e, "cannot record new documents; they are watched anyway and recorded with their first poll");
            } else {
                tracing::info!(documents = n, "new documents watched");
            }
        }
        let mut live: HashMap<DatasetId, BTreeMap<DocumentId, Hot>> = HashMap::new();
        for (ds, docs) in live_ids {
            let old = self.live.remove(&ds).unwrap_or_default();
            let hot = docs
                .into_iter()
                .map(|doc| {
                    // Keep what memory knows of documents already being polled.
                    let h = old.get(&doc).copied().unwrap_or_default();
                    (doc, h)
                })
                .collect();
            live.insert(ds, hot);
        }
        let gone: Vec<DatasetId> = self
            .schedules
            .keys()
            .filter(|ds| !live.contains_key(*ds))
            .cloned()
            .collect();
        for ds in &gone {
            self.drop_schedule(ds);
        }
        for ds in live.keys() {
            if self.schedules.contains_key(ds) {
                continue;
            }
            let (at, failures) = match schedules.get(ds) {
                Some(s) if first => (now + s.next_poll_at.since(now_wall), s.failures),
                _ => (now, 0),
            };
            self.set_schedule(ds.clone(), DatasetSchedule::new(at, failures));
        }
        self.live = live;
    }

    async fn sweep_removed_notifiers(&self) {
        let mut keep: Vec<String> = self
            .config
            .notifiers
            .iter()
            .map(|n| n.name.clone())
            .collect();
        keep.extend(self.extra.iter().map(|e| e.notifier.name().to_string()));
        match self
            .store
            .call(move |s| s.kill_removed_notifiers(&keep, UnixMs::now()))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                deliveries = n,
                "pending deliveries of removed notifiers are dead (notifier removed)"
            ),
            Err(e) => tracing::error!(error = %e, "cannot sweep deliveries of removed notifiers"),
        }
    }

    async fn prune(&self) {
        let retention = self.config.state.retention;
        match self
            .store
            .call(move |s| s.prune(UnixMs::now(), retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned old event bodies"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old events"),
        }
    }

    /// SIGHUP: load the config again; keep the old one if the new one is invalid. Tells
    /// systemd RELOADING=1 (with MONOTONIC_USEC) before and READY=1 after, either way.
    async fn reload(&mut self) {
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(t) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(t);
        }
        sd_notify_state(&reloading);
        self.apply_reload().await;
        sd_notify_state(&[sd_notify::NotifyState::Ready]);
    }

    async fn apply_reload(&mut self) {
        let path = self.config.file.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            config::load(&path, &config::process_env, Mode::Strict)
        })
        .await;
        let new = match loaded {
            Ok(Ok(l)) => l.config,
            Ok(Err(diags)) => {
                for e in &diags.errors {
                    tracing::error!(error = %e, "reload: invalid config");
                }
                tracing::error!(
                    errors = diags.errors.len(),
                    "reload failed; keeping the running config"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running config");
                return;
            }
        };
        if new.state.dir != self.config.state.dir {
            tracing::warn!("state.dir changed: takes effect after a restart");
        }
        if new.http != self.config.http {
            tracing::warn!("http.listen changed: takes effect after a restart");
        }
        let old_settings = ClientSettings::from(&self.config.api);
        let new_settings = ClientSettings::from(&new.api);
        if !same_limits(&old_settings, &new_settings) {
            match CozeClient::new(new_settings) {
                Ok(c) => self.client = c,
                Err(e) => tracing::error!(error = %e, "reload: keeping the old API client"),
            }
        } else {
            self.client.set_token(new.api.token.clone());
        }
        self.config = new;
        if let Ok(mut w) = self.watch.write() {
            *w = self.config.watch.clone();
        }
        self.policy = Policies::from(&self.config);
        self.dispatch
            .set_notifiers(notifiers(&self.config, &self.extra));
        self.sweep_removed_notifiers().await;
        self.adopt_watch_list(false).await;
        tracing::info!(
            datasets = self.config.watch.datasets.len(),
            live = self.live_count(),
            "config reloaded"
        );
    }
}

fn same_limits(a: &ClientSettings, b: &ClientSettings) -> bool {
    a.base_url == b.base_url
        && a.request_timeout == b.request_timeout
        && a.max_ids_per_request == b.max_ids_per_request
        && a.max_requests_per_second == b.max_requests_per_second
        && a.max_requests_per_day == b.max_requests_per_day
        && a.max_concurrent_requests == b.max_concurrent_requests
}

/// The notifier set of a config, plus the program's own.
fn notifiers(config: &Config, extra: &[ExtraNotifier]) -> Vec<Arc<dyn Notifier>> {
    let mut out: Vec<Arc<dyn Notifier>> = Vec::new();
    for n in &config.notifiers {
        match crate::notify::build(n) {
            Ok(built) => out.push(built),
            Err(e) => {
                tracing::warn!(notifier = %n.name, error = %e, "notifier not started; its events are not queued")
            }
        }
    }
    out.extend(extra.iter().map(|e| e.notifier.clone()));
    out
}

/// One poll of a dataset, as a task: reads the documents' stored states, puts back what
/// memory knows newer, polls, and decides which new states to write.
async fn poll_one(
    client: &CozeClient,
    store: &StoreHandle,
    ds: &DatasetId,
    docs: Vec<(DocumentId, Hot)>,
    policy: &TrackerPolicy,
) -> Result<Polled, StoreError> {
    let ids: Vec<DocumentId> = docs.iter().map(|(id, _)| id.clone()).collect();
    let dataset = ds.clone();
    let stored = store.read(move |s| s.load_dataset(&dataset, &ids)).await?;
    let mut states: HashMap<DocumentId, DocState> = HashMap::with_capacity(docs.len());
    let mut terminal = Vec::new();
    for s in stored {
        match s {
            Stored::Live(state) => {
                states.insert(state.document_id.clone(), *state);
            }
            Stored::Terminal(id) => terminal.push(id),
        }
    }
    let now = UnixMs::now();
    let olds: Vec<DocState> = docs
        .into_iter()
        .filter(|(id, _)| !terminal.contains(id))
        .map(|(id, hot)| {
            // No row: its first record failed; it starts now.
            let mut state = states
                .remove(&id)
                .unwrap_or_else(|| DocState::new(ds.clone(), id, now));
            if let Some(r) = &hot.recent {
                state.set_recent(r);
            }
            state.persisted_at = hot.persisted_at;
            state
        })
        .collect();
    let report = poll_dataset(client, ds, &olds, policy, UnixMs::now()).await;
    let by_id: HashMap<&DocumentId, &DocState> = olds.iter().map(|d| (&d.document_id, d)).collect();
    let now = UnixMs::now();
    let store_it = report
        .steps
        .iter()
        .map(|step| worth_storing(by_id.get(&step.state.document_id).copied(), step, now))
        .collect();
    Ok(Polled {
        report,
        store_it,
        terminal,
    })
}

/// Whether a step's new state must be written now: when it fired events or changed
/// materially, and otherwise at least every [`REFRESH_STORED`] so `status` stays current.
/// Writing every progress tick of every document would cost a row write per document per
/// poll.
fn worth_storing(old: Option<&DocState>, step: &crate::tracker::Step, now: UnixMs) -> bool {
    let Some(old) = old else {
        return true;
    };
    !step.events.is_empty()
        || step.state.differs_materially(old)
        || old
            .persisted_at
            .is_none_or(|t| now.since(t) >= REFRESH_STORED)
}

/// The start-up merge of the watch list with the store's documents, both in key order: which
/// listed documents are live, and which the store has never seen. Allocates nothing per stored
/// row, so a restart with 100,000 stored documents stays quick.
struct Adoption<'a> {
    listed: std::iter::Peekable<Box<dyn Iterator<Item = (&'a DatasetId, &'a DocumentId)> + 'a>>,
    live: Vec<(DatasetId, Vec<DocumentId>)>,
    fresh: Vec<(DatasetId, DocumentId)>,
}

/// Live documents per dataset, and the documents never stored.
type Adopted = (
    Vec<(DatasetId, Vec<DocumentId>)>,
    Vec<(DatasetId, DocumentId)>,
);

impl<'a> Adoption<'a> {
    fn new(watch: &'a WatchList) -> Self {
        let listed: Box<dyn Iterator<Item = (&'a DatasetId, &'a DocumentId)> + 'a> = Box::new(
            watch
                .datasets
                .iter()
                .flat_map(|(ds, docs)| docs.keys().map(move |d| (ds, d))),
        );
        Adoption {
            listed: listed.peekable(),
            live: Vec::new(),
            fresh: Vec::new(),
        }
    }

    fn add_live(&mut self, ds: &DatasetId, doc: &DocumentId) {
        match self.live.last_mut() {
            Some((last, docs)) if last == ds => docs.push(doc.clone()),
            _ => self.live.push((ds.clone(), vec![doc.clone()])),
        }
    }

    /// The next stored document (in key order).
    fn stored(&mut self, ds: &str, doc: &str, state: Lifecycle) {
        while let Some(&(lds, ldoc)) = self.listed.peek() {
            match (lds.as_str(), ldoc.as_str()).cmp(&(ds, doc)) {
                std::cmp::Ordering::Less => {
                    // Listed, never stored.
                    self.add_live(lds, ldoc);
                    self.fresh.push((lds.clone(), ldoc.clone()));
                    self.listed.next();
                }
                std::cmp::Ordering::Equal => {
                    if !state.is_terminal() {
                        self.add_live(lds, ldoc);
                    }
                    self.listed.next();
                    return;
                }
                // Stored, no longer listed.
                std::cmp::Ordering::Greater => return,
            }
        }
    }

    fn finish(mut self) -> Adopted {
        while let Some((ds, doc)) = self.listed.next() {
            self.add_live(ds, doc);
            self.fresh.push((ds.clone(), doc.clone()));
        }
        (self.live, self.fresh)
    }
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; a no-op otherwise).
fn sd_notify_state(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WatchedDocument;

    fn watch(list: &[(&str, &[&str])]) -> WatchList {
        let mut w = WatchList::default();
        for (ds, docs) in list {
            let m = w.datasets.entry(DatasetId::new(ds)).or_default();
            for d in *docs {
                m.insert(
                    DocumentId::new(d),
                    WatchedDocument {
                        labels: Arc::default(),
                        notify: None,
                    },
                );
            }
        }
        w
    }

    fn ids(v: &[(DatasetId, Vec<DocumentId>)]) -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(ds, docs)| (ds.to_string(), docs.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn adoption_merges_the_watch_list_with_the_stored_states() {
        let w = watch(&[("1", &["a", "b", "c"]), ("2", &["x"]), ("3", &["y"])]);
        let mut m = Adoption::new(&w);
        // In key order: a stored document no longer listed ("0"/"z", "1"/"bb") is skipped.
        m.stored("0", "z", Lifecycle::Watching);
        m.stored("1", "a", Lifecycle::Completed);
        m.stored("1", "bb", Lifecycle::Watching);
        m.stored("1", "c", Lifecycle::Watching);
        m.stored("2", "x", Lifecycle::Failed);
        let (live, fresh) = m.finish();
        assert_eq!(
            ids(&live),
            [
                ("1".to_string(), vec!["b".to_string(), "c".to_string()]),
                ("3".to_string(), vec!["y".to_string()]),
            ]
        );
        let fresh: Vec<String> = fresh.iter().map(|(ds, d)| format!("{ds}/{d}")).collect();
        assert_eq!(fresh, ["1/b", "3/y"]);
    }
}
