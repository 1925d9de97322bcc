//! Raw YAML structs -> validated `Config`, in one pass that collects every problem.
//!
//! This file holds the shared context and the small sections (api, poll, state, http, log);
//! `notifiers` and `watch` hold the two large ones.
//!
//! Each `resolve_*` function takes the raw section and its key path, reports problems through
//! `Ctx`, and returns a usable value (a default where the input was bad) so that one run finds
//! all errors. Values are described in messages, never echoed when they may be secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod notifiers;
mod state;
mod watch;

use notifiers::resolve_notifiers;
use state::resolve_state;
use watch::{check_id, resolve_watch_list};

use super::error::{ConfigError, Diagnostics, KeyPath, Source};
use super::expand::{ExpandError, expand};
use super::raw::{RawApi, RawBackoff, RawConfig, RawDuration, RawHttp, RawLog, RawPoll, RawRetry};
use super::validate::{fallback_url, is_loopback_host, parse_http_url};
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
    if watch.datasets.is_empty() && !watch.discovers() {
        ctx.warn(
            src,
            &root,
            "nothing to watch: `watch` and `include` list no documents (documents can also be added at run time with `coze-watch watch add`)",
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
    let flavor = match raw.flavor.as_deref() {
        None | Some("cloud") => Flavor::Cloud,
        Some("studio") => Flavor::Studio,
        Some(other) => {
            ctx.error(
                src,
                &path.key("flavor"),
                format!("unknown flavor {other:?} (cloud or studio)"),
            );
            Flavor::Cloud
        }
    };
    ApiConfig {
        flavor,
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
    let discover_interval = ctx.positive_duration(
        src,
        &path.key("discover_interval"),
        raw.discover_interval.as_ref(),
        d.discover_interval,
    );
    let relist_interval = ctx.positive_duration(
        src,
        &path.key("relist_interval"),
        raw.relist_interval.as_ref(),
        d.relist_interval,
    );
    PollConfig {
        discover_interval,
        relist_interval,
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
    let api_token = match (&raw.api_token_env, &raw.api_token_file) {
        (Some(_), Some(_)) => {
            ctx.error(
                src,
                &path.key("api_token_file"),
                "set either api_token_env or api_token_file, not both",
            );
            None
        }
        (Some(name), None) => http_token(
            ctx,
            src,
            &path.key("api_token_env"),
            TokenSource::Env(name.clone()),
        ),
        (None, Some(file)) => ctx
            .string(src, &path.key("api_token_file"), file)
            .and_then(|f| {
                http_token(
                    ctx,
                    src,
                    &path.key("api_token_file"),
                    TokenSource::File(f.into()),
                )
            }),
        (None, None) => None,
    };
    Some(HttpConfig {
        listen,
        allow_remote: raw.allow_remote,
        api_token,
    })
}

/// The bearer token of the ops endpoint's write routes.
fn http_token(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    source: TokenSource,
) -> Option<Secret> {
    match source.read(ctx.env) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.env_problem(src, path, format!("no ops API token: {e}"));
            None
        }
    }
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
