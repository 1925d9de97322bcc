//! The `state` section: where the store lives (an SQLite directory, or a PostgreSQL database
//! with its password), how long event bodies are kept, and the leader's lease.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Ctx;
use crate::config::error::{KeyPath, Source};
use crate::config::raw::RawState;
use crate::config::{PostgresConfig, StateConfig, TokenSource};

pub(super) fn resolve_state(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw: &RawState,
) -> StateConfig {
    let dir = match &raw.dir {
        Some(d) => ctx
            .string(src, &path.key("dir"), d)
            .map(PathBuf::from)
            .unwrap_or_default(),
        None => default_state_dir(ctx.env),
    };
    // A PostgreSQL store needs no directory.
    if raw.url.is_none() {
        check_state_dir(ctx, src, path, raw, &dir);
    }
    let retention = ctx.positive_duration(
        src,
        &path.key("retention"),
        raw.retention.as_ref(),
        Duration::from_secs(30 * 86_400),
    );
    let lease_ttl = ctx.positive_duration(
        src,
        &path.key("lease_ttl"),
        raw.lease_ttl.as_ref(),
        Duration::from_secs(15),
    );
    if lease_ttl < Duration::from_secs(3) {
        ctx.error(src, &path.key("lease_ttl"), "must be at least 3s");
    }
    let postgres = raw
        .url
        .as_ref()
        .and_then(|u| postgres_config(ctx, src, path, u, raw.password_file.as_deref()));
    if raw.password_file.is_some() && raw.url.is_none() {
        ctx.error(
            src,
            &path.key("password_file"),
            "only with state.url (a PostgreSQL store)",
        );
    }
    StateConfig {
        dir,
        retention,
        postgres,
        lease_ttl,
    }
}

/// The SQLite store's directory: known, absolute, and usable by this user.
fn check_state_dir(ctx: &mut Ctx<'_>, src: &Source, path: &KeyPath, raw: &RawState, dir: &Path) {
    if dir.as_os_str().is_empty() && raw.dir.is_none() {
        ctx.env_problem(
            src,
            &path.key("dir"),
            "no state directory: set state.dir, or $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME",
        );
    } else if raw.dir.is_some() && !dir.as_os_str().is_empty() && !dir.is_absolute() {
        ctx.error(src, &path.key("dir"), "must be an absolute path");
    } else if dir.is_absolute()
        && let Err(why) = crate::access::state_dir_usable(dir)
    {
        ctx.env_problem(src, &path.key("dir"), why);
    }
}

/// `state.url` checked: `postgres://` or `postgresql://`, a host and a database, no password
/// in it (it would be printed wherever the URL is), a known `sslmode`; the password from
/// `password_file`, else `$PGPASSWORD`, else none (trust, peer or certificate login).
fn postgres_config(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    raw_url: &str,
    password_file: Option<&str>,
) -> Option<PostgresConfig> {
    let key = path.key("url");
    let text = ctx.string(src, &key, raw_url)?;
    let url = match url::Url::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            ctx.error(src, &key, format!("not a URL: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        ctx.error(
            src,
            &key,
            format!("must start with postgres:// (found {}://)", url.scheme()),
        );
        return None;
    }
    if url.password().is_some() || url.query_pairs().any(|(k, _)| k == "password") {
        ctx.error(
            src,
            &key,
            "holds a password; put it in state.password_file or $PGPASSWORD instead",
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) && !url.query_pairs().any(|(k, _)| k == "host") {
        ctx.error(src, &key, "names no host");
        return None;
    }
    if url.path().trim_start_matches('/').is_empty() {
        ctx.error(
            src,
            &key,
            "names no database (postgres://user@host:port/DATABASE)",
        );
        return None;
    }
    for (k, v) in url.query_pairs() {
        if k == "sslmode"
            && !matches!(
                v.as_ref(),
                "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
            )
        {
            ctx.error(
                src,
                &key,
                format!("sslmode={v}: use disable, prefer, require, verify-ca or verify-full"),
            );
            return None;
        }
    }
    let password = match password_file {
        Some(file) => {
            let file_key = path.key("password_file");
            let f = ctx.string(src, &file_key, file)?;
            match TokenSource::File(f.into()).read(ctx.env) {
                Ok(p) => Some(p),
                Err(e) => {
                    ctx.env_problem(src, &file_key, format!("no database password: {e}"));
                    None
                }
            }
        }
        None => TokenSource::Env("PGPASSWORD".into()).read(ctx.env).ok(),
    };
    Some(PostgresConfig { url, password })
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
