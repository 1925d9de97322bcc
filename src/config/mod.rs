//! Configuration: YAML file (plus includes) -> validated [`Config`], and every config error.
//!
//! Loading is one explicit step ([`load`]): raw serde structs (`raw`) are parsed with unknown
//! keys denied, then `resolve` expands `${VAR}`, applies defaults, parses durations and URLs and
//! checks every rule of SPEC section 3, collecting all problems instead of stopping at the first.
//! This module reads the config file, its includes and a `token_file`; it never opens a network
//! connection or the state directory.

mod error;
mod expand;
mod raw;
mod resolve;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use error::{ConfigError, Diagnostics, KeyPath, LineCol};
pub use expand::{ExpandError, expand};

use crate::event::EventType;
use crate::ids::{DatasetId, DocumentId, SpaceId};
use crate::secret::{Secret, SecretUrl};

/// The JSON Schema of the config file, generated from the structs that read it.
pub fn schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    // Plain JSON values: serializing cannot fail; an empty object if it ever did.
    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into())
}

/// Where the config file lives when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coze-watch/config.yaml";
/// The Coze region whose API docs this project follows.
pub const DEFAULT_BASE_URL: &str = "https://api.coze.cn";
/// Per-day quota Coze published for a space (2024); used to warn in `check`.
pub const PUBLISHED_DAILY_QUOTA: u64 = 3000;

/// How strictly the environment (env vars, files, executables) is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As `run` loads it: every problem is an error.
    Strict,
    /// `check --lint`: problems with the environment are warnings, for CI and the example file.
    Lint,
}

/// A successfully loaded config and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// Loads and validates `path` and its includes. `env` looks up environment variables (tests
/// pass a map; the binary passes the process environment).
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    mode: Mode,
) -> Result<Loaded, Diagnostics> {
    resolve::load(path, env, mode)
}

/// Loads and validates config text as if read from `file` (includes are relative to it). For
/// the fuzzer and for callers that already hold the text.
pub fn load_text(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    mode: Mode,
) -> Result<Loaded, Diagnostics> {
    let src = error::Source {
        file: file.to_path_buf(),
        text: text.to_string(),
    };
    resolve::load_source(src, env, mode)
}

/// The process environment, as `load` wants it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `-c FILE`, else `$COZE_WATCH_CONFIG`, else [`DEFAULT_CONFIG_PATH`].
pub fn config_path(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match cli {
        Some(p) => p.to_path_buf(),
        None => env("COZE_WATCH_CONFIG")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)),
    }
}

/// Base URL precedence of SPEC section 2: the command line, else the config, else
/// `$COZE_API_BASE`, else [`DEFAULT_BASE_URL`]. Returns the raw string; callers validate it.
pub fn base_url_choice(
    cli: Option<&str>,
    config: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    cli.map(str::to_string)
        .or_else(|| config.map(str::to_string))
        .or_else(|| env("COZE_API_BASE").filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub file: PathBuf,
    pub api: ApiConfig,
    pub poll: PollConfig,
    pub state: StateConfig,
    pub http: Option<HttpConfig>,
    pub log: LogConfig,
    pub notifiers: Vec<NotifierConfig>,
    /// Shared with the ops endpoint; a reload swaps it whole.
    pub watch: std::sync::Arc<WatchList>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub base_url: Url,
    pub token_source: TokenSource,
    pub token: Secret,
    pub limits: ApiLimits,
    pub flavor: Flavor,
}

/// Which Coze serves the API: the cloud, or a self-hosted Coze Studio (whose document list
/// pages from 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavor {
    #[default]
    Cloud,
    Studio,
}

impl Flavor {
    /// The number of the first page of a document listing.
    pub fn first_document_page(self) -> u32 {
        match self {
            Flavor::Cloud => 1,
            Flavor::Studio => 0,
        }
    }
}

