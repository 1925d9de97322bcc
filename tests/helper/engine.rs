//! The daemon in-process (`daemon::run`) beside the simulator, in the test's runtime with
//! paused time: one clock for both, so a 30-minute stall rule passes in a moment of real time.
//! Assertions read the store and the simulator's counters, not log lines.
//!
//! Use with `#[tokio::test(start_paused = true)]` (a current-thread runtime): the clock moves
//! only when every task waits, and store work on the blocking pool holds it still.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use coze_watch::config::{self, Mode};
use coze_watch::daemon::{self, DaemonError, RunContext};
use coze_watch::ids::{DatasetId, DocumentId};
use coze_watch::sim::SimHandle;
use coze_watch::store::Store;
use coze_watch::tracker::DocState;
use coze_watch::wall::{Clock, UnixMs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::daemon::Workdir;

pub struct InProcess {
    pub work: Workdir,
    shutdown: CancellationToken,
    pub reload: mpsc::UnboundedSender<()>,
    pub nudge: mpsc::UnboundedSender<()>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl InProcess {
    /// Writes the config (`poll` section body, then `rest`) against `sim` and starts the
    /// daemon; returns once it is ready.
    pub async fn start(sim: &SimHandle, poll: &str, rest: &str) -> Self {
        let work = Workdir::new();
        work.write_config(&sim.base_url(), poll, rest);
        Self::start_in(work, sim).await
    }

    /// Starts the daemon on `work`'s config (a restart keeps the store).
    pub async fn start_in(work: Workdir, sim: &SimHandle) -> Self {
        let token = sim.token().to_string();
        let env = move |k: &str| (k == "COZE_API_TOKEN").then(|| token.clone());
        let loaded = config::load(&work.config_path(), &env, Mode::Strict)
            .unwrap_or_else(|d| panic!("config: {:?}", d.errors));
        let shutdown = CancellationToken::new();
        let (reload, reload_rx) = mpsc::unbounded_channel();
        let (nudge, nudge_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let ctx = RunContext {
            shutdown: shutdown.clone(),
            reload: reload_rx,
            nudge: nudge_rx,
            extra_notifiers: Vec::new(),
            wakeups: Arc::new(AtomicU64::new(0)),
            on_ready: Box::new(move || {
                let _ = ready_tx.send(());
            }),
            clock: Clock::anchored(UnixMs::now()),
            ops_listener: None,
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
        }
    }

    /// Lets `d` of virtual time pass (every timer due meanwhile fires, in order).
    pub async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
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

    /// Stops the daemon and waits for it; returns the workdir (its store) for a restart.
    pub async fn stop(mut self) -> Workdir {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.work
    }
}
