//! Pure checks of single values, shared by the config loader and the command line (`wait`
//! validates its ids and base URL with these): ids and http(s) URLs.
//!
//! No I/O; errors are messages that show URLs as scheme and host only.

use std::net::IpAddr;

use url::Url;

use super::DEFAULT_BASE_URL;

/// Checks an id: Coze ids are int64 values written as 1 to 19 decimal digits (SPEC section 11).
/// A batch name: 1 to 128 characters, no control characters (it is shown in messages and
/// sent in events).
pub fn batch_name(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("empty batch name".into());
    }
    if text.chars().count() > 128 {
        return Err("a batch name is at most 128 characters".into());
    }
    if text.chars().any(char::is_control) {
        return Err(format!("batch name {text:?} holds control characters"));
    }
    Ok(())
}

pub fn id(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("empty id".into());
    }
    if text == "*" {
        return Err(
            "\"*\" is not an id; to watch every document of a knowledge base write `documents: all`"
                .into(),
        );
    }
    if text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("id {text:?} is not 1 to 19 decimal digits"));
    }
    Ok(())
}

/// Parses an absolute http(s) URL with a host. Messages show only scheme and host.
pub fn parse_http_url(text: &str) -> Result<Url, String> {
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
pub(super) fn fallback_url() -> Url {
    Url::parse(DEFAULT_BASE_URL)
        .unwrap_or_else(|e| unreachable!("the literal {DEFAULT_BASE_URL} is a valid URL: {e}"))
}

/// Whether the URL's host is loopback (plain http to it sends nothing over a network).
pub fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
