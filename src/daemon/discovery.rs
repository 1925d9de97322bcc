//! Discovery in the run loop (SPEC section 11): one task per due scope (a space, or a
//! `documents: all` knowledge base) probes and lists through the shared client, decides with
//! `discover`, and returns what it found; the loop commits the scope's state and the new
//! documents in one transaction, then starts polling the documents to watch.
//!
//! Listings share the request budget with polls (the client's limits). A failed listing backs
//! its scope off and leaves every other entry working; a permission refusal (4101) is named in
//! the log, `/status` and `/healthz`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::RngExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::engine::Engine;
use crate::config::{Flavor, SpaceWatch, WatchedDocument};
use crate::coze::{ApiError, CozeClient, DatasetInfo, DocumentStatus, listing};
use crate::discover::{self, Scope, ScopeState, Skip};
use crate::ids::{DatasetId, DocumentId};
use crate::schedule::{self, DatasetSchedule, DueQueue};
use crate::store::StoreHandle;
use crate::tracker::{DocState, Lifecycle, MissingReason};
use crate::wall::UnixMs;

/// Discovery's part of the engine state.
#[derive(Default)]
pub(super) struct Discovery {
    /// What each wanted scope knows (loaded from the store, updated after each listing).
    pub(super) scopes: HashMap<Scope, ScopeState>,
    /// Failures in a row and the next run of each scope.
    schedules: HashMap<Scope, DatasetSchedule>,
    queue: DueQueue<Scope>,
    in_flight: HashSet<Scope>,
    /// The rule (labels, notifiers) of each knowledge base found in a watched space.
    space_rules: HashMap<DatasetId, WatchedDocument>,
}

/// A finished discovery task.
pub(super) struct DiscoveryResult {
    scope: Scope,
    found: Found,
}

/// What one run of a scope found.
struct Found {
    state: ScopeState,
    /// New rows: documents to watch (watching) and baseline documents (terminal).
    rows: Vec<DocState>,
    /// The documents to start polling, and whether to look at once (a document found by a
    /// listing, which may be terminal already) or let the probe say when it stops processing.
    watch: Vec<(DatasetId, DocumentId, Urgency)>,
    /// Per covered knowledge base of a probed space: the documents processing now.
    processing_now: Vec<(DatasetId, HashSet<DocumentId>)>,
    newly_skipped: Vec<(DatasetId, Skip)>,
    failure: Option<Stop>,
    requests: u32,
}

/// Why a run stopped early (what it found before is still committed).
enum Stop {
    Api(ApiError),
    /// The store could not say which documents it knows.
    Store(crate::store::StoreError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Api(e)
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Api(e) => e.fmt(f),
            Stop::Store(e) => write!(f, "store: {e}"),
        }
    }
}

/// When a newly discovered document needs its first poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Urgency {
    /// Found by a listing: it may be terminal already.
    Now,
    /// Seen processing.
    Processing,
}

impl Discovery {
    /// When the next scope is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.queue.next()
    }

    pub(super) fn rule(&self, ds: &DatasetId) -> Option<&WatchedDocument> {
        self.space_rules.get(ds)
    }
}

impl Engine {
    /// The scopes the effective watch list asks for, with their space entries.
    fn wanted_scopes(&self) -> Vec<(Scope, Option<SpaceWatch>)> {
        let w = &self.watch_list;
        let spaces = w
            .spaces
            .iter()
            .map(|s| (Scope::Space(s.space.clone()), Some(s.clone())));
        let datasets = w.all_of.keys().map(|ds| (Scope::Dataset(ds.clone()), None));
        spaces.chain(datasets).collect()
    }

