//! The built-in Coze API simulator (SPEC section 9): `coze-watch simulate`, the demo, the
//! integration tests and the benchmarks all run against it.
//!
//! It serves `POST /v1/datasets/{id}/process` from a [`Scenario`], with the real envelope, the
//! bearer-token check, `x-tt-logid`, unknown ids left out, and progress that moves in real time.
//! It injects faults on request and reports its counters and the truth (each document's real
//! terminal time). It shares no state with the daemon: everything goes over HTTP.

mod catalog;
pub mod cli;
pub mod scenario;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use scenario::{
    DEFAULT_TOKEN, Faults, Generator, Hints, Injection, Outcome, Scenario, SimDataset, SimDocument,
    generate,
};
use server::SimState;
pub use server::{RECENT_REQUESTS, RequestRecord, Stats};

/// A running simulator. Dropping it does not stop it; call [`SimHandle::shutdown`].
pub struct SimHandle {
    pub addr: SocketAddr,
    state: Arc<SimState>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts the simulator on `addr` (use `127.0.0.1:0` for a free port).
pub async fn start(scenario: Scenario, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(scenario, 0x5EED));
    let cancel = CancellationToken::new();
    let app = server::router(state.clone());
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    Ok(SimHandle {
        addr,
        state,
        cancel,
        task,
    })
}

impl SimHandle {
    /// Serves the same simulator on another loopback port whose requests are recorded with
    /// `label` (`RequestRecord::instance`, `Stats::handovers`): one per daemon in a failover
    /// test. Returns its base URL.
    pub async fn serve_as(&self, label: &str) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = server::router(self.state.clone())
            .layer(axum::Extension(server::Label(label.to_string())));
        let stop = self.cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator server failed");
            }
        });
        Ok(format!("http://{addr}"))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> &str {
        &self.state.scenario.token
    }

    pub fn stats(&self) -> Stats {
        self.state
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the fault rates; a `script` is appended to the pending injections.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// Queues scripted answers, one per coming request.
    pub fn inject(&self, injections: Vec<Injection>) {
        self.state.inject(injections);
    }

    /// Scripts the next answers of the create endpoint, one per request (`Pass` for a normal
    /// one; `Status` and `Delay` apply).
    pub fn inject_create(&self, injections: Vec<Injection>) {
        if let Ok(mut q) = self.state.create_script.lock() {
            q.extend(injections);
        }
    }

    /// The scenario with each document's true terminal time, as `GET /__sim/scenario` serves it.
    pub fn truth(&self) -> Value {
        truth(&self.state)
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn truth(s: &SimState) -> Value {
    let started_ms = unix_ms(
        s.started_wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let catalog = s.catalog.lock().unwrap_or_else(|p| p.into_inner());
    let datasets: Vec<Value> = catalog
        .datasets
        .values()
        .map(|d| {
            let docs: Vec<Value> = d
                .documents
                .iter()
                .map(|doc| {
                    let terminal = doc.terminal_after();
                    json!({
                        "id": doc.id,
                        "name": doc.name,
                        "outcome": doc.outcome,
                        "start_after_ms": unix_ms(doc.start_after),
                        "duration_ms": unix_ms(doc.duration),
                        "terminal_after_ms": terminal.map(unix_ms),
                        "terminal_at_unix_ms": terminal.map(|t| started_ms + unix_ms(t)),
                    })
                })
                .collect();
            json!({"id": d.id, "documents": docs})
        })
        .collect();
    json!({
        "started_at_unix_ms": started_ms,
        "hints": s.scenario.hints,
        "token": s.scenario.token,
        "datasets": datasets,
    })
}

fn unix_ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
