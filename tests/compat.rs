//! Stores written by earlier builds open, run and read with this one (pueue's
//! `state_backward_compatibility` is the model). The stores are checked in under
//! `tests/fixtures/` (see its README); every later build must pass this test.

mod helper;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use coze_watch::sim::Outcome;
use helper::daemon::{Daemon, FAST_POLL, Workdir};
use helper::receiver::Receiver;
use helper::{doc, scenario, start_sim, wait_until};

const DATASET: &str = "7400000000000000001";
const COMPLETED: &str = "7500000000000000101";
const FAILED: &str = "7500000000000000102";
const WATCHING: &str = "7500000000000000103";
const MISSING: &str = "7500000000000000104";
/// The events the fixture's daemon fired, with their original ids.
const EVENTS: [&str; 3] = [
    "evt_01a24a5b286a75c0a261ee9928213c69",
    "evt_01a24a5b286a75c0a261ee9a9ea1f67a",
    "evt_01a24a5b286a75c0a261ee9b24296db6",
];

/// A copy of a checked-in store in a fresh work dir, with a config naming the same
/// notifiers: `pending-hook` now reaches `pending`, `dead-hook` reaches `dead`.
fn work_on_fixture(name: &str, base_url: &str, pending: &Receiver, dead: &Receiver) -> Workdir {
    let work = Workdir::new();
    std::fs::create_dir_all(work.state_dir()).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("coze-watch.db");
    std::fs::copy(from, work.state_dir().join("coze-watch.db")).unwrap();
    let hooks = format!(
        "  - name: pending-hook\n    type: webhook\n    url: {}\n    events: [document.completed, document.failed, document.missing]\n\
         \x20 - name: dead-hook\n    type: webhook\n    url: {}\n    events: [document.completed, document.failed, document.missing]\n",
        pending.url("/pending"),
        dead.url("/dead"),
    );
    let poll = format!("{FAST_POLL}  missing_after: 1\n  missing_grace: 1s\n");
    let rest = format!(
        "{hooks}watch:\n  - dataset: \"{DATASET}\"\n    documents: [\"{COMPLETED}\", \"{FAILED}\", \"{WATCHING}\", \"{MISSING}\"]\n    labels: {{team: kb}}\n"
    );
    work.write_config(base_url, &poll, &rest);
    work
}

fn status_json(work: &Workdir) -> serde_json::Value {
    let (code, out, err) = work.cli(&["status", "--json"]);
    assert_eq!(code, 0, "status: {err}");
    serde_json::from_str(&out).unwrap()
}

fn states(status: &serde_json::Value) -> Vec<(String, String)> {
    status["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["document_id"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn event_ids(rows: &serde_json::Value) -> BTreeSet<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_store_written_by_0_1_0_runs_without_refiring_and_delivers_its_backlog_once() {
    let sim = start_sim(scenario(vec![(
        DATASET,
        vec![
            doc(COMPLETED, 1, Outcome::Completed),
            doc(FAILED, 1, Outcome::Failed),
            doc(WATCHING, 36_000, Outcome::Completed),
        ],
    )]))
    .await;
    let pending = Receiver::start(vec![]).await;
    let dead = Receiver::start(vec![]).await;
    let work = work_on_fixture("store-0.1.0", &sim.base_url(), &pending, &dead);
    let expected: BTreeSet<String> = EVENTS.iter().map(|s| s.to_string()).collect();

    // `status` reads the old store as it is, before any daemon touched it.
    let before = status_json(&work);
    assert_eq!(
        states(&before),
        [
            (COMPLETED.into(), "completed".into()),
            (FAILED.into(), "failed".into()),
            (WATCHING.into(), "watching".into()),
            (MISSING.into(), "missing".into()),
        ]
    );
    assert_eq!(event_ids(&before["dead_deliveries"]), expected);
    assert_eq!(event_ids(&before["pending_deliveries"]), expected);

    let mut daemon = Daemon::start(&work);
    wait_until("the pending backlog", Duration::from_secs(20), || {
        pending.requests().len() >= 3
    })
    .await;
    // A poll of the watching document (the terminal ones are never asked for again); it
    // fires nothing.
    daemon
        .wait_for("poll recorded", Duration::from_secs(20))
        .await;
    assert!(sim.stats().requests >= 1);
    daemon.stop().await;

    let got: Vec<String> = pending
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(got.len(), 3, "each pending delivery exactly once: {got:?}");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(dead.requests().is_empty(), "dead deliveries stay dead");

    let after = status_json(&work);
    assert_eq!(states(&after), states(&before), "no state went backwards");
    assert!(after["pending_deliveries"].as_array().unwrap().is_empty());
    assert_eq!(event_ids(&after["dead_deliveries"]), expected);

    let (code, out, err) = work.cli(&["deliveries"]);
    assert_eq!(code, 0, "deliveries: {err}");
    assert!(out.starts_with("3 dead deliveries"), "{out}");
    for id in EVENTS {
        assert!(out.contains(id), "{id} in {out}");
    }
}
