//! The config's JSON Schema (`schemas/config.schema.json`, `coze-watch config schema`): generated
//! from the structs that read the config, checked in, and kept in sync; it accepts
//! `config.example.yaml` and rejects the bad configs a schema can express.

use std::path::Path;
use std::process::Command;

fn repo(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

fn generated() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let checked_in = std::fs::read_to_string(repo("schemas/config.schema.json")).unwrap();
    assert_eq!(
        checked_in.trim_end(),
        generated().trim_end(),
        "schemas/config.schema.json is stale: run `coze-watch config schema > schemas/config.schema.json`"
    );
}

#[test]
fn the_example_config_validates_and_names_its_schema() {
    let text = std::fs::read_to_string(repo("config.example.yaml")).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=./schemas/config.schema.json"),
        "the editor modeline comes first"
    );
    let v = validator();
    let errors: Vec<String> = v.iter_errors(&yaml(&text)).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn bad_configs_a_schema_can_express_are_rejected() {
    let w = "watch:\n  - dataset: \"1\"\n    documents: [\"2\"]\n";
    let cases = [
        ("unknown top-level key", format!("wacth: []\n{w}")),
        ("unknown api key", format!("api:\n  tokn_env: X\n{w}")),
        (
            "rps not a number",
            format!("api:\n  max_requests_per_second: fast\n{w}"),
        ),
        ("unknown flavor", format!("api:\n  flavor: onprem\n{w}")),
        (
            "duration not a string",
            format!("poll:\n  min_interval: [1]\n{w}"),
        ),
        ("log format", format!("log:\n  format: xml\n{w}")),
        (
            "notifier type",
            format!("notifiers:\n  - name: a\n    type: email\n{w}"),
        ),
        (
            "webhook format",
            format!(
                "notifiers:\n  - name: a\n    type: webhook\n    url: https://x\n    format: teams\n{w}"
            ),
        ),
        (
            "unknown notifier key",
            format!("notifiers:\n  - name: a\n    type: log\n    colour: red\n{w}"),
        ),
        (
            "exec command not a list",
            format!("notifiers:\n  - name: e\n    type: exec\n    command: /bin/true\n{w}"),
        ),
        (
            "id with letters",
            "watch:\n  - dataset: \"kb-1\"\n    documents: [\"2\"]\n".to_string(),
        ),
        (
            "a star for documents",
            "watch:\n  - dataset: \"1\"\n    documents: [\"*\"]\n".to_string(),
        ),
        (
            "documents neither list nor all",
            "watch:\n  - dataset: \"1\"\n    documents: everything\n".to_string(),
        ),
        (
            "unknown watch key",
            "watch:\n  - dataset: \"1\"\n    documents: all\n    notfy: [x]\n".to_string(),
        ),
        ("include not a list", format!("include: x.yaml\n{w}")),
        (
            "retry max_attempts negative",
            format!("notifiers:\n  - name: a\n    type: log\n    retry: {{max_attempts: -1}}\n{w}"),
        ),
    ];
    let v = validator();
    for (what, text) in cases {
        assert!(!v.is_valid(&yaml(&text)), "{what}: accepted:\n{text}");
    }
    // Values given as ${VAR} are checked after expansion, not by the schema.
    let ok = "api:\n  flavor: ${FLAVOR}\nwatch:\n  - dataset: ${DATASET}\n    documents: all\n";
    assert!(v.is_valid(&yaml(ok)));
}
