//! Config validation: one test per rule of SPEC section 3. Each asserts that the message names
//! the key path, and the line where the parser gives one.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use coze_watch::config::{self, ConfigError, Diagnostics, Loaded, Mode, NotifierKind};

const TOKEN: &str = "pat_TESTTOKEN";

struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        let mut env = HashMap::new();
        env.insert("COZE_API_TOKEN".to_string(), TOKEN.to_string());
        env.insert("HOME".to_string(), "/home/tester".to_string());
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            env,
        }
    }

    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    fn without(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }

    fn file(&self, name: &str, text: &str) -> &Self {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, text).unwrap();
        self
    }

    fn load_mode(&self, yaml: &str, mode: Mode) -> Result<Loaded, Diagnostics> {
        self.file("config.yaml", yaml);
        let env = self.env.clone();
        let lookup = move |k: &str| env.get(k).cloned();
        config::load(&self.dir.path().join("config.yaml"), &lookup, mode)
    }

    fn load(&self, yaml: &str) -> Result<Loaded, Diagnostics> {
        self.load_mode(yaml, Mode::Strict)
    }

    /// Loads `yaml`, expecting exactly one error, and returns it.
    fn error(&self, yaml: &str) -> ConfigError {
        match self.load(yaml) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(d) => {
                assert_eq!(d.errors.len(), 1, "expected one error, got {:#?}", d.errors);
                d.errors.into_iter().next().unwrap()
            }
        }
    }
}

const WATCH: &str = "watch:\n  - dataset: \"100\"\n    documents: [\"1\", \"2\"]\n";

fn assert_at(e: &ConfigError, path: &str, line: usize, needle: &str) {
    assert_eq!(e.path.to_string(), path, "path of {e}");
    assert_eq!(e.at.map(|a| a.line), Some(line), "line of {e}");
    let text = e.to_string();
    assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    assert!(text.contains(&format!("config.yaml:{line}:")), "{text}");
}

#[test]
fn minimal_config_loads_with_defaults() {
    let f = Fixture::new();
    let c = f.load(WATCH).unwrap().config;
    assert_eq!(c.api.base_url.as_str(), "https://api.coze.cn/");
    assert_eq!(c.api.token.expose(), TOKEN);
    assert_eq!(c.api.limits.max_ids_per_request, 50);
    assert_eq!(c.poll.min_interval.as_secs(), 2);
    assert_eq!(c.poll.max_interval.as_secs(), 120);
    assert_eq!(c.poll.missing_after, 5);
    assert_eq!(
        c.state.dir,
        Path::new("/home/tester/.local/state/coze-watch")
    );
    assert_eq!(c.watch.document_count(), 2);
}

#[test]
fn bad_duration_names_key_and_line() {
    let e = Fixture::new().error(&format!("poll:\n  min_interval: 5 parsecs\n{WATCH}"));
    assert_at(&e, "poll.min_interval", 2, "invalid duration \"5 parsecs\"");
}

#[test]
fn duration_must_be_a_string() {
    let e = Fixture::new().error(&format!("api:\n  request_timeout: 15\n{WATCH}"));
    assert_eq!(e.at.map(|a| a.line), Some(2), "{e}");
    assert!(e.to_string().contains("api.request_timeout"), "{e}");
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let e = Fixture::new().error(&format!("poll:\n  min_intervall: 2s\n{WATCH}"));
    let text = e.to_string();
    assert!(text.contains("config.yaml:2:"), "{text}");
    assert!(
        text.contains("poll: unknown field `min_intervall`"),
        "{text}"
    );
}

#[test]
fn unknown_key_in_a_notifier_names_its_index() {
    let yaml = format!("notifiers:\n  - name: a\n    type: log\n    colour: red\n{WATCH}");
    let text = Fixture::new().error(&yaml).to_string();
    assert!(text.contains("config.yaml:4:"), "{text}");
    assert!(
        text.contains("notifiers[0]: unknown field `colour`"),
        "{text}"
    );
}

#[test]
fn unset_variable_is_named() {
    let yaml = format!("state:\n  dir: ${{NOPE_DIR}}/state\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "state.dir",
        2,
        "environment variable NOPE_DIR is not set",
    );
}