    /// After a start, reload or watch-list change: scopes newly wanted are due now (with the
    /// state the store kept, so they never re-baseline); scopes no longer wanted stop.
    pub(super) fn sync_scopes(&mut self, stored: &mut HashMap<Scope, ScopeState>) {
        let now = Instant::now();
        let wanted: Vec<Scope> = self.wanted_scopes().into_iter().map(|(s, _)| s).collect();
        let d = &mut self.discovery;
        let gone: Vec<Scope> = d
            .schedules
            .keys()
            .filter(|s| !wanted.contains(s))
            .cloned()
            .collect();
        for s in &gone {
            d.queue.remove(s);
            d.schedules.remove(s);
            d.scopes.remove(s);
        }
        for scope in wanted {
            if d.schedules.contains_key(&scope) {
                continue;
            }
            let state = stored
                .remove(&scope)
                .unwrap_or_else(|| ScopeState::new(&scope));
            d.scopes.insert(scope.clone(), state);
            d.schedules
                .insert(scope.clone(), DatasetSchedule::new(now, 0));
            if !d.in_flight.contains(&scope) {
                d.queue.insert(scope, now);
            }
        }
        self.rebuild_space_rules();
    }

    /// Knowledge bases whose every document is watched: `documents: all` entries and the
    /// knowledge bases found in watched spaces.
    pub(super) fn covered_datasets(&self) -> HashSet<DatasetId> {
        let mut out: HashSet<DatasetId> = self.watch_list.all_of.keys().cloned().collect();
        out.extend(self.discovery.space_rules.keys().cloned());
        out
    }

    fn rebuild_space_rules(&mut self) {
        let mut rules = HashMap::new();
        for entry in &self.watch_list.spaces {
            let Some(state) = self
                .discovery
                .scopes
                .get(&Scope::Space(entry.space.clone()))
            else {
                continue;
            };
            for ds in state.covered().filter(|ds| entry.covers(ds)) {
                rules.insert(ds.clone(), entry.rule.clone());
            }
        }
        self.discovery.space_rules = rules;
    }

    /// Starts a task for every scope that is due and not running.
    pub(super) fn start_due_discoveries(&mut self, tasks: &mut JoinSet<DiscoveryResult>) {
        let due = self.discovery.queue.pop_due(Instant::now(), usize::MAX);
        let wanted = self.wanted_scopes();
        for scope in due {
            let Some(state) = self.discovery.scopes.get(&scope).cloned() else {
                continue;
            };
            let entry = wanted
                .iter()
                .find(|(s, _)| *s == scope)
                .and_then(|(_, e)| e.clone());
            self.discovery.in_flight.insert(scope.clone());
            let job = Job {
                client: self.client.clone(),
                store: self.store.clone(),
                flavor: self.config.api.flavor,
                relist: self.config.poll.relist_interval,
                clock: self.clock,
            };
            tasks.spawn(async move {
                let span = tracing::debug_span!("discover", scope = %scope);
                let found =
                    tracing::Instrument::instrument(job.run(&scope, state, entry.as_ref()), span)
                        .await;
                DiscoveryResult { scope, found }
            });
        }
    }

