//! Production packaging: the systemd unit, sd_notify, the ops endpoint, `status`,
//! `deliveries` and JSON logs, against the real binary; the ops endpoint's health and
//! metrics as they move with time, in-process on virtual time.

mod helper;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use coze_watch::sim::{Injection, Outcome};
use coze_watch::tracker::Lifecycle;
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::engine::{Extras, InProcess};
use helper::receiver::{Receiver, Reply, reserve_port};
use helper::{doc, http, scenario, start_sim, wait_until};
use nix::sys::signal::Signal;

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const C: &str = "7500000000000000003";
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coze-watch")
}

fn systemd_analyze_available() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-analyze is missing on CI; .ci/run must install it"
        );
        eprintln!("skipping: systemd-analyze is not installed");
    }
    found
}

#[test]
fn the_unit_verifies_and_scores_at_most_1_5() {
    if !systemd_analyze_available() {
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/coze-watch.service"),
    )
    .unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "DynamicUser=yes",
        "StateDirectory=coze-watch",
        "ConfigurationDirectory=coze-watch",
        "LoadCredential=coze-token",
        "RestartPreventExitStatus=65 78",
        "TimeoutStopSec=30s",
        "After=network-online.target time-sync.target",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("coze-watch.service");
    std::fs::write(&copy, unit.replace("/usr/bin/coze-watch", bin())).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "verify failed: {said}");
    assert!(said.trim().is_empty(), "verify reported: {said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for coze-watch.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 1.5, "exposure {score}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_says_ready_reloading_watchdog_and_stopping() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let sock_path = work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sock_env = sock_path.display().to_string();
    let mut d = Daemon::start_with(
        &work,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "400000")],
    );
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = messages.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + SECS(30);
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                let stop = m.contains("STOPPING=1");
                sink.lock().unwrap().push(m);
                if stop {
                    return;
                }
            }
        }
    });
    let got = |m: &str| {
        messages
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.contains(m))
            .count()
    };
    wait_until("READY=1", SECS(10), || got("READY=1") >= 1).await;
    wait_until("watchdog pings", SECS(10), || got("WATCHDOG=1") >= 3).await;
    d.signal(Signal::SIGHUP);
    wait_until("READY=1 after the reload", SECS(10), || got("READY=1") >= 2).await;
    d.stop().await;
    reader.join().unwrap();
    let all = messages.lock().unwrap().clone();
    assert!(all[0].contains("READY=1"), "READY first: {all:?}");
    let reloading = all
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(all[reloading].contains("MONOTONIC_USEC="), "{all:?}");
    let ready_again = all.iter().rposition(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready_again > reloading,
        "READY=1 after RELOADING=1: {all:?}"
    );
    assert!(all.last().unwrap().contains("STOPPING=1"), "{all:?}");
    sim.shutdown().await;
}

