//! The engine in-process with one virtual clock (`tests/helper/engine.rs`): the request cost
//! of honest hints, the default `stall_after` (30 min), `give_up_after` (24 h),
//! `missing_grace` (10 min) and webhook `max_age` (72 h), events exactly once, reloads that add
//! and remove, API faults, the idle loop, asserted on the store, the events the notifiers were
//! handed and the simulator's counters, in a moment of real time. Signals, exit codes and
//! the store's own failures stay with the binary (`tests/engine.rs`).

mod helper;

use std::time::Duration;

use coze_watch::event::EventType;
use coze_watch::notify::Body;
use coze_watch::sim::{Injection, Outcome};
use coze_watch::tracker::Lifecycle;
use helper::daemon::{FAST_POLL, watch};
use helper::engine::{Extras, InProcess, Logs};
use helper::{doc, scenario, start_sim};

const DS: &str = "7400000000000000001";
const DS2: &str = "7400000000000000002";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const Z: &str = "7500000000000000099";
const SECS: fn(u64) -> Duration = Duration::from_secs;
const EVENTS: Extras = Extras {
    events: true,
    ops: false,
};
const MIN: fn(u64) -> Duration = |m| Duration::from_secs(m * 60);

#[tokio::test(start_paused = true)]
async fn honest_hints_cost_far_fewer_requests_than_fixed_polling() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 20, Outcome::Completed)])])).await;
    let d = InProcess::start(
        &sim,
        "  min_interval: 2s\n  max_interval: 2m\n",
        &watch(DS, &[A]),
    )
    .await;
    d.advance(Duration::from_secs(40)).await;
    assert_eq!(d.document(DS, A).unwrap().state, Lifecycle::Completed);
    let requests = sim.stats().requests;
    // A 2 s fixed poll would have sent 10 or 11 requests for a 20 s document.
    assert!(requests <= 4, "{requests} requests");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_document_stalls_after_the_default_30_minutes() {
    // Progress stops at 50 % after 30 s and never moves again.
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 60, Outcome::Stalled)])])).await;
    let d = InProcess::start(&sim, "", &watch(DS, &[A])).await;
    d.advance(MIN(29)).await;
    let before = d.document(DS, A).unwrap();
    assert!(!before.stalled, "not yet: {before:?}");
    d.advance(MIN(4)).await;
    let after = d.document(DS, A).unwrap();
    assert!(after.stalled, "{after:?}");
    assert_eq!(
        after.state,
        Lifecycle::Watching,
        "stalled is a flag on watching"
    );
    assert_eq!(
        after.fired.get(&coze_watch::event::EventType::Stalled),
        Some(&1),
        "one stalled event: {:?}",
        after.fired
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_document_times_out_after_the_default_24_hours() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 60, Outcome::Stalled)])])).await;
    let d = InProcess::start(&sim, "", &watch(DS, &[A])).await;
    d.advance(MIN(23 * 60 + 50)).await;
    assert_eq!(d.document(DS, A).unwrap().state, Lifecycle::Watching);
    d.advance(MIN(15)).await;
    let doc = d.document(DS, A).unwrap();
    assert_eq!(doc.state, Lifecycle::TimedOut, "{doc:?}");
    assert_eq!(doc.reason.as_deref(), Some("not terminal after 1day"));
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_document_goes_missing_after_the_default_grace_and_a_confirmation() {
    // Left out of every answer after 60 s.
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 60, Outcome::Vanished)])])).await;
    let d = InProcess::start(&sim, "", &watch(DS, &[A])).await;
    d.advance(MIN(1) + MIN(9)).await;
    let early = d.document(DS, A).unwrap();
    assert_eq!(
        early.state,
        Lifecycle::Watching,
        "inside the 10-minute grace: {early:?}"
    );
    d.advance(MIN(5)).await;
    let doc = d.document(DS, A).unwrap();
    assert_eq!(doc.state, Lifecycle::Missing, "{doc:?}");
    assert_eq!(doc.reason.as_deref(), Some("absent"));
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_webhook_that_keeps_failing_is_retried_until_the_default_max_age_of_72_hours() {
    use helper::receiver::{Receiver, Reply};
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let rx = Receiver::start_with_default(helper::loopback(), vec![], Reply::Status(503)).await;
    // Default backoff (5 s x4 up to 1 h) and max_age (72 h); attempts unbounded here so that
    // the age, not the count, ends it.
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n    retry: {{max_attempts: 1000}}\n{}",
        rx.url("/h"),
        watch(DS, &[A])
    );
    let d = InProcess::start(&sim, "", &rest).await;
    d.advance(MIN(71 * 60)).await;
    let store = coze_watch::store::Store::open_read_only(&d.state_dir()).unwrap();
    assert!(
        store.deliveries("dead", 10).unwrap().is_empty(),
        "alive at 71 h"
    );
    let tried = rx.requests().len();
    // 5 s, 20 s, 80 s, 320 s, 1280 s, then hourly: about 5 + 70 by 71 h.
    assert!((70..=80).contains(&tried), "{tried} attempts by 71 h");
    d.advance(MIN(2 * 60)).await;
    let dead = store.deliveries("dead", 10).unwrap();
    assert_eq!(dead.len(), 1, "dead after 72 h");
    let why = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(why.contains("gave up after 3days (max_age)"), "{why}");
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}