    /// Commits what a task found, then starts polling the documents to watch and schedules
    /// the scope's next run.
    pub(super) async fn finish_discovery(&mut self, done: DiscoveryResult) {
        let DiscoveryResult { scope, found } = done;
        self.discovery.in_flight.remove(&scope);
        let now = Instant::now();
        if !self.discovery.schedules.contains_key(&scope) {
            // No longer wanted (a reload or `watch remove` meanwhile): nothing to record.
            return;
        }
        self.metrics.api_requests.inc_by(u64::from(found.requests));
        for (ds, skip) in &found.newly_skipped {
            tracing::info!(scope = %scope, dataset_id = %ds, reason = skip.as_str(), "knowledge base skipped");
        }
        let mut state = found.state;
        state.last_error = found.failure.as_ref().map(ToString::to_string);
        let rows = found.rows;
        let n_rows = rows.len();
        let (scope_for_store, state_for_store) = (scope.clone(), state.clone());
        let now_wall = self.clock.wall();
        let committed = self
            .store
            .write(move |s| s.commit_discovery(&scope_for_store, &state_for_store, &rows, now_wall))
            .await;
        if let Err(e) = committed {
            tracing::error!(scope = %scope, error = %e, "cannot record what discovery found; it will be listed again");
            self.metrics.health.store_result(Some(e.to_string()));
            self.discovery_failed(&scope, now, None);
            return;
        }
        self.discovery.scopes.insert(scope.clone(), state);
        self.rebuild_space_rules();
        let mut started = 0;
        for (ds, doc, urgency) in found.watch {
            started += usize::from(self.start_watching(ds, doc, urgency, now));
        }
        // A watched document that left the processing list finished (or vanished): look now.
        for (ds, processing) in found.processing_now {
            let done = self
                .live
                .get(&ds)
                .is_some_and(|docs| docs.keys().any(|d| !processing.contains(d)));
            if done {
                self.poll_soon(&ds, now);
            }
        }
        if started > 0 || n_rows > 0 {
            tracing::info!(scope = %scope, watched = started, recorded = n_rows, "discovered documents");
        }
        match found.failure {
            Some(Stop::Store(e)) => {
                tracing::error!(scope = %scope, error = %e, "cannot read known documents; listing again later");
                self.discovery_failed(&scope, now, None);
            }
            Some(Stop::Api(e)) => {
                self.metrics.api_error(e.kind());
                let permission = matches!(e, ApiError::Permission { .. } | ApiError::Auth(_));
                tracing::warn!(scope = %scope, error = %e, msg = e.msg().unwrap_or(""),
                    logid = e.logid().unwrap_or(""), "discovery failed; backing off");
                let problem = permission.then(|| format!("discovery of {scope}: {e}"));
                self.discovery_failed(&scope, now, Some((&e, problem)));
            }
            None => {
                self.metrics.health.discovery_ok(&scope.key());
                let next = now + self.config.poll.discover_interval;
                if let Some(s) = self.discovery.schedules.get_mut(&scope) {
                    s.failures = 0;
                    s.next_poll = next;
                }
                self.discovery.queue.insert(scope, next);
            }
        }
    }

    fn discovery_failed(
        &mut self,
        scope: &Scope,
        now: Instant,
        error: Option<(&ApiError, Option<String>)>,
    ) {
        let u = self.rng.random::<f64>();
        let failure = match error {
            Some((e, problem)) => {
                match problem {
                    Some(p) => self.metrics.health.discovery_failed(&scope.key(), p),
                    None => self.metrics.health.discovery_ok(&scope.key()),
                }
                schedule::reaction(e, &self.policy.schedule).failure
            }
            None => schedule::Failure::Backoff,
        };
        let policy = self.policy.schedule.clone();
        let Some(s) = self.discovery.schedules.get_mut(scope) else {
            return;
        };
        let next = s.on_failure(now, failure, &policy, u);
        self.discovery.queue.insert(scope.clone(), next);
    }

    /// Whether `ds` is watched only through a space, whose probe tells when its documents
    /// stop processing (so its polls need not chase `remaining_time`).
    pub(super) fn probe_tracked(&self, ds: &DatasetId) -> bool {
        self.discovery.space_rules.contains_key(ds)
            && !self.watch_list.all_of.contains_key(ds)
            && !self.watch_list.datasets.contains_key(ds)
    }

    /// Starts polling a discovered document (its row is stored already). Returns whether it
    /// was not watched before.
    fn start_watching(
        &mut self,
        ds: DatasetId,
        doc: DocumentId,
        urgency: Urgency,
        now: Instant,
    ) -> bool {
        let docs = self.live.entry(ds.clone()).or_default();
        if docs.contains_key(&doc) {
            return false;
        }
        docs.insert(doc, Default::default());
        let probed = self.probe_tracked(&ds);
        match urgency {
            Urgency::Now => self.poll_soon(&ds, now),
            // The probe will say when it stops processing; until then the safety net.
            Urgency::Processing if probed => {
                if !self.schedules.contains_key(&ds) {
                    let next = now + self.policy.schedule.max_interval;
                    self.set_schedule(ds, DatasetSchedule::new(next, 0));
                }
            }
            // Nothing will say when it finishes: its first answer's hint will.
            Urgency::Processing => self.poll_soon(&ds, now),
        }
        true
    }

