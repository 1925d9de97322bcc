//! The run loop's pieces, called one at a time on a paused clock against the simulator:
//! adopting a watch list (fresh and after a restart), finishing a poll (the commit first, then
//! memory), rescheduling from an answer's hint or after a failure, applying a reload.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::engine::{Engine, PollResult, Wiring};
use crate::config::{self, Mode};
use crate::coze::{ClientSettings, CozeClient};
use crate::event::EventType;
use crate::ids::{DatasetId, DocumentId};
use crate::metrics::Metrics;
use crate::notify::Dispatcher;
use crate::sim::{self, Injection, Outcome, Scenario, SimDataset, SimDocument, SimHandle};
use crate::store::{Store, StoreHandle};
use crate::tracker::Lifecycle;
use crate::wall::{Clock, UnixMs};

const DS: &str = "7400000000000000001";
const DS2: &str = "7400000000000000002";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const C: &str = "7500000000000000003";

fn doc(id: &str, secs: u64, outcome: Outcome) -> SimDocument {
    SimDocument {
        id: id.to_string(),
        name: Some(format!("{id}.pdf")),
        file_type: "pdf".into(),
        size: 1,
        start_after: Duration::ZERO,
        duration: Duration::from_secs(secs),
        outcome,
        reason: None,
        stall_at: 50,
    }
}

async fn simulator(datasets: Vec<(&str, Vec<SimDocument>)>) -> SimHandle {
    let scenario = Scenario {
        token: sim::DEFAULT_TOKEN.to_string(),
        hints: sim::Hints::Honest,
        faults: sim::Faults::default(),
        quota_per_second: None,
        max_ids: None,
        studio: false,
        create_duration: Duration::from_secs(3),
        datasets: datasets
            .into_iter()
            .map(|(id, documents)| SimDataset {
                id: id.to_string(),
                documents,
                ..SimDataset::default()
            })
            .collect(),
    };
    sim::start(scenario, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A config dir (config.yaml, token, state/) pointed at the simulator.
struct Dir {
    tmp: tempfile::TempDir,
    base_url: String,
    /// One clock for every engine on this dir, as the machine's clock is for restarts.
    clock: Clock,
}

impl Dir {
    fn new(sim: &SimHandle) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), sim::DEFAULT_TOKEN).unwrap();
        Dir {
            tmp,
            base_url: sim.base_url(),
            clock: Clock::anchored(UnixMs::now()),
        }
    }

    /// Writes config.yaml watching `watch` (dataset, documents).
    fn write(&self, watch: &[(&str, &[&str])]) {
        let mut text = format!(
            "api:\n  base_url: {}\n  token_file: {}\n  max_requests_per_second: 50\n  request_timeout: 2s\n\
             poll:\n  min_interval: 1s\n  max_interval: 60s\n  jitter: 0.1\n  error_backoff: {{initial: 2s, max: 1m, multiplier: 2}}\n\
             state:\n  dir: {}\nnotifiers:\n  - name: journal\n    type: log\nwatch:\n",
            self.base_url,
            self.tmp.path().join("token").display(),
            self.tmp.path().join("state").display(),
        );
        for (ds, docs) in watch {
            let ids: Vec<String> = docs.iter().map(|d| format!("\"{d}\"")).collect();
            text += &format!(
                "  - dataset: \"{ds}\"\n    documents: [{}]\n",
                ids.join(", ")
            );
        }
        std::fs::write(self.tmp.path().join("config.yaml"), text).unwrap();
    }

    /// An engine as `daemon::run` wires it (its dispatcher not running), on a fresh open of
    /// the store.
    fn engine(&self) -> Engine {
        let config = config::load(
            &self.tmp.path().join("config.yaml"),
            &config::process_env,
            Mode::Strict,
        )
        .unwrap()
        .config;
        let at = crate::store::Location::of(&config.state);
        let store = StoreHandle::new(Store::open_at(&at).unwrap(), at);
        let metrics = Arc::new(Metrics::new());
        let clock = self.clock;
        let (_dispatcher, dispatch) =
            Dispatcher::new(store.clone(), Vec::new(), metrics.clone(), clock);
        Engine::new(Wiring {
            watch: Arc::new(RwLock::new(config.watch.clone())),
            client: CozeClient::new(ClientSettings::from(&config.api)).unwrap(),
            config,
            metrics,
            store,
            dispatch,
            extra: Vec::new(),
            clock,
        })
    }
}

/// Starts the due polls and finishes them one by one, as the run loop would.
async fn poll_due(engine: &mut Engine) -> usize {
    let mut polls: JoinSet<PollResult> = JoinSet::new();
    engine.start_due_polls(&mut polls);
    let started = polls.len();
    assert_eq!(
        engine.in_flight.len(),
        started,
        "each running poll is in flight"
    );
    while let Some(done) = polls.join_next().await {
        engine.finish_poll(done.unwrap()).await;
    }
    started
}

