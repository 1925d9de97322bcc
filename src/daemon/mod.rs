//! The daemon (`coze-watch run`): wires config, schedule, client, tracker, store and
//! dispatcher together, and handles reload and shutdown.
//!
//! One task (the [`engine`]) owns all mutable engine state (which documents are live, each
//! dataset's schedule) and is the only writer of document states and events, so there are no
//! locks around them. Polls run as child tasks that return a report; the loop commits each
//! report in one store transaction and only then updates its memory, so a failed commit loses
//! nothing: the next poll sees the same transition again. It never delivers anything itself
//! (the dispatcher does).
//!
//! Layout: this file is the seam ([`run`], [`RunContext`]) and the start-up; `engine` the run
//! loop; `persist` which states are written when; `adopt` the merge of the watch list with the
//! store; `reload` SIGHUP.

mod adopt;
mod batches;
mod discovery;
mod engine;
mod leadership;
mod persist;
mod reload;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coze::{ClientSettings, CozeClient};
use crate::event::EventType;
use crate::metrics::Metrics;
use crate::notify::{Dispatcher, Notifier};
use crate::ops::OpsState;
use crate::schedule::SchedulePolicy;
use crate::store::{DirLock, Location, Store, StoreError, StoreHandle};
use crate::tracker::TrackerPolicy;
use engine::Engine;

/// How long in-flight polls and deliveries get at shutdown before they are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often old event bodies are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often a daemon on a shared (PostgreSQL) store reads the run-time watch list and the
/// outbox again by itself.
const SHARED_STORE_REFRESH: Duration = Duration::from_secs(5);
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
    Client(#[from] crate::http::BuildError),
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
    /// Where the run loop, the dispatcher and the ops endpoint read the time.
    pub clock: crate::wall::Clock,
    /// A listener already bound for `http.listen` (tests bind port 0 and know the address);
    /// `None`: bind `http.listen`.
    pub ops_listener: Option<tokio::net::TcpListener>,
}

