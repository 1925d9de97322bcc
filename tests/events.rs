//! The event contract (`docs/events.md`, `schemas/event.schema.json`): real bodies of every
//! event type (the batch one included), delivered by the daemon to a receiver on 127.0.0.1,
//! and the body of `notify-test`, validate against the checked-in schema.

mod helper;

use std::path::Path;
use std::time::Duration;

use coze_watch::sim::Outcome;
use helper::daemon::{Daemon, Workdir, watch};
use helper::receiver::Receiver;
use helper::{doc, scenario, start_sim, wait_until};
use serde_json::Value;

const DS: &str = "7400000000000000001";

fn validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/event.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn errors(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bodies_of_every_event_type_validate_against_the_schema() {
    let ids = [
        "7500000000000000001",
        "7500000000000000002",
        "7500000000000000003",
        "7500000000000000004",
    ];
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(ids[0], 3, Outcome::Completed),
            doc(ids[1], 1, Outcome::Failed),
            doc(ids[2], 1, Outcome::Stalled),
            doc(ids[3], 1, Outcome::Vanished),
        ],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let poll = "  min_interval: 300ms\n  max_interval: 1s\n  stall_after: 1s\n  give_up_after: 4s\n  \
                missing_after: 1\n  missing_grace: 1s\n  progress_step: 10\n";
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n    events: [document.completed, document.failed, \
         document.stalled, document.missing, document.timed_out, document.progress, batch.completed]\n{}",
        rx.url("/h"),
        watch(DS, &ids)
    );
    // The four documents form a batch: `batch.completed` once all are terminal.
    let rest = format!("{rest}    batch: b1\n");
    work.write_config(&sim.base_url(), poll, &rest);
    let mut d = Daemon::start(&work);
    let types = || -> std::collections::BTreeSet<String> {
        rx.requests()
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_until("all seven event types", Duration::from_secs(30), || {
        types().len() == 7
    })
    .await;
    d.stop().await;
    let batch: Vec<serde_json::Value> = rx
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["type"] == "batch.completed")
        .collect();
    assert_eq!(batch.len(), 1, "once");
    assert_eq!(
        batch[0]["data"]["counts"],
        serde_json::json!({"completed": 1, "failed": 1, "missing": 1, "timed_out": 1})
    );
    assert_eq!(batch[0]["data"]["batch"], "b1");
    let v = validator();
    for r in rx.requests() {
        let body = r.json();
        assert_eq!(body["data"]["event_id"], r.header("webhook-id"));
        assert!(
            errors(&v, &body).is_empty(),
            "{body}: {:?}",
            errors(&v, &body)
        );
    }
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_test_body_validates_and_a_wrong_body_does_not() {
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n{}",
        rx.url("/h"),
        watch(DS, &["7500000000000000001"])
    );
    work.write_config("http://127.0.0.1:9", "  min_interval: 1s\n", &rest);
    let (work, (code, out, err)) = tokio::task::spawn_blocking(move || {
        let out = work.cli(&["notify-test", "hook"]);
        (work, out)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    drop(work);
    let body = rx.requests()[0].json();
    let v = validator();
    assert!(errors(&v, &body).is_empty(), "{:?}", errors(&v, &body));
    assert_eq!(body["data"]["test"], true);
    // The schema is not a rubber stamp: a body missing a key, or with a random-looking id, fails.
    let mut missing = body.clone();
    missing["data"].as_object_mut().unwrap().remove("reason");
    assert!(!errors(&v, &missing).is_empty());
    let mut bad_id = body.clone();
    bad_id["data"]["event_id"] = Value::from("evt_01J9ZX");
    assert!(!errors(&v, &bad_id).is_empty());
    rx.shutdown();
}
