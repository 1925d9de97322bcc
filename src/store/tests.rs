//! The store's unit tests: real SQLite files in temp dirs, and (what both backends do) the same
//! tests on a real PostgreSQL database in the tests' throwaway cluster.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::documents::Row;
use super::outbox::DUE_SQL;
use super::schema::SCHEMA_V1;
use super::*;
use crate::event::{EventId, EventType};
use crate::ids::{DatasetId, DocumentId};
use crate::tracker::{DocState, Lifecycle};
use crate::wall::UnixMs;

/// Runs `test` on a fresh SQLite store, then on a fresh PostgreSQL database when the test
/// cluster is there (see `store::testdb`).
fn on_both(test: impl Fn(&mut Store)) {
    let dir = tempfile::tempdir().unwrap();
    test(&mut Store::open(dir.path()).unwrap());
    if let Some(pg) = super::testdb::fresh_database() {
        test(&mut Store::open_at(&Location::Postgres(pg)).unwrap());
    }
}

fn doc(id: &str, state: Lifecycle) -> DocState {
    let mut d = DocState::new(DatasetId::new("1"), DocumentId::new(id), UnixMs(0));
    d.state = state;
    d
}

fn event(id: &str, doc: &str, at: i64, notifiers: &[&str]) -> NewEvent {
    NewEvent {
        event_id: EventId::new(id),
        event_type: EventType::Completed,
        dataset_id: DatasetId::new("1"),
        document_id: DocumentId::new(doc),
        created_at: UnixMs(at),
        body: format!("{{\"id\":\"{id}\"}}"),
        notifiers: notifiers.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn commit_writes_state_events_and_deliveries_together() {
    on_both(|s| {
        let sched = StoredSchedule {
            next_poll_at: UnixMs(5),
            failures: 2,
        };
        s.commit(
            &[doc("a", Lifecycle::Completed)],
            &[event("e1", "a", 1, &["log", "hook"])],
            Some((&DatasetId::new("1"), sched)),
            UnixMs(1),
        )
        .unwrap();
        assert_eq!(s.load_documents().unwrap()[0].state, Lifecycle::Completed);
        assert_eq!(s.load_schedules().unwrap()[&DatasetId::new("1")], sched);
        let due = s
            .due_deliveries("log", UnixMs(1), 10, &HashSet::new())
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].body, "{\"id\":\"e1\"}");
        let due = s
            .due_deliveries("hook", UnixMs(1), 10, &HashSet::new())
            .unwrap();
        assert_eq!(due.len(), 1);
    });
}

fn attempt(seq: i64, attempts: u32, update: DeliveryUpdate) -> RecordedAttempt {
    RecordedAttempt {
        seq,
        notifier: "hook".into(),
        attempts,
        update,
    }
}

#[test]
fn events_of_one_document_go_out_in_order() {
    on_both(|s| {
        s.commit(
            &[],
            &[
                event("e1", "a", 1, &["hook"]),
                event("e2", "a", 2, &["hook"]),
                event("e3", "b", 3, &["hook"]),
            ],
            None,
            UnixMs(3),
        )
        .unwrap();
        let none = HashSet::new();
        let due = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        let ids: Vec<&str> = due.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e3"], "e2 waits for e1");
        let retry = DeliveryUpdate::Retry {
            next_attempt_at: UnixMs(100),
            error: "HTTP 500".into(),
        };
        s.record_attempts(&[attempt(due[0].seq, 1, retry)], UnixMs(10))
            .unwrap();
        let due = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        assert_eq!(due.len(), 1, "e2 still waits while e1 is pending");
        let dead = DeliveryUpdate::Dead {
            error: "gone".into(),
        };
        s.record_attempts(&[attempt(due[0].seq, 1, dead)], UnixMs(10))
            .unwrap();
        let first = s.due_deliveries("hook", UnixMs(100), 10, &none).unwrap();
        s.record_attempts(
            &[attempt(first[0].seq, 2, DeliveryUpdate::Delivered)],
            UnixMs(100),
        )
        .unwrap();
        let due = s.due_deliveries("hook", UnixMs(100), 10, &none).unwrap();
        assert_eq!(due[0].event_id.as_str(), "e2");
    });
}

