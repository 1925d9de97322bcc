//! The benchmark harness (SPEC section 10): the release daemon against the simulator, and the
//! same workload with two naive pollers, reported against the lower bound `L`.
//!
//! `cargo bench --bench scale -- [--quick | --sparse | --documents N --datasets M | --hints
//! x2|half|zero | --rps R | --discovery [--quick] [--idle DUR]]`. Each contender gets a fresh
//! simulator; with lying hints the daemon also runs on honest ones, in the same run, for the
//! ratio. The daemon runs as a child
//! process with a webhook notifier pointed at a receiver inside the bench; detection latency
//! is the receipt time minus the simulator's true terminal time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "scale/discovery.rs"]
mod discovery;

use clap::Parser;
use coze_watch::sim::{self, Generator, Hints, Scenario, SimHandle};
use coze_watch::wall::UnixMs;
use serde_json::{Value, json};
use tokio::time::Instant;

const MIN_INTERVAL: Duration = Duration::from_secs(2);
const MAX_INTERVAL: Duration = Duration::from_secs(120);
/// How long after the last true completion a contender may still report.
const GRACE: Duration = Duration::from_secs(150);

#[derive(Parser, Debug)]
#[command(about = "coze-watch benchmark: the daemon against naive pollers")]
struct Args {
    /// A small version of the default workload (under 2 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// 200 datasets x 3 documents, processing 3..15 min.
    #[arg(long)]
    sparse: bool,
    #[arg(long)]
    documents: Option<usize>,
    #[arg(long)]
    datasets: Option<usize>,
    /// How the simulator lies about remaining_time: x2, half, zero.
    #[arg(long)]
    hints: Option<Hints>,
    /// Every contender runs under this many requests/s, enforced by the simulator with 429s.
    #[arg(long)]
    rps: Option<f64>,
    /// Only these contenders (daemon, daemon-pg, per-doc-1s, batched-5s). `daemon-pg` is the
    /// daemon on a PostgreSQL store: a fresh database in the cluster `$COZE_WATCH_PG_URL`
    /// names (`.ci/pg start DIR`); it runs only when asked for.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// The discovery workload: a space of 300 knowledge bases, 2,000 documents uploaded over
    /// 10 minutes; the daemon watches the space and is told no id. With --quick: a small one.
    #[arg(long)]
    discovery: bool,
    /// With --discovery: how long to measure the idle space after the last document.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Debug)]
struct Workload {
    name: String,
    generator: Generator,
    rps: Option<f64>,
}

fn workload(a: &Args) -> Workload {
    let mins = |m: u64| Duration::from_secs(m * 60);
    let (name, mut generator) = if a.quick {
        (
            "quick",
            Generator {
                datasets: 20,
                documents_per_dataset: 20,
                fail_rate: 0.05,
                min_duration: Duration::from_secs(3),
                max_duration: Duration::from_secs(20),
                upload_spread: Duration::from_secs(10),
                hints: Hints::Honest,
                seed: 7,
                space: None,
            },
        )
    } else if a.sparse {
        (
            "sparse",
            Generator {
                datasets: 200,
                documents_per_dataset: 3,
                fail_rate: 0.05,
                min_duration: mins(3),
                max_duration: mins(15),
                upload_spread: Duration::from_secs(60),
                hints: Hints::Honest,
                seed: 7,
                space: None,
            },
        )
    } else {
        (
            "default",
            Generator {
                datasets: 200,
                documents_per_dataset: 50,
                fail_rate: 0.05,
                min_duration: Duration::from_secs(30),
                max_duration: mins(5),
                upload_spread: Duration::from_secs(60),
                hints: Hints::Honest,
                seed: 7,
                space: None,
            },
        )
    };
    let mut name = name.to_string();
    if let (Some(n), datasets) = (a.documents, a.datasets) {
        let datasets = datasets.unwrap_or(generator.datasets).max(1);
        generator.datasets = datasets;
        generator.documents_per_dataset = n.div_ceil(datasets);
        name = format!("custom ({n} documents)");
    } else if let Some(m) = a.datasets {
        generator.datasets = m;
    }
    if let Some(h) = a.hints {
        generator.hints = h;
        name.push_str(&format!(", hints {h:?}"));
    }
    if let Some(r) = a.rps {
        name.push_str(&format!(", {r} requests/s enforced"));
    }
    Workload {
        name,
        generator,
        rps: a.rps,
    }
}

/// When each document truly became terminal, from the simulator (unix ms), by dataset.
struct Truth {
    terminal: HashMap<String, i64>,
    by_dataset: BTreeMap<String, Vec<i64>>,
    documents: usize,
}

fn truth(v: &Value) -> Truth {
    let mut terminal = HashMap::new();
    let mut by_dataset: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut documents = 0;
    for d in v["datasets"].as_array().into_iter().flatten() {
        let ds = d["id"].as_str().unwrap_or_default().to_string();
        for doc in d["documents"].as_array().into_iter().flatten() {
            documents += 1;
            if let (Some(id), Some(at)) = (doc["id"].as_str(), doc["terminal_at_unix_ms"].as_i64())
            {
                terminal.insert(id.to_string(), at);
                by_dataset.entry(ds.clone()).or_default().push(at);
            }
        }
    }
    Truth {
        terminal,
        by_dataset,
        documents,
    }
}

/// The lower bound: per dataset, the `min_interval`-wide windows covering its true completion
/// instants, plus one first poll.
fn lower_bound(t: &Truth) -> u64 {
    let w = MIN_INTERVAL.as_millis() as i64;
    t.by_dataset
        .values()
        .map(|times| {
            let mut times = times.clone();
            times.sort_unstable();
            let mut windows = 0u64;
            let mut end = i64::MIN;
            for at in times {
                if at > end {
                    windows += 1;
                    end = at + w;
                }
            }
            windows + 1
        })
        .sum()
}

#[derive(Default)]
struct Result {
    requests: u64,
    rate_limited: u64,
    latencies: Vec<f64>,
    delivered: usize,
    duplicates: usize,
    missed: usize,
    rss_mb: Option<f64>,
    cpu_s: Option<f64>,
    ready_ms: Option<f64>,
    /// READY after a restart on the store the run filled.
    restart_ready_ms: Option<f64>,
}

/// What a contender noticed: document id -> first notice time (unix ms), plus every event id.
#[derive(Default)]
struct Notices {
    first: HashMap<String, i64>,
    event_ids: Vec<String>,
}

fn summarize(t: &Truth, n: &Notices, stats: &sim::Stats) -> Result {
    let mut latencies: Vec<f64> = n
        .first
        .iter()
        .filter_map(|(id, at)| t.terminal.get(id).map(|truth| (at - truth) as f64 / 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let unique: HashSet<&String> = n.event_ids.iter().collect();
    Result {
        requests: stats.requests,
        rate_limited: stats.rate_limited,
        delivered: n.first.len(),
        duplicates: n.event_ids.len() - unique.len(),
        missed: t
            .terminal
            .keys()
            .filter(|id| !n.first.contains_key(*id))
            .count(),
        latencies,
        ..Result::default()
    }
}

async fn fresh_sim(w: &Workload) -> (SimHandle, Scenario) {
    let mut scenario = sim::generate(&w.generator);
    scenario.quota_per_second = w.rps;
    let handle = sim::start(
        scenario.clone(),
        "127.0.0.1:0"
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start the simulator: {e}"));
    (handle, scenario)
}

fn deadline_for(t: &Truth) -> Instant {
    let last = t.terminal.values().max().copied().unwrap_or(0);
    let wait_ms = (last - UnixMs::now().0).max(0) as u64;
    Instant::now() + Duration::from_millis(wait_ms) + GRACE
}

// ---- the daemon ----

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Notices>>);

async fn receiver() -> (SocketAddr, Received) {
    let store = Received::default();
    let app_store = store.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = app_store.clone();
            async move {
                let now = UnixMs::now().0;
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let mut n = store.0.lock().unwrap_or_else(|p| p.into_inner());
                    let doc = v["data"]["document_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    n.first.entry(doc).or_insert(now);
                    n.event_ids.push(
                        v["data"]["event_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, store)
}

fn daemon_config(
    sim: &SimHandle,
    hook: SocketAddr,
    state: &Path,
    scenario: &Scenario,
    rps: Option<f64>,
    pg: Option<&coze_watch::config::PostgresConfig>,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "api:\n  base_url: {}\n  max_requests_per_second: {}\n  max_concurrent_requests: 8\n  request_timeout: 10s\n",
        sim.base_url(),
        rps.unwrap_or(50.0)
    ));
    s.push_str(&format!(
        "poll:\n  min_interval: {}s\n  max_interval: {}s\n",
        MIN_INTERVAL.as_secs(),
        MAX_INTERVAL.as_secs()
    ));
    s.push_str(&format!("state:\n  dir: {}\n", state.display()));
    if let Some(pg) = pg {
        s.push_str(&format!("  url: {}\n", pg.url));
    }
    s.push_str(&format!(
        "notifiers:\n  - name: bench\n    type: webhook\n    url: http://{hook}/hook\n    events: [document.completed, document.failed]\n    retry: {{initial: 1s, max: 5s, multiplier: 2}}\n"
    ));
    s.push_str("watch:\n");
    for d in &scenario.datasets {
        let ids: Vec<String> = d
            .documents
            .iter()
            .map(|x| format!("\"{}\"", x.id))
            .collect();
        s.push_str(&format!(
            "  - dataset: \"{}\"\n    documents: [{}]\n",
            d.id,
            ids.join(", ")
        ));
    }
    s
}

/// Peak RSS (VmHWM) in MB and CPU seconds (user + system) of a live process.
fn footprint(pid: u32) -> (Option<f64>, Option<f64>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0);
    // /proc reports CPU time in USER_HZ, which Linux fixes at 100 for user space.
    let tick = 100.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        });
    (rss, cpu)
}

/// Starts the release daemon and waits for READY=1 on a notify socket; returns the child and
/// how long READY took.
async fn spawn_daemon(
    config_path: &Path,
    dir: &Path,
    token: &str,
) -> (tokio::process::Child, Option<f64>) {
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap_or_else(|e| panic!("{e}"));
    let spawned = std::time::Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(["run", "-c"])
        .arg(config_path)
        .env("COZE_API_TOKEN", token)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the daemon: {e}"));
    let ready_ms = tokio::task::spawn_blocking(move || {
        let _ = sock.set_read_timeout(Some(Duration::from_secs(120)));
        let mut buf = [0u8; 256];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => {
                    return Some(spawned.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    (child, ready_ms)
}

async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
}

async fn run_daemon(
    w: &Workload,
    pg: Option<&coze_watch::config::PostgresConfig>,
) -> (Result, String) {
    let (sim, scenario) = fresh_sim(w).await;
    let t = truth(&sim.truth());
    let (hook, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = daemon_config(&sim, hook, &dir.path().join("state"), &scenario, w.rps, pg);
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, &config).unwrap_or_else(|e| panic!("{e}"));
    let (mut child, ready_ms) = spawn_daemon(&config_path, dir.path(), sim.token()).await;
    let deadline = deadline_for(&t);
    let expected = t.terminal.len();
    let pid = child.id().unwrap_or(0);
    let mut sampled = (None, None);
    while Instant::now() < deadline {
        let got = received.0.lock().map(|n| n.first.len()).unwrap_or(0);
        if got >= expected {
            break;
        }
        sampled = footprint(pid);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, cpu) = footprint(pid);
    stop(&mut child).await;
    // Start again on the store this run filled: how fast is a restart?
    let (mut again, restart_ready_ms) = spawn_daemon(&config_path, dir.path(), sim.token()).await;
    stop(&mut again).await;
    let notices = std::mem::take(&mut *received.0.lock().unwrap_or_else(|p| p.into_inner()));
    let mut r = summarize(&t, &notices, &sim.stats());
    r.rss_mb = rss.or(sampled.0);
    r.cpu_s = cpu.or(sampled.1);
    r.ready_ms = ready_ms;
    r.restart_ready_ms = restart_ready_ms;
    sim.shutdown().await;
    (
        r,
        config
            .lines()
            .take_while(|l| !l.starts_with("watch:"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

// ---- the naive pollers ----

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ds: &str,
    ids: &[String],
) -> Option<Vec<(String, i64)>> {
    let r = http
        .post(format!("{base}/v1/datasets/{ds}/process"))
        .bearer_auth(token)
        .json(&json!({ "document_ids": ids }))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    if v["code"].as_i64() != Some(0) {
        return None;
    }
    Some(
        v["data"]["data"]
            .as_array()?
            .iter()
            .filter_map(|d| {
                Some((
                    d["document_id"].as_str()?.to_string(),
                    d["status"].as_i64()?,
                ))
            })
            .collect(),
    )
}

/// One request per document every second until it is terminal (the official SDK example).
async fn run_per_doc(w: &Workload) -> Result {
    let (sim, scenario) = fresh_sim(w).await;
    let t = truth(&sim.truth());
    let deadline = deadline_for(&t);
    let http = coze_watch::http::client_builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let notices = Arc::new(Mutex::new(Notices::default()));
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for d in &scenario.datasets {
        for doc in &d.documents {
            let (http, base, token, ds, id) = (
                http.clone(),
                sim.base_url(),
                sim.token().to_string(),
                d.id.clone(),
                doc.id.clone(),
            );
            let (notices, limit) = (notices.clone(), limit.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while Instant::now() < deadline {
                    tick.tick().await;
                    let answer = {
                        let _p = limit.acquire().await;
                        post(&http, &base, &token, &ds, std::slice::from_ref(&id)).await
                    };
                    if let Some(docs) = answer
                        && docs.iter().any(|(_, s)| matches!(s, 1 | 9))
                    {
                        let mut n = notices.lock().unwrap_or_else(|p| p.into_inner());
                        n.first.insert(id.clone(), UnixMs::now().0);
                        n.event_ids.push(id.clone());
                        return;
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let n = std::mem::take(&mut *notices.lock().unwrap_or_else(|p| p.into_inner()));
    let r = summarize(&t, &n, &sim.stats());
    sim.shutdown().await;
    r
}

/// One batched request per dataset every 5 s until all its documents are terminal.
async fn run_batched(w: &Workload) -> Result {
    let (sim, scenario) = fresh_sim(w).await;
    let t = truth(&sim.truth());
    let deadline = deadline_for(&t);
    let http = coze_watch::http::client_builder()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let notices = Arc::new(Mutex::new(Notices::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for d in &scenario.datasets {
        let mut live: Vec<String> = d.documents.iter().map(|x| x.id.clone()).collect();
        let (http, base, token, ds, notices) = (
            http.clone(),
            sim.base_url(),
            sim.token().to_string(),
            d.id.clone(),
            notices.clone(),
        );
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !live.is_empty() && Instant::now() < deadline {
                tick.tick().await;
                for batch in live.clone().chunks(50) {
                    if let Some(docs) = post(&http, &base, &token, &ds, batch).await {
                        let now = UnixMs::now().0;
                        let mut n = notices.lock().unwrap_or_else(|p| p.into_inner());
                        for (id, status) in docs {
                            if matches!(status, 1 | 9) && !n.first.contains_key(&id) {
                                n.first.insert(id.clone(), now);
                                n.event_ids.push(id.clone());
                                live.retain(|x| *x != id);
                            }
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let n = std::mem::take(&mut *notices.lock().unwrap_or_else(|p| p.into_inner()));
    let r = summarize(&t, &n, &sim.stats());
    sim.shutdown().await;
    r
}

// ---- the table ----

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn row(name: &str, r: &Result, l: u64, expected: usize) -> String {
    let per_doc = r.requests as f64 / r.delivered.max(1) as f64;
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |x| format!("{x:.1}{unit}"));
    format!(
        "| {name:<10} | {:>9} | {:>7.2} | {:>6.2} | {:>5} | {:>6.2}s | {:>6.2}s | {:>6.2}s | {:>8} | {:>6} | {:>5}/{:<5} dup {} missed {} |",
        r.requests,
        per_doc,
        r.requests as f64 / l.max(1) as f64,
        r.rate_limited,
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.95),
        r.latencies.last().copied().unwrap_or(f64::NAN),
        opt(r.rss_mb, " MB"),
        opt(r.cpu_s, "s"),
        r.delivered,
        expected,
        r.duplicates,
        r.missed,
    )
}

fn main() {
    let args = Args::parse();
    let w = workload(&args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if args.discovery {
        rt.block_on(discovery::run(discovery::Shape::new(args.quick, args.idle)));
        return;
    }
    let wants = |c: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|x| x == c));
    rt.block_on(async {
        let (probe, _) = fresh_sim(&w).await;
        let t = truth(&probe.truth());
        probe.shutdown().await;
        let l = lower_bound(&t);
        let g = &w.generator;
        println!(
            "\nworkload {}: {} datasets x {} documents = {}; uploads over {}; processing {}..{}; {:.0} % fail; hints {:?}",
            w.name,
            g.datasets,
            g.documents_per_dataset,
            t.documents,
            humantime::format_duration(g.upload_spread),
            humantime::format_duration(g.min_duration),
            humantime::format_duration(g.max_duration),
            g.fail_rate * 100.0,
            g.hints
        );
        println!("lower bound L = {l} requests (min_interval {}s)\n", MIN_INTERVAL.as_secs());
        println!("| contender  |  requests | per doc |    x L |  429s |    p50  |    p95  |    max  | peak RSS |    CPU | events delivered/expected |");
        println!("|------------|-----------|---------|--------|-------|---------|---------|---------|----------|--------|---------------------------|");
        let expected = t.terminal.len();
        let mut config = String::new();
        let mut lying: Option<(f64, u64)> = None;
        if wants("daemon") {
            let (r, c) = run_daemon(&w, None).await;
            println!("{}", row("daemon", &r, l, expected));
            lying = Some((pct(&r.latencies, 0.95), r.requests));
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.0} ms"));
            config = format!(
                "{c}\n(READY=1 after {} on a fresh store; after {} on restart with the {} documents stored)",
                ms(r.ready_ms),
                ms(r.restart_ready_ms),
                t.documents
            );
        }
        if wants("daemon") && w.generator.hints != Hints::Honest {
            // The same workload with honest hints, in the same run: what lying hints cost.
            let mut honest = w.clone();
            honest.generator.hints = Hints::Honest;
            let (r, _) = run_daemon(&honest, None).await;
            println!("{}", row("honest", &r, l, expected));
            if let Some((p95, requests)) = lying {
                println!(
                    "{:?} hints against honest ones: p95 x{:.2}, requests x{:.2}",
                    w.generator.hints,
                    p95 / pct(&r.latencies, 0.95),
                    requests as f64 / r.requests.max(1) as f64
                );
            }
        }
        if args.only.as_ref().is_some_and(|o| o.iter().any(|c| c == "daemon-pg")) {
            let pg = coze_watch::store::testdb::fresh_database()
                .unwrap_or_else(|| panic!("daemon-pg needs $COZE_WATCH_PG_URL (.ci/pg start DIR)"));
            let (r, _) = run_daemon(&w, Some(&pg)).await;
            println!("{}", row("daemon-pg", &r, l, expected));
        }
        if wants("batched-5s") {
            let r = run_batched(&w).await;
            println!("{}", row("batched-5s", &r, l, expected));
        }
        if wants("per-doc-1s") {
            let r = run_per_doc(&w).await;
            println!("{}", row("per-doc-1s", &r, l, expected));
        }
        if !config.is_empty() {
            println!("\ndaemon config:\n{config}");
        }
    });
}
