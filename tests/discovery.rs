//! Watching what arrives (SPEC sections 11 and 13): whole knowledge bases and spaces, the
//! baseline, documents created at run time, skipped knowledge bases, a refused listing, and
//! the run-time watch list from the command line and over HTTP, against the simulator and a
//! webhook receiver on 127.0.0.1: discovery's timing in-process on virtual time, the command
//! line and its signals with the real binary.

mod helper;

use std::collections::BTreeSet;
use std::time::Duration;

use coze_watch::sim::{Faults, Outcome, Scenario, SimDataset, SimHandle};
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::engine::{Extras, InProcess, Logs};
use helper::receiver::{Receiver, reserve_port};
use helper::{doc, http, scenario, start_sim, wait_until};
use nix::sys::signal::Signal;

const DS: &str = "7400000000000000001";
const DS2: &str = "7400000000000000002";
const SPACE: &str = "7300000000000000001";
const SECS: fn(u64) -> Duration = Duration::from_secs;
const OPS: Extras = Extras {
    events: false,
    ops: true,
};

/// Fast polls, a discovery every second, and quick missing rules.
fn poll() -> String {
    format!("{FAST_POLL}  discover_interval: 1s\n  missing_after: 1\n  missing_grace: 1s\n")
}

fn hook(url: &str) -> String {
    format!(
        "  - name: hook\n    type: webhook\n    url: {url}\n    events: [document.completed, document.failed, document.missing]\n"
    )
}

fn id(n: u64) -> String {
    format!("{}", 7_500_000_000_000_000_000u64 + n)
}

/// Document ids the receiver got events for, with the event types.
fn received(rx: &Receiver) -> Vec<(String, String)> {
    rx.requests()
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["data"]["document_id"].as_str().unwrap_or("").to_string(),
                v["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Lets virtual time pass until `n` more listings reached the simulator (so discovery had
/// its chance).
async fn listings(d: &InProcess, sim: &SimHandle, n: u64) {
    let start = sim.stats().listings;
    d.until("more listings", SECS(20), |_| {
        sim.stats().listings >= start + n
    })
    .await;
}

/// The simulator serving `s`, a receiver, and the daemon watching knowledge base `DS` whole
/// (`documents: all`), with `api_extra` lines added under `api:`.
async fn watch_whole(s: Scenario, api_extra: &str) -> (SimHandle, Receiver, InProcess) {
    let sim = start_sim(s).await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}watch:\n  - dataset: \"{DS}\"\n    documents: all\n",
        hook(&rx.url("/h"))
    );
    work.write_config(&sim.base_url(), &poll(), &rest);
    if !api_extra.is_empty() {
        let config = std::fs::read_to_string(work.config_path())
            .unwrap()
            .replace("api:\n", &format!("api:\n{api_extra}"));
        std::fs::write(work.config_path(), config).unwrap();
    }
    let d = InProcess::start_in(work, &sim).await;
    (sim, rx, d)
}

