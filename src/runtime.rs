//! The run-time watch list's input rules (SPEC section 13), shared by `coze-watch watch` and
//! the ops endpoint's `POST /v1/watch`: a request becomes [`RuntimeEntry`]s only when its ids
//! are ids and its notifiers exist, exactly as the config would check them.
//!
//! Pure validation and rendering; the store keeps the entries, the daemon applies them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::validate;
use crate::ids::{DatasetId, DocumentId};
use crate::store::RuntimeEntry;
use crate::wall::UnixMs;

/// A bad field of a request, named the way the request names it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        message: message.into(),
    }
}

/// `POST /v1/watch`'s body, and what `watch add` builds from its arguments.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub dataset_id: String,
    #[serde(default)]
    pub document_ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub notify: Option<Vec<String>>,
    /// Names these documents as one batch: `batch.completed` fires when all are terminal.
    #[serde(default)]
    pub batch: Option<String>,
}

/// Validates an add request against the configured notifier names.
pub fn validate_add(
    req: &AddRequest,
    notifiers: &[String],
    now: UnixMs,
) -> Result<Vec<RuntimeEntry>, InputError> {
    validate::id(&req.dataset_id).map_err(|m| bad("dataset_id", m))?;
    match (req.all, req.document_ids.is_empty()) {
        (true, false) => {
            return Err(bad(
                "all",
                "give either document_ids or all: true, not both",
            ));
        }
        (false, true) => {
            return Err(bad(
                "document_ids",
                "give the documents to watch, or all: true for every document",
            ));
        }
        _ => {}
    }
    for (i, d) in req.document_ids.iter().enumerate() {
        validate::id(d).map_err(|m| bad(format!("document_ids[{i}]"), m))?;
    }
    for (i, n) in req.notify.iter().flatten().enumerate() {
        if !notifiers.contains(n) {
            return Err(bad(
                format!("notify[{i}]"),
                format!("unknown notifier {n:?} (not in the config's `notifiers`)"),
            ));
        }
    }
    for k in req.labels.keys() {
        if k.trim().is_empty() {
            return Err(bad("labels", "a label needs a name"));
        }
    }
    if let Some(b) = &req.batch {
        validate::batch_name(b).map_err(|m| bad("batch", m))?;
        if req.all {
            return Err(bad(
                "batch",
                "a batch needs its documents named: a whole knowledge base never completes",
            ));
        }
    }
    let dataset = DatasetId::new(&req.dataset_id);
    let entry = |document: Option<DocumentId>| RuntimeEntry {
        dataset: dataset.clone(),
        document,
        labels: req.labels.clone(),
        notify: req.notify.clone(),
        batch: req.batch.clone(),
        created_at: now,
    };
    Ok(if req.all {
        vec![entry(None)]
    } else {
        req.document_ids
            .iter()
            .map(|d| entry(Some(DocumentId::new(d))))
            .collect()
    })
}

/// Validates a removal: the dataset, and the documents (`None`: every entry of it).
pub fn validate_remove(
    dataset: &str,
    documents: &[String],
) -> Result<(DatasetId, Option<Vec<DocumentId>>), InputError> {
    validate::id(dataset).map_err(|m| bad("dataset_id", m))?;
    for (i, d) in documents.iter().enumerate() {
        validate::id(d).map_err(|m| bad(format!("document_ids[{i}]"), m))?;
    }
    let docs = (!documents.is_empty()).then(|| documents.iter().map(DocumentId::new).collect());
    Ok((DatasetId::new(dataset), docs))
}

/// `key=value` of `--label`.
pub fn parse_label(text: &str) -> Result<(String, String), InputError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(bad("--label", format!("{text:?} is not key=value"))),
    }
}

/// One entry as `GET /v1/watch` and `watch list --json` show it.
#[derive(Clone, Debug, Serialize)]
pub struct EntryView {
    pub dataset_id: String,
    /// `null` for a whole knowledge base.
    pub document_id: Option<String>,
    pub all: bool,
    pub labels: BTreeMap<String, String>,
    pub notify: Option<Vec<String>>,
    pub batch: Option<String>,
    pub created_at: String,
}