#[test]
fn variables_expand_after_parsing_and_double_dollar_escapes() {
    let f = Fixture::new()
        .env("SD", "/srv/cw")
        .env("TEAM", "kb\nevil: yes");
    let yaml = "state:\n  dir: ${SD}\nwatch:\n  - dataset: \"1\"\n    documents: [\"2\"]\n    labels: {team: \"${TEAM}\", raw: \"$${TEAM}\"}\n";
    let c = f.load(yaml).unwrap().config;
    assert_eq!(c.state.dir, Path::new("/srv/cw"));
    let labels = &c
        .watch
        .datasets
        .values()
        .next()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .labels;
    assert_eq!(labels["team"], "kb\nevil: yes");
    assert_eq!(labels["raw"], "${TEAM}");
}

#[test]
fn unknown_notifier_in_notify() {
    let yaml = "notifiers:\n  - name: a\n    type: log\nwatch:\n  - dataset: \"1\"\n    documents: [\"2\"]\n    notify: [a, b]\n";
    let e = Fixture::new().error(yaml);
    assert_at(&e, "watch[0].notify[1]", 7, "unknown notifier \"b\"");
}

#[test]
fn duplicate_notifier_names() {
    let yaml =
        format!("notifiers:\n  - name: a\n    type: log\n  - name: a\n    type: log\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[1] (a): name",
        4,
        "duplicate notifier name \"a\"",
    );
}

#[test]
fn bad_standard_webhook_secret_is_rejected_without_echoing_it() {
    let yaml = format!(
        "notifiers:\n  - name: hook\n    type: webhook\n    url: https://h.example/x\n    secret: whsec_tooshortSENTINEL\n{WATCH}"
    );
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (hook): secret",
        5,
        "whsec_ followed by base64 of 24 to 64 bytes",
    );
    assert!(!e.to_string().contains("SENTINEL"), "{e}");
}

#[test]
fn good_standard_webhook_secret_is_accepted() {
    // 32 bytes of base64.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let yaml = format!(
        "notifiers:\n  - name: hook\n    type: webhook\n    url: https://h.example/x\n    secret: {secret}\n{WATCH}"
    );
    let c = Fixture::new().load(&yaml).unwrap().config;
    assert!(matches!(c.notifiers[0].kind, NotifierKind::Webhook(_)));
    assert!(
        !format!("{:?}", c).contains("MfKQ9r8G"),
        "Debug leaks the secret"
    );
}

#[test]
fn secret_rule_depends_on_format() {
    let f = Fixture::new();
    let feishu = format!(
        "notifiers:\n  - name: chat\n    type: webhook\n    format: feishu\n    url: https://open.feishu.cn/open-apis/bot/v2/hook/KEY\n    secret: plainbotsecret\n{WATCH}"
    );
    f.load(&feishu).unwrap();
    let wecom = format!(
        "notifiers:\n  - name: chat\n    type: webhook\n    format: wecom\n    url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K\n    secret: x\n{WATCH}"
    );
    let e = f.error(&wecom);
    assert_at(&e, "notifiers[0] (chat): secret", 6, "not signed");
}

#[test]
fn exec_command_must_be_absolute() {
    let yaml = format!(
        "notifiers:\n  - name: run\n    type: exec\n    command: [reindex, --all]\n{WATCH}"
    );
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (run): command[0]",
        4,
        "not an absolute path",
    );
}

#[test]
fn exec_command_must_exist() {
    let yaml = format!(
        "notifiers:\n  - name: run\n    type: exec\n    command: [/nonexistent/reindex]\n{WATCH}"
    );
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (run): command[0]",
        4,
        "/nonexistent/reindex",
    );
}

#[test]
fn exec_command_must_be_executable() {
    let f = Fixture::new();
    f.file("hook.sh", "#!/bin/sh\n");
    let script = f.dir.path().join("hook.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = format!(
        "notifiers:\n  - name: run\n    type: exec\n    command: [\"{}\"]\n{WATCH}",
        script.display()
    );
    let e = f.error(&yaml);
    assert_at(&e, "notifiers[0] (run): command[0]", 4, "is not executable");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    f.load(&yaml).unwrap();
}

#[test]
fn exec_problems_with_the_environment_are_warnings_under_lint() {
    let yaml = format!(
        "notifiers:\n  - name: run\n    type: exec\n    command: [/nonexistent/reindex]\n{WATCH}"
    );
    let loaded = Fixture::new().load_mode(&yaml, Mode::Lint).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].to_string().contains("command[0]"));
}

#[test]
fn plain_http_to_a_remote_host_is_refused_and_shows_only_scheme_and_host() {
    let yaml = format!(
        "notifiers:\n  - name: hook\n    type: webhook\n    url: http://hooks.example.com/secret-path?key=SENTINEL\n{WATCH}"
    );
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (hook): url",
        4,
        "plain http to http://hooks.example.com is refused",
    );
    assert!(!e.to_string().contains("SENTINEL"), "{e}");
    assert!(!e.to_string().contains("secret-path"), "{e}");
}

