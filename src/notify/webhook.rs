//! The webhook notifier: a signed JSON POST per event (SPEC section 6), or, with a chat
//! `format`, that service's message (see `chat`) under a per-minute throttle.
//!
//! Sends the exact stored body, with a fresh `webhook-timestamp` and signature per attempt and
//! the same `webhook-id` (the event id) on every attempt. Never follows a redirect. Classifies
//! the answer into an [`Outcome`]; the dispatcher decides what happens next. Messages show the
//! URL as scheme and host only and never contain the secret.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};

use std::sync::Mutex;

use super::Body;
use super::signature::SigningKey;
use super::{BoxFuture, Job, Notifier, Outcome, chat};
use crate::config::{RetryPolicy, WebhookConfig};
use crate::http;
use crate::secret::Secret;
use crate::wall::Clock;
use crate::window::Throttle;

/// How much of a failing answer's body goes into the error message.
const ERROR_BODY_BYTES: usize = 200;

pub struct WebhookNotifier {
    name: String,
    config: WebhookConfig,
    key: Option<SigningKey>,
    http: reqwest::Client,
    /// Chat formats only: `max_per_minute`. A std mutex, never held across an await.
    throttle: Option<Mutex<Throttle>>,
    /// The run's one clock: the signatures' timestamps.
    clock: Clock,
}

impl WebhookNotifier {
    pub fn new(
        name: impl Into<String>,
        config: WebhookConfig,
        clock: Clock,
    ) -> Result<Self, http::BuildError> {
        let http = http::client_builder()
            .timeout(config.timeout)
            .build()
            .map_err(http::BuildError::from)?;
        let (key, throttle) = if config.format.is_chat() {
            let per_minute = config
                .max_per_minute
                .or(config.format.published_per_minute())
                .unwrap_or(20);
            (None, Some(Mutex::new(Throttle::new(per_minute))))
        } else {
            (
                config.secret.as_ref().and_then(SigningKey::from_secret),
                None,
            )
        };
        Ok(WebhookNotifier {
            name: name.into(),
            config,
            key,
            http,
            throttle,
            clock,
        })
    }

