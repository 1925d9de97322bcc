//! What the store knows, as `status`, `status --json` and `GET /status` show it.
//!
//! A read-only view: it reads documents, schedules and deliveries through the store and never
//! writes. The JSON shape is a stable contract for scripts; the table is for people.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::WatchList;
use crate::store::{DeliveryRow, Store, StoreError};
use crate::tracker::Lifecycle;
use crate::wall::UnixMs;

/// The `meta` key of the last reload's outcome.
pub const LAST_RELOAD: &str = "last_reload";

/// The last reload's outcome, as stored (JSON) and shown by `status`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// What discovery knows of one scope.
#[derive(Debug, Serialize)]
pub struct ScopeView {
    /// `space:ID` or `dataset:ID`.
    pub scope: String,
    pub knowledge_bases: usize,
    /// Knowledge bases skipped, with why (`disabled`, `volcano`).
    pub skipped: BTreeMap<String, String>,
    /// The last listing's error (a 4101 names the missing permission).
    pub last_error: Option<String>,
}

/// The most deliveries of each kind listed.
const DELIVERIES_LISTED: usize = 1000;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub generated_at: String,
    /// Documents by lifecycle state.
    pub counts: BTreeMap<String, u64>,
    pub documents: Vec<DocumentRow>,
    pub pending_deliveries: Vec<DeliveryView>,
    pub dead_deliveries: Vec<DeliveryView>,
    /// The last reload (`null` before any).
    pub last_reload: Option<ReloadOutcome>,
    pub discovery: Vec<ScopeView>,
    /// Why the daemon is unhealthy (`/status` only; the CLI cannot know).
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DocumentRow {
    pub dataset_id: String,
    pub document_id: String,
    pub document_name: Option<String>,
    pub state: String,
    pub stalled: bool,
    pub status: Option<i64>,
    pub progress: Option<i64>,
    pub remaining_time: Option<i64>,
    pub reason: Option<String>,
    pub watched_since: String,
    pub last_change: String,
    pub last_seen: Option<String>,
    /// When its dataset is polled next; `null` for terminal documents.
    pub next_poll: Option<String>,
    /// Listed in the current config (documents removed from it keep their history).
    pub in_config: bool,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub event_id: String,
    pub event_type: String,
    pub dataset_id: String,
    pub document_id: String,
    pub notifier: String,
    pub attempts: u32,
    pub next_attempt_at: String,
    /// When a dead delivery died; `None` for a pending one.
    pub dead_since: Option<String>,
    pub last_error: Option<String>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        DeliveryView {
            event_id: d.event_id,
            event_type: d.event_type,
            dataset_id: d.dataset_id,
            document_id: d.document_id,
            notifier: d.notifier,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.rfc3339_seconds(),
            dead_since: (d.status == "dead").then(|| d.updated_at.rfc3339_seconds()),
            last_error: d.last_error,
        }
    }
}

/// The most characters of an error shown on one line.
pub const ERROR_CHARS: usize = 300;

/// `text` on one line for a terminal: control characters replaced (line breaks and tabs by a
/// space, the rest by U+FFFD), at most `max` characters (then `…`).
pub fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .take(max)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `coze-watch status [--json]`: opens the store of `config` read-only and renders what it
/// knows, as JSON or as the table.
pub fn show(config: &crate::config::Config, json: bool) -> Result<String, StoreError> {
    let store = Store::open_read_only_at(&crate::store::Location::of(&config.state))?;
    let report = snapshot(&store, Some(&config.watch), UnixMs::now())?;
    Ok(if json {
        // Plain strings and numbers: serializing cannot fail; an empty object if it ever did.
        let text = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into());
        format!("{text}\n")
    } else {
        render_text(&report)
    })
}

