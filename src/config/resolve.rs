//! Raw YAML structs -> validated `Config`, in one pass that collects every problem.
//!
//! Each `resolve_*` function takes the raw section and its key path, reports problems through
//! `Ctx`, and returns a usable value (a default where the input was bad) so that one run finds
//! all errors. Values are described in messages, never echoed when they may be secret.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use url::Url;

use super::error::{ConfigError, Diagnostics, KeyPath, Source, locate};
use super::expand::{ExpandError, expand};
use super::raw::{
    RawApi, RawBackoff, RawConfig, RawDuration, RawHttp, RawLog, RawNotifier, RawPoll, RawRetry,
    RawState, RawWatch, RawWatchFile,
};
use super::*;

/// Shared state of one load: the environment, the mode and the problems found so far.
struct Ctx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    mode: Mode,
    diags: Diagnostics,
}

impl Ctx<'_> {
    fn error(&mut self, src: &Source, path: &KeyPath, msg: impl Into<String>) {
        self.diags.errors.push(src.problem(path, msg));
    }

    fn warn(&mut self, src: &Source, path: &KeyPath, msg: impl Into<String>) {
        self.diags.warnings.push(src.problem(path, msg));
    }

    /// A problem with the environment (unset variable, missing file, missing executable):
    /// an error normally, a warning under `--lint`.
    fn env_problem(&mut self, src: &Source, path: &KeyPath, msg: impl Into<String>) {
        match self.mode {
            Mode::Strict => self.error(src, path, msg),
            Mode::Lint => self.warn(src, path, msg),
        }
    }

    /// An id as written: expanded (only when it mentions `$`) and checked. The key path is
    /// built only for an error: a watch list may hold 100,000 ids.
    fn id(&mut self, src: &Source, path: &dyn Fn() -> KeyPath, raw: String) -> Option<String> {
        let id = if raw.contains('$') {
            self.string(src, &path(), &raw)?
        } else {
            raw
        };
        check_id(self, src, path, id)
    }

    /// Expands `${VAR}`. `None` when a variable is unset (reported), so callers skip checks of
    /// a value that is not known.
    fn string(&mut self, src: &Source, path: &KeyPath, raw: &str) -> Option<String> {
        match expand(raw, self.env) {
            Ok(s) => Some(s),
            Err(e @ ExpandError::Unset(_)) => {
                self.env_problem(src, path, e.to_string());
                None
            }
            Err(e) => {
                self.error(src, path, e.to_string());
                None
            }
        }
    }

    fn duration(
        &mut self,
        src: &Source,
        path: &KeyPath,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        let Some(text) = self.string(src, path, &raw.0) else {
            return default;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    src,
                    path,
                    format!("invalid duration {text:?}: {e} (examples: 500ms, 30s, 5m, 1h 30m)"),
                );
                default
            }
        }
    }

    /// A positive duration (timeouts, intervals).
    fn positive_duration(
        &mut self,
        src: &Source,
        path: &KeyPath,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(src, path, raw, default);
        if d.is_zero() {
            self.error(src, path, "must be greater than zero");
            return default;
        }
        d
    }

    fn count(
        &mut self,
        src: &Source,
        path: &KeyPath,
        raw: Option<u64>,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        match raw {
            None => default,
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                self.error(
                    src,
                    path,
                    format!("{v} is out of range ({}..={})", range.start(), range.end()),
                );
                default
            }
        }
    }
}

pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    mode: Mode,
) -> Result<Loaded, Diagnostics> {
    match read_source(path) {
        Ok(src) => load_source(src, env, mode),
        Err(e) => Err(Diagnostics {
            errors: vec![e],
            warnings: Vec::new(),
        }),
    }
}

pub fn load_source(
    src: Source,
    env: &dyn Fn(&str) -> Option<String>,
    mode: Mode,
) -> Result<Loaded, Diagnostics> {
    let mut ctx = Ctx {
        env,
        mode,
        diags: Diagnostics::default(),
    };
    let raw: RawConfig = if src.text.trim().is_empty() {
        RawConfig::default()
    } else {
        match serde_yaml::from_str(&src.text) {
            Ok(raw) => raw,
            Err(e) => {
                ctx.diags.errors.push(src.parse_error(&e));
                return Err(ctx.diags);
            }
        }
    };
    let config = resolve(&mut ctx, &src, raw);
    if ctx.diags.is_ok() {
        Ok(Loaded {
            config,
            warnings: ctx.diags.warnings,
        })
    } else {
        Err(ctx.diags)
    }
}