#[test]
fn due_deliveries_are_per_notifier_and_skip_busy_ones() {
    on_both(|s| {
        s.commit(
            &[],
            &[
                event("e1", "a", 1, &["hook", "log"]),
                event("e2", "b", 2, &["hook"]),
            ],
            None,
            UnixMs(3),
        )
        .unwrap();
        let none = HashSet::new();
        let log = s.due_deliveries("log", UnixMs(10), 10, &none).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].notifier, "log");
        let hook = s.due_deliveries("hook", UnixMs(10), 10, &none).unwrap();
        let busy: HashSet<i64> = [hook[0].seq].into();
        let rest = s.due_deliveries("hook", UnixMs(10), 10, &busy).unwrap();
        let ids: Vec<&str> = rest.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["e2"]);
    });
}

#[test]
fn documents_are_read_in_key_order_and_per_dataset() {
    on_both(|s| {
        let mut other = doc("a", Lifecycle::Watching);
        other.dataset_id = DatasetId::new("0");
        s.commit(
            &[
                doc("b", Lifecycle::Watching),
                doc("a", Lifecycle::Completed),
                other,
            ],
            &[],
            None,
            UnixMs(1),
        )
        .unwrap();
        s.insert_new_documents(
            &[
                (DatasetId::new("1"), DocumentId::new("c")),
                (DatasetId::new("1"), DocumentId::new("a")),
            ],
            UnixMs(2),
        )
        .unwrap();
        let mut seen = Vec::new();
        s.for_each_document_state(|ds, doc, state| {
            seen.push(format!("{ds}/{doc}:{}", state.as_str()))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "0/a:watching",
                "1/a:completed",
                "1/b:watching",
                "1/c:watching"
            ],
            "key order; an existing document is not overwritten as new"
        );
        let wanted = [DocumentId::new("a"), DocumentId::new("c")];
        let got = s.load_dataset(&DatasetId::new("1"), &wanted).unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|x| match x {
                Stored::Live(d) => format!("live {}", d.document_id),
                Stored::Terminal(id) => format!("terminal {id}"),
            })
            .collect();
        assert_eq!(got, ["terminal a", "live c"], "b is not wanted");
    });
}

#[test]
fn the_outbox_query_is_not_prepared_again_for_each_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    s.commit(&[], &[event("e1", "a", 1, &["hook"])], None, UnixMs(1))
        .unwrap();
    for limit in 1..5 {
        let busy: HashSet<i64> = (0..limit as i64).map(|i| i + 100).collect();
        s.due_deliveries("hook", UnixMs(10 + limit as i64), limit, &busy)
            .unwrap();
    }
    let stmt = sqlite(&s).conn.prepare_cached(DUE_SQL).unwrap();
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "a new LIMIT must not re-prepare the statement"
    );
}

#[test]
fn a_version_1_store_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(SCHEMA_V1).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    let s = Store::open(dir.path()).unwrap();
    let s = sqlite(&s);
    let version: i64 = s
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let indexes: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index'
             AND name IN ('deliveries_queue', 'documents_state')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 2);
}

#[test]
fn a_second_lock_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = DirLock::acquire(dir.path()).unwrap();
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("in use by another coze-watch"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn a_corrupt_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, b"this is not a database, but it is somebody's data").unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.is_unusable(), "{err}");
    assert!(err.to_string().contains(DB_FILE), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database, but it is somebody's data"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    drop(Store::open(&state).unwrap());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(DB_FILE)), 0o600);
}

#[test]
fn removed_notifiers_lose_their_pending_deliveries() {
    on_both(|s| {
        s.commit(
            &[],
            &[event("e1", "a", 1, &["keep", "gone"])],
            None,
            UnixMs(1),
        )
        .unwrap();
        assert_eq!(
            s.kill_removed_notifiers(&["keep".into()], UnixMs(2))
                .unwrap(),
            1
        );
        let dead = s.deliveries("dead", 10).unwrap();
        assert_eq!(dead[0].notifier, "gone");
        assert_eq!(dead[0].last_error.as_deref(), Some("notifier removed"));
    });
}

