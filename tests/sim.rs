//! The simulator speaks the process endpoint exactly as SPEC section 1 describes.

mod helper;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coze_watch::sim::Outcome;
use helper::{doc, scenario, start_sim};
use serde_json::Value;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const DOC_KEYS: &[&str] = &[
    "document_id",
    "document_name",
    "status",
    "progress",
    "remaining_time",
    "url",
    "size",
    "type",
    "update_type",
    "update_interval",
];

async fn post(base: &str, dataset: &str, token: &str, ids: &[&str]) -> reqwest::Response {
    helper::http()
        .post(format!("{base}/v1/datasets/{dataset}/process"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "document_ids": ids }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn response_has_exactly_the_keys_of_the_spec() {
    let sim = start_sim(scenario(vec![(
        "7400000000000000001",
        vec![
            doc("1001", 0, Outcome::Failed),
            doc("1002", 3600, Outcome::Completed),
        ],
    )]))
    .await;
    let r = post(
        &sim.base_url(),
        "7400000000000000001",
        sim.token(),
        &["1001", "1002"],
    )
    .await;
    assert_eq!(r.status(), 200);
    let logid = r.headers()["x-tt-logid"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(keys(&body), set(&["code", "msg", "data", "detail"]));
    assert_eq!(body["code"], 0);
    assert_eq!(body["msg"], "");
    assert_eq!(keys(&body["detail"]), set(&["logid"]));
    assert_eq!(body["detail"]["logid"], logid.as_str());
    assert_eq!(keys(&body["data"]), set(&["data"]));
    let docs = body["data"]["data"].as_array().unwrap();
    let failed = docs.iter().find(|d| d["document_id"] == "1001").unwrap();
    let mut with_reason = DOC_KEYS.to_vec();
    with_reason.push("status_descript");
    assert_eq!(keys(failed), set(&with_reason));
    assert_eq!(failed["status"], 9);
    assert_eq!(failed["status_descript"], "parse error: encrypted pdf");
    let processing = docs.iter().find(|d| d["document_id"] == "1002").unwrap();
    assert_eq!(
        keys(processing),
        set(DOC_KEYS),
        "status_descript only on failure"
    );
    assert!(processing["document_id"].is_string(), "ids are strings");
    assert_eq!(processing["status"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_token_gets_http_401_with_code_4100() {
    let sim = start_sim(scenario(vec![(
        "7400000000000000001",
        vec![doc("1001", 5, Outcome::Completed)],
    )]))
    .await;
    let r = post(
        &sim.base_url(),
        "7400000000000000001",
        "pat_wrong",
        &["1001"],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-tt-logid"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4100);
    sim.shutdown().await;
}

#[tokio::test]
async fn progress_and_remaining_time_move_in_real_time() {
    let sim = start_sim(scenario(vec![(
        "7400000000000000001",
        vec![doc("1001", 2, Outcome::Completed)],
    )]))
    .await;
    let ask = || async {
        let r = post(
            &sim.base_url(),
            "7400000000000000001",
            sim.token(),
            &["1001"],
        )
        .await;
        let v: Value = r.json().await.unwrap();
        v["data"]["data"][0].clone()
    };
    let first = ask().await;
    assert_eq!(first["status"], 0);
    assert!(first["remaining_time"].as_i64().unwrap() >= 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let last = ask().await;
    assert_eq!(last["status"], 1);
    assert_eq!(last["progress"], 100);
    assert_eq!(last["remaining_time"], 0);
    let stats = sim.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.ok, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn control_endpoints_report_stats_and_truth() {
    let sim = start_sim(scenario(vec![(
        "7400000000000000001",
        vec![
            doc("1001", 7, Outcome::Completed),
            doc("1002", 9, Outcome::Stalled),
        ],
    )]))
    .await;
    post(
        &sim.base_url(),
        "7400000000000000001",
        sim.token(),
        &["1001"],
    )
    .await;
    let stats = helper::get_json(format!("{}/__sim/stats", sim.base_url())).await;
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["by_dataset"]["7400000000000000001"], 1);
    let truth = helper::get_json(format!("{}/__sim/scenario", sim.base_url())).await;
    let docs = &truth["datasets"][0]["documents"];
    assert_eq!(docs[0]["terminal_after_ms"], 7000);
    let started = truth["started_at_unix_ms"].as_u64().unwrap();
    assert_eq!(
        docs[0]["terminal_at_unix_ms"].as_u64().unwrap(),
        started + 7000
    );
    assert!(
        docs[1]["terminal_at_unix_ms"].is_null(),
        "a stalled document never ends"
    );
    sim.shutdown().await;
}

/// `coze-watch simulate` in generator mode prints the ids it serves and stops on SIGTERM.
#[test]
fn simulate_command_prints_ids_and_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--datasets",
            "2",
            "--documents-per-dataset",
            "3",
            "--duration",
            "1s..2s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("listening on http://127.0.0.1:"), "{first}");
    let rest: Vec<String> = (0..5).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(rest[0], "watch:");
    assert!(
        rest[1].contains("dataset: \"7400000000000000000\""),
        "{rest:?}"
    );
    assert!(
        rest[2].contains("documents: [\"7500000000000000001\""),
        "{rest:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "simulate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