fn read_source(path: &Path) -> Result<Source, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| Source {
            file: path.to_path_buf(),
            text,
        })
        .map_err(|e| ConfigError {
            file: path.to_path_buf(),
            at: None,
            path: KeyPath::root(),
            message: format!("cannot read config file: {e}"),
        })
}

fn resolve(ctx: &mut Ctx<'_>, src: &Source, mut raw: RawConfig) -> Config {
    let root = KeyPath::root();
    let api = resolve_api(ctx, src, &root.key("api"), &raw.api);
    let poll = resolve_poll(ctx, src, &root.key("poll"), &raw.poll);
    let state = resolve_state(ctx, src, &root.key("state"), &raw.state);
    let http = raw
        .http
        .as_ref()
        .and_then(|h| resolve_http(ctx, src, &root.key("http"), h));
    let log = resolve_log(ctx, src, &root.key("log"), &raw.log);
    let notifiers = resolve_notifiers(ctx, src, &root.key("notifiers"), &raw.notifiers);
    let names: BTreeSet<String> = notifiers.iter().map(|n| n.name.clone()).collect();
    let watch = resolve_watch_list(ctx, src, &mut raw, &names);
    if watch.datasets.is_empty() {
        ctx.warn(
            src,
            &root,
            "nothing to watch: `watch` and `include` list no documents",
        );
    }
    Config {
        file: src.file.clone(),
        api,
        poll,
        state,
        http,
        log,
        notifiers,
        watch: std::sync::Arc::new(watch),
    }
}

fn resolve_api(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, raw: &RawApi) -> ApiConfig {
    let configured = raw
        .base_url
        .as_deref()
        .and_then(|s| ctx.string(src, &path.key("base_url"), s));
    let base_text = base_url_choice(None, configured.as_deref(), ctx.env);
    let base_url = match parse_http_url(&base_text) {
        Ok(u) => {
            if u.scheme() == "http" && !is_loopback_host(&u) {
                ctx.warn(
                    src,
                    &path.key("base_url"),
                    format!(
                        "plain http to {}: the API token travels unencrypted",
                        crate::redact::url(&base_text)
                    ),
                );
            }
            u
        }
        Err(msg) => {
            ctx.error(src, &path.key("base_url"), msg);
            fallback_url()
        }
    };

    let token_source = match (&raw.token_env, &raw.token_file) {
        (Some(_), Some(_)) => {
            ctx.error(
                src,
                &path.key("token_file"),
                "set either token_env or token_file, not both",
            );
            TokenSource::Env("COZE_API_TOKEN".into())
        }
        (_, Some(file)) => match ctx.string(src, &path.key("token_file"), file) {
            Some(f) => TokenSource::File(PathBuf::from(f)),
            None => TokenSource::File(PathBuf::new()),
        },
        (Some(name), None) => TokenSource::Env(name.clone()),
        (None, None) => TokenSource::Env("COZE_API_TOKEN".into()),
    };
    let token_key = match token_source {
        TokenSource::File(_) => "token_file",
        TokenSource::Env(_) => "token_env",
    };
    let token = match &token_source {
        TokenSource::File(p) if p.as_os_str().is_empty() => Secret::new(""),
        source => match source.read(ctx.env) {
            Ok(t) => t,
            Err(msg) => {
                ctx.env_problem(src, &path.key(token_key), format!("no API token: {msg}"));
                Secret::new("")
            }
        },
    };

    let d = ApiLimits::default();
    let request_timeout = ctx.positive_duration(
        src,
        &path.key("request_timeout"),
        raw.request_timeout.as_ref(),
        d.request_timeout,
    );
    let max_ids_per_request = ctx.count(
        src,
        &path.key("max_ids_per_request"),
        raw.max_ids_per_request,
        1..=1000,
        d.max_ids_per_request as u64,
    ) as usize;
    let max_requests_per_second = match raw.max_requests_per_second {
        None => d.max_requests_per_second,
        Some(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => r,
        Some(r) => {
            ctx.error(
                src,
                &path.key("max_requests_per_second"),
                format!("{r} must be a number greater than 0 and at most 1000"),
            );
            d.max_requests_per_second
        }
    };
    let max_requests_per_day = match raw.max_requests_per_day {
        Some(0) => {
            ctx.error(
                src,
                &path.key("max_requests_per_day"),
                "must be at least 1 (omit it for no daily budget)",
            );
            None
        }
        other => other,
    };
    let max_concurrent_requests = ctx.count(
        src,
        &path.key("max_concurrent_requests"),
        raw.max_concurrent_requests,
        1..=64,
        d.max_concurrent_requests as u64,
    ) as usize;
    ApiConfig {
        base_url,
        token_source,
        token,
        limits: ApiLimits {
            request_timeout,
            max_ids_per_request,
            max_requests_per_second,
            max_requests_per_day,
            max_concurrent_requests,
        },
    }
}

fn resolve_poll(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, raw: &RawPoll) -> PollConfig {
    let d = PollConfig::default();
    let min_interval = ctx.positive_duration(
        src,
        &path.key("min_interval"),
        raw.min_interval.as_ref(),
        d.min_interval,
    );
    let max_interval = ctx.positive_duration(
        src,
        &path.key("max_interval"),
        raw.max_interval.as_ref(),
        d.max_interval,
    );
    if min_interval > max_interval {
        ctx.error(
            src,
            &path.key("min_interval"),
            format!(
                "min_interval ({}) is greater than max_interval ({})",
                humantime::format_duration(min_interval),
                humantime::format_duration(max_interval)
            ),
        );
    }
    let jitter = match raw.jitter {
        None => d.jitter,
        Some(j) if (0.0..=1.0).contains(&j) => j,
        Some(j) => {
            ctx.error(
                src,
                &path.key("jitter"),
                format!("{j} must be between 0 and 1 (0.1 = +10 %)"),
            );
            d.jitter
        }
    };
    let default_backoff = RawBackoff::default();
    let error_backoff = resolve_backoff(
        ctx,
        src,
        &path.key("error_backoff"),
        BackoffKeys::from(raw.error_backoff.as_ref().unwrap_or(&default_backoff)),
        d.error_backoff.clone(),
    );
    let stall_after = ctx.positive_duration(
        src,
        &path.key("stall_after"),
        raw.stall_after.as_ref(),
        d.stall_after,
    );
    let give_up_after = ctx.positive_duration(
        src,
        &path.key("give_up_after"),
        raw.give_up_after.as_ref(),
        d.give_up_after,
    );
    let missing_after = ctx.count(
        src,
        &path.key("missing_after"),
        raw.missing_after,
        1..=1000,
        u64::from(d.missing_after),
    ) as u32;
    let missing_grace = ctx.duration(
        src,
        &path.key("missing_grace"),
        raw.missing_grace.as_ref(),
        d.missing_grace,
    );
    let progress_step = ctx.count(
        src,
        &path.key("progress_step"),
        raw.progress_step,
        1..=100,
        u64::from(d.progress_step),
    ) as u8;
    PollConfig {
        min_interval,
        max_interval,
        jitter,
        error_backoff,
        stall_after,
        give_up_after,
        missing_after,
        missing_grace,
        progress_step,
    }
}

/// The backoff keys of a raw section: `poll.error_backoff`, or a notifier's `retry`.
struct BackoffKeys<'a> {
    initial: Option<&'a RawDuration>,
    max: Option<&'a RawDuration>,
    multiplier: Option<f64>,
}

