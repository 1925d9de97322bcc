//! The run loop: starts due polls (at most `max_concurrent_requests`), commits each finished
//! poll in one transaction and only then updates memory, reschedules, and handles reload,
//! nudges, the watchdog ping and the shutdown grace.
//!
//! It is the only writer of document states and events. It never delivers anything (the
//! dispatcher does) and never sleeps but in its one `select!`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::discovery::{Discovery, DiscoveryResult};
use super::persist::{Hot, Recent, worth_storing};
use super::{
    ExtraNotifier, NEVER, PRUNE_EVERY, Policies, RunContext, SHARED_STORE_REFRESH, SHUTDOWN_GRACE,
    sd_notify_state,
};
use crate::config::{Config, WatchList};
use crate::coze::{ApiError, CozeClient};
use crate::event::{EventId, EventType};
use crate::ids::{DatasetId, DocumentId};
use crate::metrics::Metrics;
use crate::notify::DispatcherHandle;
use crate::notify::EventBody;
use crate::poller::{PollReport, poll_dataset};
use crate::schedule::{self, DatasetSchedule, DueQueue, Failure};
use crate::store::{NewEvent, StoreError, StoreHandle, Stored, StoredSchedule};
use crate::tracker::{DocState, TrackerPolicy};
use crate::wall::{Clock, UnixMs};

/// All mutable engine state, owned by the one run-loop task.
pub(super) struct Engine {
    pub(super) metrics: Arc<Metrics>,
    /// The watch list as `/status` sees it.
    pub(super) watch: Arc<RwLock<Arc<WatchList>>>,
    pub(super) config: Config,
    pub(super) policy: Policies,
    pub(super) client: Arc<CozeClient>,
    pub(super) store: StoreHandle,
    pub(super) dispatch: DispatcherHandle,
    pub(super) extra: Vec<ExtraNotifier>,
    /// Live (non-terminal) watched documents, per dataset. Their states are in the store; a
    /// poll reads them there.
    pub(super) live: HashMap<DatasetId, BTreeMap<DocumentId, Hot>>,
    pub(super) schedules: HashMap<DatasetId, DatasetSchedule>,
    /// Datasets with a schedule and no poll running, by next poll time.
    pub(super) queue: DueQueue,
    pub(super) in_flight: HashSet<DatasetId>,
    pub(super) rng: StdRng,
    /// The config's watch list with the run-time entries merged in: what is watched.
    pub(super) watch_list: Arc<WatchList>,
    /// The run-time entries (`watch add`, `POST /v1/watch`), as last read from the store.
    pub(super) runtime: Vec<crate::store::RuntimeEntry>,
    pub(super) discovery: Discovery,
    /// The one clock (wall and monotonic) of this run.
    pub(super) clock: Clock,
}

/// What the run loop is built from (see [`super::run`]).
pub(super) struct Wiring {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub watch: Arc<RwLock<Arc<WatchList>>>,
    pub client: Arc<CozeClient>,
    pub store: StoreHandle,
    pub dispatch: DispatcherHandle,
    pub extra: Vec<ExtraNotifier>,
    pub clock: Clock,
}

/// What a poll task found: the report, and which of its steps to write.
struct Polled {
    report: PollReport,
    /// Per step: write its state now (see [`worth_storing`]).
    store_it: Vec<bool>,
    /// Documents the store already holds as terminal: no longer live.
    terminal: Vec<DocumentId>,
}

/// A finished poll task.
pub(super) struct PollResult {
    dataset: DatasetId,
    /// `Err`: the dataset's stored states could not be read; nothing was asked.
    polled: Result<Polled, StoreError>,
    started: Instant,
}

impl Engine {
    pub(super) fn new(w: Wiring) -> Self {
        Engine {
            clock: w.clock,
            metrics: w.metrics,
            watch: w.watch,
            policy: Policies::from(&w.config),
            config: w.config,
            client: w.client,
            store: w.store,
            dispatch: w.dispatch,
            extra: w.extra,
            live: HashMap::new(),
            schedules: HashMap::new(),
            queue: DueQueue::default(),
            in_flight: HashSet::new(),
            rng: StdRng::from_rng(&mut rand::rng()),
            watch_list: Arc::default(),
            runtime: Vec::new(),
            discovery: Discovery::default(),
        }
    }

    pub(super) fn live_count(&self) -> usize {
        self.live.values().map(BTreeMap::len).sum()
    }

