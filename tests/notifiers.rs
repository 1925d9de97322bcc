//! Webhook and exec notifiers end to end: the simulator and a receiver on 127.0.0.1; webhook
//! retry timing in-process on virtual time, child processes and kill -9 with the real binary.

mod helper;

use std::path::Path;
use std::time::Duration;

use coze_watch::sim::Outcome;
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::engine::{Extras, InProcess, Logs};
use helper::receiver::{Receiver, Reply, reserve_port, verify, verify_request};
use helper::{doc, scenario, start_sim, wait_until};
use nix::sys::signal::Signal;

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECS: fn(u64) -> Duration = Duration::from_secs;
const EVENTS: Extras = Extras {
    events: true,
    ops: false,
};
/// Fast retries for tests.
const FAST_RETRY: &str = "{initial: 1s, max: 1s, multiplier: 1, max_attempts: 12, max_age: 1h}";

fn hook(name: &str, url: &str, retry: &str) -> String {
    format!(
        "  - name: {name}\n    type: webhook\n    url: {url}\n    secret: {SECRET}\n    retry: {retry}\n"
    )
}

/// One document finishing after 1 s, and a webhook to a loopback port nobody listens on yet
/// (start a `Receiver::start_on(addr, ..)` there later).
async fn hook_not_listening_yet() -> (coze_watch::sim::SimHandle, std::net::SocketAddr, Workdir) {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let addr = reserve_port();
    let work = Workdir::new();
    let url = format!("http://{addr}/h");
    let rest = format!("{}{}", hook("hook", &url, FAST_RETRY), watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    (sim, addr, work)
}

#[test]
fn the_test_receivers_verifier_reproduces_the_published_vector() {
    assert!(verify(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
    assert!(!verify(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265331",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_signed_per_standard_webhooks_and_carries_the_event() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}{}",
        hook("hook", &rx.url("/coze"), FAST_RETRY),
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    wait_until("the delivery", SECS(15), || !rx.requests().is_empty()).await;
    let r = &rx.requests()[0];
    assert_eq!(r.path, "/coze");
    assert!(
        verify_request(SECRET, r),
        "signature does not verify: {r:?}"
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("user-agent"),
        format!("coze-watch/{}", env!("CARGO_PKG_VERSION"))
    );
    let body = r.json();
    assert_eq!(body["type"], "document.completed");
    assert_eq!(body["data"]["event_id"], r.header("webhook-id"));
    assert_eq!(body["data"]["document_id"], A);
    assert_eq!(body["data"]["previous_status"], 0);
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let now = coze_watch::wall::UnixMs::now().0 / 1000;
    assert!((now - ts).abs() <= 5, "timestamp {ts} vs now {now}");
    d.stop().await;
    sim.shutdown().await;
}

/// In-process with paused time: the retry schedule runs on the daemon's one clock.
#[tokio::test(start_paused = true)]
async fn three_500s_then_200_is_delivered_once_with_the_same_webhook_id() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(500),
    ])
    .await;
    let work = Workdir::new();
    let rest = format!(
        "{}{}",
        hook("hook", &rx.url("/h"), FAST_RETRY),
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let d = InProcess::start_in(work, &sim).await;
    d.until("four attempts", SECS(20), |_| rx.requests().len() >= 4)
        .await;
    d.advance(Duration::from_secs(10)).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 4, "delivered once after three failures");
    assert_eq!(
        reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    let id = reqs[0].header("webhook-id").to_string();
    assert!(id.starts_with("evt_"));
    assert!(reqs.iter().all(|r| r.header("webhook-id") == id));
    assert!(
        reqs.iter().all(|r| verify_request(SECRET, r)),
        "each attempt signs anew"
    );
    for w in reqs.windows(2) {
        assert!(
            w[1].at - w[0].at >= Duration::from_millis(900),
            "retry.initial is 1s"
        );
    }
    // Each attempt is stamped by the daemon's one clock: three 1 s retries, 3 s apart or more.
    let stamp = |i: usize| reqs[i].header("webhook-timestamp").parse::<i64>().unwrap();
    assert!(stamp(3) - stamp(0) >= 3, "{} -> {}", stamp(0), stamp(3));
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_429_retry_after_is_honoured() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![Reply::RetryAfter(429, 3)]).await;
    let rest = format!(
        "{}{}",
        hook("hook", &rx.url("/h"), FAST_RETRY),
        watch(DS, &[A])
    );
    let d = InProcess::start(&sim, FAST_POLL, &rest).await;
    d.until("the second attempt", SECS(20), |_| rx.requests().len() >= 2)
        .await;
    let reqs = rx.requests();
    let gap = reqs[1].at - reqs[0].at;
    // retry.initial is 1 s: the answer's 3 s win.
    assert!((SECS(3)..SECS(4)).contains(&gap), "{gap:?}");
    assert_eq!(reqs[1].answered, 200);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_410_or_400_or_a_redirect_makes_the_delivery_dead_without_retry() {
    let logs = Logs::capture();
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let gone = Receiver::start(vec![Reply::Status(410)]).await;
    let bad = Receiver::start(vec![Reply::Status(400)]).await;
    let moved = Receiver::start(vec![Reply::Redirect("/elsewhere")]).await;
    let rest = format!(
        "{}{}{}{}",
        hook("gone", &gone.url("/h"), FAST_RETRY),
        hook("bad", &bad.url("/h"), FAST_RETRY),
        hook("moved", &moved.url("/h"), FAST_RETRY),
        watch(DS, &[A])
    );
    let d = InProcess::start(&sim, FAST_POLL, &rest).await;
    d.until("three dead deliveries", SECS(15), |d| dead(d).len() == 3)
        .await;
    d.advance(SECS(60)).await;
    for rx in [&gone, &bad, &moved] {
        assert_eq!(rx.requests().len(), 1, "no retry");
    }
    assert_eq!(
        moved.requests()[0].path,
        "/h",
        "the redirect is not followed"
    );
    let why: Vec<String> = dead(&d)
        .into_iter()
        .map(|r| format!("{}: {}", r.notifier, r.last_error.unwrap_or_default()))
        .collect();
    assert!(
        why.iter()
            .any(|w| w.starts_with("moved: ") && w.contains("redirects are not followed")),
        "{why:?}"
    );
    assert_eq!(logs.count("delivery is dead"), 3);
    d.stop().await;
    sim.shutdown().await;
}

/// The store's dead deliveries.
fn dead(d: &InProcess) -> Vec<coze_watch::store::DeliveryRow> {
    coze_watch::store::Store::open_read_only(&d.state_dir())
        .unwrap()
        .deliveries("dead", 100)
        .unwrap()
}

/// The store's pending deliveries.
fn pending(d: &InProcess) -> Vec<coze_watch::store::DeliveryRow> {
    coze_watch::store::Store::open_read_only(&d.state_dir())
        .unwrap()
        .deliveries("pending", 100)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_receiver_down_across_a_daemon_restart_gets_the_event_once() {
    let (sim, addr, work) = hook_not_listening_yet().await;
    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.until("a failed attempt", SECS(15), |d| {
        pending(d).iter().any(|r| r.attempts >= 1)
    })
    .await;
    let work = d.stop().await;
    let rx = Receiver::start_on(addr, vec![]).await;
    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.until("the delivery", SECS(15), |_| !rx.requests().is_empty())
        .await;
    d.advance(SECS(60)).await;
    assert_eq!(rx.requests().len(), 1);
    assert!(d.events().is_empty(), "not fired again: {:?}", d.events());
    assert!(pending(&d).is_empty());
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_commit_before_delivery_delivers_exactly_once_with_the_original_id() {
    let (sim, addr, work) = hook_not_listening_yet().await;
    let d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    d.wait_for("delivery failed; will retry", SECS(15)).await;
    let line = d
        .lines()
        .into_iter()
        .find(|l| l.contains("document.completed"))
        .unwrap();
    let original = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("event_id="))
        .unwrap()
        .to_string();
    d.signal(Signal::SIGKILL);
    drop(d);
    let rx = Receiver::start_on(addr, vec![]).await;
    let mut d = Daemon::start(&work);
    wait_until("the delivery", SECS(15), || !rx.requests().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "exactly once");
    assert_eq!(reqs[0].header("webhook-id"), original);
    assert_eq!(reqs[0].json()["data"]["event_id"], original.as_str());
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_one_marked_event_and_reports_the_outcome() {
    let rx = Receiver::start(vec![]).await;
    let work = Workdir::new();
    let dead = format!("http://{}/h", reserve_port());
    let rest = format!(
        "{}{}{}",
        hook("hook", &rx.url("/h"), FAST_RETRY),
        hook("down", &dead, FAST_RETRY),
        watch(DS, &[A])
    );
    work.write_config("http://127.0.0.1:9", FAST_POLL, &rest);
    let run = |name: &str| {
        assert_cmd::Command::cargo_bin("coze-watch")
            .unwrap()
            .env_clear()
            .env("COZE_API_TOKEN", "pat_x")
            .env("HOME", work.path())
            .args(["notify-test", name, "-c"])
            .arg(work.config_path())
            .timeout(SECS(30))
            .output()
            .unwrap()
    };
    let out = tokio::task::spawn_blocking({
        let run = run("hook");
        move || run
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered test event evt_"));
    let r = &rx.requests()[0];
    assert_eq!(r.json()["data"]["test"], true);
    assert!(verify_request(SECRET, r));
    let out = run("down");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not delivered"));
    assert_eq!(run("nosuch").status.code(), Some(1));
}

// ---- exec ----

fn script(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{text}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn exec(name: &str, command: &str, out: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    type: exec\n    command: [\"{command}\"]\n    env: {{OUT_DIR: \"{}\"}}\n{extra}",
        out.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_gets_the_event_on_stdin_and_env_and_hostile_names_stay_data() {
    let work = Workdir::new();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let marks = work.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let evil = format!("evil $(touch {m}/a) `touch {m}/b`; touch {m}/c \"q' \nline2.pdf");
    let mut d1 = doc(A, 1, Outcome::Completed);
    d1.name = Some(evil.clone());
    let mut sc = scenario(vec![(DS, vec![d1])]);
    sc.token = "pat_SENTINELTOKEN".into();
    let sim = start_sim(sc).await;
    let cmd = script(
        work.path(),
        "hook.sh",
        "cat > \"$OUT_DIR/stdin\"\nenv > \"$OUT_DIR/env\"\nprintf '%s' \"$COZE_DOCUMENT_NAME\" > \"$OUT_DIR/name\"\n",
    );
    let rest = format!("{}{}", exec("run", &cmd, &out, ""), watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start_with(&work, &[("COZE_API_TOKEN", "pat_SENTINELTOKEN")]);
    wait_until("the hook", SECS(15), || out.join("name").exists()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["type"], "document.completed");
    assert_eq!(stdin["data"]["document_name"], evil.as_str());
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    for want in [
        "COZE_WATCH_EVENT=document.completed".to_string(),
        format!(
            "COZE_WATCH_EVENT_ID={}",
            stdin["data"]["event_id"].as_str().unwrap()
        ),
        format!("COZE_DATASET_ID={DS}"),
        format!("COZE_DOCUMENT_ID={A}"),
        "COZE_DOCUMENT_STATUS=1".to_string(),
        "COZE_DOCUMENT_PROGRESS=100".to_string(),
        "COZE_STATUS_DESCRIPT=".to_string(),
        format!("OUT_DIR={}", out.display()),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }
    assert!(env.contains("PATH="));
    assert!(
        !env.contains("SENTINELTOKEN"),
        "the token reached the child:\n{env}"
    );
    assert!(!env.contains("COZE_API_TOKEN"), "{env}");
    assert_eq!(std::fs::read_to_string(out.join("name")).unwrap(), evil);
    assert_eq!(
        std::fs::read_dir(&marks).unwrap().count(),
        0,
        "the name ran something"
    );
    d.stop().await;
    sim.shutdown().await;
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is dead; it only waits for its parent to reap it.
        Ok(stat) => !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_is_killed_at_its_timeout_with_its_grandchildren() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let work = Workdir::new();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cmd = script(
        work.path(),
        "hang.sh",
        "sleep 300 &\necho $! > \"$OUT_DIR/grandchild\"\necho $$ > \"$OUT_DIR/child\"\nsleep 300\n",
    );
    let extra =
        "    timeout: 1s\n    retry: {initial: 1s, max: 1s, multiplier: 1, max_attempts: 1}\n";
    let rest = format!("{}{}", exec("hang", &cmd, &out, extra), watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    wait_until("the hook to start", SECS(15), || out.join("child").exists()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = |f: &str| -> i32 {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (child, grandchild) = (pid("child"), pid("grandchild"));
    assert!(alive(child) && alive(grandchild));
    d.wait_for("timed out after 1s and was killed", SECS(15))
        .await;
    wait_until("both to be gone", SECS(10), || {
        !alive(child) && !alive(grandchild)
    })
    .await;
    d.wait_for("delivery is dead", SECS(5)).await;
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_is_retried_then_dead() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let work = Workdir::new();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cmd = script(
        work.path(),
        "fail.sh",
        "echo run >> \"$OUT_DIR/runs\"\necho 'reindex: upstream refused' >&2\nexit 3\n",
    );
    let extra = "    retry: {initial: 1s, max: 1s, multiplier: 1, max_attempts: 3}\n";
    let rest = format!("{}{}", exec("fail", &cmd, &out, extra), watch(DS, &[A]));
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    d.wait_for("delivery is dead", SECS(20)).await;
    let runs = std::fs::read_to_string(out.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 3);
    let dead = d
        .lines()
        .into_iter()
        .find(|l| l.contains("delivery is dead"))
        .unwrap();
    assert!(dead.contains("gave up after 3 attempts"), "{dead}");
    assert!(dead.contains("exit status: 3"), "{dead}");
    assert!(
        dead.contains("upstream refused"),
        "the output is logged: {dead}"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_removes_a_notifier_kills_its_pending_deliveries() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let url = format!("http://{}/h", reserve_port());
    let with_hook = format!("{}{}", hook("hook", &url, FAST_RETRY), watch(DS, &[A]));
    let d = InProcess::start(&sim, FAST_POLL, &with_hook).await;
    d.until("a failed attempt", SECS(15), |d| {
        pending(d).iter().any(|r| r.attempts >= 1)
    })
    .await;
    d.reload_with(&sim, FAST_POLL, &watch(DS, &[A])).await;
    d.advance(SECS(1)).await;
    let dead = dead(&d);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].notifier, "hook");
    assert_eq!(dead[0].last_error.as_deref(), Some("notifier removed"));
    assert!(pending(&d).is_empty());
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_store_refires_terminal_events_with_the_same_ids() {
    const B: &str = "7500000000000000002";
    const C: &str = "7500000000000000003";
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 1, Outcome::Completed),
            doc(C, 1, Outcome::Failed),
        ],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let rest = format!(
        "{}{}",
        hook("hook", &rx.url("/h"), FAST_RETRY),
        watch(DS, &[A, B, C])
    );
    let ids = |from: usize| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = rx.requests()[from..]
            .iter()
            .map(|r| {
                let doc = r.json()["data"]["document_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (doc, r.header("webhook-id").to_string())
            })
            .collect();
        v.sort();
        v
    };
    let d = InProcess::start(&sim, FAST_POLL, &rest).await;
    d.until("three deliveries", SECS(20), |_| rx.requests().len() == 3)
        .await;
    let work = d.stop().await;
    let first = ids(0);
    std::fs::remove_dir_all(work.state_dir()).unwrap();
    let d = InProcess::start_in(work, &sim).await;
    d.until("three more deliveries", SECS(20), |_| {
        rx.requests().len() == 6
    })
    .await;
    d.stop().await;
    assert_eq!(ids(3), first, "the same event ids on a new store");
    let distinct: std::collections::HashSet<&String> = first.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), 3);
    rx.shutdown();
    sim.shutdown().await;
}
