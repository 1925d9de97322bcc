//! The promise: no lost notification, no unexplained duplicate, no leaked secret, whatever the
//! API, the receiver or the machine does. A fault matrix, a kill -9 loop, and secret hygiene.

mod helper;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use coze_watch::sim::{Injection, Outcome, SimHandle};
use coze_watch::tracker::Lifecycle;
use helper::daemon::{Daemon, Workdir};
use helper::receiver::Receiver;
use helper::workload::{Workload, received_by_document, scenario_of, watch_all, workload};
use helper::{doc, scenario, start_sim, wait_until};
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn hook(url: &str) -> String {
    format!(
        "  - name: hook\n    type: webhook\n    url: {url}\n    events: [document.completed, document.failed]\n    retry: {{initial: 1s, max: 2s, multiplier: 2}}\n"
    )
}

/// Waits until every one of the `expected` documents' events arrived, lets redeliveries (if
/// any) land, and returns the event ids received per document; asserts none is missing.
async fn all_received(rx: &Receiver, expected: usize, what: &str) -> BTreeMap<String, Vec<String>> {
    wait_until("every terminal event", SECS(60), || {
        received_by_document(rx).len() >= expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let by_doc = received_by_document(rx);
    assert_eq!(by_doc.len(), expected, "{what}");
    by_doc
}

/// The simulator serving `w`, a webhook receiver, and a config watching all of `w` that
/// notifies the receiver.
async fn serve_workload(w: &Workload) -> (SimHandle, Receiver, Workdir) {
    let sim = start_sim(scenario_of(w)).await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    work.write_config(
        &sim.base_url(),
        FAULT_POLL,
        &format!("{}{}", hook(&rx.url("/h")), watch_all(w)),
    );
    (sim, rx, work)
}

const FAULT_POLL: &str = "  min_interval: 500ms\n  max_interval: 2s\n  error_backoff: {initial: 200ms, max: 1s, multiplier: 2}\n";

#[tokio::test(start_paused = true)]
async fn every_fault_kind_in_turn_loses_and_duplicates_nothing() {
    // In-process with paused time: the faults and the documents' 3..40 s pass in a moment.
    let w = workload(4, 50, 3, 40);
    let (sim, rx, work) = serve_workload(&w).await;
    let panics = count_panics();
    let d = helper::engine::InProcess::start_in(work, &sim).await;
    let status = |http, code, retry_after_secs| Injection::Status {
        http,
        code,
        retry_after_secs,
    };
    let kinds: Vec<(&str, Injection)> = vec![
        ("5xx", status(500, Some(5000), None)),
        ("HTML 502", Injection::Html { http: 502 }),
        ("429 with Retry-After", status(429, Some(4013), Some(1))),
        ("code 4013", status(200, Some(4013), None)),
        ("code 5000", status(200, Some(5000), None)),
        (
            "malformed JSON",
            Injection::Raw {
                http: 200,
                body: "{\"code\":0,\"data\":{\"data\":[{\"document_id\":".into(),
            },
        ),
        ("truncated JSON", Injection::Truncated),
        ("unknown extra fields", Injection::ExtraFields),
        (
            "unknown status value",
            Injection::UnknownStatus { status: 7 },
        ),
        ("progress backwards", Injection::ProgressBack),
        (
            "slow past the request timeout",
            Injection::Delay { ms: 2500 },
        ),
        ("connection reset", Injection::Reset),
    ];
    let mut injected = 0;
    for (what, inj) in kinds {
        sim.inject(vec![inj.clone(), inj.clone(), inj]);
        injected += 3;
        let want = injected;
        wait_until(&format!("the {what} faults to be served"), SECS(30), || {
            sim.stats().faults >= want
        })
        .await;
    }
    let expected: usize = w.iter().map(|(_, docs)| docs.len()).sum();
    let by_doc = all_received(&rx, expected, "every document's terminal event arrived").await;
    for (doc, ids) in &by_doc {
        assert_eq!(
            ids.len(),
            1,
            "{doc} was delivered {} times: {ids:?}",
            ids.len()
        );
    }
    for (ds, docs) in &w {
        for x in docs {
            let want = if x.outcome == Outcome::Failed {
                Lifecycle::Failed
            } else {
                Lifecycle::Completed
            };
            let stored = d.document(ds, &x.id).unwrap();
            assert_eq!(stored.state, want, "{}", x.id);
        }
    }
    // The daemon survived every fault: no panic anywhere (poll tasks included), a clean stop.
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a panic in the daemon"
    );
    d.stop().await;
    sim.shutdown().await;
}

/// Counts panics anywhere in this test process from now on (the default report still runs):
/// an in-process daemon's task that panics is otherwise only a log line.
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    &PANICS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_loses_nothing_and_duplicates_keep_their_event_id() {
    // Documents finish over the first 12 s, the twenty kills land over about the same span
    // (200 ms to 1 s after each start), so most kills hit polling and delivering.
    let w = workload(10, 50, 1, 12);
    let (sim, rx, work) = serve_workload(&w).await;
    let mut seed: u64 = 20261130;
    let mut opened = 0;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = 200 + (seed >> 33) % 800;
        let mut d = Daemon::start(&work);
        // Random moments from the start: some land in start-up, most while polling and
        // delivering.
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.signal(Signal::SIGKILL);
        let status = d.wait_exit(SECS(5)).await;
        assert!(
            status.code().is_none(),
            "round {round}: exited by itself: {status:?}\n{}",
            d.lines().join("\n")
        );
        let log = d.lines().join("\n");
        assert!(
            !log.contains("corrupt") && !log.contains(" ERROR "),
            "round {round}: {log}"
        );
        opened += d.count("store open");
    }
    assert!(
        opened >= 10,
        "most rounds got past start-up ({opened} of 20)"
    );
    let mut d = Daemon::start(&work);
    d.wait_for("store open", SECS(10)).await;
    let expected: usize = w.iter().map(|(_, docs)| docs.len()).sum();
    let by_doc = all_received(&rx, expected, "every event delivered at least once").await;
    let mut duplicates = 0;
    for (doc, ids) in &by_doc {
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "{doc} fired twice with different event ids: {ids:?}"
        );
        duplicates += ids.len() - 1;
    }
    eprintln!("{duplicates} redeliveries after kill -9, each with its original event id");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_secrets_appear_nowhere() {
    const TOKEN: &str = "pat_SENTINEL-7f3a9c2e-TOKEN";
    let key =
        base64::engine::general_purpose::STANDARD.encode(b"SENTINEL-WEBHOOK-KEY-0123456789ab");
    let secret = format!("whsec_{key}");
    let mut sc = scenario(vec![(
        "7400000000000000001",
        vec![
            doc("7500000000000000001", 1, Outcome::Completed),
            doc("7500000000000000002", 1, Outcome::Failed),
        ],
    )]);
    sc.token = TOKEN.into();
    let sim = start_sim(sc).await;
    let rx = Receiver::start(vec![helper::receiver::Reply::Status(500)]).await;
    let work = Workdir::new();
    let out = work.path().join("env.txt");
    let script = work.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {}\ncat >> {}\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let notifiers = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n    secret: ${{HOOK_SECRET}}\n    headers: {{Authorization: \"Bearer ${{HOOK_SECRET}}\"}}\n    retry: {{initial: 1s, max: 1s, multiplier: 1}}\n  - name: run\n    type: exec\n    command: [\"{}\"]\n",
        rx.url("/h"),
        script.display(),
    );
    let watched = helper::daemon::watch(
        "7400000000000000001",
        &[
            "7500000000000000001",
            "7500000000000000002",
            "7500000000000000099",
        ],
    );
    let mut leaks: Vec<(String, String)> = Vec::new();
    let mut check = |what: &str, text: &str| {
        if text.contains(TOKEN) || text.contains(&key) {
            leaks.push((what.to_string(), text.chars().take(400).collect()));
        }
    };
    for format in ["text", "json"] {
        let asked = sim.stats().requests;
        let work_rest = format!("{notifiers}log:\n  format: {format}\n{watched}");
        work.write_config(&sim.base_url(), FAULT_POLL, &work_rest);
        let mut d = Daemon::start_with(
            &work,
            &[
                ("COZE_API_TOKEN", TOKEN),
                ("HOOK_SECRET", &secret),
                ("RUST_LOG", "trace"),
            ],
        );
        // Polls (the token in every request) logged at trace level in both formats; the
        // first run also fails a delivery and runs the hook (the secret in their paths).
        wait_until("two polls", SECS(15), || sim.stats().requests >= asked + 2).await;
        if format == "text" {
            d.wait_for("delivery failed; will retry", SECS(15)).await;
            wait_until("the exec hook", SECS(15), || out.exists()).await;
        }
        d.stop().await;
        check(&format!("{format} log"), &d.lines().join("\n"));
    }
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
            .args(args)
            .arg("-c")
            .arg(work.config_path())
            .env_clear()
            .env("HOME", work.path())
            .env("COZE_API_TOKEN", TOKEN)
            .env("HOOK_SECRET", &secret)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    check("status", &run(&["status"]));
    check("status --json", &run(&["status", "--json"]));
    check("deliveries", &run(&["deliveries"]));
    check("check", &run(&["check"]));
    check("notify-test", &run(&["notify-test", "hook"]));
    for entry in std::fs::read_dir(work.state_dir()).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        check(&p.display().to_string(), &String::from_utf8_lossy(&bytes));
    }
    let child_env = std::fs::read_to_string(&out).unwrap();
    assert!(
        child_env.contains("COZE_WATCH_EVENT="),
        "the hook ran: {child_env}"
    );
    check("exec child environment", &child_env);
    // A refused token: the error path prints no token either.
    let wrong = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args([
            "wait",
            "7400000000000000001",
            "7500000000000000001",
            "--base-url",
            &sim.base_url(),
        ])
        .env_clear()
        .env("COZE_API_TOKEN", "pat_SENTINEL-7f3a9c2e-TOKEN-WRONG")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(4));
    check(
        "wait with a refused token",
        &String::from_utf8_lossy(&wrong.stderr),
    );
    assert!(
        rx.requests()
            .iter()
            .any(|r| r.header("authorization").contains(&key)),
        "the header was sent"
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    sim.shutdown().await;
}
