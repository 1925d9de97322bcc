//! The engine in-process with one virtual clock (`tests/helper/engine.rs`): the request cost
//! of honest hints, the default `stall_after` (30 min), `give_up_after` (24 h),
//! `missing_grace` (10 min) and webhook `max_age` (72 h), asserted on the store and the
//! simulator's counters, in a moment of real time.

mod helper;

use std::time::Duration;

use coze_watch::sim::Outcome;
use coze_watch::tracker::Lifecycle;
use helper::daemon::watch;
use helper::engine::InProcess;
use helper::{doc, scenario, start_sim};

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
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