/// `GET /healthz` of an in-process daemon's ops endpoint: (status, body).
async fn health(listen: std::net::SocketAddr) -> (u16, String) {
    let r = http()
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Advances virtual time in 100 ms steps until `/healthz` answers `want`; its body.
async fn health_turns(d: &InProcess, want: u16, limit: Duration) -> String {
    let listen = d.ops.unwrap();
    let mut waited = Duration::ZERO;
    loop {
        let (code, body) = health(listen).await;
        if code == want {
            return body;
        }
        assert!(
            waited < limit,
            "/healthz still {code} after {limit:?}: {body}"
        );
        d.advance(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

const OPS: Extras = Extras {
    events: false,
    ops: true,
};

#[tokio::test(start_paused = true)]
async fn healthz_turns_503_on_a_refused_token_and_back_to_200() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let rest = format!("http:\n  listen: 127.0.0.1:0\n{}", watch(DS, &[A]));
    let d = InProcess::start_with(&sim, FAST_POLL, &rest, OPS).await;
    d.until("a first good poll", SECS(10), |_| sim.stats().ok >= 1)
        .await;
    assert_eq!(health(d.ops.unwrap()).await.0, 200);
    let refuse = Injection::Status {
        http: 401,
        code: Some(4100),
        retry_after_secs: None,
    };
    sim.inject(vec![refuse.clone(), refuse.clone(), refuse]);
    let body = health_turns(&d, 503, SECS(15)).await;
    assert!(body.contains("API token refused"), "{body}");
    health_turns(&d, 200, SECS(600)).await;
    d.stop().await;
    sim.shutdown().await;
}

/// Every sample line of a Prometheus text exposition: name -> value (labels kept in the name).
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(name.starts_with("coze_watch_"), "{line}");
        out.insert(name.to_string(), value);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn metrics_parse_and_move_with_polls_and_deliveries() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 600, Outcome::Completed),
        ],
    )]))
    .await;
    let rest = format!("http:\n  listen: 127.0.0.1:0\n{}", watch(DS, &[A, B]));
    let d = InProcess::start_with(&sim, FAST_POLL, &rest, OPS).await;
    let listen = d.ops.unwrap();
    let scrape = || async { parse_prometheus(&helper::metrics_text(listen).await) };
    d.until("A completed", SECS(15), |d| {
        d.document(DS, A).unwrap().state == Lifecycle::Completed
    })
    .await;
    d.advance(Duration::from_millis(300)).await;
    let first = scrape().await;
    let polls = |m: &BTreeMap<String, f64>| {
        m.get("coze_watch_polls_total{result=\"ok\"}")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(polls(&first) >= 2.0, "{first:#?}");
    assert_eq!(
        first["coze_watch_events_total{type=\"document.completed\"}"],
        1.0
    );
    assert_eq!(
        first["coze_watch_deliveries_total{notifier=\"journal\",result=\"delivered\"}"],
        1.0
    );
    assert_eq!(first["coze_watch_documents{state=\"completed\"}"], 1.0);
    assert_eq!(first["coze_watch_documents{state=\"watching\"}"], 1.0);
    assert_eq!(first["coze_watch_outbox_pending"], 0.0);
    assert_eq!(first["coze_watch_healthy"], 1.0);
    assert_eq!(
        first["coze_watch_api_requests_total"],
        sim.stats().requests as f64
    );
    d.until("another poll", SECS(15), |_| {
        sim.stats().requests as f64 > first["coze_watch_api_requests_total"]
    })
    .await;
    d.advance(Duration::from_millis(200)).await;
    let second = scrape().await;
    assert!(polls(&second) > polls(&first), "polls did not move");
    d.stop().await;
    sim.shutdown().await;
}

fn listing(dir: &Path) -> Vec<(String, u32, u64)> {
    let mut v: Vec<(String, u32, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.permissions().mode(),
                std::os::unix::fs::MetadataExt::uid(&m) as u64,
            )
        })
        .collect();
    v.sort();
    v
}

