//! `coze-watch upload` and `wait --all` against the simulator on 127.0.0.1: request grouping,
//! what is refused before any request, partial failure, unknown outcomes, permissions, and
//! handing the documents to the daemon's store.

mod helper;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use coze_watch::sim::{Faults, Injection, Outcome, SimHandle};
use helper::daemon::{FAST_POLL, Workdir};
use helper::{doc, scenario, start_sim};
use tokio::process::Command;

const DS: &str = "7400000000000000001";

async fn upload(sim: &SimHandle, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .arg("upload")
        .arg(DS)
        .args(args)
        .args(["--base-url", &sim.base_url()])
        .env_clear()
        .env("COZE_API_TOKEN", sim.token())
        .output()
        .await
        .unwrap()
}

async fn wait_all(sim: &SimHandle, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(["wait", DS, "--all", "--base-url", &sim.base_url()])
        .args(args)
        .env_clear()
        .env("COZE_API_TOKEN", sim.token())
        .output()
        .await
        .unwrap()
}

fn files(dir: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let p: PathBuf = dir.join(n);
            std::fs::write(&p, format!("contents of {n}")).unwrap();
            p.display().to_string()
        })
        .collect()
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("doc-{i:02}.txt")).collect()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn created_lines(o: &Output) -> usize {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("created "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_three_files_take_three_requests_and_wait_reports_the_outcome() {
    let mut s = scenario(vec![(DS, vec![])]);
    s.create_duration = Duration::from_secs(1);
    let sim = start_sim(s).await;
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), &numbered(23));
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let o = upload(&sim, &[&args[..], &["--wait", "--timeout", "60s"]].concat()).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(sim.stats().creates, 3, "10 + 10 + 3");
    assert_eq!(created_lines(&o), 23, "{}", out(&o));
    assert!(
        out(&o).contains("\"doc-23.txt\": completed in"),
        "{}",
        out(&o)
    );
    // One file the simulator fails to process: the wait says 1.
    let bad = files(
        dir.path(),
        &["fail-scan.pdf".to_string(), "ok.pdf".to_string()],
    );
    let o = upload(
        &sim,
        &[bad[0].as_str(), bad[1].as_str(), "--wait", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["documents"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["wait"]["outcome"], "failed", "{v}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_oversized_files_are_refused_before_any_request() {
    let sim = start_sim(scenario(vec![(DS, vec![])])).await;
    let dir = tempfile::tempdir().unwrap();
    let ok = files(dir.path(), &["a.pdf".to_string()]);
    let png = files(dir.path(), &["photo.png".to_string()]);
    let o = upload(&sim, &[ok[0].as_str(), png[0].as_str()]).await;
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("photo.png: .png files cannot be uploaded"),
        "{}",
        out(&o)
    );
    let big = dir.path().join("big.pdf");
    std::fs::write(&big, vec![b'x'; 2048]).unwrap();
    let o = upload(
        &sim,
        &[
            ok[0].as_str(),
            big.to_str().unwrap(),
            "--max-file-size",
            "1KiB",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("big.pdf: 2048 bytes, over --max-file-size (1024 bytes)"),
        "{}",
        out(&o)
    );
    assert_eq!(sim.stats().creates, 0, "no request was made");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_names_its_files_and_the_others_are_printed_and_watched() {
    let sim = start_sim(scenario(vec![(DS, vec![])])).await;
    sim.inject_create(vec![
        Injection::Pass,
        Injection::Status {
            http: 500,
            code: Some(5000),
            retry_after_secs: None,
        },
    ]);
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, "");
    let paths = files(work.path(), &numbered(23));
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let config = work.config_path();
    let tail = [
        "--watch",
        "--batch",
        "nightly",
        "--label",
        "team=kb",
        "-c",
        config.to_str().unwrap(),
    ];
    let o = upload(&sim, &[&args[..], &tail[..]].concat()).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert_eq!(created_lines(&o), 13, "{}", out(&o));
    let text = out(&o);
    let failed = text
        .lines()
        .find(|l| l.starts_with("not created (request 2/3)"))
        .unwrap_or_else(|| panic!("{text}"));
    for n in 11..=20 {
        assert!(failed.contains(&format!("doc-{n}.txt")), "{failed}");
    }
    assert!(
        failed.contains("code 5000") && failed.contains("logid SIM"),
        "{failed}"
    );
    assert!(!failed.contains("doc-21.txt") && !failed.contains("doc-10.txt"));
    let (code, list, err) = work.cli(&["watch", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 13, "{list}");
    assert!(
        entries
            .iter()
            .all(|e| e["batch"] == "nightly" && e["labels"]["team"] == "kb")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_times_out_is_an_unknown_outcome_and_not_retried() {
    let sim = start_sim(scenario(vec![(DS, vec![])])).await;
    sim.inject_create(vec![Injection::Delay { ms: 3000 }]);
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), &["slow.pdf".to_string()]);
    let o = upload(&sim, &[paths[0].as_str(), "--request-timeout", "1s"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("unknown outcome (request 1/1; not retried"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("slow.pdf"), "{}", out(&o));
    assert_eq!(sim.stats().creates, 1, "never sent twice");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_create_or_list_permission_exits_4_naming_it() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc("7500000000000000001", 60, Outcome::Completed)],
    )]))
    .await;
    sim.set_faults(Faults {
        create_denied: true,
        listing_denied: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), &["a.txt".to_string()]);
    let o = upload(&sim, &[paths[0].as_str()]).await;
    assert_eq!(o.status.code(), Some(4), "{}", out(&o));
    assert!(out(&o).contains("createDocument"), "{}", out(&o));
    let o = wait_all(&sim, &[]).await;
    assert_eq!(o.status.code(), Some(4), "{}", out(&o));
    assert!(out(&o).contains("listDocument"), "{}", out(&o));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_all_waits_for_the_documents_processing_when_it_starts() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc("7500000000000000001", 1, Outcome::Completed),
            doc("7500000000000000002", 2, Outcome::Failed),
        ],
    )]))
    .await;
    let o = wait_all(&sim, &["--timeout", "30s", "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "one failed: {}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["documents"].as_array().unwrap().len(), 2, "{v}");
    assert!(
        out(&o).contains("waiting for 2 processing document(s)"),
        "{}",
        out(&o)
    );
    // Both are terminal now: nothing is processing, done at once.
    let o = wait_all(&sim, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("no document of knowledge base"),
        "{}",
        out(&o)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_watch_hands_a_batch_to_the_daemon_and_it_completes_once_across_a_restart() {
    use helper::daemon::Daemon;
    use helper::receiver::Receiver;
    let sim = start_sim(scenario(vec![(DS, vec![])])).await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n    events: [batch.completed]\n",
        rx.url("/h")
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    d.wait_for("ready", Duration::from_secs(10)).await;
    let names = [
        "a.txt".to_string(),
        "b.txt".to_string(),
        "fail-c.txt".to_string(),
    ];
    let paths = files(work.path(), &names);
    let config = work.config_path();
    let mut args: Vec<&str> = paths.iter().map(String::as_str).collect();
    args.extend([
        "--batch",
        "nightly",
        "--watch",
        "-c",
        config.to_str().unwrap(),
    ]);
    let o = upload(&sim, &args).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).lines().count() >= 3, "{}", out(&o));
    // A restart while the documents process.
    d.stop().await;
    let mut d = Daemon::start(&work);
    helper::wait_until("batch.completed", Duration::from_secs(20), || {
        !rx.requests().is_empty()
    })
    .await;
    // Nothing fires again: not on the polls that follow, not at the next start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.stop().await;
    let mut again = Daemon::start(&work);
    again.wait_for("watching", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    again.stop().await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "once, across restarts");
    let body = reqs[0].json();
    assert_eq!(body["type"], "batch.completed");
    assert_eq!(body["data"]["batch"], "nightly");
    assert_eq!(
        body["data"]["counts"],
        serde_json::json!({"completed": 2, "failed": 1, "missing": 0, "timed_out": 0})
    );
    let failed: Vec<&serde_json::Value> = body["data"]["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["state"] == "failed")
        .collect();
    assert_eq!(failed[0]["document_name"], "fail-c.txt");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("parse error")
    );
    sim.shutdown().await;
}
