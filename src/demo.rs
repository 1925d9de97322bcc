//! `coze-watch demo`: a zero-set-up tour. Starts the simulator and the daemon on loopback with a
//! log notifier, narrates what happens (documents completing, one failing, one stalling),
//! reports requests per document and detection latency, and exits by itself.
//!
//! It uses the real pieces end to end: a YAML config loaded by `config::load`, the daemon's
//! `run`, the simulator over HTTP. It owns only its narration and its temporary state dir.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Mode};
use crate::daemon::{self, ExtraNotifier, RunContext};
use crate::event::{EventBody, EventType};
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
        datasets: vec![SimDataset {
            id: DATASET.to_string(),
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

fn config_yaml(base_url: &str, state_dir: &std::path::Path, scenario: &Scenario) -> String {
    let ids: Vec<String> = scenario.datasets[0]
        .documents
        .iter()
        .map(|d| format!("\"{}\"", d.id))
        .collect();
    format!(
        "api:\n  base_url: {base_url}\n  max_requests_per_second: 2\n\
         poll:\n  min_interval: 1s\n  max_interval: 5s\n  stall_after: 8s\n  missing_grace: 30s\n\
         state:\n  dir: {}\n\
         notifiers:\n  - name: journal\n    type: log\n\
         watch:\n  - dataset: \"{DATASET}\"\n    documents: [{}]\n    labels: {{source: demo}}\n",
        state_dir.display(),
        ids.join(", ")
    )
}

/// Prints each event as it arrives and remembers when it did.
struct Narrator {
    started: UnixMs,
    seen: Mutex<Vec<(String, EventType, UnixMs)>>,
    arrived: Notify,
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
pub async fn run() -> Result<(), DemoError> {
    let scenario = scenario();
    let expected = scenario.datasets[0].documents.len();
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sim = sim::start(scenario.clone(), loopback).await?;
    let state_dir = demo_dir();
    std::fs::create_dir_all(&state_dir)?;
    let config_path = state_dir.join("config.yaml");
    std::fs::write(
        &config_path,
        config_yaml(&sim.base_url(), &state_dir.join("state"), &scenario),
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
        "  simulator: {} (dataset {DATASET}, {expected} documents)",
        sim.base_url()
    );
    println!("  state dir: {}", state_dir.display());
    println!("  3 documents complete, 1 fails, 1 stalls at 10% (stall_after: 8s). Watching...\n");

    let narrator = Arc::new(Narrator {
        started: UnixMs::now(),
        seen: Mutex::new(Vec::new()),
        arrived: Notify::new(),
    });
    let shutdown = CancellationToken::new();
    let (_reload_tx, reload_rx) = mpsc::unbounded_channel();
    let ctx = RunContext {
        shutdown: shutdown.clone(),
        reload: reload_rx,
        extra_notifiers: vec![ExtraNotifier {
            notifier: narrator.clone(),
            events: vec![EventType::Completed, EventType::Failed, EventType::Stalled],
        }],
        wakeups: Arc::new(AtomicU64::new(0)),
        on_ready: Box::new(|| {}),
    };
    let daemon = tokio::spawn(daemon::run(config, ctx));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let count = narrator.seen.lock().map(|s| s.len()).unwrap_or(0);
        if count >= expected {
            break;
        }
        tokio::select! {
            _ = narrator.arrived.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                println!("\n  (deadline reached with {count} of {expected} events)");
                break;
            }
        }
    }
    shutdown.cancel();
    daemon.await??;
    report(&sim, &narrator);
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
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
    println!("\nsummary");
    println!(
        "  API requests: {} for {} finished documents ({:.1} per document; a 1 s per-document poller would have sent about {})",
        stats.requests,
        latencies.len(),
        stats.requests as f64 / finished as f64,
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
