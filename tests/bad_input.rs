//! Bad input of every kind gets a clear error, never a panic, and loses nothing recorded:
//! malformed configs (table-driven), an unwritable state dir, a full disk.

mod helper;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coze_watch::sim::Outcome;
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::{doc, scenario, start_sim};

const W: &str = "watch:\n  - dataset: \"1\"\n    documents: [\"2\"]\n";

/// (what is wrong, the config, what the message must say)
fn malformed() -> Vec<(&'static str, String, &'static str)> {
    let w = W;
    let hook = |extra: &str| format!("notifiers:\n  - name: h\n    type: webhook\n{extra}{w}");
    vec![
        ("not YAML", "api: [unclosed\n".into(), "config.yaml:"),
        ("a list at the top", "- a\n- b\n".into(), "invalid type"),
        (
            "tab indentation",
            "api:\n\tbase_url: x\n".into(),
            "config.yaml:2",
        ),
        (
            "tab indentation, with the hint",
            "api:\n\tbase_url: x\n".into(),
            "cannot start any token (YAML indents with spaces, not tabs)",
        ),
        (
            "a batch on a whole knowledge base",
            "watch:\n  - dataset: \"1\"\n    documents: all\n    batch: nightly\n".into(),
            "batch: a batch needs its documents named: `documents: all` never completes",
        ),
        (
            "a batch on a space",
            "watch:\n  - space: \"9\"\n    batch: nightly\n".into(),
            "batch: a batch needs its documents named: a `space` entry never completes",
        ),
        (
            "unknown top-level key",
            format!("apis: {{}}\n{w}"),
            "unknown field `apis`",
        ),
        (
            "a store URL of another database",
            format!("state:\n  url: mysql://u@db/coze\n{w}"),
            "state.url: must start with postgres:// (found mysql://)",
        ),
        (
            "a password in the store URL",
            format!("state:\n  url: postgres://u:hunter2@db/coze\n{w}"),
            "state.url: holds a password",
        ),
        (
            "a password in the store URL's query",
            format!("state:\n  url: postgres://u@db/coze?password=hunter2\n{w}"),
            "state.url: holds a password",
        ),
        (
            "a store URL without a database",
            format!("state:\n  url: postgres://u@db:5432/\n{w}"),
            "state.url: names no database",
        ),
        (
            "an unknown sslmode",
            format!("state:\n  url: postgres://u@db/coze?sslmode=maybe\n{w}"),
            "sslmode=maybe: use disable, prefer, require, verify-ca or verify-full",
        ),
        (
            "a password file without a store URL",
            format!("state:\n  password_file: /etc/pw\n{w}"),
            "state.password_file: only with state.url",
        ),
        (
            "a lease too short to renew",
            format!("state:\n  url: postgres://u@db/coze\n  lease_ttl: 1s\n{w}"),
            "state.lease_ttl: must be at least 3s",
        ),
        (
            "unknown api key",
            format!("api:\n  token: x\n{w}"),
            "unknown field `token`",
        ),
        (
            "duplicate key",
            format!("api:\n  request_timeout: 1s\n  request_timeout: 2s\n{w}"),
            "duplicate",
        ),
        (
            "bad duration",
            format!("api:\n  request_timeout: soon\n{w}"),
            "api.request_timeout: invalid duration",
        ),
        (
            "zero timeout",
            format!("api:\n  request_timeout: 0s\n{w}"),
            "must be greater than zero",
        ),
        (
            "duration as a number",
            format!("poll:\n  stall_after: 30\n{w}"),
            "poll.stall_after",
        ),
        (
            "negative batch",
            format!("api:\n  max_ids_per_request: -1\n{w}"),
            "max_ids_per_request",
        ),
        (
            "zero batch",
            format!("api:\n  max_ids_per_request: 0\n{w}"),
            "out of range",
        ),
        (
            "zero rate",
            format!("api:\n  max_requests_per_second: 0\n{w}"),
            "greater than 0",
        ),
        (
            "rate as text",
            format!("api:\n  max_requests_per_second: fast\n{w}"),
            "max_requests_per_second",
        ),
        (
            "zero daily budget",
            format!("api:\n  max_requests_per_day: 0\n{w}"),
            "at least 1",
        ),
        (
            "bad base url",
            format!("api:\n  base_url: not a url\n{w}"),
            "api.base_url: not an absolute URL",
        ),
        (
            "ftp base url",
            format!("api:\n  base_url: ftp://x.example\n{w}"),
            "unsupported scheme \"ftp\"",
        ),
        (
            "token twice",
            format!("api:\n  token_env: A\n  token_file: /x\n{w}"),
            "either token_env or token_file",
        ),
        (
            "min over max",
            format!("poll:\n  min_interval: 3m\n  max_interval: 1m\n{w}"),
            "greater than max_interval",
        ),
        (
            "jitter above 1",
            format!("poll:\n  jitter: 1.5\n{w}"),
            "between 0 and 1",
        ),
        (
            "backoff initial over max",
            format!("poll:\n  error_backoff: {{initial: 10m, max: 1m}}\n{w}"),
            "initial is greater than max",
        ),
        (
            "multiplier below 1",
            format!("poll:\n  error_backoff: {{multiplier: 0.5}}\n{w}"),
            "between 1 and 100",
        ),
        (
            "progress step 0",
            format!("poll:\n  progress_step: 0\n{w}"),
            "progress_step",
        ),
        (
            "relative state dir",
            format!("state:\n  dir: var/lib\n{w}"),
            "absolute path",
        ),
        (
            "listen not an address",
            format!("http:\n  listen: localhost\n{w}"),
            "address:port",
        ),
        (
            "listen remote",
            format!("http:\n  listen: 0.0.0.0:1\n{w}"),
            "allow_remote",
        ),
        (
            "log format",
            format!("log:\n  format: xml\n{w}"),
            "unknown log format \"xml\"",
        ),
        (
            "notifier without name",
            format!("notifiers:\n  - type: log\n{w}"),
            "non-empty name",
        ),
        (
            "notifier without type",
            format!("notifiers:\n  - name: a\n{w}"),
            "notifiers[0] (a): type: missing",
        ),
        (
            "unknown event",
            format!("notifiers:\n  - name: a\n    type: log\n    events: [done]\n{w}"),
            "unknown event type",
        ),
        (
            "empty event list",
            format!("notifiers:\n  - name: a\n    type: log\n    events: []\n{w}"),
            "subscribes to nothing",
        ),
        ("webhook without url", hook(""), "a webhook needs a url"),
        (
            "webhook bad format",
            hook("    url: https://x.example/\n    format: teams\n"),
            "unknown format \"teams\"",
        ),
        (
            "slack with secret",
            hook("    url: https://x.example/\n    format: slack\n    secret: s\n"),
            "remove `secret`",
        ),
        (
            "language on standard",
            hook("    url: https://x.example/\n    language: zh\n"),
            "only to chat formats",
        ),
        (
            "bad language",
            hook("    url: https://x.example/\n    format: feishu\n    language: fr\n"),
            "unknown language \"fr\"",
        ),
        (
            "bad header name",
            hook("    url: https://x.example/\n    headers: {\"bad header\": x}\n"),
            "not a valid HTTP header name",
        ),
        (
            "retry zero attempts",
            hook("    url: https://x.example/\n    retry: {max_attempts: 0}\n"),
            "max_attempts",
        ),
        (
            "exec empty command",
            format!("notifiers:\n  - name: e\n    type: exec\n    command: []\n{w}"),
            "command: is empty",
        ),
        (
            "exec relative command",
            format!("notifiers:\n  - name: e\n    type: exec\n    command: [ls]\n{w}"),
            "not an absolute path",
        ),
        (
            "exec zero concurrency",
            format!(
                "notifiers:\n  - name: e\n    type: exec\n    command: [/bin/true]\n    concurrency: 0\n{w}"
            ),
            "concurrency",
        ),
        (
            "watch without dataset",
            "watch:\n  - documents: [\"1\"]\n".into(),
            "needs a `dataset` or a `space`",
        ),
        (
            "document id a map",
            "watch:\n  - dataset: \"1\"\n    documents: [{a: 1}]\n".into(),
            "id string",
        ),
        (
            "id with a slash",
            "watch:\n  - dataset: \"1/2\"\n    documents: [\"2\"]\n".into(),
            "decimal digits",
        ),
        (
            "unterminated variable",
            format!("state:\n  dir: ${{NOPE\n{w}"),
            "unterminated",
        ),
        (
            "include not a list",
            format!("include: x.yaml\n{w}"),
            "include",
        ),
    ]
}

