//! What every outgoing HTTP request of coze-watch shares, the Coze client's and the webhook
//! notifier's: the client builder (rustls, no redirects, no proxy, our user agent), a body read
//! with a cap, transport errors described without URLs, and `Retry-After`.
//!
//! It knows nothing of Coze or of events; it never logs and never retries.

use std::time::Duration;

use reqwest::header::HeaderValue;

use crate::secret::Secret;

/// The longest `Retry-After` honoured; a larger one is capped (a server may not stop us for
/// hours).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A reqwest client builder with what every outgoing request shares: rustls with the ring
/// provider, no redirects, no proxy from the environment, our user agent.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Installing twice is harmless: the second call reports the first provider and is ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("coze-watch/", env!("CARGO_PKG_VERSION")))
}

/// An HTTP client could not be built (TLS set-up); names no URL.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(String);

impl From<reqwest::Error> for BuildError {
    fn from(e: reqwest::Error) -> Self {
        BuildError(e.without_url().to_string())
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than the cap (by its content-length or as it arrived).
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a whole body of at most `cap` bytes; a larger one is an error, not an allocation.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most about `cap` bytes of a body and stops there, whatever else follows (for an
/// error message or a chat service's short answer).
pub async fn read_prefix(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < cap {
        match response.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            _ => break,
        }
    }
    bytes
}

/// What kind of transport failure a request had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Connect,
    Other,
}

impl TransportKind {
    pub fn of(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        }
    }
}

/// The error and its sources on one line, URLs shown as scheme and host only.
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = current {
        let part = err.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        current = err.source();
    }
    match e.url() {
        Some(u) => text.replace(u.as_str(), &crate::redact::url(u.as_str())),
        None => text,
    }
}

/// The innermost cause of `e` (e.g. "Connection refused (os error 111)"), which names no URL;
/// empty when it has none.
pub fn root_cause(e: &reqwest::Error) -> String {
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    detail
}

/// `Authorization: Bearer <token>` as a sensitive header value (never printed by reqwest's
/// Debug); `None` when the token holds characters a header cannot carry.
pub fn bearer(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A header's value as text, if it is text.
pub fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` in seconds, capped at [`MAX_RETRY_AFTER`]; the HTTP-date form is ignored.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_capped_at_ten_minutes() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