#[test]
fn plain_http_is_fine_to_loopback_or_when_allowed() {
    let f = Fixture::new();
    let local = format!(
        "notifiers:\n  - name: hook\n    type: webhook\n    url: http://127.0.0.1:9/x\n{WATCH}"
    );
    f.load(&local).unwrap();
    let allowed = format!(
        "notifiers:\n  - name: hook\n    type: webhook\n    url: http://hooks.example.com/x\n    allow_insecure_http: true\n{WATCH}"
    );
    f.load(&allowed).unwrap();
}

#[test]
fn unsupported_url_scheme() {
    let yaml =
        format!("notifiers:\n  - name: ci\n    type: webhook\n    url: htp://x.example/y\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (ci): url",
        4,
        "unsupported scheme \"htp\" (use http or https)",
    );
}

#[test]
fn min_interval_above_max_interval() {
    let yaml = format!("poll:\n  min_interval: 5m\n  max_interval: 1m\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(&e, "poll.min_interval", 2, "greater than max_interval");
}

#[test]
fn empty_ids_are_rejected() {
    let yaml = "watch:\n  - dataset: \"1\"\n    documents: [\"2\", \"\"]\n";
    let e = Fixture::new().error(yaml);
    assert_at(&e, "watch[0].documents[1]", 3, "empty id");
    let yaml = "watch:\n  - dataset: \"  \"\n    documents: [\"2\"]\n";
    let e = Fixture::new().error(yaml);
    assert_at(&e, "watch[0].dataset", 2, "empty id");
}

#[test]
fn unquoted_numeric_ids_keep_their_exact_digits() {
    // A 19-digit id is beyond f64 precision; it must be kept as written, never as a number.
    let yaml = "watch:\n  - dataset: 7442585813587000001\n    documents: [7442585813587123457]\n";
    let c = Fixture::new().load(yaml).unwrap().config;
    let (ds, docs) = c.watch.datasets.iter().next().unwrap();
    assert_eq!(ds.as_str(), "7442585813587000001");
    assert_eq!(docs.keys().next().unwrap().as_str(), "7442585813587123457");
}

#[test]
fn ids_that_are_not_scalars_are_rejected_with_a_line() {
    let yaml = "watch:\n  - dataset: \"1\"\n    documents: [{id: 2}]\n";
    let text = Fixture::new().error(yaml).to_string();
    assert!(text.contains("config.yaml:3:"), "{text}");
    assert!(text.contains("id string"), "{text}");
}

#[test]
fn same_document_twice_names_both_places() {
    let f = Fixture::new();
    f.file(
        "watch.d/more.yaml",
        "- dataset: \"100\"\n  documents: [\"9\", \"2\"]\n",
    );
    let yaml = format!("include: [\"watch.d/*.yaml\"]\n{WATCH}");
    let e = f.error(&yaml);
    let text = e.to_string();
    assert!(text.contains("more.yaml:2:"), "{text}");
    assert!(text.contains("[0].documents[1]"), "{text}");
    assert!(text.contains("listed twice"), "{text}");
    assert!(
        text.contains("config.yaml:4:"),
        "first place missing: {text}"
    );
    assert!(text.contains("watch[0].documents[1]"), "{text}");
}

#[test]
fn include_glob_matching_nothing_is_fine() {
    let yaml = format!("include: [\"nowhere/*.yaml\"]\n{WATCH}");
    Fixture::new().load(&yaml).unwrap();
}

#[test]
fn include_files_add_documents_relative_to_the_config() {
    let f = Fixture::new();
    f.file(
        "watch.d/a.yaml",
        "- dataset: \"200\"\n  documents: [\"7\"]\n",
    );
    let yaml = format!("include: [\"watch.d/*.yaml\"]\n{WATCH}");
    let c = f.load(&yaml).unwrap().config;
    assert_eq!(c.watch.datasets.len(), 2);
    assert_eq!(c.watch.document_count(), 3);
}

#[test]
fn include_glob_matching_a_broken_file_names_that_file_and_line() {
    let f = Fixture::new();
    f.file(
        "watch.d/broken.yaml",
        "- dataset: \"200\"\n  documents: [\"7\"]\n  notfy: [x]\n",
    );
    let yaml = format!("include: [\"watch.d/*.yaml\"]\n{WATCH}");
    let text = f.error(&yaml).to_string();
    assert!(text.contains("broken.yaml:3:"), "{text}");
    assert!(text.contains("unknown field `notfy`"), "{text}");
}

#[test]
fn missing_token_is_an_error_naming_the_variable() {
    let f = Fixture::new().without("COZE_API_TOKEN");
    let e = f.error(WATCH);
    assert!(e.to_string().contains("COZE_API_TOKEN is not set"), "{e}");
    assert_eq!(e.path.to_string(), "api.token_env");
}

#[test]
fn token_file_is_read_and_trimmed() {
    let f = Fixture::new().without("COZE_API_TOKEN");
    f.file("token", "pat_FROMFILE\n");
    let yaml = format!(
        "api:\n  token_file: {}/token\n{WATCH}",
        f.dir.path().display()
    );
    let c = f.load(&yaml).unwrap().config;
    assert_eq!(c.api.token.expose(), "pat_FROMFILE");
}

#[test]
fn http_listen_off_loopback_needs_allow_remote() {
    let yaml = format!("http:\n  listen: 0.0.0.0:9464\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(&e, "http.listen", 2, "allow_remote: true");
    let yaml = format!("http:\n  listen: 0.0.0.0:9464\n  allow_remote: true\n{WATCH}");
    Fixture::new().load(&yaml).unwrap();
}

#[test]
fn unknown_event_type_and_notifier_type() {
    let yaml =
        format!("notifiers:\n  - name: a\n    type: log\n    events: [document.done]\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (a): events[0]",
        4,
        "unknown event type \"document.done\"",
    );
    let yaml = format!("notifiers:\n  - name: a\n    type: pager\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (a): type",
        3,
        "unknown notifier type \"pager\"",
    );
}

#[test]
fn keys_of_another_notifier_type_are_rejected() {
    let yaml =
        format!("notifiers:\n  - name: a\n    type: log\n    url: https://x.example/\n{WATCH}");
    let e = Fixture::new().error(&yaml);
    assert_at(
        &e,
        "notifiers[0] (a): url",
        4,
        "not a key of a log notifier",
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = "poll:\n  min_interval: 5m\n  max_interval: 1m\n  jitter: 3\nwatch:\n  - dataset: \"\"\n    documents: [\"1\"]\n";
    let d = Fixture::new().load(yaml).unwrap_err();
    assert_eq!(d.errors.len(), 3, "{:#?}", d.errors);
}

#[test]
fn base_url_precedence() {
    let f = Fixture::new().env("COZE_API_BASE", "https://api.coze.com");
    let c = f.load(WATCH).unwrap().config;
    assert_eq!(c.api.base_url.as_str(), "https://api.coze.com/");
    let yaml = format!("api:\n  base_url: http://127.0.0.1:8787\n{WATCH}");
    let c = f.load(&yaml).unwrap().config;
    assert_eq!(c.api.base_url.as_str(), "http://127.0.0.1:8787/");
    let env = |k: &str| (k == "COZE_API_BASE").then(|| "https://env.example".to_string());
    assert_eq!(
        config::base_url_choice(
            Some("https://cli.example"),
            Some("https://cfg.example"),
            &env
        ),
        "https://cli.example"
    );
    assert_eq!(
        config::base_url_choice(None, None, &env),
        "https://env.example"
    );
    assert_eq!(
        config::base_url_choice(None, None, &|_| None),
        "https://api.coze.cn"
    );
}

#[test]
fn state_dir_defaults_follow_systemd_then_xdg() {
    let f = Fixture::new().env("STATE_DIRECTORY", "/var/lib/coze-watch:/other");
    assert_eq!(
        f.load(WATCH).unwrap().config.state.dir,
        Path::new("/var/lib/coze-watch")
    );
    let f = Fixture::new().env("XDG_STATE_HOME", "/xdg");
    assert_eq!(
        f.load(WATCH).unwrap().config.state.dir,
        Path::new("/xdg/coze-watch")
    );
}

#[test]
fn worst_case_requests_per_day_counts_batches_and_caps() {
    let yaml = "api:\n  max_ids_per_request: 2\n  max_requests_per_second: 10\npoll:\n  min_interval: 10s\nwatch:\n  - dataset: \"1\"\n    documents: [\"1\", \"2\", \"3\"]\n  - dataset: \"2\"\n    documents: [\"1\"]\n";
    let c = Fixture::new().load(yaml).unwrap().config;
    // 8640 polls a day; dataset 1 needs 2 batches, dataset 2 one.
    assert_eq!(c.worst_case_requests_per_day(), (25_920, 25_920));
    let capped = yaml.replace("max_requests_per_second: 10", "max_requests_per_day: 3000");
    let c = Fixture::new().load(&capped).unwrap().config;
    assert_eq!(c.worst_case_requests_per_day(), (3000, 25_920));
}

#[test]
fn a_token_file_that_is_a_device_or_huge_is_refused() {
    let f = Fixture::new().without("COZE_API_TOKEN");
    let yaml = format!("api:\n  token_file: /dev/zero\n{WATCH}");
    let e = f.error(&yaml);
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
}

#[test]
fn an_entry_without_valid_documents_adds_no_dataset() {
    let f = Fixture::new();
    let loaded = f
        .load("watch:\n  - dataset: \"100\"\n    documents: []\n")
        .unwrap();
    assert!(loaded.config.watch.datasets.is_empty());
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("nothing to watch")),
        "{warnings:?}"
    );
}

#[test]
fn a_token_that_cannot_be_sent_as_a_header_is_a_config_error_that_never_shows_it() {
    let f = Fixture::new().without("COZE_API_TOKEN");
    f.file("token", "pat_SECRETPART\nsecond-line\n");
    let yaml = format!(
        "api:\n  token_file: {}/token\n{WATCH}",
        f.dir.path().display()
    );
    let e = f.error(&yaml);
    let text = e.to_string();
    assert_eq!(e.path.to_string(), "api.token_file");
    assert!(text.contains("HTTP header"), "{text}");
    assert!(!text.contains("SECRETPART"), "{text}");
}

#[test]
fn documents_all_and_space_entries_are_read_with_their_rules() {
    let yaml = "watch:\n  - dataset: \"100\"\n    documents: all\n    labels: {team: kb}\n  - space: \"900\"\n    datasets: [\"1\", \"2\"]\n    exclude: [\"2\"]\n  - dataset: \"101\"\n    documents: [\"5\"]\n";
    let c = Fixture::new().load(yaml).unwrap().config;
    let all = &c.watch.all_of[&coze_watch::ids::DatasetId::new("100")];
    assert_eq!(all.labels["team"], "kb");
    let space = &c.watch.spaces[0];
    assert!(space.covers(&coze_watch::ids::DatasetId::new("1")));
    assert!(
        !space.covers(&coze_watch::ids::DatasetId::new("2")),
        "excluded"
    );
    assert!(
        !space.covers(&coze_watch::ids::DatasetId::new("3")),
        "not chosen"
    );
    assert_eq!(c.watch.document_count(), 1);
    assert!(c.discovery_requests_per_day() >= 2 * 1440);
}

#[test]
fn a_star_for_documents_gets_a_hint_and_ids_must_be_decimal() {
    let e = Fixture::new().error("watch:\n  - dataset: \"100\"\n    documents: [\"*\"]\n");
    assert_at(&e, "watch[0].documents[0]", 3, "documents: all");
    let e = Fixture::new().error("watch:\n  - dataset: \"kb-1\"\n    documents: [\"1\"]\n");
    assert_at(&e, "watch[0].dataset", 2, "decimal digits");
    let e =
        Fixture::new().error("watch:\n  - dataset: \"12345678901234567890\"\n    documents: all\n");
    assert_at(&e, "watch[0].dataset", 2, "1 to 19 decimal digits");
    let e = Fixture::new().error("watch:\n  - dataset: \"100\"\n    documents: everything\n");
    assert!(e.to_string().contains("documents: all"), "{e}");
}

#[test]
fn an_entry_names_a_dataset_or_a_space_and_keeps_its_own_keys() {
    let e =
        Fixture::new().error("watch:\n  - dataset: \"1\"\n    space: \"2\"\n    documents: all\n");
    assert!(e.to_string().contains("not both"), "{e}");
    let e = Fixture::new().error("watch:\n  - space: \"2\"\n    documents: [\"1\"]\n");
    assert!(e.to_string().contains("`space` entry"), "{e}");
    let e = Fixture::new()
        .error("watch:\n  - dataset: \"1\"\n    exclude: [\"2\"]\n    documents: all\n");
    assert!(e.to_string().contains("belongs to a `space` entry"), "{e}");
    let e = Fixture::new()
        .error("api:\n  flavor: onprem\nwatch:\n  - dataset: \"1\"\n    documents: all\n");
    assert_at(&e, "api.flavor", 2, "cloud or studio");
}
