//! Shell completions and man pages come from the same clap definitions as the command line:
//! every subcommand appears in the completions of each shell and has its man page.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every visible subcommand, nested ones as `watch add`.
fn subcommands() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            out.push(p.clone());
            walk(sub, p, out);
        }
    }
    let mut out = Vec::new();
    walk(&coze_watch::cli::command(), Vec::new(), &mut out);
    out
}

#[test]
fn every_subcommand_is_in_the_bash_zsh_and_fish_completions() {
    let subs = subcommands();
    assert!(subs.len() >= 15, "{subs:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for path in &subs {
            let name = path.last().unwrap();
            assert!(script.contains(name.as_str()), "{shell}: {path:?} missing");
        }
    }
}

#[test]
fn every_subcommand_has_a_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", dir.path().to_str().unwrap()]);
    assert!(out.starts_with("wrote"), "{out}");
    let root = std::fs::read_to_string(dir.path().join("coze-watch.1")).unwrap();
    assert!(root.contains(".TH"), "a roff page");
    for path in subcommands() {
        let file = dir.path().join(format!("coze-watch-{}.1", path.join("-")));
        let page =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(page.contains(".SH"), "{}", file.display());
    }
}

#[test]
fn the_demo_narrates_on_stdout_and_logs_to_a_file_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .arg("demo")
        .env_clear()
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "log lines bury the narration: {stderr}"
    );
    for line in stdout.lines() {
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN "),
            "a log line among the narration: {line}"
        );
    }
    let named = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("the daemon's log: "))
        .unwrap_or_else(|| panic!("no log file named: {stdout}"));
    let path = named.split(" (").next().unwrap();
    let log = std::fs::read_to_string(path).unwrap();
    assert!(log.contains("document.completed"), "{log}");
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
    assert_eq!(tail[2], "next, for a real knowledge base:", "{stdout}");
    assert!(tail[1].contains("export COZE_API_TOKEN=") && tail[0].contains("coze-watch "));
}
