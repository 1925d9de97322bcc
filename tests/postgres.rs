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