/// Runs `coze-watch ARGS -c config` without blocking the runtime the simulator runs on.
async fn cli(work: &Workdir, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin())
        .args(args)
        .arg("-c")
        .arg(work.config_path())
        .env_clear()
        .env("HOME", work.path())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_what_happened_and_changes_no_file() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 1, Outcome::Failed),
            doc(C, 600, Outcome::Completed),
        ],
    )]))
    .await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A, B, C]));
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    d.wait_for(&format!("document.failed {B}"), SECS(15)).await;
    wait_until("both events delivered", SECS(10), || {
        coze_watch::store::Store::open_read_only(&work.state_dir())
            .and_then(|s| s.outbox_depth())
            .is_ok_and(|(pending, _)| pending == 0)
    })
    .await;

    let before = listing(&work.state_dir());
    let out = cli(&work, &["status", "--json"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state_of = |id: &str| {
        v["documents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["document_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(state_of(A)["state"], "completed");
    assert_eq!(state_of(A)["progress"], 100);
    assert!(state_of(A)["next_poll"].is_null());
    assert_eq!(state_of(B)["state"], "failed");
    assert_eq!(state_of(B)["reason"], "parse error: encrypted pdf");
    assert_eq!(state_of(C)["state"], "watching");
    assert!(state_of(C)["next_poll"].is_string());
    assert_eq!(v["counts"]["completed"], 1);
    assert_eq!(v["counts"]["failed"], 1);
    assert_eq!(v["counts"]["watching"], 1);
    assert_eq!(v["pending_deliveries"].as_array().unwrap().len(), 0);
    assert_eq!(
        listing(&work.state_dir()),
        before,
        "status changed the state dir (daemon running)"
    );

    d.stop().await;
    let stopped = listing(&work.state_dir());
    let out = cli(&work, &["status"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("3 documents (1 completed, 1 failed, 1 watching)"),
        "{table}"
    );
    assert_eq!(
        listing(&work.state_dir()),
        stopped,
        "status changed the state dir (daemon stopped)"
    );
    sim.shutdown().await;
}

/// A daemon whose one completed document's webhook delivery is dead: the receiver answered
/// `status` (a permanent refusal).
async fn one_dead_delivery(status: u16) -> (coze_watch::sim::SimHandle, Receiver, Workdir, Daemon) {
    dead_after(Reply::Status(status)).await
}

/// A daemon whose one completed document's webhook delivery died on `reply`.
async fn dead_after(reply: Reply) -> (coze_watch::sim::SimHandle, Receiver, Workdir, Daemon) {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![reply]).await;
    let work = Workdir::new();
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n{}",
        rx.url("/h"),
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let d = Daemon::start(&work);
    d.wait_for("delivery is dead", SECS(15)).await;
    (sim, rx, work, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_when_a_delivery_died_and_the_answer_as_text() {
    let (sim, rx, work, mut d) = dead_after(Reply::StatusBody(
        400,
        "{\"error\": \"no such hook\"}\nsee docs",
    ))
    .await;
    d.stop().await;
    for command in ["status", "deliveries"] {
        let out = cli(&work, &[command]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("-> hook"))
            .unwrap_or_else(|| panic!("{command}: no delivery line in {text}"));
        assert!(
            line.contains("(attempts 1, dead since 20"),
            "{command}: {line}"
        );
        assert!(!line.contains("next "), "{command}: {line}");
        assert!(
            line.ends_with(r#"HTTP 400: {"error": "no such hook"} see docs"#),
            "{command}: {line}"
        );
    }
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_requeued_with_deliveries_retry_is_delivered() {
    let (sim, rx, work, mut d) = one_dead_delivery(410).await;
    let event_id = rx.requests()[0].header("webhook-id").to_string();
    let listed = cli(&work, &["deliveries"]).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("1 dead deliveries"), "{text}");
    assert!(text.contains(&event_id), "{text}");
    let out = cli(&work, &["deliveries", "--retry", &event_id]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-queued 1 dead deliveries"));
    wait_until("the re-queued delivery", SECS(10), || {
        rx.requests().len() >= 2
    })
    .await;
    let second = &rx.requests()[1];
    assert_eq!(second.header("webhook-id"), event_id);
    assert_eq!(second.answered, 200);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let work = Workdir::new();
    let rest = format!("log:\n  format: json\n{}", watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    d.wait_for("document.completed", SECS(15)).await;
    d.stop().await;
    let lines = d.lines();
    assert!(lines.len() > 3);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    let event = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "document.completed")
        .unwrap();
    assert_eq!(event["document_id"], A);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_fields_are_plain_values_and_api_errors_carry_msg_and_logid() {
    let mut a = doc(A, 1, Outcome::Completed);
    a.name = Some("a \"quoted\" name.pdf".into());
    let sim = start_sim(scenario(vec![(DS, vec![a, doc(B, 1, Outcome::Completed)])])).await;
    // The first poll meets a 5xx, the second a 400 that bisection must split.
    sim.inject(vec![
        Injection::Status {
            http: 500,
            code: Some(5000),
            retry_after_secs: None,
        },
        Injection::Status {
            http: 400,
            code: Some(4000),
            retry_after_secs: None,
        },
    ]);
    let listen = reserve_port();
    let work = Workdir::new();
    let rest = format!(
        "log:\n  format: json\nhttp:\n  listen: {listen}\n{}    labels: {{team: kb}}\n",
        watch(DS, &[A, B])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {B}"), SECS(15))
        .await;
    let metrics = helper::metrics_text(listen).await;
    d.stop().await;
    let lines: Vec<serde_json::Value> = d
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = lines
        .iter()
        .find(|v| v["event"] == "document.completed" && v["document_id"] == A)
        .unwrap();
    assert_eq!(event["document_name"], "a \"quoted\" name.pdf", "{event}");
    assert_eq!(
        event["labels"],
        serde_json::json!({"team": "kb"}),
        "{event}"
    );
    assert_eq!(event["file_type"], "pdf");
    assert!(event["progress"].is_i64(), "{event}");
    let with_msg = |needle: &str| {
        lines
            .iter()
            .find(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no line with {needle:?}"))
            .clone()
    };
    for needle in ["poll failed", "splitting it"] {
        let line = with_msg(needle);
        let logid = line["logid"].as_str().unwrap_or_default();
        assert!(logid.starts_with("SIM"), "{line}");
        assert!(
            !line["msg"].as_str().unwrap_or_default().is_empty(),
            "{line}"
        );
    }
    let counted = parse_prometheus(&metrics);
    assert_eq!(
        counted.get("coze_watch_api_errors_total{kind=\"bad_request\"}"),
        Some(&1.0),
        "{metrics}"
    );
    assert_eq!(
        counted.get("coze_watch_api_errors_total{kind=\"transient\"}"),
        Some(&1.0),
        "{metrics}"
    );
    sim.shutdown().await;
}

/// The daemon watching document A, with its ops endpoint on a free port.
fn with_ops_endpoint(sim: &coze_watch::sim::SimHandle) -> (std::net::SocketAddr, Workdir, Daemon) {
    let listen = reserve_port();
    let work = Workdir::new();
    let rest = format!("http:\n  listen: {listen}\n{}", watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let d = Daemon::start(&work);
    (listen, work, d)
}

/// Parses a metrics exposition with the Prometheus project's own Python parser
/// (`python3-prometheus-client`): `openmetrics` or `classic`. Returns the sample count, or
/// `None` (after one line saying so) when the parser is not installed outside CI.
fn parse_with_prometheus_client(format: &str, text: &str) -> Option<usize> {
    let script = r#"
import sys
kind = sys.argv[1]
if kind == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))
print(n)
"#;
    let python = "/usr/bin/python3";
    let probe = Command::new(python)
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs python3-prometheus-client (apt) to parse /metrics"
        );
        eprintln!(
            "skipped: python3-prometheus-client is not installed (apt install python3-prometheus-client)"
        );
        return None;
    }
    let mut child = Command::new(python)
        .args(["-c", script, format])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_speak_openmetrics_or_the_classic_format_as_the_scraper_asks() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let (listen, _work, mut d) = with_ops_endpoint(&sim);
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    let scrape = |accept: Option<&'static str>| async move {
        let mut req = http().get(format!("http://{listen}/metrics"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await.unwrap();
        let ty = resp.headers()["content-type"].to_str().unwrap().to_string();
        (ty, resp.text().await.unwrap())
    };
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (open_type, open) = scrape(Some(prometheus)).await;
    let (classic_type, classic) = scrape(None).await;
    d.stop().await;
    assert_eq!(
        open_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(classic_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(classic.contains("coze_watch_events_total{type=\"document.completed\"} 1"));
    if let (Some(a), Some(b)) = (
        parse_with_prometheus_client("openmetrics", &open),
        parse_with_prometheus_client("classic", &classic),
    ) {
        assert!(a > 10 && b > 10, "{a} and {b} samples");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn status_without_a_store_exits_65_and_creates_nothing() {
    let work = Workdir::new();
    work.write_config("http://127.0.0.1:9", FAST_POLL, &watch(DS, &[A]));
    let out = cli(&work, &["status"]).await;
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"));
    assert!(!work.state_dir().exists(), "status created the state dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_can_be_dropped() {
    let (sim, rx, work, mut d) = one_dead_delivery(400).await;
    d.stop().await;
    let id = rx.requests()[0].header("webhook-id").to_string();
    let out = cli(&work, &["deliveries", "--drop", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dropped 1 dead deliveries"), "{text}");
    assert!(text.contains("0 dead deliveries"), "{text}");
    sim.shutdown().await;
}
