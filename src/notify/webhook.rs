//! The webhook notifier: a signed JSON POST per event (SPEC section 6).
//!
//! Sends the exact stored body, with a fresh `webhook-timestamp` and signature per attempt and
//! the same `webhook-id` (the event id) on every attempt. Never follows a redirect. Classifies
//! the answer into an [`Outcome`]; the dispatcher decides what happens next. Messages show the
//! URL as scheme and host only and never contain the secret.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};

use super::signature::SigningKey;
use super::{BoxFuture, Job, Notifier, Outcome};
use crate::config::{RetryPolicy, WebhookConfig};
use crate::coze::http_client_builder;
use crate::secret::Secret;

/// How much of a failing answer's body goes into the error message.
const ERROR_BODY_BYTES: usize = 200;

pub struct WebhookNotifier {
    name: String,
    config: WebhookConfig,
    key: Option<SigningKey>,
    http: reqwest::Client,
}

impl WebhookNotifier {
    pub fn new(name: impl Into<String>, config: WebhookConfig) -> Result<Self, String> {
        let http = http_client_builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
        let key = config.secret.as_ref().and_then(SigningKey::from_secret);
        Ok(WebhookNotifier {
            name: name.into(),
            config,
            key,
            http,
        })
    }

    async fn send(&self, job: &Job) -> Outcome {
        let timestamp = crate::wall::UnixMs::now().0 / 1000;
        let mut request = self
            .http
            .post(self.config.url.expose().clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &job.event_id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            let signature = key.sign(&job.event_id, timestamp, job.body.as_bytes());
            request = request.header("webhook-signature", signature);
        }
        for (name, value) in &self.config.headers {
            if let Some((n, v)) = header(name, value) {
                request = request.header(n, v);
            }
        }
        let response = match request.body(job.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("{}: {}", self.config.url, transport_error(&e)),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::coze::error::parse_retry_after);
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
        Box::pin(self.send(job))
    }

    fn concurrency(&self) -> usize {
        4
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
    let mut response = response;
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            _ => break,
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_BODY_BYTES)
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {text:?}")
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
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