#[test]
fn prune_keeps_tombstones_and_pending_bodies() {
    on_both(|s| {
        s.commit(
            &[
                doc("a", Lifecycle::Completed),
                doc("b", Lifecycle::Completed),
            ],
            &[event("e1", "a", 1, &[]), event("e2", "b", 1, &["hook"])],
            None,
            UnixMs(1),
        )
        .unwrap();
        let pruned = s.prune(UnixMs(100_000), Duration::from_secs(10)).unwrap();
        assert_eq!(pruned, 1, "the pending one keeps its body");
        assert_eq!(s.load_documents().unwrap().len(), 2, "tombstones stay");
    });
}

/// A row exactly as 0.1.0 wrote it (from `tests/fixtures/store-0.1.0`).
const ROW_0_1_0: &str = r#"{"dataset_id":"7400000000000000001","document_id":"7500000000000000102","state":"failed","stalled":false,"watched_since":1796543816766,"last_change":1796543817831,"last_seen":1796543817831,"status":9,"progress":99,"remaining_time":0,"progress_reported":16,"info":{"name":"file-7500000000000000102.pdf","file_type":"pdf","size":1234,"url":"https://sim.invalid/files/x.pdf","update_type":0,"update_interval":0,"status_descript":"parse error: encrypted pdf"},"absent_count":0,"absent_since":null,"unknown_status_warned":null,"reason":null,"terminal_at":1796543817831}"#;

#[test]
fn a_row_written_by_0_1_0_decodes_and_is_written_back_the_same_with_a_version() {
    let row: Row = serde_json::from_str(ROW_0_1_0).unwrap();
    assert_eq!(row.v, 1, "rows without a version are version 1");
    let state = DocState::try_from(row.clone()).unwrap();
    assert_eq!(state.state, Lifecycle::Failed);
    assert_eq!(state.status, Some(crate::coze::DocumentStatus::Failed));
    assert_eq!(
        state.info.status_descript.as_deref(),
        Some("parse error: encrypted pdf")
    );
    assert_eq!(Row::from(&state), row);
}

#[test]
fn a_row_lacking_optional_fields_decodes_with_defaults() {
    let minimal = r#"{"dataset_id":"1","document_id":"2","state":"watching","watched_since":5,"last_change":6}"#;
    let state = DocState::try_from(serde_json::from_str::<Row>(minimal).unwrap()).unwrap();
    assert_eq!(state.state, Lifecycle::Watching);
    assert_eq!(state.watched_since, UnixMs(5));
    assert_eq!(state.absent_count, 0);
    assert_eq!(state.info, crate::tracker::DocInfo::default());
}

#[test]
fn a_row_from_a_newer_build_or_with_an_unknown_state_is_named() {
    let newer = r#"{"v":99,"dataset_id":"1","document_id":"2","state":"watching","watched_since":5,"last_change":6}"#;
    let err = DocState::try_from(serde_json::from_str::<Row>(newer).unwrap()).unwrap_err();
    assert!(err.to_string().contains("row version 99"), "{err}");
    let odd = r#"{"dataset_id":"1","document_id":"2","state":"sleeping","watched_since":5,"last_change":6}"#;
    let err = DocState::try_from(serde_json::from_str::<Row>(odd).unwrap()).unwrap_err();
    assert!(err.to_string().contains("sleeping"), "{err}");
}

#[test]
fn open_existing_on_an_older_schema_asks_for_a_daemon_start_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(SCHEMA_V1).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    let err = Store::open_existing(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NeedsMigration { found: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("start the daemon once"), "{err}");
}

/// The SQLite store inside a [`Store`] (these tests open only SQLite ones).
fn sqlite(s: &Store) -> &super::SqliteStore {
    match s {
        Store::Sqlite(s) => s,
        Store::Postgres(_) => panic!("an SQLite store was opened"),
    }
}