impl<'a> From<&'a RawBackoff> for BackoffKeys<'a> {
    fn from(r: &'a RawBackoff) -> Self {
        BackoffKeys {
            initial: r.initial.as_ref(),
            max: r.max.as_ref(),
            multiplier: r.multiplier,
        }
    }
}

impl<'a> From<&'a RawRetry> for BackoffKeys<'a> {
    fn from(r: &'a RawRetry) -> Self {
        BackoffKeys {
            initial: r.initial.as_ref(),
            max: r.max.as_ref(),
            multiplier: r.multiplier,
        }
    }
}

/// `initial`, `max` and `multiplier` of a backoff, each defaulting to `d`'s.
fn resolve_backoff(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: BackoffKeys<'_>,
    d: BackoffConfig,
) -> BackoffConfig {
    let initial = ctx.positive_duration(src, &path.key("initial"), raw.initial, d.initial);
    let max = ctx.positive_duration(src, &path.key("max"), raw.max, d.max);
    if initial > max {
        ctx.error(src, &path.key("initial"), "initial is greater than max");
    }
    let multiplier = multiplier(
        ctx,
        src,
        &path.key("multiplier"),
        raw.multiplier,
        d.multiplier,
    );
    BackoffConfig {
        initial,
        max,
        multiplier,
    }
}

fn multiplier(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: Option<f64>,
    default: f64,
) -> f64 {
    match raw {
        None => default,
        Some(m) if m.is_finite() && (1.0..=100.0).contains(&m) => m,
        Some(m) => {
            ctx.error(src, path, format!("{m} must be between 1 and 100"));
            default
        }
    }
}

