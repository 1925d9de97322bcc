//! The daemon on a PostgreSQL store (`state.url`), a fresh database in the tests' throwaway
//! cluster (`coze_watch::store::testdb`): events fire and are delivered once, a restart fires
//! nothing again, and `status`, `deliveries` and `watch` read and write the same database.
//! Skipped (one line) without `$COZE_WATCH_PG_URL`; a failure under `CI=true`.

mod helper;

use std::time::Duration;

use coze_watch::config::PostgresConfig;
use coze_watch::event::EventType;
use coze_watch::sim::Outcome;
use helper::daemon::{FAST_POLL, Workdir, watch};
use helper::engine::{Extras, InProcess};
use helper::receiver::Receiver;
use helper::{doc, scenario, start_sim};

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const C: &str = "7500000000000000003";
const SECS: fn(u64) -> Duration = Duration::from_secs;
const EVENTS: Extras = Extras {
    events: true,
    ops: false,
};

fn config_text(sim: &coze_watch::sim::SimHandle, rx: &Receiver, pg: &PostgresConfig) -> Workdir {
    let work = Workdir::new();
    let rest = format!(
        "  - name: hook\n    type: webhook\n    url: {}\n{}",
        rx.url("/h"),
        watch(DS, &[A, B])
    );
    helper::engine::write_config(&work, sim, FAST_POLL, &rest);
    work.use_postgres(&pg.url, "");
    work
}

