//! The `notifiers:` section: log, webhook (standard and chat formats) and exec entries, their
//! keys per type, secrets, headers and retry policies.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;

use super::super::raw::{RawNotifier, RawRetry};
use super::super::validate::{is_loopback_host, parse_http_url};
use super::super::*;
use super::{BackoffKeys, Ctx, resolve_backoff};
use crate::config::error::{KeyPath, Source};

pub(super) fn resolve_notifiers(
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