fn resolve_state(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, raw: &RawState) -> StateConfig {
    let dir = match &raw.dir {
        Some(d) => ctx
            .string(src, &path.key("dir"), d)
            .map(PathBuf::from)
            .unwrap_or_default(),
        None => default_state_dir(ctx.env),
    };
    if dir.as_os_str().is_empty() && raw.dir.is_none() {
        ctx.env_problem(
            src,
            &path.key("dir"),
            "no state directory: set state.dir, or $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME",
        );
    } else if raw.dir.is_some() && !dir.as_os_str().is_empty() && !dir.is_absolute() {
        ctx.error(src, &path.key("dir"), "must be an absolute path");
    }
    let retention = ctx.positive_duration(
        src,
        &path.key("retention"),
        raw.retention.as_ref(),
        Duration::from_secs(30 * 86_400),
    );
    StateConfig { dir, retention }
}

/// `$STATE_DIRECTORY` (systemd; the first of a colon-separated list), else
/// `$XDG_STATE_HOME/coze-watch`, else `~/.local/state/coze-watch`.
fn default_state_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let non_empty = |name: &str| env(name).filter(|s| !s.is_empty());
    if let Some(dirs) = non_empty("STATE_DIRECTORY") {
        let first = dirs.split(':').next().unwrap_or_default();
        return PathBuf::from(first);
    }
    if let Some(xdg) = non_empty("XDG_STATE_HOME") {
        return Path::new(&xdg).join("coze-watch");
    }
    match non_empty("HOME") {
        Some(home) => Path::new(&home).join(".local/state/coze-watch"),
        None => PathBuf::new(),
    }
}

fn resolve_http(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: &RawHttp,
) -> Option<HttpConfig> {
    let text = ctx.string(src, &path.key("listen"), &raw.listen)?;
    let listen: SocketAddr = match text.parse() {
        Ok(a) => a,
        Err(_) => {
            ctx.error(
                src,
                &path.key("listen"),
                format!("{text:?} is not an address:port such as 127.0.0.1:9464"),
            );
            return None;
        }
    };
    if !listen.ip().is_loopback() && !raw.allow_remote {
        ctx.error(
            src,
            &path.key("listen"),
            format!("{listen} is not a loopback address; set allow_remote: true to expose it"),
        );
    }
    Some(HttpConfig {
        listen,
        allow_remote: raw.allow_remote,
    })
}

fn resolve_log(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, raw: &RawLog) -> LogConfig {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            ctx.error(
                src,
                &path.key("format"),
                format!("unknown log format {other:?} (use text or json)"),
            );
            LogFormat::Text
        }
    };
    LogConfig { format }
}

fn resolve_notifiers(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: &[RawNotifier],
) -> Vec<NotifierConfig> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let name = n.name.clone().unwrap_or_default();
        let p = if name.is_empty() {
            path.index(i)
        } else {
            path.labelled_index(i, &name)
        };
        if name.is_empty() {
            ctx.error(src, &p.key("name"), "every notifier needs a non-empty name");
        } else if let Some(first) = seen.get(&name) {
            ctx.error(
                src,
                &p.key("name"),
                format!("duplicate notifier name {name:?} (also notifiers[{first}])"),
            );
        } else {
            seen.insert(name.clone(), i);
        }
        if let Some(n) = resolve_notifier(ctx, src, &p, name, n) {
            out.push(n);
        }
    }
    out
}

fn resolve_notifier(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    name: String,
    raw: &RawNotifier,
) -> Option<NotifierConfig> {
    let events = resolve_events(ctx, src, &path.key("events"), raw.events.as_deref());
    let kind = match raw.kind.as_deref() {
        Some("log") => {
            reject_keys(ctx, src, path, "log", &present_keys(raw, LOG_KEYS));
            NotifierKind::Log
        }
        Some("webhook") => {
            reject_keys(ctx, src, path, "webhook", &present_keys(raw, WEBHOOK_KEYS));
            NotifierKind::Webhook(resolve_webhook(ctx, src, path, raw)?)
        }
        Some("exec") => {
            reject_keys(ctx, src, path, "exec", &present_keys(raw, EXEC_KEYS));
            NotifierKind::Exec(resolve_exec(ctx, src, path, raw)?)
        }
        Some(other) => {
            ctx.error(
                src,
                &path.key("type"),
                format!("unknown notifier type {other:?} (use log, webhook or exec)"),
            );
            return None;
        }
        None => {
            ctx.error(src, &path.key("type"), "missing (log, webhook or exec)");
            return None;
        }
    };
    Some(NotifierConfig { name, events, kind })
}

