//! Signals of `coze-watch run`: flag handlers installed before anything else (so a SIGHUP or
//! SIGTERM during start-up never kills the process with the default action), then async
//! handlers that feed the daemon's [`RunContext`](crate::daemon::RunContext) channels.
//!
//! SIGTERM and SIGINT cancel the shutdown token; SIGHUP asks for a reload; SIGUSR1 asks the
//! dispatcher to look at the outbox (`deliveries --retry` sends it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Signal flags set from the first instruction of `run`, before the runtime exists. The async
/// handlers installed later take over; these only remember what came before them.
pub struct EarlySignals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

impl EarlySignals {
    pub fn install() -> std::io::Result<Self> {
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        let usr1 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGTERM, term.clone())?;
        signal_hook::flag::register(SIGINT, term.clone())?;
        signal_hook::flag::register(SIGHUP, hup.clone())?;
        signal_hook::flag::register(SIGUSR1, usr1.clone())?;
        Ok(EarlySignals { term, hup, usr1 })
    }
}

/// What the daemon hears of signals.
pub struct Channels {
    pub shutdown: CancellationToken,
    pub reload: mpsc::UnboundedReceiver<()>,
    pub nudge: mpsc::UnboundedReceiver<()>,
}

/// Installs the async handlers (in a runtime), replays what the early flags caught, and
/// forwards every later signal.
pub fn forward(early: EarlySignals) -> std::io::Result<Channels> {
    let shutdown = CancellationToken::new();
    let (reload_tx, reload) = mpsc::unbounded_channel();
    let (nudge_tx, nudge) = mpsc::unbounded_channel();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    if early.usr1.swap(false, Ordering::SeqCst) {
        let _ = nudge_tx.send(());
    }
    if early.term.load(Ordering::SeqCst) {
        shutdown.cancel();
    }
    if early.hup.swap(false, Ordering::SeqCst) {
        let _ = reload_tx.send(());
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = reload_tx.send(());
                }
                SIGUSR1 => {
                    let _ = nudge_tx.send(());
                }
                _ => {
                    tracing::info!(signal = sig, "stopping");
                    stop.cancel();
                }
            }
        }
    });
    Ok(Channels {
        shutdown,
        reload,
        nudge,
    })
}

/// A token cancelled at the first SIGINT or SIGTERM (for `wait`).
pub fn interrupt() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let stop = token.clone();
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    tokio::spawn(async move {
        if signals.next().await.is_some() {
            stop.cancel();
        }
    });
    Ok(token)
}
