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