const LOG_KEYS: &[&str] = &["name", "type", "events"];
const WEBHOOK_KEYS: &[&str] = &[
    "name",
    "type",
    "events",
    "url",
    "secret",
    "headers",
    "timeout",
    "format",
    "language",
    "max_per_minute",
    "retry",
    "allow_insecure_http",
];
const EXEC_KEYS: &[&str] = &[
    "name",
    "type",
    "events",
    "command",
    "env",
    "timeout",
    "concurrency",
    "retry",
];

/// The keys set in `raw` that `allowed` does not contain.
fn present_keys(raw: &RawNotifier, allowed: &[&str]) -> Vec<&'static str> {
    let set: [(&'static str, bool); 15] = [
        ("name", raw.name.is_some()),
        ("type", raw.kind.is_some()),
        ("events", raw.events.is_some()),
        ("retry", raw.retry.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("url", raw.url.is_some()),
        ("secret", raw.secret.is_some()),
        ("headers", raw.headers.is_some()),
        ("format", raw.format.is_some()),
        ("language", raw.language.is_some()),
        ("max_per_minute", raw.max_per_minute.is_some()),
        ("allow_insecure_http", raw.allow_insecure_http.is_some()),
        ("command", raw.command.is_some()),
        ("env", raw.env.is_some()),
        ("concurrency", raw.concurrency.is_some()),
    ];
    set.into_iter()
        .filter(|(k, present)| *present && !allowed.contains(k))
        .map(|(k, _)| k)
        .collect()
}

fn reject_keys(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, kind: &str, keys: &[&str]) {
    for k in keys {
        ctx.error(
            src,
            &path.key(k),
            format!("`{k}` is not a key of a {kind} notifier"),
        );
    }
}

fn resolve_events(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: Option<&[String]>,
) -> BTreeSet<EventType> {
    let Some(list) = raw else {
        return EventType::default_subscription().into_iter().collect();
    };
    let mut out = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        match e.parse::<EventType>() {
            Ok(t) => {
                out.insert(t);
            }
            Err(msg) => ctx.error(src, &path.index(i), msg),
        }
    }
    if list.is_empty() {
        ctx.error(
            src,
            path,
            "an empty list subscribes to nothing; omit `events` for the default",
        );
    }
    out
}

fn resolve_webhook(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: &RawNotifier,
) -> Option<WebhookConfig> {
    let format = match raw.format.as_deref() {
        None => WebhookFormat::Standard,
        Some(f) => match WebhookFormat::parse(f) {
            Some(f) => f,
            None => {
                ctx.error(
                    src,
                    &path.key("format"),
                    format!("unknown format {f:?} (use {})", WebhookFormat::NAMES),
                );
                WebhookFormat::Standard
            }
        },
    };
    let allow_insecure = raw.allow_insecure_http.unwrap_or(false);
    let url = match &raw.url {
        None => {
            ctx.error(src, &path.key("url"), "missing: a webhook needs a url");
            None
        }
        Some(u) => match ctx.string(src, &path.key("url"), u) {
            Some(u) => check_webhook_url(ctx, src, &path.key("url"), &u, allow_insecure),
            // Under --lint an unset variable is a warning; keep the notifier in the summary.
            None if ctx.mode == Mode::Lint => Url::parse("https://unset.invalid/")
                .ok()
                .map(SecretUrl::new),
            None => None,
        },
    };
    let secret = raw
        .secret
        .as_ref()
        .and_then(|s| ctx.string(src, &path.key("secret"), s))
        .and_then(|s| check_secret(ctx, src, &path.key("secret"), format, s));
    let headers = resolve_headers(ctx, src, &path.key("headers"), raw.headers.as_ref());
    let timeout = ctx.positive_duration(
        src,
        &path.key("timeout"),
        raw.timeout.as_ref(),
        Duration::from_secs(15),
    );
    let language = match raw.language.as_deref() {
        None => format.default_language(),
        Some(_) if !format.is_chat() => {
            ctx.error(
                src,
                &path.key("language"),
                "language applies only to chat formats (feishu, dingtalk, wecom, slack)",
            );
            Language::En
        }
        Some("zh") => Language::Zh,
        Some("en") => Language::En,
        Some(other) => {
            ctx.error(
                src,
                &path.key("language"),
                format!("unknown language {other:?} (use zh or en)"),
            );
            format.default_language()
        }
    };
    let max_per_minute = match raw.max_per_minute {
        None => format.published_per_minute(),
        Some(_) if !format.is_chat() => {
            ctx.error(
                src,
                &path.key("max_per_minute"),
                "max_per_minute applies only to chat formats (feishu, dingtalk, wecom, slack)",
            );
            None
        }
        Some(n) => Some(ctx.count(src, &path.key("max_per_minute"), Some(n), 1..=6000, 20) as u32),
    };
    let retry = resolve_retry(
        ctx,
        src,
        &path.key("retry"),
        raw.retry.as_ref(),
        RetryPolicy::webhook_default(),
    );
    Some(WebhookConfig {
        url: url?,
        secret,
        headers,
        timeout,
        format,
        language,
        max_per_minute,
        retry,
    })
}

