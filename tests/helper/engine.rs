//! The daemon in-process (`daemon::run`) beside the simulator, in the test's runtime with
//! paused time: one clock for both, so a 30-minute stall rule passes in a moment of real time.
//! Assertions read the store, the events the daemon handed to its notifiers, the simulator's
//! counters and (where the words are the behaviour) the log lines, captured in-process.
//!
//! Use with `#[tokio::test(start_paused = true)]` (a current-thread runtime): the clock moves
//! only when every task waits, and store work on the blocking pool holds it still.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coze_watch::config::{self, Mode};
use coze_watch::daemon::{self, DaemonError, ExtraNotifier, RunContext};
use coze_watch::event::EventType;
use coze_watch::ids::{DatasetId, DocumentId};
use coze_watch::notify::{Body, BoxFuture, Job, Notifier, Outcome};
use coze_watch::sim::SimHandle;
use coze_watch::store::Store;
use coze_watch::tracker::DocState;
use coze_watch::wall::{Clock, UnixMs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::daemon::Workdir;

/// What a test wants besides the daemon itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    /// Record every event handed to the notifiers ([`InProcess::events`]).
    pub events: bool,
    /// Serve the ops endpoint on a loopback port ([`InProcess::ops`]).
    pub ops: bool,
}

/// One event as a notifier received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub event_type: EventType,
    pub event_id: String,
    /// The document's id (empty for a batch event).
    pub document: String,
    pub body: Body,
}

pub struct InProcess {
    pub work: Workdir,
    shutdown: CancellationToken,
    reload: mpsc::UnboundedSender<()>,
    pub nudge: mpsc::UnboundedSender<()>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
    wakeups: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The ops endpoint's address, with [`Extras::ops`].
    pub ops: Option<SocketAddr>,
}

impl InProcess {
    /// Writes the config (`poll` section body, then `rest`) against `sim` and starts the
    /// daemon; returns once it is ready.
    pub async fn start(sim: &SimHandle, poll: &str, rest: &str) -> Self {
        Self::start_with(sim, poll, rest, Extras::default()).await
    }

    pub async fn start_with(sim: &SimHandle, poll: &str, rest: &str, extras: Extras) -> Self {
        let work = Workdir::new();
        write_config(&work, sim, poll, rest);
        Self::launch(work, sim, extras).await
    }

    /// Starts the daemon on `work`'s config (a restart keeps the store).
    pub async fn start_in(work: Workdir, sim: &SimHandle) -> Self {
        Self::launch(work, sim, Extras::default()).await
    }

