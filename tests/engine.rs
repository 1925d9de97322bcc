//! The watch engine end to end: the real binary against the simulator on 127.0.0.1, with real
//! files and real signals.

mod helper;

use std::time::{Duration, Instant};

use coze_watch::sim::{Injection, Outcome};
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::{doc, scenario, start_sim, wait_until};
use nix::sys::signal::Signal;

const DS: &str = "7400000000000000001";
const DS2: &str = "7400000000000000002";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const Z: &str = "7500000000000000099";
const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_and_failed_documents_log_exactly_one_event_each() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 2, Outcome::Failed)],
    )]))
    .await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A, B]));
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    d.wait_for(&format!("document.failed {B}"), SECS(15)).await;
    let requests = sim.stats().requests;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(d.count(&format!("document.completed {A}")), 1);
    assert_eq!(d.count(&format!("document.failed {B}")), 1);
    let failed = d
        .lines()
        .into_iter()
        .find(|l| l.contains("document.failed"))
        .unwrap();
    assert!(failed.contains("parse error: encrypted pdf"), "{failed}");
    assert!(failed.contains(&format!("dataset_id={DS}")), "{failed}");
    assert!(
        !failed.contains("sim.invalid"),
        "the url is never logged: {failed}"
    );
    assert_eq!(
        sim.stats().requests,
        requests,
        "terminal documents are not polled again"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_or_a_remove_and_re_add_fires_nothing_again() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 600, Outcome::Completed),
        ],
    )]))
    .await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A, B]));
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    d.stop().await;
    let asked_a = || {
        sim.stats()
            .recent
            .iter()
            .filter(|r| r.ids.iter().any(|i| i == A))
            .count()
    };
    let asked_before = asked_a();

    let mut d = Daemon::start(&work);
    d.wait_for("watching", SECS(10)).await;
    // Remove A, then add it back.
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[B]));
    d.signal(Signal::SIGHUP);
    d.wait_for_count("config reloaded", 1, SECS(10)).await;
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A, B]));
    d.signal(Signal::SIGHUP);
    d.wait_for_count("config reloaded", 2, SECS(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        d.count("document.completed"),
        0,
        "log:\n{}",
        d.lines().join("\n")
    );
    assert_eq!(
        asked_a(),
        asked_before,
        "a completed document is never polled again"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_polling_with_the_old_one() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let work = Workdir::new();
    work.write_config(
        &sim.base_url(),
        "  min_interval: 300ms\n  max_interval: 1s\n",
        &watch(DS, &[A]),
    );
    let mut d = Daemon::start(&work);
    d.wait_for("watching", SECS(10)).await;
    std::fs::write(work.config_path(), "poll:\n  min_interval: [oops\n").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for("reload failed; keeping the running config", SECS(10))
        .await;
    let before = sim.stats().requests;
    wait_until("polling to go on", SECS(10), || {
        sim.stats().requests >= before + 2
    })
    .await;
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_that_adds_a_dataset_starts_polling_it() {
    let sim = start_sim(scenario(vec![
        (DS, vec![doc(A, 600, Outcome::Completed)]),
        (DS2, vec![doc(B, 1, Outcome::Completed)]),
    ]))
    .await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let mut d = Daemon::start(&work);
    d.wait_for("watching", SECS(10)).await;
    let both = format!(
        "{}  - dataset: \"{DS2}\"\n    documents: [\"{B}\"]\n",
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &both);
    d.signal(Signal::SIGHUP);
    d.wait_for(&format!("document.completed {B}"), SECS(15))
        .await;
    assert!(sim.stats().by_dataset.get(DS2).copied().unwrap_or(0) >= 1);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_request_exits_0_within_10s() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    sim.inject(vec![Injection::Delay { ms: 1500 }]);
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let mut d = Daemon::start(&work);
    d.wait_for("watching", SECS(10)).await;
    let started = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(SECS(10)).await;
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < SECS(10));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_never_crash_the_daemon_and_it_recovers() {
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
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(30))
        .await;
    assert_eq!(d.count("document.completed"), 1);
    for kind in [
        "kind=\"transient\"",
        "kind=\"rate_limited\"",
        "kind=\"auth\"",
    ] {
        assert!(
            d.count(kind) >= 1,
            "no {kind} logged:\n{}",
            d.lines().join("\n")
        );
    }
    let auth = d
        .lines()
        .into_iter()
        .find(|l| l.contains("kind=\"auth\""))
        .unwrap();
    assert!(
        auth.contains("coze.cn token against api.coze.com"),
        "{auth}"
    );
    assert!(auth.contains("logid"), "{auth}");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_state_dir_exits_1() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let mut first = Daemon::start(&work);
    first.wait_for("watching", SECS(10)).await;
    let mut second = Daemon::start(&work);
    let status = second.wait_exit(SECS(10)).await;
    assert_eq!(status.code(), Some(1));
    let log = second.lines().join("\n");
    assert!(log.contains("in use by another coze-watch"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "{log}");
    first.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_exits_65_naming_the_file() {
    let work = Workdir::new();
    work.write_config("http://127.0.0.1:9", FAST_POLL, &watch(DS, &[A]));
    std::fs::create_dir_all(work.state_dir()).unwrap();
    let db = work.state_dir().join("coze-watch.db");
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let mut d = Daemon::start(&work);
    let status = d.wait_exit(SECS(10)).await;
    assert_eq!(status.code(), Some(65));
    let log = d.lines().join("\n");
    assert!(log.contains(&db.display().to_string()), "{log}");
    assert!(log.contains("corrupt"), "{log}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        vec![0x42u8; 8192],
        "never thrown away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_deep_in_the_store_stops_the_daemon_with_65() {
    // The full check runs beside the start (it reads every page); a damaged page must still
    // stop the daemon, naming the file.
    let work = Workdir::new();
    let ids: Vec<String> = (0..300).map(|i| format!("75000000000000{i:05}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    work.write_config("http://127.0.0.1:9", FAST_POLL, &watch(DS, &ids));
    let mut first = Daemon::start(&work);
    first.wait_for("new documents watched", SECS(10)).await;
    first.stop().await;
    let db = work.state_dir().join("coze-watch.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 20 * 4096, "{} bytes", bytes.len());
    bytes[12 * 4096..13 * 4096].fill(0x42);
    std::fs::write(&db, &bytes).unwrap();
    let mut d = Daemon::start(&work);
    let status = d.wait_exit(SECS(10)).await;
    assert_eq!(status.code(), Some(65), "{}", d.lines().join("\n"));
    let log = d.lines().join("\n");
    assert!(log.contains(&db.display().to_string()), "{log}");
    assert!(log.contains("corrupt"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_exits_78() {
    let work = Workdir::new();
    std::fs::write(work.config_path(), "poll:\n  min_interval: soon\n").unwrap();
    let mut d = Daemon::start(&work);
    let status = d.wait_exit(SECS(10)).await;
    assert_eq!(status.code(), Some(78));
    assert!(d.lines().join("\n").contains("poll.min_interval"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_returned_document_goes_missing_only_after_count_grace_and_confirmation() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let work = Workdir::new();
    work.write_config(
        &sim.base_url(),
        "  min_interval: 500ms\n  max_interval: 1s\n  missing_after: 3\n  missing_grace: 3s\n",
        &watch(DS, &[A, Z]),
    );
    let started = Instant::now();
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.missing {Z}"), SECS(20)).await;
    assert!(
        started.elapsed() >= SECS(3),
        "missing before the grace period"
    );
    let line = d
        .lines()
        .into_iter()
        .find(|l| l.contains("document.missing"))
        .unwrap();
    assert!(line.contains("reason=\"absent\""), "{line}");
    let asked_z: Vec<Vec<String>> = sim
        .stats()
        .recent
        .iter()
        .filter(|r| r.ids.iter().any(|i| i == Z))
        .map(|r| r.ids.clone())
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_live_the_run_loop_does_not_wake() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 0, Outcome::Completed)])])).await;
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let mut d = Daemon::start(&work);
    d.wait_for(&format!("document.completed {A}"), SECS(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wakeups = d.count("run loop waiting");
    assert!(wakeups > 0, "the wake-up trace is missing");
    tokio::time::sleep(SECS(3)).await;
    assert_eq!(
        d.count("run loop waiting"),
        wakeups,
        "the idle loop woke up"
    );
    assert_eq!(sim.stats().requests, 1);
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_takes_five_ids_a_request_refuses_at_most_one_per_run() {
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
    let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let work = Workdir::new();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &refs));
    let mut d = Daemon::start(&work);
    d.wait_for_count("document.completed", 12, SECS(20)).await;
    assert_eq!(sim.stats().bad_requests, 1, "one refusal teaches the limit");
    assert_eq!(
        d.count("asking for fewer ids per request"),
        1,
        "logged once: {}",
        d.lines().join("\n")
    );
    let line = d
        .lines()
        .into_iter()
        .find(|l| l.contains("asking for fewer ids"))
        .unwrap_or_default();
    assert!(
        line.contains("at most 5") && line.contains("logid"),
        "{line}"
    );
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_rewritten_after_a_401_is_used_by_the_next_request() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let work = Workdir::new();
    let token = work.path().join("token");
    std::fs::write(&token, "pat_revoked\n").unwrap();
    work.write_config(&sim.base_url(), FAST_POLL, &watch(DS, &[A]));
    let text = std::fs::read_to_string(work.config_path())
        .unwrap()
        .replacen(
            "api:\n",
            &format!("api:\n  token_file: {}\n", token.display()),
            1,
        );
    std::fs::write(work.config_path(), text).unwrap();
    let mut d = Daemon::start(&work);
    d.wait_for("poll failed", SECS(10)).await;
    // Rotated after the 401, before the retry.
    std::fs::write(&token, format!("{}\n", coze_watch::sim::DEFAULT_TOKEN)).unwrap();
    d.wait_for(&format!("document.completed {A}"), SECS(15))
        .await;
    d.stop().await;
    assert_eq!(
        sim.stats().unauthorized,
        1,
        "one refused request, then the new token"
    );
    assert_eq!(d.count("the token file changed"), 1);
    let lines = d.lines().join("\n");
    assert!(!lines.contains("pat_revoked") && !lines.contains(coze_watch::sim::DEFAULT_TOKEN));
    sim.shutdown().await;
}