    /// Polls `ds` at `now` (or earlier, if it is due before).
    fn poll_soon(&mut self, ds: &DatasetId, now: Instant) {
        let schedule = match self.schedules.remove(ds) {
            Some(mut s) => {
                s.next_poll = s.next_poll.min(now);
                s
            }
            None => DatasetSchedule::new(now, 0),
        };
        self.set_schedule(ds.clone(), schedule);
    }
}

/// What a discovery task needs.
struct Job {
    client: std::sync::Arc<CozeClient>,
    store: StoreHandle,
    flavor: Flavor,
    relist: Duration,
    clock: crate::wall::Clock,
}

impl Job {
    async fn run(&self, scope: &Scope, mut state: ScopeState, entry: Option<&SpaceWatch>) -> Found {
        let mut found = Found {
            state: ScopeState::default(),
            rows: Vec::new(),
            watch: Vec::new(),
            processing_now: Vec::new(),
            newly_skipped: Vec::new(),
            failure: None,
            requests: 0,
        };
        let now = self.clock.wall();
        let result = match (scope, entry) {
            (Scope::Space(space), Some(entry)) => {
                self.space(space, entry, &mut state, now, &mut found).await
            }
            (Scope::Dataset(ds), _) => {
                let mut known = HashMap::new();
                self.list_dataset(ds, None, &mut state, now, &mut found, &mut known)
                    .await
            }
            (Scope::Space(_), None) => Ok(()),
        };
        found.failure = result.err();
        found.state = state;
        found
    }

    async fn space(
        &self,
        space: &crate::ids::SpaceId,
        entry: &SpaceWatch,
        state: &mut ScopeState,
        now: UnixMs,
        found: &mut Found,
    ) -> Result<(), Stop> {
        let probe = self.probe(space, found).await?;
        let plan = discover::plan_space(state, entry, &probe, now, self.relist);
        found.newly_skipped = plan.newly_skipped;
        // Processing now: watched at once, whatever the listings below say.
        let mut known: HashMap<DatasetId, HashSet<DocumentId>> = HashMap::new();
        let mut new_processing: HashMap<DatasetId, usize> = HashMap::new();
        for (ds, doc) in plan.processing {
            let k = self.known(&ds, &mut known).await?;
            if k.insert(doc.clone()) {
                *new_processing.entry(ds.clone()).or_default() += 1;
                found.rows.push(DocState::new(ds.clone(), doc.clone(), now));
                found.watch.push((ds, doc, Urgency::Processing));
            }
        }
        found.processing_now = probe
            .iter()
            .filter(|p| {
                state
                    .datasets
                    .get(&p.dataset_id)
                    .is_some_and(|kb| kb.skipped.is_none())
            })
            .filter(|p| entry.covers(&p.dataset_id))
            .map(|p| {
                let ids = p.processing_file_id_list.iter().cloned().collect();
                (p.dataset_id.clone(), ids)
            })
            .collect();
        let mut to_list = plan.to_list;
        for (ds, grew) in plan.grown {
            let fresh = new_processing.get(&ds).copied().unwrap_or(0);
            let info = probe.iter().find(|p| p.dataset_id == ds);
            let kb = state.datasets.entry(ds.clone()).or_default();
            // Every new document is processing and watched already: nothing to page.
            if !info.is_some_and(|i| discover::explained(kb, grew, fresh, i)) {
                to_list.push(ds);
            }
        }
        for ds in to_list {
            let info = probe.iter().find(|p| p.dataset_id == ds);
            self.list_dataset(&ds, info, state, now, found, &mut known)
                .await?;
        }
        Ok(())
    }

