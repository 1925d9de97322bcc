//! `coze-watch demo`: a zero-set-up tour. Starts the simulator and the daemon on loopback with a
//! log notifier and a local signed-webhook receiver, narrates what happens (documents completing,
//! one failing, one stalling, and one uploaded while it runs that nobody named), reports requests
//! per document and detection latency, and exits by itself.
//!
//! It uses the real pieces end to end: a YAML config loaded by `config::load`, the daemon's
//! `run`, the simulator over HTTP. It owns only its narration and its temporary state dir.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Mode};
use crate::daemon::{self, ExtraNotifier, RunContext};
use crate::event::EventType;
use crate::notify::EventBody;
use crate::notify::signature::SigningKey;
use crate::notify::{BoxFuture, Job, Notifier, Outcome};
use crate::sim::{self, Outcome as SimOutcome, Scenario, SimDataset, SimDocument};
use crate::wall::UnixMs;

const DATASET: &str = "7400000000000000001";
/// The demo gives up after this long, whatever happened.
const DEADLINE: Duration = Duration::from_secs(60);

fn document(
    id: u64,
    name: &str,
    secs: u64,
    outcome: SimOutcome,
    reason: Option<&str>,
) -> SimDocument {
    SimDocument {
        id: (7_500_000_000_000_000_000 + id).to_string(),
        name: Some(name.to_string()),
        file_type: name.rsplit('.').next().unwrap_or("pdf").to_string(),
        size: 100_000 + id as i64 * 37_000,
        start_after: Duration::ZERO,
        duration: Duration::from_secs(secs),
        outcome,
        reason: reason.map(str::to_string),
        stall_at: 10,
    }
}

/// Five documents: three complete, one fails with a reason, one stalls at 10 %.
pub fn scenario() -> Scenario {
    Scenario {
        token: sim::DEFAULT_TOKEN.to_string(),
        hints: sim::Hints::Honest,
        faults: sim::Faults::default(),
        quota_per_second: None,
        max_ids: None,
        studio: false,
        create_duration: std::time::Duration::from_secs(3),
        datasets: vec![SimDataset {
            id: DATASET.to_string(),
            space: None,
            name: None,
            disabled: false,
            volcano: false,
            documents: vec![
                document(1, "quarterly-report.pdf", 6, SimOutcome::Completed, None),
                document(2, "faq.docx", 11, SimOutcome::Completed, None),
                document(
                    3,
                    "scanned-contract.pdf",
                    8,
                    SimOutcome::Failed,
                    Some("OCR failed: the scanned pages are unreadable"),
                ),
                document(4, "handbook.txt", 16, SimOutcome::Completed, None),
                document(5, "product-catalog.xlsx", 100, SimOutcome::Stalled, None),
            ],
        }],
    }
}

/// The demo receiver's Standard Webhooks secret (32 bytes).
fn demo_secret() -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"coze-watch demo signing key, 32b")
    )
}

/// When the demo uploads a document nobody named, after the start.
const UPLOAD_AFTER: Duration = Duration::from_secs(4);

fn config_yaml(base_url: &str, hook_url: &str, state_dir: &std::path::Path) -> String {
    let lines = [
        "api:".to_string(),
        format!("  base_url: {base_url}"),
        "  max_requests_per_second: 2".into(),
        "poll:".into(),
        "  min_interval: 1s".into(),
        "  max_interval: 5s".into(),
        "  stall_after: 8s".into(),
        "  missing_grace: 30s".into(),
        "  discover_interval: 2s".into(),
        "state:".into(),
        format!("  dir: {}", state_dir.display()),
        "notifiers:".into(),
        "  - name: journal".into(),
        "    type: log".into(),
        "  - name: receiver".into(),
        "    type: webhook".into(),
        format!("    url: {hook_url}"),
        format!("    secret: {}", demo_secret()),
        "    retry: {initial: 1s, max: 2s, multiplier: 2}".into(),
        "watch:".into(),
        format!("  - dataset: \"{DATASET}\""),
        "    documents: all".into(),
        "    labels: {source: demo}".into(),
    ];
    lines.join("\n") + "\n"
}

