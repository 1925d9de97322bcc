//! For tests only: fresh databases in the throwaway PostgreSQL cluster that
//! `$COZE_WATCH_PG_URL` names (`.ci/pg start DIR` starts one and prints the variable; CI does
//! this before `cargo test`). The lib's unit tests and the integration tests share it.
//!
//! Without the variable the PostgreSQL tests are skipped with one line on stderr; under
//! `CI=true` that is a failure, never a skip.

use std::io::Write;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::PostgresConfig;

/// Whether this test binary is the first of this `cargo test` run (the same parent process)
/// to skip: the line is said once per run, not once per binary.
fn first_to_say_so() -> bool {
    let marker = std::env::temp_dir().join(format!(
        "coze-watch-pg-skipped.{}",
        std::os::unix::process::parent_id()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
}

/// A new, empty database for one test (`None`: no cluster; the caller returns). Callable from
/// async tests too: the driver's blocking work runs on a thread of its own.
pub fn fresh_database() -> Option<PostgresConfig> {
    std::thread::spawn(create)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn create() -> Option<PostgresConfig> {
    let Some(base) = std::env::var("COZE_WATCH_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but COZE_WATCH_PG_URL is not set: the PostgreSQL store's tests must run on CI (.ci/run starts a cluster with .ci/pg)"
        );
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            if first_to_say_so() {
                // Straight to stderr: the test harness captures only `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL store tests skipped: no $COZE_WATCH_PG_URL (eval \"$(.ci/pg start /tmp/coze-pg)\" to run them)"
                );
            }
        });
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "coze_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = postgres::Client::connect(&base, postgres::NoTls)
        .unwrap_or_else(|e| panic!("the test cluster at $COZE_WATCH_PG_URL: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let mut url = url::Url::parse(&base).expect("COZE_WATCH_PG_URL is a URL");
    url.set_path(&format!("/{name}"));
    Some(PostgresConfig {
        url,
        password: None,
    })
}

/// Runs `sql` on `db`'s database as the cluster's superuser (roles, terminating sessions).
pub fn admin(db: &PostgresConfig, sql: &str) {
    let url = db.url.to_string();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("the test cluster: {e}"));
        c.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}