impl From<&RuntimeEntry> for EntryView {
    fn from(e: &RuntimeEntry) -> Self {
        EntryView {
            dataset_id: e.dataset.to_string(),
            document_id: e.document.as_ref().map(ToString::to_string),
            all: e.document.is_none(),
            labels: e.labels.clone(),
            notify: e.notify.clone(),
            batch: e.batch.clone(),
            created_at: e.created_at.rfc3339_seconds(),
        }
    }
}

/// The entries for people, one line each.
pub fn render_text(entries: &[RuntimeEntry]) -> String {
    let mut out = format!("{} run-time watch entries\n", entries.len());
    for e in entries {
        let what = match &e.document {
            Some(d) => format!("document {d}"),
            None => "all documents".to_string(),
        };
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!(" labels {}", labels.join(","))
        };
        let notify = e
            .notify
            .as_ref()
            .map(|n| format!(" notify {}", n.join(",")))
            .unwrap_or_default();
        let batch = e
            .batch
            .as_ref()
            .map(|b| format!(" batch {b}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  dataset {} {what}{labels}{notify}{batch} (since {})\n",
            e.dataset,
            e.created_at.rfc3339_seconds()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(docs: &[&str], all: bool) -> AddRequest {
        AddRequest {
            dataset_id: "7400000000000000001".into(),
            document_ids: docs.iter().map(|s| s.to_string()).collect(),
            all,
            ..AddRequest::default()
        }
    }

    #[test]
    fn an_add_needs_documents_or_all_and_valid_ids_and_notifiers() {
        let ok = validate_add(&req(&["1", "2"], false), &[], UnixMs(0)).unwrap();
        assert_eq!(ok.len(), 2);
        let all = validate_add(&req(&[], true), &[], UnixMs(0)).unwrap();
        assert_eq!(all[0].document, None);
        assert_eq!(
            validate_add(&req(&[], false), &[], UnixMs(0))
                .unwrap_err()
                .field,
            "document_ids"
        );
        assert_eq!(
            validate_add(&req(&["1"], true), &[], UnixMs(0))
                .unwrap_err()
                .field,
            "all"
        );
        let e = validate_add(&req(&["1", "x1"], false), &[], UnixMs(0)).unwrap_err();
        assert_eq!(e.field, "document_ids[1]");
        let mut r = req(&["1"], false);
        r.notify = Some(vec!["nope".into()]);
        let e = validate_add(&r, &["hook".into()], UnixMs(0)).unwrap_err();
        assert!(e.to_string().contains("unknown notifier"), "{e}");
    }

    #[test]
    fn labels_are_key_equals_value() {
        assert_eq!(
            parse_label("team=kb").unwrap(),
            ("team".into(), "kb".into())
        );
        assert!(parse_label("nope").is_err());
    }
}

/// `coze-watch watch`: the run-time watch list from the command line.
pub mod cli {

    use clap::{Args, Subcommand};

    use super::{AddRequest, EntryView, InputError};
    use crate::exit;
    use crate::store::{self, Location, Store, StoreError};
    use crate::wall::UnixMs;

    #[derive(Subcommand)]
    pub enum WatchCommand {
        /// Watch documents of a knowledge base, or (--all) every document of it, present and
        /// future. Kept in the store: survives restarts and reloads; the running daemon sees it
        /// within a second.
        #[command(
            after_help = "Examples:\n  coze-watch watch add 7442585813587000000 7442585813587000001 --label team=kb\n  coze-watch watch add 7442585813587000000 --all --notify pipeline"
        )]
        Add(AddArgs),
        /// Stop watching documents of a knowledge base (all of its run-time entries when no
        /// document is named). Entries of the config file are not touched.
        #[command(after_help = "Example:\n  coze-watch watch remove 7442585813587000000")]
        Remove {
            dataset_id: String,
            document_ids: Vec<String>,
        },
        /// List the run-time entries.
        #[command(after_help = "Example:\n  coze-watch watch list --json")]
        List {
            #[arg(long)]
            json: bool,
        },
    }

    #[derive(Args)]
    pub struct AddArgs {
        /// The knowledge base (dataset) id.
        pub dataset_id: String,
        /// Document ids to watch (none with --all).
        pub document_ids: Vec<String>,
        /// Every document of the knowledge base, present and future.
        #[arg(long)]
        pub all: bool,
        /// A label copied into every event, key=value (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        pub labels: Vec<String>,
        /// Only this notifier (repeatable; default: every notifier).
        #[arg(long = "notify", value_name = "NAME")]
        pub notify: Vec<String>,
        /// Name these documents as one batch: `batch.completed` fires once when all are
        /// terminal.
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        pub batch: Option<String>,
    }

    /// Runs a `watch` command on the store at `at`; returns the exit code (78 for bad input,
    /// 65 for an unusable store).
    pub fn run(at: &Location, notifiers: &[String], cmd: &WatchCommand) -> u8 {
        match apply(at, notifiers, cmd) {
            Ok(text) => {
                print!("{text}");
                exit::OK
            }
            Err(Failure::Input(e)) => {
                eprintln!("error: {e}");
                exit::CONFIG
            }
            Err(Failure::Store(e)) => {
                eprintln!("error: {e}");
                exit::STORE
            }
        }
    }

    enum Failure {
        Input(InputError),
        Store(StoreError),
    }

    impl From<StoreError> for Failure {
        fn from(e: StoreError) -> Self {
            Failure::Store(e)
        }
    }

    fn apply(at: &Location, notifiers: &[String], cmd: &WatchCommand) -> Result<String, Failure> {
        let text = match cmd {
            WatchCommand::Add(a) => {
                let mut labels = std::collections::BTreeMap::new();
                for l in &a.labels {
                    let (k, v) = super::parse_label(l).map_err(Failure::Input)?;
                    labels.insert(k, v);
                }
                let req = AddRequest {
                    dataset_id: a.dataset_id.clone(),
                    document_ids: a.document_ids.clone(),
                    all: a.all,
                    labels,
                    notify: (!a.notify.is_empty()).then(|| a.notify.clone()),
                    batch: a.batch.clone(),
                };
                let (added, asked) = add_entries(at, notifiers, &req)?;
                format!(
                    "added {added} run-time watch entries ({} already there)\n",
                    asked - added
                )
            }
            WatchCommand::Remove {
                dataset_id,
                document_ids,
            } => {
                let (ds, docs) =
                    super::validate_remove(dataset_id, document_ids).map_err(Failure::Input)?;
                let removed = Store::open_at(at)?.remove_watch_entries(&ds, docs.as_deref())?;
                nudge(at);
                format!("removed {removed} run-time watch entries\n")
            }
            WatchCommand::List { json } => {
                let entries = match Store::open_read_only_at(at) {
                    Ok(s) => s.watch_entries()?,
                    // No store yet: nothing was ever added.
                    Err(StoreError::Dir { .. }) if never_written(at) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                if *json {
                    let views: Vec<EntryView> = entries.iter().map(EntryView::from).collect();
                    let body = serde_json::json!({ "entries": views });
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".into())
                    )
                } else {
                    super::render_text(&entries)
                }
            }
        };
        Ok(text)
    }

    /// Validates `req`, stores its entries and tells a running daemon. Returns (added, asked).
    fn add_entries(
        at: &Location,
        notifiers: &[String],
        req: &AddRequest,
    ) -> Result<(usize, usize), Failure> {
        let entries = super::validate_add(req, notifiers, UnixMs::now()).map_err(Failure::Input)?;
        let added = Store::open_at(at)?.add_watch_entries(&entries)?;
        nudge(at);
        Ok((added, entries.len()))
    }

    /// No store was ever created at `at` (an SQLite file that does not exist; a PostgreSQL
    /// database without our tables says so through `open_read_only_at`'s `Dir` error).
    fn never_written(at: &Location) -> bool {
        match at {
            Location::Dir(dir) => !dir.join(store::DB_FILE).exists(),
            Location::Postgres(_) => true,
        }
    }

    /// `watch add` for other commands (`upload --watch`): the entries added, or the error in
    /// words.
    pub fn add(at: &Location, notifiers: &[String], req: &AddRequest) -> Result<usize, String> {
        add_entries(at, notifiers, req)
            .map(|(added, _)| added)
            .map_err(|f| match f {
                Failure::Input(e) => e.to_string(),
                Failure::Store(e) => e.to_string(),
            })
    }

    /// Tells a running daemon to read the run-time watch list now (SIGUSR1). Daemons on
    /// PostgreSQL read it again every few seconds by themselves.
    fn nudge(at: &Location) {
        let Location::Dir(dir) = at else {
            return;
        };
        if let Some(pid) = store::daemon_pid(dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR1,
            );
        }
    }
}