/// A local webhook receiver: checks each signature, answers the very first delivery with a
/// deliberate 500 (to show a retry) and every other one with 200.
struct Receiver {
    key: SigningKey,
    started: UnixMs,
    accepted: Mutex<Vec<String>>,
    requests: AtomicU64,
    arrived: Arc<Notify>,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let valid = ts
        .parse::<i64>()
        .is_ok_and(|t| r.key.sign(&id, t, &body) == sig);
    let ty = serde_json::from_slice::<EventBody>(&body)
        .map(|b| b.event_type.as_str())
        .unwrap_or("?");
    let first = r.requests.fetch_add(1, Ordering::SeqCst) == 0;
    let status = if first || !valid { 500 } else { 200 };
    let at = UnixMs::now().since(r.started).as_secs_f64();
    let note = if first {
        " (deliberate, to show a retry)"
    } else {
        ""
    };
    println!(
        "  [{at:5.1}s] webhook    {ty} {id}: signature {} -> {status}{note}",
        if valid { "valid" } else { "INVALID" }
    );
    if status == 200 {
        r.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        r.arrived.notify_one();
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Prints each event as it arrives and remembers when it did.
struct Narrator {
    started: UnixMs,
    seen: Mutex<Vec<(String, EventType, UnixMs)>>,
    arrived: Arc<Notify>,
}

impl Notifier for Narrator {
    fn name(&self) -> &str {
        "demo-narrator"
    }

    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let now = UnixMs::now();
            let Ok(body) = serde_json::from_str::<EventBody>(&job.body) else {
                return Outcome::Permanent {
                    error: "unreadable event".into(),
                };
            };
            let d = &body.data;
            let name = d.document_name.as_deref().unwrap_or("?");
            let at = now.since(self.started).as_secs_f64();
            let line = match body.event_type {
                EventType::Completed => {
                    format!("completed  {name} after {:.1}s", d.elapsed_seconds)
                }
                EventType::Failed => format!(
                    "FAILED     {name}: {}",
                    d.status_descript.as_deref().unwrap_or("no reason given")
                ),
                EventType::Stalled => format!(
                    "STALLED    {name}: stuck at {}% with no progress",
                    d.progress.unwrap_or(0)
                ),
                other => format!("{other} {name}"),
            };
            println!("  [{at:5.1}s] {line}");
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.push((d.document_id.clone(), body.event_type, now));
            self.arrived.notify_one();
            Outcome::Delivered
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo config is invalid: {0}")]
    Config(String),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error("demo: the daemon task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the demo; returns when every expected event arrived or the deadline passed.
/// Where the demo's daemon logs unless `--verbose`: beside (not in) its state dir, which the
/// demo removes at the end.
pub fn log_path() -> PathBuf {
    std::env::temp_dir().join(format!("coze-watch-demo-{}.log", std::process::id()))
}

/// Runs the demo; `log` is the file the daemon's log goes to (named at the end), `None` when
/// it goes to stderr.
pub async fn run(log: Option<&std::path::Path>) -> Result<(), DemoError> {
    let scenario = scenario();
    // The scenario's documents and the one uploaded while the daemon runs.
    let expected = scenario.datasets[0].documents.len() + 1;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sim = sim::start(scenario.clone(), loopback).await?;
    let arrived = Arc::new(Notify::new());
    let started = UnixMs::now();
    let receiver = Arc::new(Receiver {
        key: SigningKey::from_secret(&crate::secret::Secret::new(demo_secret()))
            .ok_or_else(|| DemoError::Config("bad demo secret".into()))?,
        started,
        accepted: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
        arrived: arrived.clone(),
    });
    let listener = tokio::net::TcpListener::bind(loopback).await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let stop_receiver = CancellationToken::new();
    let stop = stop_receiver.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    let state_dir = demo_dir();
    std::fs::create_dir_all(&state_dir)?;
    let config_path = state_dir.join("config.yaml");
    std::fs::write(
        &config_path,
        config_yaml(&sim.base_url(), &hook_url, &state_dir.join("state")),
    )?;
    let token = sim.token().to_string();
    let env = move |k: &str| (k == "COZE_API_TOKEN").then(|| token.clone());
    let config = match config::load(&config_path, &env, Mode::Strict) {
        Ok(l) => l.config,
        Err(d) => {
            let all: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
            return Err(DemoError::Config(all.join("; ")));
        }
    };
    println!("coze-watch demo");
    println!(
        "  simulator: {} (knowledge base {DATASET}, watched whole: `documents: all`)",
        sim.base_url()
    );
    println!(
        "  webhook:   {hook_url} (signed, Standard Webhooks; the first delivery gets a deliberate 500)"
    );
    println!("  state dir: {}", state_dir.display());
    println!("  3 documents complete, 1 fails, 1 stalls at 10% (stall_after: 8s);");
    println!(
        "  after {}s a colleague uploads one more that nobody names. Watching...\n",
        UPLOAD_AFTER.as_secs()
    );

    let narrator = Arc::new(Narrator {
        started,
        seen: Mutex::new(Vec::new()),
        arrived: arrived.clone(),
    });
    let shutdown = CancellationToken::new();
    let (_reload_tx, reload_rx) = mpsc::unbounded_channel();
    let (_nudge_tx, nudge_rx) = mpsc::unbounded_channel();
    let ctx = RunContext {
        shutdown: shutdown.clone(),
        reload: reload_rx,
        nudge: nudge_rx,
        extra_notifiers: vec![ExtraNotifier {
            notifier: narrator.clone(),
            events: vec![EventType::Completed, EventType::Failed, EventType::Stalled],
        }],
        wakeups: Arc::new(AtomicU64::new(0)),
        on_ready: Box::new(|| {}),
        clock: crate::wall::Clock::system(),
        ops_listener: None,
    };
    let daemon = tokio::spawn(daemon::run(config, ctx));
    tokio::spawn(upload_later(
        sim.base_url(),
        sim.token().to_string(),
        started,
    ));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let count = narrator.seen.lock().map(|s| s.len()).unwrap_or(0);
        let hooked = receiver.accepted.lock().map(|s| s.len()).unwrap_or(0);
        if count >= expected && hooked >= expected {
            break;
        }
        tokio::select! {
            _ = arrived.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                println!("\n  (deadline reached with {count} of {expected} events)");
                break;
            }
        }
    }
    shutdown.cancel();
    daemon.await??;
    stop_receiver.cancel();
    report(&sim, &narrator);
    let accepted = receiver.accepted.lock().map(|a| a.len()).unwrap_or(0);
    println!(
        "  webhook: {} requests, {accepted} events accepted (each once; the 500 was retried)",
        receiver.requests.load(Ordering::SeqCst)
    );
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    if let Some(log) = log {
        println!(
            "  the daemon's log: {} (`coze-watch demo --verbose` shows it inline)",
            log.display()
        );
    }
    println!("\nnext, for a real knowledge base:");
    println!(
        "  export COZE_API_TOKEN=pat_...   # readDocumentProgress, listKnowledge, listDocument"
    );
    println!(
        "  coze-watch upload <DATASET_ID> report.pdf --wait   # or watch it all: coze-watch watch add <DATASET_ID> --all"
    );
    Ok(())
}

/// Uploads a document through the simulator's create endpoint, as a colleague in the Coze web
/// UI or an upload pipeline would: coze-watch is not told its id.
async fn upload_later(base_url: String, token: String, started: UnixMs) {
    tokio::time::sleep(UPLOAD_AFTER).await;
    let body = serde_json::json!({"dataset_id": DATASET, "document_bases": [{
        "name": "new-hire-guide.pdf",
        "source_info": {"file_base64": "JVBERi0xLjQK", "file_type": "pdf"}
    }]});
    let Ok(http) = crate::http::client_builder().build() else {
        return;
    };
    let sent = http
        .post(format!("{base_url}/open_api/knowledge/document/create"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    let at = UnixMs::now().since(started).as_secs_f64();
    match sent {
        Ok(r) if r.status().is_success() => println!(
            "  [{at:5.1}s] uploaded   new-hire-guide.pdf in the Coze web UI (nobody told coze-watch its id)"
        ),
        _ => println!("  [{at:5.1}s] the upload failed"),
    }
}

fn demo_dir() -> PathBuf {
    std::env::temp_dir().join(format!("coze-watch-demo-{}", std::process::id()))
}

/// Requests per finished document and detection latency (receipt minus true terminal time).
fn report(sim: &sim::SimHandle, narrator: &Narrator) {
    let truth = sim.truth();
    let mut terminal_at: HashMap<String, u64> = HashMap::new();
    for d in truth["datasets"].as_array().into_iter().flatten() {
        for doc in d["documents"].as_array().into_iter().flatten() {
            if let (Some(id), Some(at)) = (doc["id"].as_str(), doc["terminal_at_unix_ms"].as_u64())
            {
                terminal_at.insert(id.to_string(), at);
            }
        }
    }
    let seen = narrator.seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter(|(_, t, _)| matches!(t, EventType::Completed | EventType::Failed))
        .filter_map(|(id, _, at)| {
            terminal_at
                .get(id)
                .map(|truth| (at.0 - *truth as i64) as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let stats = sim.stats();
    let finished = latencies.len().max(1);
    let total = stats.requests + stats.listings;
    println!("\nsummary");
    println!(
        "  API requests: {total} ({} polls, {} listings) for {} finished documents ({:.1} per document; a 1 s per-document poller would have sent about {})",
        stats.requests,
        stats.listings,
        latencies.len(),
        total as f64 / finished as f64,
        per_doc_1s_estimate(&truth),
    );
    if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
        let median = latencies[latencies.len() / 2];
        println!(
            "  detection latency (notified minus true completion): median {median:.2}s, min {first:.2}s, max {last:.2}s"
        );
    }
}

/// What the official SDK example's pattern (one request per document per second until done)
/// would cost on the same documents, counting the stalled one until the demo ended.
fn per_doc_1s_estimate(truth: &serde_json::Value) -> u64 {
    let now = UnixMs::now().0 as u64;
    let started = truth["started_at_unix_ms"].as_u64().unwrap_or(now);
    truth["datasets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["documents"].as_array().into_iter().flatten())
        .map(|doc| {
            let end = doc["terminal_at_unix_ms"].as_u64().unwrap_or(now);
            end.saturating_sub(started) / 1000 + 1
        })
        .sum()
}
