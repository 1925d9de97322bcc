//! `coze-watch wait`: block until every listed document of one dataset is terminal, showing
//! progress, and exit with a code a pipeline can branch on.
//!
//! It polls with the daemon's pieces (the client and its rate limiter, `poller::poll_dataset`,
//! the tracker, the schedule) and keeps state only in memory. It owns the progress display and
//! the verdict; it never touches a store.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::RngExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{ApiLimits, PollConfig};
use crate::coze::{ApiError, ClientSettings, CozeClient};
use crate::ids::{DatasetId, DocumentId};
use crate::poller::{PollReport, poll_dataset};
use crate::schedule::{DatasetSchedule, SchedulePolicy};
use crate::secret::Secret;
use crate::tracker::{DocState, Lifecycle, TrackerPolicy};
use crate::wall::UnixMs;

mod view;
use view::{View, line, secs};

/// How long `wait` keeps retrying an answer that says the API is unusable before exit 4.
const UNUSABLE_RETRIES: usize = 2;
/// How often an ongoing condition (an unreachable API, documents no answer has shown) is said
/// again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Says a condition at once, then again every [`REMIND_EVERY`] while it lasts.
#[derive(Debug, Default)]
struct Reminder {
    since: Option<Instant>,
    next: Option<Instant>,
}

impl Reminder {
    /// The condition holds at `now`: whether to say so now.
    fn holds(&mut self, now: Instant) -> bool {
        self.since.get_or_insert(now);
        match self.next {
            Some(next) if now < next => false,
            _ => {
                self.next = Some(now + REMIND_EVERY);
                true
            }
        }
    }

    /// The condition is over: whether it was ongoing.
    fn ended(&mut self) -> bool {
        self.next = None;
        self.since.take().is_some()
    }

    /// How long the condition has lasted.
    fn lasted(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |s| now - s)
    }
}

/// Exit codes of `wait` (SPEC section 2).
/// `wait`'s exit codes, by outcome (the numbers live in [`crate::exit`]).
pub mod exit {
    pub use crate::exit::{API_UNUSABLE, INTERRUPTED, TIMED_OUT, USAGE};
    pub const COMPLETED: u8 = crate::exit::OK;
    pub const FAILED: u8 = crate::exit::FAILURE;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// Progress bars (stderr is a terminal).
    Bars,
    /// One plain line per change.
    Lines,
    Quiet,
}

/// The arguments of `coze-watch wait`.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// The dataset (knowledge base) id.
    pub dataset_id: String,
    /// The document ids to wait for.
    #[arg(required_unless_present = "all")]
    pub document_ids: Vec<String>,
    /// Wait for every document of the knowledge base that is processing now (from its
    /// document list: the token needs listDocument).
    #[arg(long, conflicts_with = "document_ids")]
    pub all: bool,
    /// Give up after this long (exit 3), e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print the final states as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// API base URL [default: $COZE_API_BASE, else https://api.coze.cn].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 1h 30m)"))
}

/// `coze-watch wait`: checks the arguments, waits, prints `--json`; returns the exit code.
pub async fn command(args: WaitArgs) -> Result<u8, crate::http::BuildError> {
    use std::io::IsTerminal;
    let display = if args.quiet {
        Display::Quiet
    } else if std::io::stderr().is_terminal() {
        Display::Bars
    } else {
        Display::Lines
    };
    let opts = match options(
        &args.dataset_id,
        &args.document_ids,
        args.timeout,
        args.base_url.as_deref(),
        &crate::config::process_env,
        display,
    ) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(exit::USAGE);
        }
    };
    let interrupt = match crate::signals::interrupt() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return Ok(crate::exit::FAILURE);
        }
    };
    let mut opts = opts;
    if args.all {
        match processing_now(&opts).await? {
            Ok(docs) => {
                if !args.quiet && docs.is_empty() {
                    eprintln!(
                        "no document of knowledge base {} is processing",
                        opts.dataset
                    );
                } else if !args.quiet {
                    eprintln!("waiting for {} processing document(s)", docs.len());
                }
                // None processing: the wait below ends at once, reporting an empty set.
                opts.documents = docs;
            }
            Err(e) => {
                eprintln!("error: the Coze API is unusable: {e}");
                return Ok(exit::API_UNUSABLE);
            }
        }
    }
    let report = run(opts, interrupt).await?;
    if args.json {
        // Plain strings and numbers: serializing cannot fail; an empty object if it ever did.
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into())
        );
    }
    Ok(report.exit_code)
}