    fn with_throttle<R>(&self, f: impl FnOnce(&mut Throttle) -> R) -> Option<R> {
        self.throttle
            .as_ref()
            .map(|t| f(&mut t.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Sends one chat message, signed at send time (the services reject old timestamps).
    async fn send_chat(&self, text: &str) -> Outcome {
        let secret = self.config.secret.as_ref().map(Secret::expose);
        let (url, body) = chat::request(
            self.config.format,
            self.config.url.expose(),
            text,
            secret,
            self.clock.wall().0,
        );
        self.with_throttle(|t| t.record(tokio::time::Instant::now()));
        let response = match self.post(self.http.post(url).json(&body)).await {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        if response.status() != StatusCode::OK {
            return self.answer(response).await;
        }
        let text = read_text(response).await;
        match chat::read_answer(self.config.format, &text) {
            Outcome::Permanent { error } => Outcome::Permanent {
                error: format!("{}: {error}", self.config.url),
            },
            Outcome::Retry { error, retry_after } => Outcome::Retry {
                error: format!("{}: {error}", self.config.url),
                retry_after,
            },
            Outcome::Delivered => Outcome::Delivered,
        }
    }

    async fn deliver_one(&self, job: &Job) -> Outcome {
        if !self.config.format.is_chat() {
            return self.send(job).await;
        }
        self.send_chat(&chat::body_text(&job.event, self.config.language))
            .await
    }

    async fn deliver_many(&self, jobs: &[Job]) -> Outcome {
        let bodies: Vec<Body> = jobs.iter().map(|j| j.event.clone()).collect();
        self.send_chat(&chat::digest_text(&bodies, self.config.language))
            .await
    }

    async fn send(&self, job: &Job) -> Outcome {
        let timestamp = self.clock.wall().0 / 1000;
        let mut request = self
            .http
            .post(self.config.url.expose().clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", job.event_id.as_str())
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            let signature = key.sign(job.event_id.as_str(), timestamp, job.body.as_bytes());
            request = request.header("webhook-signature", signature);
        }
        let response = match self.post(request.body(job.body.clone())).await {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        self.answer(response).await
    }

    /// Adds the configured headers, sends, and turns a transport failure into a retry.
    async fn post(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Outcome> {
        for (name, value) in &self.config.headers {
            if let Some((n, v)) = header(name, value) {
                request = request.header(n, v);
            }
        }
        request.send().await.map_err(|e| Outcome::Retry {
            error: format!("{}: {}", self.config.url, transport_error(&e)),
            retry_after: None,
        })
    }

    /// Classifies an answer by its HTTP status (SPEC section 6).
    async fn answer(&self, response: reqwest::Response) -> Outcome {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(http::parse_retry_after);
        let snippet = body_snippet(response).await;
        classify(
            status,
            retry_after,
            &format!("{}: HTTP {}{snippet}", self.config.url, status.as_u16()),
        )
    }
}

impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver_one(job))
    }

    fn concurrency(&self) -> usize {
        if self.config.format.is_chat() { 1 } else { 4 }
    }

    fn ready_at(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.with_throttle(|t| t.ready_at(now)).flatten()
    }

    fn digest_above(&self) -> Option<usize> {
        self.with_throttle(|t| t.per_minute())
    }

    fn deliver_digest<'a>(&'a self, jobs: &'a [Job]) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver_many(jobs))
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.config.retry.clone()
    }
}

/// SPEC section 6: 2xx delivered; network errors, 408, 425, 429 and 5xx retried; any 3xx and
/// any other 4xx permanent.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, error: &str) -> Outcome {
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered,
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            error: error.to_string(),
            retry_after: if code == 429 || code == 503 {
                retry_after
            } else {
                None
            },
        },
        300..=399 => Outcome::Permanent {
            error: format!("{error} (redirects are not followed)"),
        },
        400..=499 => Outcome::Permanent {
            error: error.to_string(),
        },
        _ => Outcome::Retry {
            error: error.to_string(),
            retry_after: None,
        },
    }
}

fn header(name: &str, value: &Secret) -> Option<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let mut v = HeaderValue::from_str(value.expose()).ok()?;
    v.set_sensitive(true);
    Some((n, v))
}

/// The start of an answer's body, for the error message: printable characters only.
async fn body_snippet(response: reqwest::Response) -> String {
    let bytes = http::read_prefix(response, ERROR_BODY_BYTES).await;
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_BODY_BYTES)
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", text.trim())
    }
}

/// An answer's body as text, at most 64 KiB.
async fn read_text(response: reqwest::Response) -> String {
    String::from_utf8_lossy(&http::read_prefix(response, 64 * 1024).await).into_owned()
}

fn transport_error(e: &reqwest::Error) -> String {
    let kind = match http::TransportKind::of(e) {
        http::TransportKind::Timeout => "timed out",
        http::TransportKind::Connect => "connection failed",
        http::TransportKind::Other => "request failed",
    };
    let detail = http::root_cause(e);
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: u16) -> &'static str {
        match classify(StatusCode::from_u16(code).unwrap(), None, "x") {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Permanent { .. } => "dead",
        }
    }

    #[test]
    fn answers_are_classified_as_the_spec_says() {
        for (code, want) in [
            (200, "delivered"),
            (204, "delivered"),
            (408, "retry"),
            (425, "retry"),
            (429, "retry"),
            (500, "retry"),
            (503, "retry"),
            (301, "dead"),
            (302, "dead"),
            (400, "dead"),
            (401, "dead"),
            (404, "dead"),
            (410, "dead"),
        ] {
            assert_eq!(class(code), want, "HTTP {code}");
        }
    }

    #[test]
    fn retry_after_is_kept_for_429() {
        let o = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            "x",
        );
        assert_eq!(
            o,
            Outcome::Retry {
                error: "x".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }
}