    /// Runs until shutdown, or until `verify` finds the store unusable (returned).
    /// Runs until `stop` (the process's shutdown, or the end of a leader's term).
    pub(super) async fn run_loop(
        &mut self,
        ctx: &mut RunContext,
        stop: &tokio_util::sync::CancellationToken,
        changes: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
        verify: &mut tokio::task::JoinHandle<Result<(), StoreError>>,
    ) -> Option<StoreError> {
        let mut verified = false;
        let mut unusable = None;
        let mut polls: JoinSet<PollResult> = JoinSet::new();
        let mut listings: JoinSet<DiscoveryResult> = JoinSet::new();
        // Timers live across iterations and are reset only when their deadline changes:
        // re-creating them on every wake-up costs more than the wake-up itself.
        let prune = tokio::time::sleep(PRUNE_EVERY);
        // With WATCHDOG_USEC set, the loop itself wakes at half of it and pings from here, so
        // a stuck loop (or store) stops the pings.
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let ping = tokio::time::sleep(watchdog.unwrap_or(NEVER));
        let due = tokio::time::sleep(NEVER);
        // A shared (PostgreSQL) store has no local pid to signal: `watch add/remove` and
        // `deliveries --retry` from any machine are read back on this pace.
        let shared = self.config.state.postgres.is_some();
        let every = if shared { SHARED_STORE_REFRESH } else { NEVER };
        let refresh = tokio::time::sleep(every);
        tokio::pin!(prune, ping, due, refresh);
        let mut due_at: Option<Instant> = None;
        loop {
            ctx.wakeups.fetch_add(1, Ordering::Relaxed);
            self.start_due_polls(&mut polls);
            self.start_due_discoveries(&mut listings);
            // With every request slot busy, the next wake-up is a poll finishing, not a due
            // time that has already passed.
            let polls_next =
                if self.in_flight.len() >= self.config.api.limits.max_concurrent_requests {
                    None
                } else {
                    self.next_due()
                };
            let next = match (polls_next, self.discovery.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if next != due_at {
                due.as_mut()
                    .reset(next.unwrap_or_else(|| Instant::now() + NEVER));
                due_at = next;
            }
            tracing::trace!(next_in = ?next.map(|n| n.saturating_duration_since(Instant::now())), "run loop waiting");
            tokio::select! {
                _ = stop.cancelled() => break,
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
                    Ok(done) => self.finish_poll(done).await,
                    Err(e) => tracing::error!(error = %e, "a poll task failed"),
                },
                Some(done) = listings.join_next() => match done {
                    Ok(done) => self.finish_discovery(done).await,
                    Err(e) => tracing::error!(error = %e, "a discovery task failed"),
                },
                Some(()) = ctx.reload.recv() => self.reload().await,
                // SIGUSR1 (`deliveries --retry`, `watch add/remove`): look at the store.
                Some(()) = ctx.nudge.recv() => {
                    self.dispatch.wake();
                    self.refresh_runtime().await;
                }
                Some(()) = changes.recv() => self.refresh_runtime().await,
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
                _ = &mut refresh, if shared => {
                    self.dispatch.wake();
                    self.refresh_runtime().await;
                    refresh.as_mut().reset(Instant::now() + every);
                }
            }
        }
        tracing::info!(in_flight = polls.len(), "shutting down");
        listings.abort_all();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !polls.is_empty() {
            tokio::select! {
                Some(done) = polls.join_next() => {
                    if let Ok(done) = done {
                        self.finish_poll(done).await;
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
    pub(super) fn set_schedule(&mut self, ds: DatasetId, schedule: DatasetSchedule) {
        if !self.in_flight.contains(&ds) {
            self.queue.insert(ds.clone(), schedule.next_poll);
        }
        self.schedules.insert(ds, schedule);
    }

    pub(super) fn drop_schedule(&mut self, ds: &DatasetId) {
        self.schedules.remove(ds);
        self.queue.remove(ds);
    }

    pub(super) fn start_due_polls(&mut self, polls: &mut JoinSet<PollResult>) {
        let slots = self
            .config
            .api
            .limits
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
            let clock = self.clock;
            polls.spawn(async move {
                let started = Instant::now();
                let span = tracing::debug_span!("poll", dataset_id = %ds, documents = docs.len());
                let polled = tracing::Instrument::instrument(
                    poll_one(&client, &store, &ds, docs, &policy, clock),
                    span,
                )
                .await;
                PollResult {
                    dataset: ds,
                    polled,
                    started,
                }
            });
        }
    }

    pub(super) async fn finish_poll(&mut self, done: PollResult) {
        let PollResult {
            dataset: ds,
            polled,
            started,
        } = done;
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
        let now_wall = self.clock.wall();
        self.observe_metrics(&ds, &report, started);
        for step in &report.steps {
            if let Some(n) = step.new_unknown_status {
                tracing::warn!(dataset_id = %ds, document_id = %step.state.document_id, status = n, "unknown document status; still watching");
            }
        }
        let mut events = self.events_of(&report, now_wall);
        let batches = match self.batch_events(&report, now_wall).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(dataset_id = %ds, error = %e, "cannot read a batch's documents; the poll will be redone");
                self.store_failed(&ds, now);
                return;
            }
        };
        for _ in &batches.events {
            self.metrics.event(EventType::BatchCompleted.as_str());
        }
        events.extend(batches.events);
        let meta = batches.meta;
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
            .write(move |s| {
                s.commit_with_meta(
                    &states,
                    &events,
                    Some((&ds_for_store, stored)),
                    &meta,
                    now_wall,
                )
            })
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
                    hot.recent = Some(Recent::of(&step.state));
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
        for kind in &report.refused {
            m.api_error(kind);
        }
        match &report.failure {
            Some(e) => {
                let auth = matches!(
                    e,
                    ApiError::Auth(_) | ApiError::Permission { .. } | ApiError::Local(_)
                );
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
        match self.store.write(|s| s.ping()).await {
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
                .watch_list
                .rule(&doc.dataset_id, &doc.document_id)
                .or_else(|| self.discovery.rule(&doc.dataset_id));
            let labels = watched.map(|w| w.labels.clone()).unwrap_or_default();
            for draft in &step.events {
                let notifiers =
                    self.subscribers(draft.event_type, watched.and_then(|w| w.notify.as_deref()));
                if notifiers.is_empty() {
                    // Nobody subscribes (progress events, by default): nothing to deliver, so
                    // nothing to store. The metrics still count it.
                    continue;
                }
                let event_id = EventId::derive(
                    doc.dataset_id.as_str(),
                    doc.document_id.as_str(),
                    draft.event_type,
                    draft.occurrence,
                );
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

    pub(super) fn subscribers(&self, ty: EventType, only: Option<&[String]>) -> Vec<String> {
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
        let processing = report.processing();
        let changed = report.changed();
        let probed = self.probe_tracked(ds);
        let sched = self
            .schedules
            .entry(ds.clone())
            .or_insert_with(|| DatasetSchedule::new(now, 0));
        match failure {
            Some(f) => sched.on_failure(now, f, &policy, u),
            // The space probe says when its documents stop processing; polls in between
            // are only the safety net (progress, stall, give-up).
            None if probed => {
                sched.on_success(now, &processing, changed, &policy, u);
                let wait = policy.max_interval + schedule::spread(policy.max_interval, &policy, u);
                sched.next_poll = now + wait;
                sched.next_poll
            }
            None => sched.on_success(now, &processing, changed, &policy, u),
        }
    }

    /// Maps an API error to its schedule reaction, and applies the shared one: auth failures
    /// pause every request (the token is shared).
    fn failure_of(&self, e: &ApiError, now: Instant) -> Failure {
        tracing::warn!(error = %e, msg = e.msg().unwrap_or(""), logid = e.logid().unwrap_or(""),
            kind = e.kind(), "poll failed");
        let r = schedule::reaction(e, &self.policy.schedule);
        if let Some(pause) = r.pause_all {
            self.client.pause_until(now + pause);
        }
        r.failure
    }

    pub(super) async fn sweep_removed_notifiers(&self) {
        let mut keep: Vec<String> = self
            .config
            .notifiers
            .iter()
            .map(|n| n.name.clone())
            .collect();
        keep.extend(self.extra.iter().map(|e| e.notifier.name().to_string()));
        match self
            .store
            .write({
                let now = self.clock.wall();
                move |s| s.kill_removed_notifiers(&keep, now)
            })
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

    pub(super) async fn prune(&self) {
        let retention = self.config.state.retention;
        match self
            .store
            .write({
                let now = self.clock.wall();
                move |s| s.prune(now, retention)
            })
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned old event bodies"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old events"),
        }
    }
}

/// One poll of a dataset, as a task: reads the documents' stored states, puts back what
/// memory knows newer, polls, and decides which new states to write.
async fn poll_one(
    client: &CozeClient,
    store: &StoreHandle,
    ds: &DatasetId,
    docs: Vec<(DocumentId, Hot)>,
    policy: &TrackerPolicy,
    clock: Clock,
) -> Result<Polled, StoreError> {
    let ids: Vec<DocumentId> = docs.iter().map(|(id, _)| id.clone()).collect();
    let dataset = ds.clone();
    let stored = store
        .read_inline(move |s| s.load_dataset(&dataset, &ids))
        .await?;
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
    let now = clock.wall();
    let mut hots: HashMap<DocumentId, Hot> = HashMap::with_capacity(docs.len());
    let mut olds: Vec<DocState> = Vec::with_capacity(docs.len());
    for (id, hot) in docs {
        if terminal.contains(&id) {
            continue;
        }
        // No row: its first record failed; it starts now.
        let mut state = states
            .remove(&id)
            .unwrap_or_else(|| DocState::new(ds.clone(), id.clone(), now));
        if let Some(r) = &hot.recent {
            r.apply(&mut state);
        }
        hots.insert(id, hot);
        olds.push(state);
    }
    let report = poll_dataset(client, ds, &olds, policy, clock.wall()).await;
    let by_id: HashMap<&DocumentId, &DocState> = olds.iter().map(|d| (&d.document_id, d)).collect();
    let now = clock.wall();
    let store_it = report
        .steps
        .iter()
        .map(|step| {
            let id = &step.state.document_id;
            let hot = hots.get(id).copied().unwrap_or_default();
            worth_storing(by_id.get(id).copied(), &hot, step, now)
        })
        .collect();
    Ok(Polled {
        report,
        store_it,
        terminal,
    })
}