/// Checks `wait`'s arguments with the same rules as the config (ids, base URL, token) and
/// builds its options. The error is the usage message (exit 2).
pub fn options(
    dataset: &str,
    documents: &[String],
    timeout: Option<Duration>,
    base_url_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    display: Display,
) -> Result<WaitOptions, String> {
    let token = match crate::config::TokenSource::Env("COZE_API_TOKEN".into()).read(env) {
        Ok(t) => t,
        Err(crate::config::TokenError::EnvUnset(_) | crate::config::TokenError::EnvEmpty(_)) => {
            return Err("COZE_API_TOKEN is not set: export the API token (it needs the readDocumentProgress permission)".into());
        }
        Err(e) => return Err(e.to_string()),
    };
    let base = crate::config::base_url_choice(base_url_flag, None, env);
    let base_url = crate::config::validate::parse_http_url(&base)
        .map_err(|msg| format!("base URL {}: {msg}", crate::redact::url(&base)))?;
    for id in std::iter::once(dataset).chain(documents.iter().map(String::as_str)) {
        crate::config::validate::id(id)?;
    }
    Ok(WaitOptions {
        dataset: DatasetId::new(dataset),
        documents: documents.iter().map(DocumentId::new).collect(),
        timeout,
        base_url,
        token,
        display,
    })
}

pub struct WaitOptions {
    pub dataset: DatasetId,
    pub documents: Vec<DocumentId>,
    pub timeout: Option<Duration>,
    pub base_url: Url,
    pub token: Secret,
    pub display: Display,
}

/// How the wait ended, with every document's final state.
#[derive(Debug, Serialize)]
pub struct WaitReport {
    pub dataset_id: String,
    pub outcome: &'static str,
    pub exit_code: u8,
    /// Why the API is unusable (exit 4).
    pub error: Option<String>,
    pub documents: Vec<DocumentReport>,
}

#[derive(Debug, Serialize)]
pub struct DocumentReport {
    pub document_id: String,
    pub document_name: Option<String>,
    pub state: &'static str,
    pub status: Option<i64>,
    pub progress: Option<i64>,
    pub remaining_time: Option<i64>,
    pub status_descript: Option<String>,
    pub reason: Option<String>,
    pub elapsed_seconds: f64,
}

/// The exit code when several outcomes apply: 4 over 1 over 3; an interrupt is 130.
pub fn verdict(api_unusable: bool, any_failed: bool, timed_out: bool, interrupted: bool) -> u8 {
    if interrupted {
        exit::INTERRUPTED
    } else if api_unusable {
        exit::API_UNUSABLE
    } else if any_failed {
        exit::FAILED
    } else if timed_out {
        exit::TIMED_OUT
    } else {
        exit::COMPLETED
    }
}

fn unusable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Auth(_)
            | ApiError::Permission { .. }
            | ApiError::DatasetNotFound(_)
            | ApiError::Local(_)
    )
}

fn unusable_error(r: &PollReport) -> Option<&ApiError> {
    r.failure
        .as_ref()
        .filter(|e| unusable(e))
        .or(r.dataset_not_found.as_ref())
}

/// The client `wait` polls with: the default limits (at most 1 request/s).
fn client(opts: &WaitOptions) -> Result<std::sync::Arc<CozeClient>, crate::http::BuildError> {
    CozeClient::new(ClientSettings {
        base_url: opts.base_url.clone(),
        token: opts.token.clone(),
        limits: ApiLimits::default(),
        token_file: None,
    })
}

