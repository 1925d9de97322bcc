//! The Coze HTTP client: batches, the shared rate and concurrency limits, and the wire.
//!
//! It owns the token (behind a lock, so a re-read `token_file` takes effect for the next
//! request) and the shared [`RateLimiter`]. It does not decide when to poll or what an answer
//! means for a document; that is the scheduler's and the tracker's job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use url::Url;

use super::error::{
    Answer, ApiError, Endpoint, Exchange, ListExchange, LocalError, TransientKind, classify,
    classify_listing,
};
use super::limiter::RateLimiter;
use super::listing::{self, DatasetPage, DocumentPage};
use super::wire::ProcessRequest;
use crate::config::{ApiConfig, ApiLimits, TokenSource};
use crate::http::{self, BuildError, ReadError, TransportKind};
use crate::ids::{DatasetId, DocumentId, SpaceId};
use crate::secret::Secret;

/// The largest answer body read; a larger one is an error, not an allocation.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the client needs from the config.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub base_url: Url,
    pub token: Secret,
    pub limits: ApiLimits,
    /// `api.token_file`: read again before each request that follows a 401.
    pub token_file: Option<PathBuf>,
}

impl From<&ApiConfig> for ClientSettings {
    fn from(api: &ApiConfig) -> Self {
        ClientSettings {
            base_url: api.base_url.clone(),
            token: api.token.clone(),
            limits: api.limits.clone(),
            token_file: match &api.token_source {
                TokenSource::File(path) => Some(path.clone()),
                TokenSource::Env(_) => None,
            },
        }
    }
}

/// One batch of a `process` call and how it went.
#[derive(Debug)]
pub struct BatchOutcome {
    pub ids: Vec<DocumentId>,
    pub result: Result<Answer, ApiError>,
}

pub struct CozeClient {
    http: reqwest::Client,
    base_url: Url,
    token: RwLock<Secret>,
    token_file: Option<PathBuf>,
    /// The last answer was a 401: the token file is read again before the next request.
    token_refused: AtomicBool,
    limiter: Mutex<RateLimiter>,
    /// Woken whenever a request ends: it may make room in the limiter's windows.
    ended: Notify,
    permits: Semaphore,
    /// Ids per request: `max_ids_per_request`, lowered when the server says it takes fewer.
    batch_size: AtomicUsize,
}

/// A request the limiter let go: ends it there when dropped, answered or not (a cancelled
/// request may have reached the server too).
struct InFlight<'a> {
    client: &'a CozeClient,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.client.with_limiter(|l| l.end(Instant::now()));
        self.client.ended.notify_waiters();
    }
}

impl std::fmt::Debug for CozeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CozeClient")
            .field("base_url", &crate::redact::url(self.base_url.as_str()))
            .field("batch_size", &self.batch_size())
            .finish_non_exhaustive()
    }
}

impl CozeClient {
    pub fn new(settings: ClientSettings) -> Result<Arc<Self>, BuildError> {
        let http = http::client_builder()
            .timeout(settings.limits.request_timeout)
            .connect_timeout(settings.limits.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(BuildError::from)?;
        Ok(Arc::new(CozeClient {
            http,
            base_url: settings.base_url,
            token: RwLock::new(settings.token),
            token_file: settings.token_file,
            token_refused: AtomicBool::new(false),
            limiter: Mutex::new(RateLimiter::new(
                settings.limits.max_requests_per_second,
                settings.limits.max_requests_per_day,
                Instant::now(),
            )),
            ended: Notify::new(),
            permits: Semaphore::new(settings.limits.max_concurrent_requests.max(1)),
            batch_size: AtomicUsize::new(settings.limits.max_ids_per_request.max(1)),
        }))
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.load(Ordering::Relaxed)
    }

    /// After a refusal of `refused` ids as too many: the batch size from now on (the limit the
    /// server's message names, else half), when that is lower than the current one.
    pub fn learn_batch_limit(&self, refused: usize, msg: &str) -> Option<usize> {
        let named = msg
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<usize>().ok())
            .find(|n| (1..refused).contains(n));
        let new = named.unwrap_or(refused / 2).max(1);
        let old = self.batch_size.fetch_min(new, Ordering::Relaxed);
        (new < old).then_some(new)
    }