    /// Starts the daemon on `work`'s config; the token is in a token file beside it (the
    /// simulator's, unless the test wrote one), so a reload reads it as the daemon would.
    pub async fn launch(work: Workdir, sim: &SimHandle, extras: Extras) -> Self {
        if !token_path(&work).exists() {
            std::fs::write(token_path(&work), format!("{}\n", sim.token())).unwrap();
        }
        use_token_file(&work);
        let loaded = config::load(&work.config_path(), &config::process_env, Mode::Strict)
            .unwrap_or_else(|d| panic!("config: {:?}", d.errors));
        let shutdown = CancellationToken::new();
        let (reload, reload_rx) = mpsc::unbounded_channel();
        let (nudge, nudge_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let wakeups = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut extra_notifiers = Vec::new();
        if extras.events {
            extra_notifiers.push(ExtraNotifier {
                notifier: Arc::new(Recorder(seen.clone())),
                events: EventType::default_subscription(),
            });
        }
        let (ops_listener, ops) = if extras.ops {
            let l = tokio::net::TcpListener::bind(super::LOOPBACK)
                .await
                .unwrap();
            let addr = l.local_addr().unwrap();
            (Some(l), Some(addr))
        } else {
            (None, None)
        };
        let ctx = RunContext {
            shutdown: shutdown.clone(),
            reload: reload_rx,
            nudge: nudge_rx,
            extra_notifiers,
            wakeups: wakeups.clone(),
            on_ready: Box::new(move || {
                let _ = ready_tx.send(());
            }),
            clock: Clock::anchored(UnixMs::now()),
            ops_listener,
        };
        let task = tokio::spawn(daemon::run(loaded.config, ctx));
        ready_rx
            .await
            .expect("the daemon stopped before it was ready");
        InProcess {
            work,
            shutdown,
            reload,
            nudge,
            task: Some(task),
            wakeups,
            seen,
            ops,
        }
    }

    /// Lets `d` of virtual time pass (every timer due meanwhile fires, in order).
    pub async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Advances virtual time in small steps until `f` holds; panics naming `what` after
    /// `limit` of virtual time.
    pub async fn until(&self, what: &str, limit: Duration, mut f: impl FnMut(&Self) -> bool) {
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while !f(self) {
            assert!(
                waited < limit,
                "{what}: not within {limit:?} of virtual time"
            );
            self.advance(step).await;
            waited += step;
        }
    }

    /// Rewrites the config (as [`InProcess::start`] writes it) and reloads; returns once the
    /// reload was applied.
    pub async fn reload_with(&self, sim: &SimHandle, poll: &str, rest: &str) {
        write_config(&self.work, sim, poll, rest);
        self.reload().await;
    }

    /// Reloads the config file as it is now (SIGHUP).
    pub async fn reload(&self) {
        self.reload.send(()).unwrap();
        self.advance(Duration::from_millis(50)).await;
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work.state_dir()
    }

    /// A document's stored state.
    pub fn document(&self, ds: &str, doc: &str) -> Option<DocState> {
        let store = Store::open_read_only(&self.state_dir()).unwrap();
        store
            .document(&DatasetId::new(ds), &DocumentId::new(doc))
            .unwrap()
    }

    /// The events handed to the notifiers so far, in order (with [`Extras::events`]).
    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many events of `kind` about `document` the notifiers were handed.
    pub fn count(&self, kind: EventType, document: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.event_type == kind && e.document == document)
            .count()
    }

    /// How often the run loop woke up.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::SeqCst)
    }

    /// Stops the daemon and waits for it; returns the workdir (its store) for a restart.
    pub async fn stop(mut self) -> Workdir {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.work
    }
}

fn token_path(work: &Workdir) -> PathBuf {
    work.path().join("token")
}

/// The test config of [`Workdir::write_config`] with the token read from a file.
pub fn write_config(work: &Workdir, sim: &SimHandle, poll: &str, rest: &str) {
    work.write_config(&sim.base_url(), poll, rest);
    use_token_file(work);
}

/// Points the config's `api` at the token file beside it (unless it names one already).
fn use_token_file(work: &Workdir) {
    let text = std::fs::read_to_string(work.config_path()).unwrap();
    if text.contains("token_file:") {
        return;
    }
    let line = format!("api:\n  token_file: {}\n", token_path(work).display());
    std::fs::write(work.config_path(), text.replacen("api:\n", &line, 1)).unwrap();
}

/// A notifier that keeps what it is handed.
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Notifier for Recorder {
    fn name(&self) -> &str {
        "test-recorder"
    }

    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome> {
        let document = match &job.event {
            Body::Document(b) => b.data.document_id.clone(),
            Body::Batch(_) => String::new(),
        };
        self.0.lock().unwrap().push(Seen {
            event_type: job.event_type,
            event_id: job.event_id.to_string(),
            document,
            body: job.event.clone(),
        });
        Box::pin(async { Outcome::Delivered })
    }
}

/// The daemon's log lines (text format) while it lives; on this thread only, which with a
/// current-thread runtime is every task of the test.
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    pub fn capture() -> Logs {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,coze_watch::daemon=trace",
            ))
            .with_ansi(false)
            .without_time()
            .with_writer(move || Sink(sink.clone()))
            .finish();
        Logs {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.buf.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// The first line containing `needle`, or a panic showing them all.
    pub fn find(&self, needle: &str) -> String {
        let lines = self.lines();
        lines
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", lines.join("\n")))
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
