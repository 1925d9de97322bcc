//! `coze-watch check`: the summary of a loaded config (what `run` would watch, with whom, and
//! what it may cost per day).
//!
//! Pure: renders text from a [`Config`]; loading and validation are `config`'s.

use crate::config::{self, Config, NotifierKind, TokenSource};

/// The summary for stdout, and a warning for stderr when the sustained pace exceeds the
/// configured or published daily quota.
pub fn render_summary(c: &Config) -> (String, Option<String>) {
    let token_from = match &c.api.token_source {
        TokenSource::Env(name) => format!("${name}"),
        TokenSource::File(p) => p.display().to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!("config:     {}\n", c.file.display()));
    out.push_str(&format!(
        "api:        {} (token from {token_from}, {} ids per request, {}/s)\n",
        crate::redact::url(c.api.base_url.as_str()),
        c.api.limits.max_ids_per_request,
        c.api.limits.max_requests_per_second
    ));
    out.push_str(&format!(
        "watching:   {} dataset(s), {} document(s)\n",
        c.watch.datasets.len(),
        c.watch.document_count()
    ));
    let notifiers: Vec<String> = c
        .notifiers
        .iter()
        .map(|n| match &n.kind {
            NotifierKind::Webhook(w) => format!("{} (webhook to {})", n.name, w.url),
            kind => format!("{} ({})", n.name, kind.type_name()),
        })
        .collect();
    out.push_str(&format!(
        "notifiers:  {}\n",
        if notifiers.is_empty() {
            "none".to_string()
        } else {
            notifiers.join(", ")
        }
    ));
    if c.watch.discovers() {
        out.push_str(&format!(
            "discovery:  {} whole knowledge base(s), {} space(s), listed every {}: at least {} requests/day (one per page)\n",
            c.watch.all_of.len(),
            c.watch.spaces.len(),
            humantime::format_duration(c.poll.discover_interval),
            c.discovery_requests_per_day()
        ));
    }
    match &c.state.postgres {
        Some(pg) => out.push_str(&format!(
            "store:      PostgreSQL {} (password {}; lease {})\n",
            pg.url,
            if pg.password.is_some() { "set" } else { "none" },
            humantime::format_duration(c.state.lease_ttl)
        )),
        None => out.push_str(&format!("state dir:  {}\n", c.state.dir.display())),
    }
    let (capped, uncapped) = c.worst_case_requests_per_day();
    let mut line = format!("worst case: {capped} requests/day");
    if uncapped > capped {
        line.push_str(&format!(" (limits cap {uncapped})"));
    }
    out.push_str(&line);
    out.push('\n');
    let (_, sustained) = c.sustained_requests_per_day();
    out.push_str(&format!(
        "sustained:  {sustained} requests/day with every document processing all day \
         (each batch every {}{})\n",
        humantime::format_duration(c.poll.max_interval),
        if c.watch.discovers() {
            ", discovery listings; plus the documents discovery finds"
        } else {
            ""
        }
    ));
    (out, quota_warning(c, sustained))
}

/// A warning when the sustained pace really exceeds the daily quota: the configured
/// `max_requests_per_day` (the limiter then holds polls back), else Coze's published one.
fn quota_warning(c: &Config, sustained: u64) -> Option<String> {
    match c.api.limits.max_requests_per_day {
        Some(budget) if sustained > budget => Some(format!(
            "the sustained pace ({sustained} requests/day) exceeds api.max_requests_per_day \
             ({budget}): the limiter will hold polls back and detection will be late; \
             raise poll.max_interval or the budget"
        )),
        Some(_) => None,
        None if sustained > config::PUBLISHED_DAILY_QUOTA => Some(format!(
            "the sustained pace ({sustained} requests/day) exceeds Coze's published quota of \
             {} requests/day per space; set api.max_requests_per_day to your plan's quota \
             (the daemon then stays within it) or raise poll.max_interval",
            config::PUBLISHED_DAILY_QUOTA
        )),
        None => None,
    }
}