    /// Replaces the token (after a reload or a re-read `token_file`).
    pub fn set_token(&self, token: Secret) {
        match self.token.write() {
            Ok(mut t) => *t = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    /// After a 401: the token file's current content, so a rotated token is used at once.
    /// Says so (never printing the token) when it changed.
    fn reread_token_file(&self) {
        let Some(path) = &self.token_file else {
            return;
        };
        match TokenSource::File(path.clone()).read(&|_| None) {
            Ok(new) => {
                let changed = match self.token.read() {
                    Ok(t) => t.expose() != new.expose(),
                    Err(p) => p.into_inner().expose() != new.expose(),
                };
                if changed {
                    tracing::info!(token_file = %path.display(),
                        "the token file changed after the API refused the token; using the new token");
                    self.set_token(new);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-read the token file"),
        }
    }

    /// Pauses every request of this client until `until` (shared quota and token).
    pub fn pause_until(&self, until: Instant) {
        self.with_limiter(|l| l.pause_until(until));
    }

    fn with_limiter<R>(&self, f: impl FnOnce(&mut RateLimiter) -> R) -> R {
        // A std mutex: it is never held across an await.
        match self.limiter.lock() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Asks for `ids` of `dataset` in batches of `max_ids_per_request`, each through the
    /// shared limits. Returns one outcome per batch, in order.
    pub async fn process(&self, dataset: &DatasetId, ids: &[DocumentId]) -> Vec<BatchOutcome> {
        let batches = ids.chunks(self.batch_size()).map(|chunk| async move {
            BatchOutcome {
                ids: chunk.to_vec(),
                result: self.process_batch(dataset, chunk).await,
            }
        });
        join_all(batches).await
    }

    /// One request for at most `max_ids_per_request` ids.
    pub async fn process_batch(
        &self,
        dataset: &DatasetId,
        ids: &[DocumentId],
    ) -> Result<Answer, ApiError> {
        self.limited(self.send(dataset, ids)).await
    }

    /// One page of the knowledge bases of `space` (`GET /v1/datasets`), through the shared
    /// limits. `page_num` counts from 1.
    pub async fn list_datasets(
        &self,
        space: &SpaceId,
        page_num: u32,
    ) -> Result<DatasetPage, ApiError> {
        let mut url = self.url(&["v1", "datasets"])?;
        url.query_pairs_mut()
            .append_pair("space_id", space.as_str())
            .append_pair("page_num", &page_num.to_string())
            .append_pair("page_size", &listing::DATASETS_PER_PAGE.to_string());
        let subject = format!("space {space}");
        let request = self.http.get(url);
        let answer = self
            .limited(self.send_listing(request, Endpoint::ListDatasets, &subject))
            .await?;
        listing::dataset_page(&answer).map_err(|e| invalid(&subject, e))
    }

    /// One page of the documents of `dataset` (`POST /open_api/knowledge/document/list`),
    /// through the shared limits. `page` counts from 1 on Coze, from 0 on Coze Studio: the
    /// caller knows which.
    pub async fn list_documents(
        &self,
        dataset: &DatasetId,
        page: u32,
    ) -> Result<DocumentPage, ApiError> {
        let url = self.url(&["open_api", "knowledge", "document", "list"])?;
        let subject = format!("dataset {dataset}");
        let body = serde_json::json!({
            "dataset_id": dataset.as_str(),
            "page": page,
            "size": listing::DOCUMENTS_PER_PAGE,
        });
        let request = self.http.post(url).header("Agw-Js-Conv", "str").json(&body);
        let answer = self
            .limited(self.send_listing(request, Endpoint::ListDocuments, &subject))
            .await?;
        listing::document_page(&answer).map_err(|e| invalid(&subject, e))
    }

    /// Creates documents in a knowledge base (`POST /open_api/knowledge/document/create`, at
    /// most 10 a request): one request, never retried here, because a create is not
    /// idempotent. The classified answer as JSON (the caller reads `document_infos`).
    pub async fn create_documents(
        &self,
        dataset: &DatasetId,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        let url = self.url(&["open_api", "knowledge", "document", "create"])?;
        let subject = format!("dataset {dataset}");
        let request = self.http.post(url).header("Agw-Js-Conv", "str").json(body);
        self.limited(self.send_listing(request, Endpoint::CreateDocuments, &subject))
            .await
    }

    /// Runs one request under the shared concurrency and rate limits, and pauses every
    /// request when the answer says `Retry-After`.
    async fn limited<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::Local(LocalError::ShuttingDown))?;
        let in_flight = self.wait_for_rate().await;
        let result = request.await;
        drop(in_flight);
        match &result {
            Err(ApiError::Auth(_)) => self.token_refused.store(true, Ordering::Relaxed),
            Ok(_) => self.token_refused.store(false, Ordering::Relaxed),
            Err(_) => {}
        }
        if let Err(ApiError::RateLimited {
            retry_after: Some(after),
            ..
        }) = &result
        {
            self.pause_until(Instant::now() + *after);
        }
        result
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ApiError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|_| ApiError::Local(LocalError::BaseUrlCannotHavePath))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn auth(&self) -> Result<reqwest::header::HeaderValue, ApiError> {
        if self.token_refused.load(Ordering::Relaxed) {
            self.reread_token_file();
        }
        let token = match self.token.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        http::bearer(&token).ok_or(ApiError::Local(LocalError::TokenNotAHeader))
    }

    async fn send_listing(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: Endpoint,
        subject: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let response = request
            .header(AUTHORIZATION, self.auth()?)
            .send()
            .await
            .map_err(|e| transport_error(subject, &e))?;
        let status = response.status().as_u16();
        let retry_after = http::header_text(&response, RETRY_AFTER.as_str());
        let header_logid = http::header_text(&response, "x-tt-logid");
        let body = read_body(response, subject).await?;
        let (answer, _logid) = classify_listing(&ListExchange {
            endpoint,
            subject,
            http: status,
            retry_after: retry_after.as_deref(),
            header_logid: header_logid.as_deref(),
            body: &body,
        })?;
        Ok(answer)
    }

    /// Waits until the limiter lets one more request go; the request holds its place in the
    /// windows until the returned guard is dropped.
    async fn wait_for_rate(&self) -> InFlight<'_> {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the limiter is asked, so an end in between is not missed.
            ended.as_mut().enable();
            match self.with_limiter(|l| l.try_begin(Instant::now())) {
                Ok(()) => return InFlight { client: self },
                Err(Some(at)) => tokio::time::sleep_until(at).await,
                Err(None) => ended.await,
            }
        }
    }

    async fn send(&self, dataset: &DatasetId, ids: &[DocumentId]) -> Result<Answer, ApiError> {
        let url = self.url(&["v1", "datasets", dataset.as_str(), "process"])?;
        let auth = self.auth()?;
        let subject = format!("dataset {dataset}");
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .json(&ProcessRequest { document_ids: ids })
            .send()
            .await
            .map_err(|e| transport_error(&subject, &e))?;
        let status = response.status().as_u16();
        let retry_after = http::header_text(&response, RETRY_AFTER.as_str());
        let header_logid = http::header_text(&response, "x-tt-logid");
        let body = read_body(response, &subject).await?;
        classify(&Exchange {
            dataset,
            batch: ids,
            http: status,
            retry_after: retry_after.as_deref(),
            header_logid: header_logid.as_deref(),
            body: &body,
        })
    }
}

/// An answer's body, at most [`MAX_BODY_BYTES`].
async fn read_body(response: reqwest::Response, subject: &str) -> Result<Vec<u8>, ApiError> {
    http::read_capped(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => ApiError::Transient {
                kind: TransientKind::InvalidBody,
                detail: format!("{subject}: answer larger than {MAX_BODY_BYTES} bytes"),
                reply: None,
            },
            ReadError::Transport(e) => transport_error(subject, &e),
        })
}

/// An answer that is a Coze answer but not of the expected shape: transient (ask again).
fn invalid(subject: &str, detail: String) -> ApiError {
    ApiError::Transient {
        kind: TransientKind::InvalidBody,
        detail: format!("{subject}: {detail}"),
        reply: None,
    }
}

fn transport_error(subject: &str, e: &reqwest::Error) -> ApiError {
    let kind = match TransportKind::of(e) {
        TransportKind::Timeout => TransientKind::Timeout,
        TransportKind::Connect => TransientKind::Connect,
        TransportKind::Other => TransientKind::Body,
    };
    ApiError::Transient {
        kind,
        detail: format!("{subject}: {}", http::error_chain(e)),
        reply: None,
    }
}