#[test]
fn watch_entries_discovery_and_meta_round_trip() {
    use crate::discover::{Scope, ScopeState};
    on_both(|s| {
        let entry = |doc: Option<&str>| RuntimeEntry {
            dataset: DatasetId::new("7"),
            document: doc.map(DocumentId::new),
            labels: [("team".to_string(), "kb".to_string())].into(),
            notify: None,
            batch: doc.map(|_| "nightly".to_string()),
            created_at: UnixMs(5),
        };
        let added = s
            .add_watch_entries(&[entry(Some("2")), entry(None), entry(Some("1"))])
            .unwrap();
        assert_eq!(added, 3);
        assert_eq!(s.add_watch_entries(&[entry(Some("1"))]).unwrap(), 0);
        let got = s.watch_entries().unwrap();
        assert_eq!(got, [entry(None), entry(Some("1")), entry(Some("2"))]);
        let ds = DatasetId::new("7");
        assert_eq!(
            s.remove_watch_entries(&ds, Some(&[DocumentId::new("1")]))
                .unwrap(),
            1
        );
        assert_eq!(s.remove_watch_entries(&ds, None).unwrap(), 2);
        let scope = Scope::parse("dataset:7").unwrap();
        let state = ScopeState::default();
        s.commit_discovery(&scope, &state, &[doc("9", Lifecycle::Watching)], UnixMs(6))
            .unwrap();
        assert!(s.load_scopes().unwrap().contains_key(&scope));
        let known = s.known_documents(&DatasetId::new("1")).unwrap();
        assert!(known.contains(&DocumentId::new("9")));
        assert_eq!(s.meta("k").unwrap(), None);
        s.set_meta("k", "v1", UnixMs(1)).unwrap();
        s.set_meta("k", "v2", UnixMs(2)).unwrap();
        assert_eq!(s.meta("k").unwrap().as_deref(), Some("v2"));
    });
}

#[test]
fn dead_deliveries_are_listed_requeued_and_dropped() {
    on_both(|s| {
        s.commit(
            &[],
            &[
                event("e1", "a", 1, &["hook"]),
                event("e2", "b", 1, &["hook"]),
            ],
            None,
            UnixMs(1),
        )
        .unwrap();
        let due = s
            .due_deliveries("hook", UnixMs(1), 10, &HashSet::new())
            .unwrap();
        let dead = |seq| {
            attempt(
                seq,
                3,
                DeliveryUpdate::Dead {
                    error: "410".into(),
                },
            )
        };
        s.record_attempts(&[dead(due[0].seq), dead(due[1].seq)], UnixMs(2))
            .unwrap();
        assert_eq!(s.outbox_depth().unwrap(), (0, 2));
        assert_eq!(
            s.requeue_dead(Some(&["e1".to_string()]), UnixMs(3))
                .unwrap(),
            1
        );
        assert_eq!(s.outbox_depth().unwrap(), (1, 1));
        assert_eq!(s.drop_dead(None).unwrap(), 1);
        assert_eq!(s.outbox_depth().unwrap(), (1, 0));
        let pending = s.deliveries("pending", 10).unwrap();
        assert_eq!(pending[0].event_id, "e1");
        assert_eq!(pending[0].attempts, 0);
        assert_eq!(s.next_delivery_after(UnixMs(0)).unwrap(), Some(UnixMs(3)));
        assert_eq!(s.count_by_state().unwrap().get(&Lifecycle::Watching), None);
    });
}

#[test]
fn an_event_id_already_stored_is_not_stored_again() {
    on_both(|s| {
        s.commit(&[], &[event("e1", "a", 1, &["hook"])], None, UnixMs(1))
            .unwrap();
        s.commit(&[], &[event("e1", "a", 2, &["hook"])], None, UnixMs(2))
            .unwrap();
        assert_eq!(s.outbox_depth().unwrap(), (1, 0));
    });
}

#[test]
fn postgres_schema_is_created_once_by_instances_starting_together_and_a_newer_one_is_refused() {
    let Some(pg) = super::testdb::fresh_database() else {
        return;
    };
    let at = Location::Postgres(pg.clone());
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let at = at.clone();
            std::thread::spawn(move || Store::open_at(&at).map(|_| ()))
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    let mut admin = postgres::Client::connect(pg.url.as_str(), postgres::NoTls).unwrap();
    let versions: i64 = admin
        .query_one("SELECT count(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 1, "one schema, made once");
    admin
        .batch_execute("UPDATE schema_version SET version = 99")
        .unwrap();
    let err = Store::open_at(&at).unwrap_err();
    assert!(err.is_unusable(), "{err}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
    let err = Store::open_read_only_at(&at).unwrap_err();
    assert!(err.is_unusable(), "{err}");
}