#[tokio::test(start_paused = true)]
async fn a_daemon_on_postgres_delivers_once_and_the_commands_share_its_database() {
    let Some(pg) = coze_watch::store::testdb::fresh_database() else {
        return;
    };
    let sim = start_sim(scenario(vec![(
        DS,
        vec![
            doc(A, 1, Outcome::Completed),
            doc(B, 2, Outcome::Failed),
            doc(C, 1, Outcome::Completed),
        ],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let work = config_text(&sim, &rx, &pg);
    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.until("two deliveries", SECS(20), |_| rx.requests().len() == 2)
        .await;
    assert_eq!(d.count(EventType::Completed, A), 1);
    assert_eq!(d.count(EventType::Failed, B), 1);
    assert!(
        !d.state_dir().join("coze-watch.db").exists(),
        "nothing in the state dir"
    );

    // The command line on the same database (blocking: the daemon waits meanwhile).
    let (code, out, err) = d.work.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["counts"]["completed"], 1, "{v}");
    assert_eq!(v["counts"]["failed"], 1, "{v}");
    let (code, out, err) = d.work.cli(&["watch", "add", DS, C]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added 1"), "{out}");
    // No pid to signal on a shared store: the daemon reads the list again by itself.
    d.until("C from the run-time list", SECS(30), |d| {
        d.count(EventType::Completed, C) == 1
    })
    .await;
    let (code, out, err) = d.work.cli(&["deliveries"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("0 dead deliveries"), "{out}");

    // A restart on the same database fires nothing again.
    let work = d.stop().await;
    let d = InProcess::launch(work, &sim, EVENTS).await;
    d.advance(SECS(30)).await;
    assert!(d.events().is_empty(), "{:?}", d.events());
    assert_eq!(rx.requests().len(), 3, "once each");
    let ids: std::collections::BTreeSet<String> = rx
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test]
async fn check_names_the_database_and_never_a_password() {
    let Some(pg) = coze_watch::store::testdb::fresh_database() else {
        return;
    };
    let sim = start_sim(scenario(vec![(DS, vec![])])).await;
    let rx = Receiver::start(vec![]).await;
    let work = config_text(&sim, &rx, &pg);
    std::fs::write(work.path().join("token"), sim.token()).unwrap();
    let secret = work.path().join("pgpass");
    std::fs::write(&secret, "s3cret-db-password\n").unwrap();
    let text = std::fs::read_to_string(work.config_path())
        .unwrap()
        .replacen(
            "state:\n",
            &format!("state:\n  password_file: {}\n", secret.display()),
            1,
        );
    std::fs::write(work.config_path(), text).unwrap();
    let (code, out, err) = work.cli(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("PostgreSQL {}", pg.url)), "{out}");
    assert!(out.contains("password set"), "{out}");
    assert!(!out.contains("s3cret") && !err.contains("s3cret"));
    // A password in the URL is refused, naming the key, without echoing it.
    let mut with_password = pg.url.clone();
    with_password.set_password(Some("hunter2")).unwrap();
    let text = std::fs::read_to_string(work.config_path())
        .unwrap()
        .replace(pg.url.as_str(), with_password.as_str());
    std::fs::write(work.config_path(), text).unwrap();
    let (code, out, err) = work.cli(&["check"]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(
        err.contains("state.url") && err.contains("password_file"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
    rx.shutdown();
    sim.shutdown().await;
}

/// `GET` of an in-process daemon's ops endpoint: (status, body).
async fn ops_get(d: &InProcess, path: &str) -> (u16, String) {
    let r = helper::http()
        .get(format!("http://{}{path}", d.ops.unwrap()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_standby_says_so_and_takes_over_at_once_when_the_leader_stops_cleanly() {
    let Some(pg) = coze_watch::store::testdb::fresh_database() else {
        return;
    };
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 3600, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![]).await;
    let ops = Extras {
        events: false,
        ops: true,
    };
    let node = || {
        let work = config_text(&sim, &rx, &pg);
        let text = std::fs::read_to_string(work.config_path())
            .unwrap()
            .replacen("watch:\n", "http:\n  listen: 127.0.0.1:0\nwatch:\n", 1);
        std::fs::write(work.config_path(), text).unwrap();
        work
    };
    let first = InProcess::launch(node(), &sim, ops).await;
    first
        .until("a leader", SECS(10), |_| sim.stats().requests > 0)
        .await;
    let second = InProcess::launch(node(), &sim, ops).await;
    second.advance(SECS(10)).await;
    let (code, body) = ops_get(&first, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\nrole: leader\n"));
    let (code, body) = ops_get(&second, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\nrole: standby\n"));
    assert_eq!(ops_get(&second, "/livez").await.0, 200);
    assert_eq!(ops_get(&second, "/readyz").await.0, 200);
    let metrics = helper::metrics_text(second.ops.unwrap()).await;
    assert!(metrics.contains("coze_watch_leader 0"), "{metrics}");
    let metrics = helper::metrics_text(first.ops.unwrap()).await;
    assert!(metrics.contains("coze_watch_leader 1"), "{metrics}");
    assert!(metrics.contains("coze_watch_lease_epoch 1"), "{metrics}");
    // The standby reads the shared store.
    let (code, status) = ops_get(&second, "/status").await;
    assert_eq!(code, 200);
    assert!(status.contains(A), "{status}");
    // A clean stop releases the lease: the standby takes over at its next look (5 s), long
    // before the lease's 15 s would have run out.
    first.stop().await;
    second.advance(SECS(6)).await;
    let (_, body) = ops_get(&second, "/healthz").await;
    assert_eq!(body, "ok\nrole: leader\n");
    let metrics = helper::metrics_text(second.ops.unwrap()).await;
    assert!(metrics.contains("coze_watch_lease_epoch 2"), "{metrics}");
    second.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_coze_watch_exits_65() {
    use helper::daemon::Daemon;
    let Some(pg) = coze_watch::store::testdb::fresh_database() else {
        return;
    };
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let rx = Receiver::start(vec![]).await;
    let work = config_text(&sim, &rx, &pg);
    std::fs::write(work.path().join("token"), sim.token()).unwrap();
    let mut first = Daemon::start(&work);
    first.wait_for("watching", SECS(15)).await;
    first.stop().await;
    coze_watch::store::testdb::admin(&pg, "UPDATE schema_version SET version = 99");
    let mut again = Daemon::start(&work);
    let status = again.wait_exit(SECS(15)).await;
    assert_eq!(status.code(), Some(65));
    let log = again.lines().join("\n");
    assert!(log.contains("schema version 99"), "{log}");
    rx.shutdown();
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_sessions_the_server_ends_connects_again_and_goes_on() {
    let Some(pg) = coze_watch::store::testdb::fresh_database() else {
        return;
    };
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 30, Outcome::Failed)],
    )]))
    .await;
    let rx = Receiver::start(vec![]).await;
    let d = InProcess::launch(config_text(&sim, &rx, &pg), &sim, EVENTS).await;
    d.until("A delivered", SECS(20), |_| rx.requests().len() == 1)
        .await;
    // A server restart or an administrator: every session of this database ends at once.
    coze_watch::store::testdb::admin(
        &pg,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    d.until("B delivered", SECS(120), |_| rx.requests().len() == 2)
        .await;
    assert_eq!(d.count(EventType::Failed, B), 1);
    d.advance(SECS(30)).await;
    assert_eq!(rx.requests().len(), 2, "each once");
    d.stop().await;
    rx.shutdown();
    sim.shutdown().await;
}