/// How the client may use the API. [`ApiLimits::default`] is the one source of the defaults of
/// SPEC section 3: the config's and `wait`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiLimits {
    pub request_timeout: Duration,
    pub max_ids_per_request: usize,
    pub max_requests_per_second: f64,
    pub max_requests_per_day: Option<u64>,
    pub max_concurrent_requests: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            request_timeout: Duration::from_secs(15),
            max_ids_per_request: 50,
            max_requests_per_second: 1.0,
            max_requests_per_day: None,
            max_concurrent_requests: 2,
        }
    }
}

/// Where the API token comes from. A `File` is re-read on reload and before retrying a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// Why the token could not be read. Names the variable or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("environment variable {0} is not set (set it, or use api.token_file)")]
    EnvUnset(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("token file {} is empty", .0.display())]
    FileEmpty(PathBuf),
    #[error("cannot read token file {}: {source}", path.display())]
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} holds characters an HTTP header cannot carry (a line break or a control character inside the token?)"
    )]
    NotAHeader(String),
}

impl TokenSource {
    /// Reads the token now.
    pub fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, TokenError> {
        let (token, from) = match self {
            TokenSource::Env(name) => match env(name) {
                Some(v) if !v.trim().is_empty() => (v, format!("environment variable {name}")),
                Some(_) => return Err(TokenError::EnvEmpty(name.clone())),
                None => return Err(TokenError::EnvUnset(name.clone())),
            },
            TokenSource::File(path) => match read_small(path) {
                Ok(v) if !v.trim().is_empty() => (v, format!("token file {}", path.display())),
                Ok(_) => return Err(TokenError::FileEmpty(path.clone())),
                Err(source) => {
                    return Err(TokenError::FileUnreadable {
                        path: path.clone(),
                        source,
                    });
                }
            },
        };
        let token = Secret::new(token.trim());
        // A token a header cannot carry would fail every request; refuse it where it is read.
        match crate::http::bearer(&token) {
            Some(_) => Ok(token),
            None => Err(TokenError::NotAHeader(from)),
        }
    }
}

/// Reads a small text file (a token), refusing anything larger than 64 KiB rather than
/// reading a device or a huge file into memory.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    const LIMIT: u64 = 64 * 1024;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(LIMIT + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > LIMIT {
        return Err(std::io::Error::other("larger than 64 KiB; not a token"));
    }
    Ok(text)
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub jitter: f64,
    pub error_backoff: BackoffConfig,
    pub stall_after: Duration,
    pub give_up_after: Duration,
    pub missing_after: u32,
    pub missing_grace: Duration,
    pub progress_step: u8,
    /// How often discovery probes a space or lists a `documents: all` knowledge base.
    pub discover_interval: Duration,
    /// How often a discovered knowledge base is listed in full even when it looks unchanged.
    pub relist_interval: Duration,
}

impl Default for PollConfig {
    /// The defaults of SPEC section 3, also what `wait` polls with.
    fn default() -> Self {
        PollConfig {
            min_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(120),
            jitter: 0.1,
            error_backoff: BackoffConfig {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(300),
                multiplier: 2.0,
            },
            stall_after: Duration::from_secs(30 * 60),
            give_up_after: Duration::from_secs(24 * 3600),
            missing_after: 5,
            missing_grace: Duration::from_secs(600),
            progress_step: 10,
            discover_interval: Duration::from_secs(60),
            relist_interval: Duration::from_secs(3600),
        }
    }
}

/// An exponential backoff: `min(max, initial * multiplier^(n-1))` after the n-th failure in a
/// row. The poll backoff and the delivery retry are both one.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl BackoffConfig {
    /// The delay after the `failures`-th failure in a row (1 for the first), before jitter.
    /// A pure function of the count, so a persisted count resumes the same schedule.
    pub fn delay(&self, failures: u32) -> Duration {
        let n = failures.saturating_sub(1).min(64) as i32;
        let secs = (self.initial.as_secs_f64() * self.multiplier.powi(n))
            .min(self.max.as_secs_f64())
            .max(0.0);
        Duration::from_secs_f64(secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// The SQLite store's directory (unused with `postgres`).
    pub dir: PathBuf,
    pub retention: Duration,
    /// `state.url`: the store is this PostgreSQL database, shared by every instance.
    pub postgres: Option<PostgresConfig>,
    /// How long a leader's lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
}

/// A PostgreSQL store: the URL (never with a password) and the password, from
/// `state.password_file` or `$PGPASSWORD`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: url::Url,
    pub password: Option<Secret>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_str())
            .field("password", &self.password)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub allow_remote: bool,
    /// The bearer token of the write routes (`POST`/`DELETE /v1/watch`); `None`: writes off.
    pub api_token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub name: String,
    pub events: BTreeSet<EventType>,
    pub kind: NotifierKind,
}