/// How many of the simulator's recent requests asked about `id`.
fn asked(sim: &coze_watch::sim::SimHandle, id: &str) -> Vec<Vec<String>> {
    sim.stats()
        .recent
        .iter()
        .filter(|r| r.ids.iter().any(|i| i == id))
        .map(|r| r.ids.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn completed_and_failed_documents_fire_exactly_one_event_each() {
    let logs = Logs::capture();
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 2, Outcome::Failed)],
    )]))
    .await;
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &[A, B]), EVENTS).await;
    d.until("both terminal", SECS(15), |d| {
        d.count(EventType::Completed, A) + d.count(EventType::Failed, B) == 2
    })
    .await;
    let requests = sim.stats().requests;
    d.advance(SECS(60)).await;
    assert_eq!(d.count(EventType::Completed, A), 1);
    assert_eq!(d.count(EventType::Failed, B), 1);
    assert_eq!(d.events().len(), 2, "{:?}", d.events());
    let failed = d
        .events()
        .into_iter()
        .find(|e| e.event_type == EventType::Failed)
        .unwrap();
    let Body::Document(body) = failed.body else {
        panic!("a document event: {failed:?}")
    };
    assert_eq!(
        body.data.status_descript.as_deref(),
        Some("parse error: encrypted pdf")
    );
    assert_eq!(body.data.dataset_id, DS);
    // The log notifier's line.
    let line = logs.find(&format!("document.failed {B}"));
    assert!(line.contains("parse error: encrypted pdf"), "{line}");
    assert!(line.contains(&format!("dataset_id={DS}")), "{line}");
    assert!(
        !line.contains("127.0.0.1"),
        "the url is never logged: {line}"
    );
    assert_eq!(
        sim.stats().requests,
        requests,
        "terminal documents are not polled again"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_or_a_remove_and_re_add_fires_nothing_again() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 600, Outcome::Completed),
        ],
    )]))
    .await;
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &[A, B]), EVENTS).await;
    d.until("A completed", SECS(15), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    let work = d.stop().await;
    let asked_before = asked(&sim, A).len();

    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.advance(SECS(2)).await;
    // Remove A, then add it back.
    d.reload_with(&sim, FAST_POLL, &watch(DS, &[B])).await;
    d.advance(SECS(2)).await;
    d.reload_with(&sim, FAST_POLL, &watch(DS, &[A, B])).await;
    d.advance(SECS(30)).await;
    assert!(d.events().is_empty(), "{:?}", d.events());
    assert_eq!(
        asked(&sim, A).len(),
        asked_before,
        "a completed document is never polled again"
    );
    assert!(asked(&sim, B).len() > 3, "B is still polled");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_a_broken_config_keeps_polling_with_the_old_one() {
    let logs = Logs::capture();
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let poll = "  min_interval: 300ms\n  max_interval: 1s\n";
    let d = InProcess::start(&sim, poll, &watch(DS, &[A])).await;
    std::fs::write(d.work.config_path(), "poll:\n  min_interval: [oops\n").unwrap();
    d.reload().await;
    logs.find("reload failed; keeping the running config");
    let before = sim.stats().requests;
    d.advance(SECS(5)).await;
    let after = sim.stats().requests;
    // A 1 s max_interval: at least 4 more polls in 5 s.
    assert!(after >= before + 4, "{before} -> {after}");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_adds_a_dataset_starts_polling_it() {
    let sim = start_sim(scenario(vec![
        (DS, vec![doc(A, 600, Outcome::Completed)]),
        (DS2, vec![doc(B, 1, Outcome::Completed)]),
    ]))
    .await;
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &[A]), EVENTS).await;
    d.advance(SECS(2)).await;
    assert_eq!(sim.stats().by_dataset.get(DS2), None);
    let both = format!(
        "{}  - dataset: \"{DS2}\"\n    documents: [\"{B}\"]\n",
        watch(DS, &[A])
    );
    d.reload_with(&sim, FAST_POLL, &both).await;
    d.until("B completed", SECS(15), |d| {
        d.count(EventType::Completed, B) == 1
    })
    .await;
    assert!(sim.stats().by_dataset.get(DS2).copied().unwrap_or(0) >= 1);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn api_faults_never_crash_the_daemon_and_it_recovers() {
    let logs = Logs::capture();
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 4, Outcome::Completed)])])).await;
    let status = |http, code: Option<i64>, retry_after_secs| Injection::Status {
        http,
        code,
        retry_after_secs,
    };
    sim.inject(vec![
        status(500, Some(5000), None),
        status(429, Some(4013), Some(1)),
        Injection::Html { http: 200 },
        Injection::Truncated,
        status(401, Some(4100), None),
        Injection::Reset,
    ]);
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &[A]), EVENTS).await;
    d.until("A completed", SECS(120), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    d.advance(SECS(10)).await;
    assert_eq!(d.events().len(), 1, "{:?}", d.events());
    for kind in [
        "kind=\"transient\"",
        "kind=\"rate_limited\"",
        "kind=\"auth\"",
    ] {
        assert!(
            logs.count(kind) >= 1,
            "no {kind} logged:\n{}",
            logs.lines().join("\n")
        );
    }
    let auth = logs.find("kind=\"auth\"");
    assert!(
        auth.contains("coze.cn token against api.coze.com"),
        "{auth}"
    );
    assert!(auth.contains("logid"), "{auth}");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_never_returned_document_goes_missing_only_after_count_grace_and_confirmation() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let started = tokio::time::Instant::now();
    let d = InProcess::start_with(
        &sim,
        "  min_interval: 500ms\n  max_interval: 1s\n  missing_after: 3\n  missing_grace: 3s\n",
        &watch(DS, &[A, Z]),
        EVENTS,
    )
    .await;
    d.until("Z missing", SECS(20), |d| {
        d.count(EventType::Missing, Z) == 1
    })
    .await;
    assert!(
        started.elapsed() >= SECS(3),
        "missing before the grace period"
    );
    assert_eq!(d.document(DS, Z).unwrap().reason.as_deref(), Some("absent"));
    let asked_z = asked(&sim, Z);
    assert!(
        asked_z.len() >= 4,
        "3 answers in a row plus the confirmation: {asked_z:?}"
    );
    assert_eq!(
        asked_z.last().unwrap(),
        &vec![Z.to_string()],
        "confirmed alone"
    );
    assert!(
        asked_z[..asked_z.len() - 1]
            .iter()
            .all(|ids| ids.len() == 2)
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn with_nothing_live_the_run_loop_does_not_wake() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 0, Outcome::Completed)])])).await;
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &[A]), EVENTS).await;
    d.until("A completed", SECS(10), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    d.advance(SECS(1)).await;
    let wakeups = d.wakeups();
    assert!(wakeups > 0, "the wake-up count is missing");
    // The one timer left is the hourly pruning of old event bodies.
    d.advance(SECS(6 * 3600)).await;
    assert_eq!(
        d.wakeups(),
        wakeups + 6,
        "the idle loop woke up beyond its hourly pruning"
    );
    assert_eq!(sim.stats().requests, 1);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_takes_five_ids_a_request_refuses_at_most_one_per_run() {
    let logs = Logs::capture();
    let docs: Vec<_> = (1..=12)
        .map(|i| {
            doc(
                &format!("{}", 7_500_000_000_000_000_000u64 + i),
                2,
                Outcome::Completed,
            )
        })
        .collect();
    let mut s = scenario(vec![(DS, docs.clone())]);
    s.max_ids = Some(5);
    let sim = start_sim(s).await;
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    let d = InProcess::start_with(&sim, FAST_POLL, &watch(DS, &ids), EVENTS).await;
    d.until("12 completed", SECS(20), |d| d.events().len() == 12)
        .await;
    assert_eq!(sim.stats().bad_requests, 1, "one refusal teaches the limit");
    assert_eq!(
        logs.count("asking for fewer ids per request"),
        1,
        "logged once: {}",
        logs.lines().join("\n")
    );
    let line = logs.find("asking for fewer ids");
    assert!(
        line.contains("at most 5") && line.contains("logid"),
        "{line}"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_token_file_rewritten_after_a_401_is_used_by_the_next_request() {
    let logs = Logs::capture();
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let work = helper::daemon::Workdir::new();
    helper::engine::write_config(&work, &sim, FAST_POLL, &watch(DS, &[A]));
    let token = work.path().join("token");
    std::fs::write(&token, "pat_revoked\n").unwrap();
    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.until("a refused poll", SECS(10), |_| {
        sim.stats().unauthorized == 1
    })
    .await;
    // Rotated after the 401, before the retry.
    std::fs::write(&token, format!("{}\n", coze_watch::sim::DEFAULT_TOKEN)).unwrap();
    d.until("A completed", SECS(15), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    d.stop().await;
    assert_eq!(
        sim.stats().unauthorized,
        1,
        "one refused request, then the new token"
    );
    assert_eq!(logs.count("the token file changed"), 1);
    let lines = logs.lines().join("\n");
    assert!(!lines.contains("pat_revoked") && !lines.contains(coze_watch::sim::DEFAULT_TOKEN));
    sim.shutdown().await;
}

fn store_db(d: &InProcess) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        d.state_dir().join("coze-watch.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// A document's event ids in the order they fired (the store's sequence).
fn stored_event_ids(d: &InProcess, document: &str) -> Vec<String> {
    let db = store_db(d);
    let mut stmt = db
        .prepare("SELECT event_id FROM events WHERE document_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([document], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// (bodies kept, bodies pruned) of the store's events.
fn event_bodies(d: &InProcess) -> (i64, i64) {
    store_db(d)
        .query_row(
            "SELECT count(body), count(*) - count(body) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn event_bodies_are_pruned_after_the_default_30_days_of_retention() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let d = InProcess::start_with(&sim, "", &watch(DS, &[A]), EVENTS).await;
    d.until("A completed", SECS(60), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    assert_eq!(event_bodies(&d), (1, 0));
    d.advance(SECS(29 * 86_400)).await;
    assert_eq!(event_bodies(&d), (1, 0), "kept for 29 days");
    d.advance(SECS(2 * 86_400)).await;
    assert_eq!(
        event_bodies(&d),
        (0, 1),
        "the body goes after 30 days, the row stays"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_documents_events_reach_a_failing_webhook_in_order() {
    use helper::receiver::{Receiver, Reply};
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 60, Outcome::Completed)])])).await;
    // The first three attempts fail: the first progress event waits through its backoff, and
    // nothing after it may overtake it.
    let rx = Receiver::start(vec![Reply::Status(503); 3]).await;
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n    events: [document.progress, document.completed]\n{}",
        rx.url("/h"),
        watch(DS, &[A])
    );
    let d = InProcess::start_with(
        &sim,
        "  min_interval: 1s\n  max_interval: 3s\n",
        &rest,
        EVENTS,
    )
    .await;
    d.until("A completed", SECS(120), |d| {
        d.count(EventType::Completed, A) == 1
    })
    .await;
    let fired = stored_event_ids(&d, A);
    d.until("every event delivered", SECS(3600), |_| {
        rx.requests().iter().filter(|r| r.answered == 200).count() >= fired.len()
    })
    .await;
    let delivered: Vec<String> = rx
        .requests()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert!(fired.len() >= 3, "some progress, then completed: {fired:?}");
    assert_eq!(delivered, fired, "delivered in the order they fired");
    let first_failed = rx.requests()[0].header("webhook-id").to_string();
    assert_eq!(first_failed, fired[0], "the retried one is the first");
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}
