//! The discovery workload (`--discovery`): a space of 300 knowledge bases and 2,000 documents
//! uploaded over 10 minutes, processing 10 s..3 min. The daemon is told no document id, only
//! `space:`. Reported: requests (polls and listings) per discovered document, latency from the
//! true completion to the notification (all documents, and those that outlive one probe), and
//! the requests of the same space once nothing changes any more (the idle window).

use std::time::Duration;

use coze_watch::sim::{self, Generator, Hints, Scenario};
use tokio::time::Instant;

use super::{Received, footprint, pct, receiver, spawn_daemon, stop, summarize, truth};

const SPACE: &str = "7300000000000000001";

/// The workload's size: the full one, or `--quick`'s.
pub struct Shape {
    pub datasets: usize,
    pub documents: usize,
    pub upload_spread: Duration,
    pub min: Duration,
    pub max: Duration,
    pub discover_interval: Duration,
    pub idle: Duration,
}

impl Shape {
    pub fn new(quick: bool, idle: Option<Duration>) -> Self {
        let s = if quick {
            Shape {
                datasets: 30,
                documents: 200,
                upload_spread: Duration::from_secs(60),
                min: Duration::from_secs(10),
                max: Duration::from_secs(40),
                discover_interval: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            }
        } else {
            Shape {
                datasets: 300,
                documents: 2000,
                upload_spread: Duration::from_secs(600),
                min: Duration::from_secs(10),
                max: Duration::from_secs(180),
                discover_interval: Duration::from_secs(60),
                idle: Duration::from_secs(600),
            }
        };
        Shape {
            idle: idle.unwrap_or(s.idle),
            ..s
        }
    }
}

fn scenario(shape: &Shape) -> Scenario {
    let mut s = sim::generate(&Generator {
        datasets: shape.datasets,
        documents_per_dataset: shape.documents.div_ceil(shape.datasets),
        fail_rate: 0.05,
        min_duration: shape.min,
        max_duration: shape.max,
        upload_spread: shape.upload_spread,
        hints: Hints::Honest,
        seed: 11,
        space: Some(SPACE.into()),
    });
    // Exactly `documents`: drop the surplus from the last knowledge bases.
    let mut surplus = s
        .datasets
        .iter()
        .map(|d| d.documents.len())
        .sum::<usize>()
        .saturating_sub(shape.documents);
    for d in s.datasets.iter_mut().rev() {
        if surplus == 0 {
            break;
        }
        d.documents.pop();
        surplus -= 1;
    }
    s
}

fn config(
    base_url: &str,
    hook: std::net::SocketAddr,
    state: &std::path::Path,
    shape: &Shape,
) -> String {
    format!(
        "api:\n  base_url: {base_url}\n  max_requests_per_second: 50\n  max_concurrent_requests: 8\n  request_timeout: 10s\n\
         poll:\n  min_interval: 2s\n  max_interval: 120s\n  discover_interval: {}s\n\
         state:\n  dir: {}\n\
         notifiers:\n  - name: bench\n    type: webhook\n    url: http://{hook}/hook\n    events: [document.completed, document.failed]\n\
         watch:\n  - space: \"{SPACE}\"\n",
        shape.discover_interval.as_secs(),
        state.display()
    )
}

pub async fn run(shape: Shape) {
    let scenario = scenario(&shape);
    let sim = sim::start(scenario.clone(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap_or_else(|e| panic!("cannot start the simulator: {e}"));
    let t = truth(&sim.truth());
    let durations: std::collections::HashMap<String, Duration> = scenario
        .datasets
        .iter()
        .flat_map(|d| d.documents.iter().map(|x| (x.id.clone(), x.duration)))
        .collect();
    let (hook, received): (_, Received) = receiver().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config_path = dir.path().join("config.yaml");
    let text = config(&sim.base_url(), hook, &dir.path().join("state"), &shape);
    std::fs::write(&config_path, &text).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "\nworkload discovery: space of {} knowledge bases, {} documents uploaded over {}, processing {}..{}, 5 % fail; discover_interval {}",
        shape.datasets,
        t.documents,
        humantime::format_duration(shape.upload_spread),
        humantime::format_duration(shape.min),
        humantime::format_duration(shape.max),
        humantime::format_duration(shape.discover_interval),
    );
    let (mut child, _) = spawn_daemon(&config_path, dir.path(), sim.token()).await;
    let pid = child.id().unwrap_or(0);
    let last = t.terminal.values().max().copied().unwrap_or(0);
    let wait_ms = (last - coze_watch::wall::UnixMs::now().0).max(0) as u64;
    let deadline = Instant::now() + Duration::from_millis(wait_ms) + shape.discover_interval * 3;
    let expected = t.terminal.len();
    let mut sampled = (None, None);
    while Instant::now() < deadline {
        if received.0.lock().map(|n| n.first.len()).unwrap_or(0) >= expected {
            break;
        }
        sampled = footprint(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let busy = sim.stats();
    let (rss, cpu) = footprint(pid);
    // Nothing changes any more: what does the space cost now?
    tokio::time::sleep(shape.idle).await;
    let idle = sim.stats();
    stop(&mut child).await;
    let notices = std::mem::take(&mut *received.0.lock().unwrap_or_else(|p| p.into_inner()));
    let r = summarize(&t, &notices, &busy);
    let mut outliving: Vec<f64> = notices
        .first
        .iter()
        .filter(|(id, _)| {
            durations
                .get(*id)
                .is_some_and(|d| *d >= shape.discover_interval)
        })
        .filter_map(|(id, at)| t.terminal.get(id).map(|truth| (at - truth) as f64 / 1000.0))
        .collect();
    outliving.sort_by(f64::total_cmp);
    let total = busy.requests + busy.listings;
    let idle_requests = (idle.requests + idle.listings) - total;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| requests in all (polls + listings) | {total} ({} + {}) |",
        busy.requests, busy.listings
    );
    println!(
        "| requests per discovered document | {:.2} |",
        total as f64 / t.documents.max(1) as f64
    );
    println!(
        "| latency, all documents: p50 / p95 / max | {:.1} s / {:.1} s / {:.1} s |",
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.95),
        r.latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| latency, documents that outlive one probe ({}): p50 / p95 / max | {:.1} s / {:.1} s / {:.1} s |",
        outliving.len(),
        pct(&outliving, 0.5),
        pct(&outliving, 0.95),
        outliving.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| events delivered / expected | {} / {expected}, duplicates {}, missed {} |",
        r.delivered, r.duplicates, r.missed
    );
    println!(
        "| idle space: requests over {} | {idle_requests} ({} polls, {} listings) |",
        humantime::format_duration(shape.idle),
        idle.requests - busy.requests,
        idle.listings - busy.listings
    );
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |x| format!("{x:.1}{unit}"));
    println!(
        "| daemon peak RSS / CPU | {} / {} |",
        opt(rss.or(sampled.0), " MB"),
        opt(cpu.or(sampled.1), " s")
    );
    println!("\ndaemon config:\n{}", text.trim_end());
    sim.shutdown().await;
}