#[test]
fn every_malformed_config_exits_78_naming_the_problem_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cases = malformed();
    assert!(cases.len() >= 30);
    for (what, yaml, needle) in cases {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
            .args(["check", "-c"])
            .arg(&path)
            .env_clear()
            .env("HOME", dir.path())
            .env("COZE_API_TOKEN", "pat_x")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {needle:?} not in:\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

fn run_until_exit(work: &Workdir) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(["run", "-c"])
        .arg(work.config_path())
        .env_clear()
        .env("HOME", work.path())
        .env("COZE_API_TOKEN", "pat_x")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_state_dir_that_cannot_be_created_is_a_clear_error() {
    let work = Workdir::new();
    // A regular file where the state dir's parent should be: not even root can create it.
    std::fs::write(work.path().join("blocker"), b"").unwrap();
    let state = work.path().join("blocker/state");
    let text = format!(
        "api:\n  base_url: http://127.0.0.1:9\npoll:\n{FAST_POLL}state:\n  dir: {}\n{W}",
        state.display()
    );
    std::fs::write(work.config_path(), text).unwrap();
    // `run` refuses it as `check` does: an environment problem of the config.
    let (code, err) = run_until_exit(&work);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "state.dir: {} cannot be created: {} is not a directory",
            state.display(),
            work.path().join("blocker").display()
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Mounts a tmpfs of `size` at `dir`; `None` where mounting is not allowed.
fn tiny_tmpfs(dir: &Path, size: &str) -> Option<TmpfsGuard> {
    std::fs::create_dir_all(dir).ok()?;
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .ok()?
        .success();
    ok.then(|| TmpfsGuard(dir.to_path_buf()))
}

struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_loses_nothing_recorded() {
    let work = Workdir::new();
    let Some(_mount) = tiny_tmpfs(&work.state_dir(), "600k") else {
        // Mounting needs CAP_SYS_ADMIN; without it there is no way to fill a disk safely.
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let first = "7500000000000000001";
    let docs: Vec<_> = (1..=40)
        .map(|i| {
            doc(
                &format!("{}", 7_500_000_000_000_000_000u64 + i),
                if i == 1 { 1 } else { 6 },
                Outcome::Completed,
            )
        })
        .collect();
    let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let sim = start_sim(scenario(vec![("7400000000000000001", docs)])).await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    work.write_config(
        &sim.base_url(),
        FAST_POLL,
        &watch("7400000000000000001", &id_refs),
    );
    let mut d = Daemon::start(&work);
    d.wait_for(
        &format!("document.completed {first}"),
        Duration::from_secs(15),
    )
    .await;
    // Fill the disk, leaving nothing for SQLite.
    let filler = work.state_dir().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    d.wait_for(
        "cannot record the poll; it will be redone",
        Duration::from_secs(20),
    )
    .await;
    let log = d.lines().join("\n");
    assert!(
        log.contains("full") || log.contains("disk"),
        "the error says why: {log}"
    );
    // Free the space: the transitions that could not be recorded are redone, once.
    std::fs::remove_file(&filler).unwrap();
    d.wait_for_count("document.completed", 40, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(
            d.count(&format!("document.completed {id}")),
            1,
            "{id} fired once"
        );
    }
    d.stop().await;
    sim.shutdown().await;
}

/// Runs `coze-watch ARGS -c config.yaml` as a user without the permissions the test removed:
/// `nobody` through `setpriv` when the tests run as root (root passes every permission check),
/// else the test's own user. (exit code, stdout + stderr)
fn as_other_user(work: &Workdir, args: &[&str]) -> (Option<i32>, String) {
    use std::os::unix::fs::PermissionsExt;
    // The config must stay readable to that user.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(work.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = env!("CARGO_BIN_EXE_coze-watch");
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(args)
        .arg("-c")
        .arg(work.config_path())
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("COZE_API_TOKEN", "pat_x")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A config whose state dir lies in a directory only its owner (root, or the test's user
/// without write permission) may use. Returns the state dir.
fn config_in_locked_dir(work: &Workdir) -> std::path::PathBuf {
    let state = locked_dir(work).join("state");
    let text = format!(
        "api:\n  base_url: http://127.0.0.1:9\npoll:\n{FAST_POLL}state:\n  dir: {}\n{W}",
        state.display()
    );
    std::fs::write(work.config_path(), text).unwrap();
    state
}

/// A directory only its owner (root, or the test's user without write permission) may use.
fn locked_dir(work: &Workdir) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let locked = work.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mode = if nix::unistd::Uid::effective().is_root() {
        0o700
    } else {
        0o500
    };
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(mode)).unwrap();
    locked
}

#[test]
fn check_lint_and_run_agree_on_a_state_dir_the_user_cannot_create() {
    let work = Workdir::new();
    let state = config_in_locked_dir(&work);
    let names_dir_and_user = |out: &str| {
        assert!(out.contains(&state.display().to_string()), "{out}");
        assert!(out.contains("uid "), "{out}");
        assert!(!out.contains("panicked"), "{out}");
    };
    let (code, out) = as_other_user(&work, &["check", "--lint"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: ") && out.contains("state.dir: "),
        "{out}"
    );
    names_dir_and_user(&out);
    let (code, out) = as_other_user(&work, &["check"]);
    assert_eq!(code, Some(78), "{out}");
    names_dir_and_user(&out);
    let (code, out) = as_other_user(&work, &["run"]);
    assert_eq!(code, Some(78), "{out}");
    names_dir_and_user(&out);
}

#[test]
fn status_and_deliveries_on_a_store_the_user_cannot_read_say_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let work = Workdir::new();
    let state = config_in_locked_dir(&work);
    // The owner creates the store.
    let locked = state.parent().unwrap();
    std::fs::set_permissions(locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out, err) = work.cli(&["watch", "add", "1", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    if !nix::unistd::Uid::effective().is_root() {
        // Without root, the store file itself is what the user may not read.
        let db = state.join("coze-watch.db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    for command in [&["status"][..], &["deliveries"][..]] {
        let (code, out) = as_other_user(&work, command);
        assert_eq!(code, Some(65), "{command:?}: {out}");
        assert!(out.contains("permission denied for "), "{command:?}: {out}");
        assert!(
            !out.contains("has the daemon run yet"),
            "{command:?}: {out}"
        );
        assert!(
            !out.contains("unable to open database file"),
            "{command:?}: {out}"
        );
    }
}