fn check_webhook_url(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    text: &str,
    allow_insecure: bool,
) -> Option<SecretUrl> {
    match parse_http_url(text) {
        Ok(u) if u.scheme() == "http" && !is_loopback_host(&u) && !allow_insecure => {
            ctx.error(
                src,
                path,
                format!(
                    "plain http to {} is refused (use https, or set allow_insecure_http: true)",
                    crate::redact::url(text)
                ),
            );
            None
        }
        Ok(u) => Some(SecretUrl::new(u)),
        Err(msg) => {
            ctx.error(src, path, msg);
            None
        }
    }
}

/// Parses an absolute http(s) URL with a host. Messages show only scheme and host.
fn parse_http_url(text: &str) -> Result<Url, String> {
    let u = Url::parse(text.trim())
        .map_err(|e| format!("not an absolute URL ({e}); expected https://host/path"))?;
    match u.scheme() {
        "http" | "https" => {}
        other => return Err(format!("unsupported scheme {other:?} (use http or https)")),
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".to_string());
    }
    Ok(u)
}

/// Stands in for a bad base URL; only used when an error was reported, so never sent to.
fn fallback_url() -> Url {
    Url::parse(DEFAULT_BASE_URL)
        .unwrap_or_else(|e| unreachable!("the literal {DEFAULT_BASE_URL} is a valid URL: {e}"))
}

pub(crate) fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The secret rule depends on the format: Standard Webhooks wants `whsec_` + base64 of 24..64
/// bytes; feishu and dingtalk take the bot's own signing secret; wecom and slack do not sign.
fn check_secret(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    format: WebhookFormat,
    value: String,
) -> Option<Secret> {
    match format {
        WebhookFormat::Standard => {
            let ok = value
                .strip_prefix("whsec_")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .is_some_and(|key| (24..=64).contains(&key.len()));
            if !ok {
                ctx.error(
                    src,
                    path,
                    "not a Standard Webhooks secret: expected whsec_ followed by base64 of 24 to 64 bytes",
                );
                return None;
            }
        }
        WebhookFormat::Feishu | WebhookFormat::Dingtalk => {
            if value.trim().is_empty() {
                ctx.error(src, path, "is empty (omit it if the bot does not sign)");
                return None;
            }
        }
        WebhookFormat::Wecom | WebhookFormat::Slack => {
            ctx.error(
                src,
                path,
                "wecom and slack webhooks are not signed: remove `secret`",
            );
            return None;
        }
    }
    Some(Secret::new(value))
}

fn resolve_headers(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: Option<&BTreeMap<String, String>>,
) -> Vec<(String, Secret)> {
    let mut out = Vec::new();
    for (name, value) in raw.into_iter().flatten() {
        let p = path.key(name);
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.error(src, &p, "not a valid HTTP header name");
            continue;
        }
        let Some(value) = ctx.string(src, &p, value) else {
            continue;
        };
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            ctx.error(src, &p, "value is not a valid HTTP header value");
            continue;
        }
        out.push((name.clone(), Secret::new(value)));
    }
    out
}

fn resolve_retry(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: Option<&RawRetry>,
    default: RetryPolicy,
) -> RetryPolicy {
    let Some(raw) = raw else { return default };
    let backoff = resolve_backoff(ctx, src, path, BackoffKeys::from(raw), default.backoff);
    let max_attempts = ctx.count(
        src,
        &path.key("max_attempts"),
        raw.max_attempts,
        1..=1000,
        u64::from(default.max_attempts),
    ) as u32;
    let max_age = ctx.positive_duration(
        src,
        &path.key("max_age"),
        raw.max_age.as_ref(),
        default.max_age,
    );
    RetryPolicy {
        backoff,
        max_attempts,
        max_age,
    }
}

