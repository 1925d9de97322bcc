//! `coze-watch check` as a user runs it: exit codes, stderr, the summary.

use std::path::Path;

use assert_cmd::Command;

fn check(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("coze-watch")
        .unwrap()
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("COZE_API_TOKEN", "pat_CHECKSENTINEL")
        .arg("check")
        .args(args)
        .assert()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn valid_config_prints_a_summary_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.yaml",
        "notifiers:\n  - name: journal\n    type: log\nwatch:\n  - dataset: \"1\"\n    documents: [\"2\", \"3\"]\n",
    );
    let out = check(dir.path(), &["-c", "c.yaml"]).success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("1 dataset(s), 2 document(s)"), "{stdout}");
    assert!(stdout.contains("journal (log)"), "{stdout}");
    assert!(stdout.contains("state dir:"), "{stdout}");
    assert!(
        stdout.contains("worst case: 43200 requests/day"),
        "{stdout}"
    );
    assert!(!stdout.contains("CHECKSENTINEL"));
}

#[test]
fn invalid_config_exits_78_with_every_error_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.yaml",
        "poll:\n  min_interval: 9m\n  max_interval: 1m\nnotifiers:\n  - name: ci\n    type: webhook\n    url: htp://x.example/k\nwatch:\n  - dataset: \"1\"\n    documents: [\"\"]\n",
    );
    let out = check(dir.path(), &["-c", "c.yaml"]).code(78);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("error: c.yaml:2:17: poll.min_interval:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: c.yaml:7:10: notifiers[0] (ci): url: unsupported scheme \"htp\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("c.yaml:10:17: watch[0].documents[0]: empty id"),
        "{stderr}"
    );
    assert!(out.get_output().stdout.is_empty());
}

#[test]
fn config_path_comes_from_the_environment_when_not_given() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "env.yaml", "watch: []\n");
    Command::cargo_bin("coze-watch")
        .unwrap()
        .env_clear()
        .env("HOME", dir.path())
        .env("COZE_API_TOKEN", "pat_x")
        .env("COZE_WATCH_CONFIG", dir.path().join("env.yaml"))
        .arg("check")
        .assert()
        .success();
}

#[test]
fn missing_config_file_exits_78_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &["-c", "nope.yaml"]).code(78);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("nope.yaml: cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn the_example_config_passes_lint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::cargo_bin("coze-watch")
        .unwrap()
        .current_dir(root)
        .env_clear()
        .env("HOME", root)
        .args(["check", "--lint", "-c", "config.example.yaml"])
        .assert()
        .success();
}

#[test]
fn the_example_config_follows_coze_api_base_and_raises_no_quota_warning() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::cargo_bin("coze-watch")
        .unwrap()
        .current_dir(root)
        .env_clear()
        .env("HOME", root)
        .env("COZE_API_BASE", "https://api.coze.com")
        .args(["check", "--lint", "-c", "config.example.yaml"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stdout.contains("api:        https://api.coze.com"),
        "{stdout}"
    );
    assert!(!stderr.contains("quota"), "{stderr}");
}

#[test]
fn the_quota_warning_fires_only_when_the_sustained_pace_exceeds_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<String> = (1..=120).map(|i| format!("\"{i}\"")).collect();
    let datasets: String = (1..=10)
        .map(|d| {
            format!(
                "  - dataset: \"{d}\"\n    documents: [{}]\n",
                docs.join(", ")
            )
        })
        .collect();
    // 10 datasets x 3 batches, each every 2 minutes: 21,600 requests a day.
    write(dir.path(), "busy.yaml", &format!("watch:\n{datasets}"));
    let out = check(dir.path(), &["-c", "busy.yaml"]).success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stdout.contains("sustained:  21600 requests/day"),
        "{stdout}"
    );
    assert!(
        stderr.contains("exceeds Coze's published quota of 3000 requests/day per space; set api.max_requests_per_day"),
        "{stderr}"
    );
    // A budget the daemon keeps: told that the limiter will hold polls back.
    let budget = format!("api:\n  max_requests_per_day: 5000\nwatch:\n{datasets}");
    write(dir.path(), "budget.yaml", &budget);
    let out = check(dir.path(), &["-c", "budget.yaml"]).success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("exceeds api.max_requests_per_day (5000)"),
        "{stderr}"
    );
    // One dataset of 120 documents: 2,160 a day, under the quota: no warning.
    let small = format!(
        "watch:\n  - dataset: \"1\"\n    documents: [{}]\n",
        docs.join(", ")
    );
    write(dir.path(), "small.yaml", &small);
    let out = check(dir.path(), &["-c", "small.yaml"]).success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(!stderr.contains("quota"), "{stderr}");
}

#[test]
fn lint_turns_environment_problems_into_warnings() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.yaml",
        "notifiers:\n  - name: h\n    type: webhook\n    url: https://x.example/\n    secret: ${UNSET_SECRET}\nwatch:\n  - dataset: \"1\"\n    documents: [\"2\"]\n",
    );
    check(dir.path(), &["-c", "c.yaml"]).code(78);
    let out = check(dir.path(), &["--lint", "-c", "c.yaml"]).success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("warning: c.yaml:5:13: notifiers[0] (h): secret: environment variable UNSET_SECRET is not set"), "{stderr}");
}

#[test]
fn help_has_an_example_and_version_works() {
    let out = Command::cargo_bin("coze-watch")
        .unwrap()
        .args(["check", "--help"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("Example"), "{text}");
    Command::cargo_bin("coze-watch")
        .unwrap()
        .arg("--version")
        .assert()
        .success();
    Command::cargo_bin("coze-watch")
        .unwrap()
        .arg("bogus")
        .assert()
        .code(2);
}