/// Reads everything `status` shows. `watch` marks which documents the config lists.
pub fn snapshot(
    store: &Store,
    watch: Option<&WatchList>,
    now: UnixMs,
) -> Result<StatusReport, StoreError> {
    let schedules = store.load_schedules()?;
    let scopes = store.load_scopes()?;
    let covered: BTreeSet<String> = scopes
        .values()
        .flat_map(|s| s.covered().map(ToString::to_string).collect::<Vec<_>>())
        .chain(
            watch
                .map(|w| w.all_of.keys().map(ToString::to_string).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .collect();
    let mut docs = store.load_documents()?;
    docs.sort_by(|a, b| (&a.dataset_id, &a.document_id).cmp(&(&b.dataset_id, &b.document_id)));
    let listed: BTreeSet<(String, String)> = watch
        .map(|w| {
            w.datasets
                .iter()
                .flat_map(|(ds, m)| m.keys().map(move |d| (ds.to_string(), d.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let documents = docs
        .into_iter()
        .map(|d| {
            *counts.entry(d.state.as_str().to_string()).or_default() += 1;
            let next_poll = (d.state == Lifecycle::Watching)
                .then(|| {
                    schedules
                        .get(&d.dataset_id)
                        .map(|s| s.next_poll_at.rfc3339_seconds())
                })
                .flatten();
            DocumentRow {
                in_config: watch.is_none()
                    || covered.contains(d.dataset_id.as_str())
                    || listed.contains(&(d.dataset_id.to_string(), d.document_id.to_string())),
                dataset_id: d.dataset_id.to_string(),
                document_id: d.document_id.to_string(),
                document_name: d.info.name.clone(),
                state: d.state.as_str().to_string(),
                stalled: d.stalled,
                status: d.status.map(crate::coze::DocumentStatus::code),
                progress: d.progress,
                remaining_time: d.remaining_time,
                reason: d.reason.clone().or_else(|| d.info.status_descript.clone()),
                watched_since: d.watched_since.rfc3339_seconds(),
                last_change: d.last_change.rfc3339_seconds(),
                last_seen: d.last_seen.map(|t| t.rfc3339_seconds()),
                next_poll,
            }
        })
        .collect();
    let pending = store.deliveries("pending", DELIVERIES_LISTED)?;
    let dead = store.deliveries("dead", DELIVERIES_LISTED)?;
    let last_reload = store
        .meta(LAST_RELOAD)?
        .and_then(|text| serde_json::from_str(&text).ok());
    let mut discovery: Vec<ScopeView> = scopes
        .iter()
        .map(|(scope, state)| ScopeView {
            scope: scope.key(),
            knowledge_bases: state.covered().count(),
            skipped: state
                .datasets
                .iter()
                .filter_map(|(ds, kb)| kb.skipped.map(|s| (ds.to_string(), s.as_str().into())))
                .collect(),
            last_error: state.last_error.clone(),
        })
        .collect();
    discovery.sort_by(|a, b| a.scope.cmp(&b.scope));
    Ok(StatusReport {
        generated_at: now.rfc3339_seconds(),
        counts,
        documents,
        pending_deliveries: pending.into_iter().map(DeliveryView::from).collect(),
        dead_deliveries: dead.into_iter().map(DeliveryView::from).collect(),
        last_reload,
        discovery,
        problems: Vec::new(),
    })
}

/// A readable table of the report.
pub fn render_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    out.push_str(&format!(
        "{} documents ({})\n\n",
        r.documents.len(),
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    ));
    if !r.documents.is_empty() {
        out.push_str(&format!(
            "{:<20} {:<20} {:<10} {:>4}  {:<20} {:<20} {}\n",
            "DATASET", "DOCUMENT", "STATE", "%", "LAST CHANGE", "NEXT POLL", "NAME / REASON"
        ));
        for d in &r.documents {
            let state = if d.stalled {
                "stalled"
            } else {
                d.state.as_str()
            };
            let progress = d
                .progress
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into());
            let mut name = d.document_name.clone().unwrap_or_default();
            if let Some(reason) = &d.reason {
                name.push_str(&format!(" ({reason})"));
            }
            if !d.in_config {
                name.push_str(" [not in config]");
            }
            out.push_str(&format!(
                "{:<20} {:<20} {:<10} {:>4}  {:<20} {:<20} {}\n",
                d.dataset_id,
                d.document_id,
                state,
                progress,
                d.last_change,
                d.next_poll.as_deref().unwrap_or("-"),
                name.escape_debug()
            ));
        }
    }
    if let Some(reload) = &r.last_reload {
        out.push_str(&match &reload.error {
            None => format!("\nlast reload: {} applied\n", reload.at),
            Some(e) => format!(
                "\nlast reload: {} REFUSED: {}\n",
                reload.at,
                e.escape_debug()
            ),
        });
    }
    for scope in &r.discovery {
        out.push_str(&format!(
            "\ndiscovery {}: {} knowledge base(s)",
            scope.scope, scope.knowledge_bases
        ));
        for (ds, why) in &scope.skipped {
            out.push_str(&format!(", {ds} skipped ({why})"));
        }
        if let Some(e) = &scope.last_error {
            out.push_str(&format!("; last error: {}", e.escape_debug()));
        }
        out.push('\n');
    }
    for p in &r.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    for (title, list) in [
        ("pending", &r.pending_deliveries),
        ("dead", &r.dead_deliveries),
    ] {
        out.push_str(&format!("\n{} {title} deliveries\n", list.len()));
        for d in list {
            let when = match &d.dead_since {
                Some(t) => format!("dead since {t}"),
                None => format!("next {}", d.next_attempt_at),
            };
            out.push_str(&format!(
                "  {} {} {} -> {} (attempts {}, {when}){}\n",
                d.event_id,
                d.event_type,
                d.document_id,
                d.notifier,
                d.attempts,
                d.last_error
                    .as_deref()
                    .map(|e| format!(": {}", one_line(e, ERROR_CHARS)))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