fn resolve_exec(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: &RawNotifier,
) -> Option<ExecConfig> {
    let cmd_path = path.key("command");
    let mut command = Vec::new();
    match &raw.command {
        None => ctx.error(
            src,
            &cmd_path,
            "missing: an exec notifier needs a command (argv list)",
        ),
        Some(list) if list.is_empty() => ctx.error(src, &cmd_path, "is empty"),
        Some(list) => {
            for (i, arg) in list.iter().enumerate() {
                command.push(ctx.string(src, &cmd_path.index(i), arg).unwrap_or_default());
            }
        }
    }
    if let Some(program) = command.first().filter(|p| !p.is_empty()) {
        check_executable(ctx, src, &cmd_path.index(0), Path::new(program));
    }
    let mut env = BTreeMap::new();
    for (k, v) in raw.env.iter().flatten() {
        let p = path.key("env").key(k);
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            ctx.error(src, &p, "not a valid environment variable name");
            continue;
        }
        if let Some(v) = ctx.string(src, &p, v) {
            env.insert(k.clone(), v);
        }
    }
    let timeout = ctx.positive_duration(
        src,
        &path.key("timeout"),
        raw.timeout.as_ref(),
        Duration::from_secs(60),
    );
    let concurrency = ctx.count(src, &path.key("concurrency"), raw.concurrency, 1..=64, 1) as usize;
    let retry = resolve_retry(
        ctx,
        src,
        &path.key("retry"),
        raw.retry.as_ref(),
        RetryPolicy::exec_default(),
    );
    if command.is_empty() {
        return None;
    }
    Some(ExecConfig {
        command,
        env,
        timeout,
        concurrency,
        retry,
    })
}

fn check_executable(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, program: &Path) {
    if !program.is_absolute() {
        ctx.error(
            src,
            path,
            format!(
                "{} is not an absolute path (commands run without a shell or PATH lookup)",
                program.display()
            ),
        );
        return;
    }
    match std::fs::metadata(program) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(m) if !m.is_file() => {
            ctx.env_problem(src, path, format!("{} is not a file", program.display()))
        }
        Ok(_) => ctx.env_problem(
            src,
            path,
            format!("{} is not executable", program.display()),
        ),
        Err(e) => ctx.env_problem(src, path, format!("{}: {e}", program.display())),
    }
}

/// Where a document was listed, for the "listed twice" error. The line is looked up only when
/// that error happens: locating re-reads the YAML, which is too slow to do per document.
struct Origin {
    file: PathBuf,
    path: KeyPath,
}

impl Origin {
    /// `file:line:column (key path)`, reading the file again to find the line.
    fn describe(&self) -> String {
        let at = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|text| locate(&text, &self.path))
            .map(|at| format!(":{}:{}", at.line, at.column))
            .unwrap_or_default();
        format!("{}{at} ({})", self.file.display(), self.path)
    }
}

/// The watch list while it is being built: each document remembers where it was listed as
/// two numbers (its watch entry, its index there), so 100,000 documents cost no key paths.
#[derive(Default)]
struct WatchBuilder {
    datasets: BTreeMap<DatasetId, BTreeMap<DocumentId, (WatchedDocument, u32, u32)>>,
    /// Per watch entry: its file and key path.
    entries: Vec<(PathBuf, KeyPath)>,
}

impl WatchBuilder {
    fn origin(&self, entry: u32, index: u32) -> Option<Origin> {
        let (file, path) = self.entries.get(entry as usize)?;
        Some(Origin {
            file: file.clone(),
            path: path.key("documents").index(index as usize),
        })
    }

    fn finish(self) -> WatchList {
        WatchList {
            datasets: self
                .datasets
                .into_iter()
                // An entry whose documents were all invalid (or none) lists no dataset.
                .filter(|(_, docs)| !docs.is_empty())
                .map(|(ds, docs)| (ds, docs.into_iter().map(|(d, (w, _, _))| (d, w)).collect()))
                .collect(),
        }
    }
}

