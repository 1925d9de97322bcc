//! The daemon binary's own duties: signals, exit codes, the state dir's lock and a damaged
//! store, against the simulator on 127.0.0.1. The engine's behaviour runs in-process on
//! virtual time in `tests/engine_clock.rs`.

mod helper;

use std::time::{Duration, Instant};

use coze_watch::sim::{Injection, Outcome};
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::{doc, scenario, start_sim};
use nix::sys::signal::Signal;

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const SECS: fn(u64) -> Duration = Duration::from_secs;

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