/// `--all`: the documents of the knowledge base that its document list says are processing.
/// A listing that fails is an unusable API (a token without listDocument names it).
async fn processing_now(
    opts: &WaitOptions,
) -> Result<Result<Vec<DocumentId>, ApiError>, crate::http::BuildError> {
    let client = client(opts)?;
    let list = || {
        crate::discover::page_all(
            crate::config::Flavor::Cloud.first_document_page(),
            crate::coze::listing::DOCUMENTS_PER_PAGE as usize,
            |page| client.list_documents(&opts.dataset, page),
        )
    };
    // A passing failure is asked again; a refusal of the token or the dataset is final.
    let listed = list
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_times(3),
        )
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, ApiError::Transient { .. } | ApiError::RateLimited { .. }))
        .await;
    Ok(listed.map(|docs| {
        docs.into_iter()
            .filter(|d| d.status == Some(crate::coze::DocumentStatus::Processing))
            .map(|d| d.document_id)
            .collect()
    }))
}

/// Waits as the options say until every document is terminal, the timeout passes, the API
/// proves unusable, or `interrupt` fires.
pub async fn run(
    opts: WaitOptions,
    interrupt: CancellationToken,
) -> Result<WaitReport, crate::http::BuildError> {
    let poll = PollConfig::default();
    let client = client(&opts)?;
    let tracker = TrackerPolicy::from(&poll);
    let policy = SchedulePolicy::from(&poll);
    let started = UnixMs::now();
    let mut docs: BTreeMap<DocumentId, DocState> = opts
        .documents
        .iter()
        .map(|d| {
            (
                d.clone(),
                DocState::new(opts.dataset.clone(), d.clone(), started),
            )
        })
        .collect();
    let mut view = View::new(opts.display, &docs);
    let mut schedule = DatasetSchedule::new(Instant::now(), 0);
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let (mut timed_out, mut interrupted, mut api_error) = (false, false, None);
    let (mut unreachable, mut unseen) = (Reminder::default(), Reminder::default());
    while docs.values().any(DocState::is_live) {
        let remind_at = [unreachable.next, unseen.next].into_iter().flatten().min();
        tokio::select! {
            _ = interrupt.cancelled() => { interrupted = true; break; }
            _ = sleep_until_opt(deadline) => { timed_out = true; break; }
            _ = sleep_until_opt(remind_at) => {
                let now = Instant::now();
                if unreachable.next.is_some_and(|t| now >= t) && unreachable.holds(now) {
                    view.note(&format!(
                        "still cannot reach the Coze API (for {}); retrying{}",
                        secs(unreachable.lasted(now)),
                        if deadline.is_some() { " until --timeout" } else { "" }
                    ));
                }
                if unseen.next.is_some_and(|t| now >= t) && unseen.holds(now) {
                    note_unseen(&view, &docs, unseen.lasted(now));
                }
                continue;
            }
            _ = tokio::time::sleep_until(schedule.next_poll) => {}
        }
        let live: Vec<DocState> = docs.values().filter(|d| d.is_live()).cloned().collect();
        let attempt = || async {
            let report = poll_dataset(&client, &opts.dataset, &live, &tracker, UnixMs::now()).await;
            if unusable_error(&report).is_some() {
                Err(report)
            } else {
                Ok(report)
            }
        };
        let result = tokio::select! {
            _ = interrupt.cancelled() => { interrupted = true; break; }
            r = attempt
                .retry(ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(UNUSABLE_RETRIES))
                .sleep(tokio::time::sleep) => r,
        };
        let report = match result {
            Ok(r) => r,
            Err(r) => {
                api_error = unusable_error(&r).map(ToString::to_string);
                break;
            }
        };
        let now = Instant::now();
        let u = rand::rng().random::<f64>();
        match &report.failure {
            Some(e) if is_unreachable(e) => {
                if unreachable.holds(now) {
                    view.note(&format!(
                        "cannot reach the Coze API at {}: {e}; retrying{}",
                        crate::redact::url(opts.base_url.as_str()),
                        if deadline.is_some() {
                            " until --timeout"
                        } else {
                            " (no --timeout: until it answers)"
                        }
                    ));
                }
                let r = crate::schedule::reaction(e, &policy);
                schedule.on_failure(now, r.failure, &policy, u);
            }
            Some(e) => {
                view.note(&format!("retrying: {e}"));
                let r = crate::schedule::reaction(e, &policy);
                if let Some(pause) = r.pause_all {
                    client.pause_until(now + pause);
                }
                schedule.on_failure(now, r.failure, &policy, u);
            }
            None => {
                if unreachable.ended() {
                    view.note("the Coze API answers again");
                }
                schedule.on_success(now, &report.processing(), report.changed(), &policy, u);
            }
        }
        for step in report.steps {
            view.update(&step);
            docs.insert(step.state.document_id.clone(), step.state);
        }
        if report.failure.is_none() {
            if docs.values().any(never_seen) {
                if unseen.holds(now) {
                    note_unseen(&view, &docs, unseen.lasted(now));
                }
            } else {
                unseen.ended();
            }
        }
    }
    if timed_out {
        let late: Vec<String> = docs.values().filter(|d| d.is_live()).map(line).collect();
        view.note(&format!(
            "timed out after {}; not done: {}",
            secs(opts.timeout.unwrap_or_default()),
            late.join("; ")
        ));
    }
    view.finish();
    let any_failed = docs.values().any(|d| {
        matches!(
            d.state,
            Lifecycle::Failed | Lifecycle::Missing | Lifecycle::TimedOut
        )
    });
    let code = verdict(api_error.is_some(), any_failed, timed_out, interrupted);
    if let Some(e) = &api_error {
        view.note(&format!("error: the Coze API is unusable: {e}"));
    }
    Ok(WaitReport {
        dataset_id: opts.dataset.to_string(),
        outcome: match code {
            exit::COMPLETED => "completed",
            exit::FAILED => "failed",
            exit::TIMED_OUT => "timed_out",
            exit::API_UNUSABLE => "api_unusable",
            _ => "interrupted",
        },
        exit_code: code,
        error: api_error,
        documents: docs
            .values()
            .map(|d| document_report(d, UnixMs::now()))
            .collect(),
    })
}