    /// Every page of the space's knowledge bases.
    async fn probe(
        &self,
        space: &crate::ids::SpaceId,
        found: &mut Found,
    ) -> Result<Vec<DatasetInfo>, Stop> {
        let mut all: Vec<DatasetInfo> = Vec::new();
        for page in 1..=discover::MAX_PAGES {
            found.requests += 1;
            let p = self
                .client
                .list_datasets(space, page)
                .await
                .map_err(Stop::Api)?;
            let len = p.datasets.len();
            let before = all.len();
            for d in p.datasets {
                if !all.iter().any(|a| a.dataset_id == d.dataset_id) {
                    all.push(d);
                }
            }
            let complete = p.total.is_some_and(|t| all.len() as u64 >= t);
            if len == 0
                || all.len() == before
                || len < listing::DATASETS_PER_PAGE as usize
                || complete
            {
                break;
            }
        }
        Ok(all)
    }

    /// Lists one knowledge base completely and decides about its documents.
    async fn list_dataset(
        &self,
        ds: &DatasetId,
        info: Option<&DatasetInfo>,
        state: &mut ScopeState,
        now: UnixMs,
        found: &mut Found,
        known: &mut HashMap<DatasetId, HashSet<DocumentId>>,
    ) -> Result<(), Stop> {
        let client = &self.client;
        let requests = std::sync::atomic::AtomicU32::new(0);
        let listed = discover::page_all(
            self.flavor.first_document_page(),
            listing::DOCUMENTS_PER_PAGE as usize,
            |page| {
                requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                client.list_documents(ds, page)
            },
        )
        .await;
        found.requests += requests.load(std::sync::atomic::Ordering::Relaxed);
        let listed = listed.map_err(Stop::Api)?;
        let k = self.known(ds, known).await?.clone();
        let kb = state.datasets.entry(ds.clone()).or_default();
        let decision = discover::decide(kb, listed, &k, info, now);
        for doc in decision.baseline {
            found.rows.push(baseline_row(ds, &doc, now));
        }
        for doc in decision.watch {
            let urgency = match doc.status {
                Some(DocumentStatus::Processing) => Urgency::Processing,
                _ => Urgency::Now,
            };
            let id = doc.document_id;
            found.rows.push(DocState::new(ds.clone(), id.clone(), now));
            found.watch.push((ds.clone(), id, urgency));
        }
        Ok(())
    }

    /// The documents of `ds` the store knows, read once per task.
    async fn known<'a>(
        &self,
        ds: &DatasetId,
        cache: &'a mut HashMap<DatasetId, HashSet<DocumentId>>,
    ) -> Result<&'a mut HashSet<DocumentId>, Stop> {
        if !cache.contains_key(ds) {
            let dataset = ds.clone();
            let known = self
                .store
                .read_long(move |s| s.known_documents(&dataset))
                .await
                .map_err(Stop::Store)?;
            cache.insert(ds.clone(), known);
        }
        Ok(cache.entry(ds.clone()).or_default())
    }
}

/// The row of a document already terminal at the baseline: recorded, never announced.
fn baseline_row(ds: &DatasetId, doc: &crate::coze::DocumentInfo, now: UnixMs) -> DocState {
    let mut state = DocState::new(ds.clone(), doc.document_id.clone(), now);
    state.status = doc.status;
    state.info.name = doc.name.clone();
    state.terminal_at = Some(now);
    state.last_seen = Some(now);
    state.state = match doc.status {
        Some(DocumentStatus::Completed) => Lifecycle::Completed,
        Some(DocumentStatus::Failed) => Lifecycle::Failed,
        _ => {
            state.reason = Some(MissingReason::Deleted.as_str().into());
            Lifecycle::Missing
        }
    };
    state
}