/// Runs the daemon until `ctx.shutdown`; returns after in-flight work had its grace period.
///
/// On SQLite it polls and delivers from the start. On PostgreSQL it serves the ops endpoint
/// at once and polls and delivers only while it holds the lease (`leadership`): a standby
/// otherwise, and a standby again when it loses the lease.
pub async fn run(config: Config, mut ctx: RunContext) -> Result<(), DaemonError> {
    let at = Location::of(&config.state);
    let opening = at.clone();
    let (lock, store) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        // SQLite: one instance per state directory. PostgreSQL: instances share the database.
        let lock = match &opening {
            Location::Dir(dir) => Some(DirLock::acquire(dir)?),
            Location::Postgres(_) => None,
        };
        let store = Store::open_at(&opening)?;
        Ok((lock, store))
    })
    .await
    .map_err(|e| StoreError::Dir {
        dir: config.state.dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!(store = %store.path().display(), "store open");
    let store = StoreHandle::new(store, at.clone());
    let metrics = Arc::new(Metrics::new());
    let watch = Arc::new(RwLock::new(config.watch.clone()));
    // The ops endpoint's run-time watch-list changes, to the run loop.
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let ops = serve_ops(&config, &mut ctx, &store, &metrics, &watch, changes_tx).await?;
    let mut shared = Shared {
        store,
        metrics,
        watch,
        changes,
        at: at.clone(),
    };
    let unusable = match &at {
        Location::Dir(_) => {
            let stop = ctx.shutdown.clone();
            shared.metrics.set_role(None);
            term(config, &mut ctx, &mut shared, &stop).await?.1
        }
        Location::Postgres(pg) => leadership::run(config, &mut ctx, &mut shared, pg).await?,
    };
    // Stops the ops endpoint too when the loop stopped by itself.
    ctx.shutdown.cancel();
    sd_notify_state(&[sd_notify::NotifyState::Stopping]);
    if let Some(ops) = ops
        && let Err(e) = ops.await
    {
        tracing::error!(error = %e, "the ops endpoint task failed");
    }
    drop(lock);
    tracing::info!("stopped");
    match unusable {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// What outlives a leader's term: the store, the metrics, the watch list `/status` shows, and
/// the ops endpoint's run-time changes.
pub(super) struct Shared {
    store: StoreHandle,
    metrics: Arc<Metrics>,
    watch: Arc<RwLock<Arc<crate::config::WatchList>>>,
    changes: mpsc::UnboundedReceiver<()>,
    at: Location,
}

/// Starts the ops endpoint when `http` is configured.
async fn serve_ops(
    config: &Config,
    ctx: &mut RunContext,
    store: &StoreHandle,
    metrics: &Arc<Metrics>,
    watch: &Arc<RwLock<Arc<crate::config::WatchList>>>,
    changes: mpsc::UnboundedSender<()>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let Some(http) = config.http.as_ref() else {
        return Ok(None);
    };
    let state = OpsState {
        clock: ctx.clock,
        metrics: metrics.clone(),
        store: store.clone(),
        watch: watch.clone(),
        writes: http.api_token.clone().map(|token| crate::ops::Writes {
            token,
            notifiers: config.notifiers.iter().map(|n| n.name.clone()).collect(),
            changed: changes,
        }),
    };
    crate::ops::serve(
        http.listen,
        ctx.ops_listener.take(),
        state,
        ctx.shutdown.clone(),
    )
    .await
    .map(Some)
    .map_err(|source| DaemonError::Listen {
        listen: http.listen,
        source,
    })
}

/// Says READY once (to systemd and to the in-process caller).
fn ready(ctx: &mut RunContext) {
    let on_ready = std::mem::replace(&mut ctx.on_ready, Box::new(|| {}));
    on_ready();
    sd_notify_state(&[sd_notify::NotifyState::Ready]);
}

/// One term of polling and delivering, until `stop`: the engine and the dispatcher, built
/// from `config`. Returns the config as it ended (reloads kept) and a store found unusable.
async fn term(
    config: Config,
    ctx: &mut RunContext,
    shared: &mut Shared,
    stop: &CancellationToken,
) -> Result<(Config, Option<StoreError>), DaemonError> {
    let client = CozeClient::new(ClientSettings::from(&config.api))?;
    let extra = std::mem::take(&mut ctx.extra_notifiers);
    let (dispatcher, dispatch) = Dispatcher::new(
        shared.store.clone(),
        notifiers(&config, &extra, ctx.clock),
        shared.metrics.clone(),
        ctx.clock,
    );
    let mut engine = Engine::new(engine::Wiring {
        config,
        metrics: shared.metrics.clone(),
        watch: shared.watch.clone(),
        client,
        store: shared.store.clone(),
        dispatch,
        extra,
        clock: ctx.clock,
    });
    engine.sweep_removed_notifiers().await;
    engine.start().await;
    let dispatcher_task = tokio::spawn(dispatcher.run(stop.clone(), SHUTDOWN_GRACE));
    ready(ctx);
    // Checks after READY, beside the run loop: not needed to start polling, and a damaged
    // page still stops the daemon (exit 65) within a fraction of a second.
    let at = shared.at.clone();
    let mut verify = tokio::task::spawn_blocking(move || Store::open_read_only_at(&at)?.verify());
    engine.prune().await;
    tracing::info!(
        datasets = engine.watch_list.datasets.len(),
        documents = engine.watch_list.document_count(),
        whole_knowledge_bases = engine.watch_list.all_of.len(),
        spaces = engine.watch_list.spaces.len(),
        live = engine.live_count(),
        "watching"
    );
    let unusable = engine
        .run_loop(ctx, stop, &mut shared.changes, &mut verify)
        .await;
    // Stops the dispatcher too when the loop stopped by itself.
    stop.cancel();
    if let Err(e) = dispatcher_task.await {
        tracing::error!(error = %e, "the dispatcher task failed; pending deliveries stay in the outbox");
    }
    ctx.extra_notifiers = std::mem::take(&mut engine.extra);
    Ok((engine.config, unusable))
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

/// The notifier set of a config, plus the program's own.
fn notifiers(
    config: &Config,
    extra: &[ExtraNotifier],
    clock: crate::wall::Clock,
) -> Vec<Arc<dyn Notifier>> {
    let mut out: Vec<Arc<dyn Notifier>> = Vec::new();
    for n in &config.notifiers {
        match crate::notify::build(n, clock) {
            Ok(built) => out.push(built),
            Err(e) => {
                tracing::warn!(notifier = %n.name, error = %e, "notifier not started; its events are not queued")
            }
        }
    }
    out.extend(extra.iter().map(|e| e.notifier.clone()));
    out
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; a no-op otherwise).
fn sd_notify_state(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