/// A transport failure that says the API cannot be reached at all (refused, no route, DNS, a
/// timeout), rather than an answer.
fn is_unreachable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Transient {
            kind: crate::coze::TransientKind::Connect | crate::coze::TransientKind::Timeout,
            ..
        }
    )
}

/// Still watched and in no answer so far.
fn never_seen(d: &DocState) -> bool {
    d.is_live() && d.last_seen.is_none()
}

fn note_unseen(view: &View, docs: &BTreeMap<DocumentId, DocState>, lasted: Duration) {
    let ids: Vec<String> = docs
        .values()
        .filter(|d| never_seen(d))
        .map(|d| d.document_id.to_string())
        .collect();
    view.note(&format!(
        "not in any answer yet{}: {} (the API leaves out ids it does not know; still asking)",
        if lasted.is_zero() {
            String::new()
        } else {
            format!(" after {}", secs(lasted))
        },
        ids.join(", ")
    ));
}

fn document_report(d: &DocState, now: UnixMs) -> DocumentReport {
    DocumentReport {
        document_id: d.document_id.to_string(),
        document_name: d.info.name.clone(),
        state: d.state.as_str(),
        status: d.status.map(crate::coze::DocumentStatus::code),
        progress: d.progress,
        remaining_time: d.remaining_time,
        status_descript: d.info.status_descript.clone(),
        reason: d.reason.clone(),
        elapsed_seconds: d
            .terminal_at
            .unwrap_or(now)
            .since(d.watched_since)
            .as_secs_f64(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reminder_speaks_at_once_then_once_a_minute_while_the_condition_lasts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reminder::default();
        assert!(r.holds(t0), "at once");
        assert!(!r.holds(t0 + s(30)));
        assert!(!r.holds(t0 + s(59)));
        assert!(r.holds(t0 + s(60)), "a minute later");
        assert_eq!(r.next, Some(t0 + s(120)));
        assert_eq!(r.lasted(t0 + s(90)), s(90));
        assert!(r.ended());
        assert!(!r.ended(), "already over");
        assert!(r.holds(t0 + s(100)), "a new episode speaks at once");
        assert_eq!(r.lasted(t0 + s(100)), Duration::ZERO);
    }

    #[test]
    fn exit_code_precedence_is_4_then_1_then_3() {
        assert_eq!(verdict(false, false, false, false), 0);
        assert_eq!(verdict(false, false, true, false), 3);
        assert_eq!(verdict(false, true, true, false), 1);
        assert_eq!(verdict(true, true, true, false), 4);
        assert_eq!(verdict(true, false, false, false), 4);
        assert_eq!(verdict(true, true, true, true), 130);
    }
}