fn live(engine: &Engine, ds: &str) -> Vec<String> {
    engine
        .live
        .get(&DatasetId::new(ds))
        .map(|m| m.keys().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn stored(engine: &Engine, ds: &str, doc: &str) -> Option<Lifecycle> {
    let store = Store::open_read_only(&engine.config.state.dir).unwrap();
    store
        .document(&DatasetId::new(ds), &DocumentId::new(doc))
        .unwrap()
        .map(|d| d.state)
}

fn due_in(engine: &Engine, ds: &str) -> Option<Duration> {
    engine
        .queue
        .due_at(&DatasetId::new(ds))
        .map(|at| at.saturating_duration_since(Instant::now()))
}

#[tokio::test(start_paused = true)]
async fn adopting_a_watch_list_records_new_documents_and_queues_their_dataset_now() {
    let sim = simulator(vec![(DS, vec![doc(A, 60, Outcome::Completed)])]).await;
    let dir = Dir::new(&sim);
    dir.write(&[(DS, &[A, B])]);
    let mut engine = dir.engine();
    engine.start().await;
    assert_eq!(live(&engine, DS), [A, B]);
    assert_eq!(stored(&engine, DS, A), Some(Lifecycle::Watching));
    assert_eq!(stored(&engine, DS, B), Some(Lifecycle::Watching));
    assert_eq!(due_in(&engine, DS), Some(Duration::ZERO));
    assert_eq!(sim.stats().requests, 0, "adopting asks the API nothing");
}

/// A watched knowledge base: A done at once, B in 40 s (an honest hint).
async fn a_done_b_in_40s() -> (SimHandle, Dir) {
    let sim = simulator(vec![(
        DS,
        vec![
            doc(A, 0, Outcome::Completed),
            doc(B, 40, Outcome::Completed),
        ],
    )])
    .await;
    let dir = Dir::new(&sim);
    dir.write(&[(DS, &[A, B])]);
    (sim, dir)
}

#[tokio::test(start_paused = true)]
async fn finishing_a_poll_commits_terminal_documents_drops_them_and_aims_at_the_hint() {
    let (_sim, dir) = a_done_b_in_40s().await;
    let mut engine = dir.engine();
    engine.start().await;
    assert_eq!(
        poll_due(&mut engine).await,
        1,
        "one request for the dataset"
    );
    assert!(engine.in_flight.is_empty());
    assert_eq!(stored(&engine, DS, A), Some(Lifecycle::Completed));
    let store = Store::open_read_only(&engine.config.state.dir).unwrap();
    let a = store
        .document(&DatasetId::new(DS), &DocumentId::new(A))
        .unwrap()
        .unwrap();
    assert_eq!(a.fired.get(&EventType::Completed), Some(&1), "{a:?}");
    assert_eq!(live(&engine, DS), [B], "a terminal document leaves memory");
    // B said 40 s: the first sight of a hint looks again at half of it (plus jitter of at
    // most min_interval).
    let due = due_in(&engine, DS).unwrap();
    assert!(
        (Duration::from_secs(19)..=Duration::from_secs(21)).contains(&due),
        "{due:?}"
    );
    assert_eq!(poll_due(&mut engine).await, 0, "nothing is due before that");
}

#[tokio::test(start_paused = true)]
async fn a_failed_poll_keeps_the_documents_live_and_backs_off() {
    let sim = simulator(vec![(DS, vec![doc(A, 60, Outcome::Completed)])]).await;
    sim.inject(vec![Injection::Status {
        http: 500,
        code: Some(5000),
        retry_after_secs: None,
    }]);
    let dir = Dir::new(&sim);
    dir.write(&[(DS, &[A])]);
    let mut engine = dir.engine();
    engine.start().await;
    poll_due(&mut engine).await;
    assert_eq!(live(&engine, DS), [A]);
    assert_eq!(engine.schedules[&DatasetId::new(DS)].failures, 1);
    // error_backoff initial 2 s, plus up to 50 %.
    let due = due_in(&engine, DS).unwrap();
    assert!(
        (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&due),
        "{due:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_adopts_only_what_is_not_terminal_and_resumes_the_stored_schedule() {
    let (_sim, dir) = a_done_b_in_40s().await;
    let mut first = dir.engine();
    first.start().await;
    poll_due(&mut first).await;
    let due_before = due_in(&first, DS).unwrap();
    drop(first);
    tokio::time::advance(Duration::from_secs(5)).await;

    let mut second = dir.engine();
    second.start().await;
    assert_eq!(live(&second, DS), [B]);
    let due = due_in(&second, DS).unwrap();
    // The stored next poll time, 5 s nearer (wall-clock milliseconds round it).
    let expected = due_before - Duration::from_secs(5);
    assert!(
        due.abs_diff(expected) <= Duration::from_millis(2),
        "{due:?} vs {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn applying_a_reload_starts_added_datasets_and_stops_removed_ones() {
    let sim = simulator(vec![
        (DS, vec![doc(A, 60, Outcome::Completed)]),
        (
            DS2,
            vec![
                doc(B, 60, Outcome::Completed),
                doc(C, 60, Outcome::Completed),
            ],
        ),
    ])
    .await;
    let dir = Dir::new(&sim);
    dir.write(&[(DS, &[A])]);
    let mut engine = dir.engine();
    engine.start().await;
    poll_due(&mut engine).await;
    assert!(due_in(&engine, DS).is_some());

    dir.write(&[(DS2, &[B, C])]);
    engine.reload().await;
    assert_eq!(live(&engine, DS), Vec::<String>::new());
    assert_eq!(due_in(&engine, DS), None, "a removed dataset is not polled");
    assert!(!engine.schedules.contains_key(&DatasetId::new(DS)));
    assert_eq!(live(&engine, DS2), [B, C]);
    assert_eq!(due_in(&engine, DS2), Some(Duration::ZERO));
    assert_eq!(
        stored(&engine, DS, A),
        Some(Lifecycle::Watching),
        "its history stays"
    );
    let store = Store::open_read_only(&engine.config.state.dir).unwrap();
    let outcome = store.meta(crate::status::LAST_RELOAD).unwrap().unwrap();
    assert!(outcome.contains("\"ok\":true"), "{outcome}");

    // A broken file changes nothing and is recorded.
    std::fs::write(dir.tmp.path().join("config.yaml"), "watch: [").unwrap();
    engine.reload().await;
    assert_eq!(live(&engine, DS2), [B, C]);
    let outcome = store.meta(crate::status::LAST_RELOAD).unwrap().unwrap();
    assert!(outcome.contains("\"ok\":false"), "{outcome}");
}