#[derive(Debug, Clone)]
pub enum NotifierKind {
    Log,
    Webhook(WebhookConfig),
    Exec(ExecConfig),
}

impl NotifierKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            NotifierKind::Log => "log",
            NotifierKind::Webhook(_) => "webhook",
            NotifierKind::Exec(_) => "exec",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: SecretUrl,
    /// `standard`: a `whsec_` Standard Webhooks secret; feishu/dingtalk: the bot's own secret.
    pub secret: Option<Secret>,
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub format: WebhookFormat,
    pub language: Language,
    /// Throttle for chat formats; `None` for `standard`.
    pub max_per_minute: Option<u32>,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Standard,
    Feishu,
    Dingtalk,
    Wecom,
    Slack,
}

impl WebhookFormat {
    pub const NAMES: &'static str = "standard, feishu, dingtalk, wecom, slack";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "standard" => WebhookFormat::Standard,
            "feishu" => WebhookFormat::Feishu,
            "dingtalk" => WebhookFormat::Dingtalk,
            "wecom" => WebhookFormat::Wecom,
            "slack" => WebhookFormat::Slack,
            _ => return None,
        })
    }

    pub fn is_chat(self) -> bool {
        self != WebhookFormat::Standard
    }

    /// The service's published message limit per minute, the default throttle.
    pub fn published_per_minute(self) -> Option<u32> {
        match self {
            WebhookFormat::Standard => None,
            WebhookFormat::Feishu => Some(100),
            WebhookFormat::Dingtalk => Some(20),
            WebhookFormat::Wecom => Some(20),
            WebhookFormat::Slack => Some(60),
        }
    }

    pub fn default_language(self) -> Language {
        match self {
            WebhookFormat::Slack | WebhookFormat::Standard => Language::En,
            _ => Language::Zh,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Zh,
    En,
}

#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// argv; `command[0]` is an absolute path. Never run through a shell.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub retry: RetryPolicy,
}

/// A notifier's retries: its backoff, and when a delivery gives up (dead).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub backoff: BackoffConfig,
    pub max_attempts: u32,
    pub max_age: Duration,
}

impl RetryPolicy {
    pub fn webhook_default() -> Self {
        RetryPolicy {
            backoff: BackoffConfig {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(3600),
                multiplier: 4.0,
            },
            max_attempts: 12,
            max_age: Duration::from_secs(72 * 3600),
        }
    }

    pub fn exec_default() -> Self {
        RetryPolicy {
            backoff: BackoffConfig {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(600),
                multiplier: 2.0,
            },
            max_attempts: 5,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What to watch: documents named one by one, whole knowledge bases (`documents: all`), and
/// whole spaces (SPEC section 11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchList {
    /// Documents named one by one, grouped by dataset.
    pub datasets: BTreeMap<DatasetId, BTreeMap<DocumentId, WatchedDocument>>,
    /// Knowledge bases watched whole: every document, present and future.
    pub all_of: BTreeMap<DatasetId, WatchedDocument>,
    /// Spaces watched whole: every Coze knowledge base, present and future.
    pub spaces: Vec<SpaceWatch>,
    /// The documents of each batch (see [`WatchList::index_batches`]).
    pub batches: BTreeMap<String, Vec<(DatasetId, DocumentId)>>,
}

/// A `space:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceWatch {
    pub space: SpaceId,
    /// Only these knowledge bases (`datasets:`); `None`: all.
    pub only: Option<BTreeSet<DatasetId>>,
    pub exclude: BTreeSet<DatasetId>,
    pub rule: WatchedDocument,
}

impl SpaceWatch {
    /// Whether the entry covers knowledge base `ds` of its space.
    pub fn covers(&self, ds: &DatasetId) -> bool {
        !self.exclude.contains(ds) && self.only.as_ref().is_none_or(|o| o.contains(ds))
    }
}

impl WatchList {
    /// Rebuilds [`WatchList::batches`] from the documents' `batch`.
    pub fn index_batches(&mut self) {
        let mut batches: BTreeMap<String, Vec<(DatasetId, DocumentId)>> = BTreeMap::new();
        for (ds, docs) in &self.datasets {
            for (doc, w) in docs {
                if let Some(b) = &w.batch {
                    batches
                        .entry(b.to_string())
                        .or_default()
                        .push((ds.clone(), doc.clone()));
                }
            }
        }
        self.batches = batches;
    }