#[tokio::test(start_paused = true)]
async fn the_baseline_fires_only_for_documents_processing_when_the_entry_is_adopted() {
    let mut docs: Vec<_> = (1..=50)
        .map(|i| doc(&id(i), 0, Outcome::Completed))
        .collect();
    docs.extend((51..=55).map(|i| doc(&id(i), 2, Outcome::Completed)));
    let (sim, rx, d) = watch_whole(scenario(vec![(DS, docs)]), "").await;
    d.until("five events", SECS(20), |_| rx.requests().len() >= 5)
        .await;
    listings(&d, &sim, 3).await;
    let got: BTreeSet<String> = received(&rx).into_iter().map(|(doc, _)| doc).collect();
    let want: BTreeSet<String> = (51..=55).map(id).collect();
    assert_eq!(got, want, "only the documents processing at adoption");
    assert_eq!(rx.requests().len(), 5, "once each");
    // A restart never re-baselines and never fires for a known document.
    let work = d.stop().await;
    let d = InProcess::start_in(work, &sim).await;
    listings(&d, &sim, 2).await;
    assert_eq!(rx.requests().len(), 5);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_document_created_and_finished_between_two_listings_fires_once() {
    let mut s = scenario(vec![(DS, vec![doc(&id(1), 0, Outcome::Completed)])]);
    s.create_duration = Duration::ZERO;
    let (sim, rx, d) = watch_whole(s, "").await;
    listings(&d, &sim, 2).await;
    let created: serde_json::Value = http()
        .post(format!(
            "{}/open_api/knowledge/document/create",
            sim.base_url()
        ))
        .bearer_auth(sim.token())
        .json(&serde_json::json!({"dataset_id": DS, "document_bases": [
            {"name": "late.txt", "source_info": {"file_base64": "aGVsbG8=", "file_type": "txt"}}
        ]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_id = created["document_infos"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    d.until("its event", SECS(20), |_| !rx.requests().is_empty())
        .await;
    listings(&d, &sim, 2).await;
    let events = rx.requests();
    assert_eq!(events.len(), 1, "exactly one event");
    let v = events[0].json();
    assert_eq!(v["data"]["document_id"], new_id.as_str());
    assert_eq!(v["type"], "document.completed");
    assert!(
        v["data"]["previous_status"].is_null(),
        "first seen terminal"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_space_watches_new_knowledge_bases_skips_disabled_and_volcano_ones_and_sees_deletions() {
    let mut s = scenario(vec![
        (
            DS,
            vec![
                doc(&id(1), 2, Outcome::Completed),
                doc(&id(2), 3600, Outcome::Completed),
            ],
        ),
        (DS2, vec![doc(&id(3), 1, Outcome::Completed)]),
        (
            "7400000000000000003",
            vec![doc(&id(4), 1, Outcome::Completed)],
        ),
    ]);
    for d in &mut s.datasets {
        d.space = Some(SPACE.into());
    }
    s.datasets[1].disabled = true;
    s.datasets[2].volcano = true;
    let logs = Logs::capture();
    let sim = start_sim(s).await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}watch:\n  - space: \"{SPACE}\"\n    labels: {{team: kb}}\n",
        hook(&rx.url("/h"))
    );
    work.write_config(&sim.base_url(), &poll(), &rest);
    let d = InProcess::start_in(work, &sim).await;
    d.until("the first document", SECS(20), |_| {
        !rx.requests().is_empty()
    })
    .await;
    assert_eq!(rx.requests()[0].json()["data"]["labels"]["team"], "kb");
    // A knowledge base appears in the space.
    let kb = SimDataset {
        id: "7400000000000000004".into(),
        space: Some(SPACE.into()),
        documents: vec![doc(&id(5), 1, Outcome::Completed)],
        ..SimDataset::default()
    };
    http()
        .post(format!("{}/__sim/datasets", sim.base_url()))
        .json(&kb)
        .send()
        .await
        .unwrap();
    d.until("the new knowledge base's document", SECS(20), |_| {
        received(&rx).iter().any(|(doc, _)| *doc == id(5))
    })
    .await;
    // A document deleted while processing goes missing.
    http()
        .post(format!("{}/__sim/delete", sim.base_url()))
        .json(&serde_json::json!({"dataset_id": DS, "document_id": id(2)}))
        .send()
        .await
        .unwrap();
    d.until("the deleted document", SECS(20), |_| {
        received(&rx)
            .iter()
            .any(|(doc, ty)| *doc == id(2) && ty == "document.missing")
    })
    .await;
    listings(&d, &sim, 3).await;
    let got = received(&rx);
    assert!(
        !got.iter().any(|(doc, _)| *doc == id(3) || *doc == id(4)),
        "nothing from skipped knowledge bases: {got:?}"
    );
    assert_eq!(logs.count("knowledge base skipped"), 2, "each logged once");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_token_without_list_permission_is_named_and_explicit_entries_still_notify() {
    let sim = start_sim(scenario(vec![
        (DS, vec![doc(&id(1), 1, Outcome::Completed)]),
        (DS2, vec![doc(&id(2), 1, Outcome::Completed)]),
    ]))
    .await;
    sim.set_faults(Faults {
        listing_denied: true,
        ..Faults::default()
    });
    let logs = Logs::capture();
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}http:\n  listen: 127.0.0.1:0\nwatch:\n  - dataset: \"{DS}\"\n    documents: all\n  - dataset: \"{DS2}\"\n    documents: [\"{}\"]\n",
        hook(&rx.url("/h")),
        id(2)
    );
    work.write_config(&sim.base_url(), &poll(), &rest);
    let d = InProcess::launch(work, &sim, OPS).await;
    let ops = d.ops.unwrap();
    d.until("the explicit document", SECS(20), |_| {
        received(&rx).iter().any(|(doc, _)| *doc == id(2))
    })
    .await;
    d.until("the refusal logged", SECS(10), |_| {
        logs.count("listDocument") > 0
    })
    .await;
    let health = http()
        .get(format!("http://{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let text = health.text().await.unwrap();
    assert!(text.contains("listDocument"), "{text}");
    let status: serde_json::Value = helper::get_json(format!("http://{ops}/status")).await;
    assert!(
        status["problems"].to_string().contains("listDocument"),
        "{status}"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_add_list_remove_work_with_the_daemon_running_and_stopped_and_survive_restarts() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(&id(1), 1, Outcome::Completed),
            doc(&id(2), 2, Outcome::Failed),
            doc(&id(3), 3600, Outcome::Completed),
        ],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), &poll(), &hook(&rx.url("/h")));
    // Stopped daemon: the entry is picked up at start.
    let (code, out, err) = work.cli(&["watch", "add", DS, &id(1), "--label", "team=kb"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added 1"), "{out}");
    let (code, out, _) = work.cli(&["watch", "add", DS, &id(1)]);
    assert_eq!(code, 0);
    assert!(out.contains("added 0"), "idempotent: {out}");
    let mut d = Daemon::start(&work);
    wait_until("the first document", SECS(20), || !rx.requests().is_empty()).await;
    assert_eq!(rx.requests()[0].json()["data"]["labels"]["team"], "kb");
    // Running daemon: sees the change at once.
    let (code, _, err) = work.cli(&["watch", "add", DS, &id(2), &id(3)]);
    assert_eq!(code, 0, "{err}");
    wait_until("the second document", SECS(10), || {
        received(&rx).iter().any(|(doc, _)| *doc == id(2))
    })
    .await;
    // A reload and a restart keep run-time entries.
    d.signal(Signal::SIGHUP);
    d.wait_for("config reloaded", SECS(10)).await;
    d.stop().await;
    let (code, out, _) = work.cli(&["watch", "list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 3, "{v}");
    let d = Daemon::start(&work);
    d.wait_for("watching", SECS(10)).await;
    let (code, out, _) = work.cli(&["watch", "remove", DS]);
    assert_eq!(code, 0);
    assert!(out.contains("removed 3"), "{out}");
    let (_, out, _) = work.cli(&["watch", "list"]);
    assert!(out.starts_with("0 run-time watch entries"), "{out}");
    // Invalid input is a config-class error.
    let (code, _, err) = work.cli(&["watch", "add", DS, "doc-7"]);
    assert_eq!(code, 78);
    assert!(err.contains("decimal digits"), "{err}");
    let (code, _, err) = work.cli(&["watch", "add", DS, &id(1), "--notify", "nope"]);
    assert_eq!(code, 78);
    assert!(err.contains("unknown notifier"), "{err}");
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_watch_api_checks_its_token_and_input_and_a_post_leads_to_a_webhook() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(&id(1), 1, Outcome::Completed)],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let ops = reserve_port();
    std::fs::write(work.path().join("api-token"), "s3cret-token\n").unwrap();
    let rest = format!(
        "{}http:\n  listen: {ops}\n  api_token_file: {}\n",
        hook(&rx.url("/h")),
        work.path().join("api-token").display(),
    );
    work.write_config(&sim.base_url(), &poll(), &rest);
    let mut d = Daemon::start(&work);
    d.wait_for("ready", SECS(10)).await;
    let url = format!("http://{ops}/v1/watch");
    let body = serde_json::json!({"dataset_id": DS, "document_ids": [id(1)], "labels": {"k": "v"}});
    let post = |token: Option<&str>, body: String| {
        let mut r = http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post(None, body.to_string()).await.unwrap()), 401);
    assert_eq!(
        status(post(Some("wrong"), body.to_string()).await.unwrap()),
        401
    );
    let bad = serde_json::json!({"dataset_id": "x1", "document_ids": ["1"]});
    let r = post(Some("s3cret-token"), bad.to_string()).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["field"], "dataset_id");
    let big = format!(
        "{{\"dataset_id\": \"{DS}\", \"pad\": \"{}\"}}",
        "x".repeat(70_000)
    );
    assert_eq!(status(post(Some("s3cret-token"), big).await.unwrap()), 413);
    assert_eq!(
        status(post(Some("s3cret-token"), body.to_string()).await.unwrap()),
        201
    );
    assert_eq!(
        status(post(Some("s3cret-token"), body.to_string()).await.unwrap()),
        200
    );
    wait_until("the webhook", SECS(20), || !rx.requests().is_empty()).await;
    assert_eq!(rx.requests()[0].json()["data"]["labels"]["k"], "v");
    let list: serde_json::Value = helper::get_json(url.clone()).await;
    assert_eq!(list["entries"].as_array().unwrap().len(), 1);
    let del = http()
        .delete(format!("{url}/{DS}?document_id={}", id(1)))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 200);
    assert!(
        !d.lines().join("\n").contains("s3cret-token"),
        "the token is never logged"
    );
    d.stop().await;
    // Without an api token the write routes do not exist.
    work.write_config(
        &sim.base_url(),
        &poll(),
        &format!("http:\n  listen: {ops}\n{}", watch(DS, &[&id(1)])),
    );
    let mut d = Daemon::start(&work);
    d.wait_for("ready", SECS(10)).await;
    assert_eq!(
        status(post(Some("s3cret-token"), body.to_string()).await.unwrap()),
        404
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn coze_studio_pages_from_zero_and_a_big_knowledge_base_is_listed_whole() {
    // The processing document is on page 0: a client that paged from 1 would never see it.
    let mut docs = vec![doc(&id(300), 2, Outcome::Completed)];
    docs.extend((1..=250).map(|i| doc(&id(i), 0, Outcome::Completed)));
    let mut s = scenario(vec![(DS, docs)]);
    s.studio = true;
    let (sim, rx, d) = watch_whole(s, "  flavor: studio\n").await;
    d.until("the processing document", SECS(20), |_| {
        !rx.requests().is_empty()
    })
    .await;
    listings(&d, &sim, 4).await;
    // 251 documents on pages 0..2 of 100; the terminal ones are the baseline.
    assert_eq!(received(&rx), [(id(300), "document.completed".to_string())]);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_visible_in_status_and_metrics() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(&id(1), 3600, Outcome::Completed)],
    )]))
    .await;
    let ops = reserve_port();
    let work = Workdir::new();
    let good = format!("http:\n  listen: {ops}\n{}", watch(DS, &[&id(1)]));
    work.write_config(&sim.base_url(), &poll(), &good);
    let mut d = Daemon::start(&work);
    d.wait_for("ready", SECS(10)).await;
    let metrics = || helper::metrics_text(ops);
    assert!(
        metrics()
            .await
            .contains("coze_watch_config_reload_success 1")
    );
    let text = std::fs::read_to_string(work.config_path()).unwrap();
    std::fs::write(
        work.config_path(),
        text.replace("min_interval", "min_intervall"),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for("reload failed", SECS(10)).await;
    let m = metrics().await;
    assert!(m.contains("coze_watch_config_reload_success 0"), "{m}");
    assert!(
        !m.contains("coze_watch_config_last_reload_timestamp_seconds 0\n"),
        "{m}"
    );
    let status: serde_json::Value = helper::get_json(format!("http://{ops}/status")).await;
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("min_intervall"),
        "{status}"
    );
    d.stop().await;
    let (code, out, _) = work.cli(&["status"]);
    assert_eq!(code, 78, "the config is still broken: {out}");
    std::fs::write(work.config_path(), text).unwrap();
    let (code, out, err) = work.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("REFUSED"), "{out}");
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_repeats_its_first_page_never_makes_the_listing_loop() {
    let mut docs = vec![doc(&id(300), 2, Outcome::Completed)];
    docs.extend((1..=250).map(|i| doc(&id(i), 0, Outcome::Completed)));
    let mut s = scenario(vec![(DS, docs)]);
    s.faults = Faults {
        repeat_pages: true,
        ..Faults::default()
    };
    let (sim, rx, d) = watch_whole(s, "").await;
    d.until("the document on the first page", SECS(20), |_| {
        !rx.requests().is_empty()
    })
    .await;
    let before = sim.stats().listings;
    d.advance(SECS(60)).await;
    // One listing a second, each two pages at most (the second repeats the first and ends it).
    let per_second = (sim.stats().listings - before) as f64 / 60.0;
    assert!(
        (0.5..=2.2).contains(&per_second),
        "{per_second} listing requests a second"
    );
    d.stop().await;
    sim.shutdown().await;
}