fn resolve_watch_list(
    ctx: &mut Ctx<'_>,
    src: &Source,
    raw: &mut RawConfig,
    notifiers: &BTreeSet<String>,
) -> WatchList {
    let mut list = WatchBuilder::default();
    let watch_path = KeyPath::root().key("watch");
    for (i, entry) in std::mem::take(&mut raw.watch).into_iter().enumerate() {
        let p = watch_path.index(i);
        add_watch_entry(ctx, src, &p, entry, notifiers, &mut list);
    }
    let include_path = KeyPath::root().key("include");
    let base = src.file.parent().unwrap_or(Path::new("."));
    for (i, pattern) in raw.include.iter().enumerate() {
        let p = include_path.index(i);
        let Some(pattern) = ctx.string(src, &p, pattern) else {
            continue;
        };
        for file in include_files(ctx, src, &p, base, &pattern) {
            let inc = match read_source(&file) {
                Ok(s) => s,
                Err(e) => {
                    ctx.diags.errors.push(e);
                    continue;
                }
            };
            if inc.text.trim().is_empty() {
                continue;
            }
            let entries: RawWatchFile = match serde_yaml::from_str(&inc.text) {
                Ok(e) => e,
                Err(e) => {
                    ctx.diags.errors.push(inc.parse_error(&e));
                    continue;
                }
            };
            for (j, entry) in entries.into_iter().enumerate() {
                let p = KeyPath::root().index(j);
                add_watch_entry(ctx, &inc, &p, entry, notifiers, &mut list);
            }
        }
    }
    list.finish()
}

fn include_files(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    base: &Path,
    pattern: &str,
) -> Vec<PathBuf> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let Some(full) = full.to_str() else {
        ctx.error(src, path, "include path is not valid UTF-8");
        return Vec::new();
    };
    match glob::glob(full) {
        Ok(paths) => {
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in paths {
                match entry {
                    Ok(p) => files.push(p),
                    Err(e) => ctx.error(src, path, format!("cannot read {}", e.path().display())),
                }
            }
            files.sort();
            files
        }
        Err(e) => {
            ctx.error(src, path, format!("invalid glob pattern: {e}"));
            Vec::new()
        }
    }
}

fn add_watch_entry(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    entry: RawWatch,
    notifiers: &BTreeSet<String>,
    list: &mut WatchBuilder,
) {
    let dataset = ctx
        .string(src, &path.key("dataset"), &entry.dataset.0)
        .and_then(|d| check_id(ctx, src, &|| path.key("dataset"), d))
        .map(DatasetId::new);
    let mut labels = BTreeMap::new();
    for (k, v) in &entry.labels {
        if let Some(v) = ctx.string(src, &path.key("labels").key(k), v) {
            labels.insert(k.clone(), v);
        }
    }
    let labels = std::sync::Arc::new(labels);
    let notify = entry.notify.as_ref().map(|names| {
        for (i, n) in names.iter().enumerate() {
            if !notifiers.contains(n) {
                ctx.error(
                    src,
                    &path.key("notify").index(i),
                    format!("unknown notifier {n:?} (not in `notifiers`)"),
                );
            }
        }
        std::sync::Arc::<[String]>::from(names.clone())
    });
    if entry.documents.is_empty() {
        ctx.warn(src, &path.key("documents"), "no documents listed");
    }
    let entry_no = list.entries.len() as u32;
    list.entries.push((src.file.clone(), path.clone()));
    let Some(dataset) = dataset else {
        // Still check the ids, so one run reports every problem.
        for (i, doc) in entry.documents.into_iter().enumerate() {
            ctx.id(src, &|| path.key("documents").index(i), doc.0);
        }
        return;
    };
    let mut duplicates = Vec::new();
    let docs = list.datasets.entry(dataset.clone()).or_default();
    for (i, doc) in entry.documents.into_iter().enumerate() {
        let doc_path = || path.key("documents").index(i);
        let Some(doc) = ctx.id(src, &doc_path, doc.0) else {
            continue;
        };
        match docs.entry(DocumentId::new(doc)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                let watched = WatchedDocument {
                    labels: labels.clone(),
                    notify: notify.clone(),
                };
                v.insert((watched, entry_no, i as u32));
            }
            std::collections::btree_map::Entry::Occupied(o) => {
                let (_, first_entry, first_index) = o.get();
                duplicates.push((i, o.key().clone(), *first_entry, *first_index));
            }
        }
    }
    for (i, document, first_entry, first_index) in duplicates {
        let first = list
            .origin(first_entry, first_index)
            .map(|o| o.describe())
            .unwrap_or_default();
        ctx.error(
            src,
            &path.key("documents").index(i),
            format!("document {document} of dataset {dataset} is listed twice; first at {first}"),
        );
    }
}

/// Checks an expanded id. The key path is built only for an error.
fn check_id(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &dyn Fn() -> KeyPath,
    id: String,
) -> Option<String> {
    if id.trim().is_empty() {
        ctx.error(src, &path(), "empty id");
        return None;
    }
    if id.trim() != id || id.chars().any(char::is_control) || id.contains('/') {
        ctx.error(
            src,
            &path(),
            format!("id {id:?} contains whitespace, a slash or control characters"),
        );
        return None;
    }
    Some(id)
}