    /// Documents named one by one.
    pub fn document_count(&self) -> usize {
        self.datasets.values().map(BTreeMap::len).sum()
    }

    /// Whether anything is found by listing (a `documents: all` or `space:` entry).
    pub fn discovers(&self) -> bool {
        !self.all_of.is_empty() || !self.spaces.is_empty()
    }

    /// The labels and notifiers of a document named one by one, else of its knowledge base's
    /// `documents: all` entry.
    pub fn rule(&self, ds: &DatasetId, doc: &DocumentId) -> Option<&WatchedDocument> {
        self.datasets
            .get(ds)
            .and_then(|m| m.get(doc))
            .or_else(|| self.all_of.get(ds))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedDocument {
    /// Shared by every document of its watch entry (100,000 documents need not hold 100,000
    /// copies).
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
    /// Notifier names; `None` means every notifier.
    pub notify: Option<std::sync::Arc<[String]>>,
    /// The batch the document belongs to (explicit documents only).
    pub batch: Option<std::sync::Arc<str>>,
}

impl Config {
    /// The fewest listing requests a day discovery makes: one per `documents: all` entry and
    /// per space every `discover_interval` (more when a listing has several pages).
    pub fn discovery_requests_per_day(&self) -> u64 {
        let runs = (86_400.0 / self.poll.discover_interval.as_secs_f64().max(0.001)).ceil() as u64;
        (self.watch.all_of.len() + self.watch.spaces.len()) as u64 * runs
    }

    /// The most requests a day this config can make: every dataset polled at `min_interval`
    /// in `ceil(documents / max_ids_per_request)` batches, capped by the rate limit and the
    /// daily budget. Returns (capped, uncapped).
    pub fn worst_case_requests_per_day(&self) -> (u64, u64) {
        self.requests_per_day(self.poll.min_interval)
    }

    /// The requests a day this config makes at its sustained pace, with every watched document
    /// processing all day: every batch polled each `max_interval` (the schedule's pace once
    /// hints are used up: a hint that proves wrong is not followed again), plus discovery's
    /// listings. Short honest hints add a few polls per document; documents that discovery
    /// finds add theirs. Returns (capped, uncapped), as the worst case.
    pub fn sustained_requests_per_day(&self) -> (u64, u64) {
        self.requests_per_day(self.poll.max_interval)
    }

    fn requests_per_day(&self, every: Duration) -> (u64, u64) {
        let day = 86_400.0;
        let polls_per_day = (day / every.as_secs_f64().max(0.001)).ceil() as u64;
        let batch = self.api.limits.max_ids_per_request.max(1);
        let uncapped: u64 = self
            .watch
            .datasets
            .values()
            .map(|docs| docs.len().div_ceil(batch) as u64 * polls_per_day)
            .sum();
        let uncapped = uncapped + self.discovery_requests_per_day();
        let by_rate = (self.api.limits.max_requests_per_second * day).floor() as u64;
        let mut capped = uncapped.min(by_rate);
        if let Some(budget) = self.api.limits.max_requests_per_day {
            capped = capped.min(budget);
        }
        (capped, uncapped)
    }
}
