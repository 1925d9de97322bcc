//! The ops endpoint (`http.listen`): `GET /healthz` (with the role on a shared store), `/livez`
//! (the process answers; never asks the store), `/readyz` (the store answers), `GET /metrics`,
//! `GET /status`, and the run-time watch list `GET /v1/watch`, `POST /v1/watch`,
//! `DELETE /v1/watch/{dataset_id}`.
//!
//! It changes no state but the run-time watch list, and that only through the write routes,
//! which exist only with `http.api_token_env`/`api_token_file` and need that bearer token
//! (compared in constant time; never logged). Loopback unless the config says
//! `allow_remote: true` (checked in `config`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WatchList;
use crate::metrics::{Exposition, Metrics, StateLabel};
use crate::runtime::{self, AddRequest, EntryView, InputError};
use crate::secret::Secret;
use crate::status;
use crate::store::StoreHandle;
use crate::tracker::Lifecycle;

/// The largest body the write routes read; a larger one gets 413.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct OpsState {
    /// The run's clock (status times, run-time entries' creation).
    pub clock: crate::wall::Clock,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    pub watch: Arc<RwLock<Arc<WatchList>>>,
    /// `None`: the write routes answer 404.
    pub writes: Option<Writes>,
}

/// What the write routes need.
#[derive(Clone)]
pub struct Writes {
    pub token: Secret,
    /// The configured notifier names (`notify` must name them).
    pub notifiers: Vec<String>,
    /// Tells the run loop the run-time watch list changed.
    pub changed: mpsc::UnboundedSender<()>,
}

/// Binds `listen` and serves until `shutdown`. Binding errors are returned (a fatal start-up
/// error); serving errors are logged.
pub async fn serve(
    listen: SocketAddr,
    bound: Option<tokio::net::TcpListener>,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = match bound {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(listen).await?,
    };
    let listen = listener.local_addr().unwrap_or(listen);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        .route("/v1/watch", get(list_watch).post(add_watch))
        .route("/v1/watch/{dataset_id}", delete(remove_watch))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tracing::info!(%listen, "ops endpoint listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    }))
}

/// Liveness: the process answers. Never asks the store (a database outage is not a reason
/// to restart).
async fn livez() -> Response {
    (StatusCode::OK, "alive\n").into_response()
}

/// Readiness: the store answers (a round trip), so `/status` and a takeover can work.
async fn readyz(State(s): State<OpsState>) -> Response {
    match s.store.read_long(|st| st.ping()).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{e}\n")).into_response(),
    }
}

async fn healthz(State(s): State<OpsState>) -> Response {
    let role = s
        .metrics
        .health
        .role()
        .map(|r| format!("role: {r}\n"))
        .unwrap_or_default();
    match s.metrics.health.problems() {
        None => (StatusCode::OK, format!("ok\n{role}")).into_response(),
        Some(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy\n{reasons}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<OpsState>, headers: HeaderMap) -> Response {
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gauges = s
        .store
        .read_long(|st| Ok((st.count_by_state()?, st.outbox_depth()?)))
        .await;
    match gauges {
        Ok((counts, (pending, dead))) => {
            for state in [
                Lifecycle::Watching,
                Lifecycle::Completed,
                Lifecycle::Failed,
                Lifecycle::Missing,
                Lifecycle::TimedOut,
            ] {
                let n = counts.get(&state).copied().unwrap_or(0);
                s.metrics
                    .documents
                    .get_or_create(&StateLabel {
                        state: state.as_str().into(),
                    })
                    .set(n as i64);
            }
            s.metrics.outbox_pending.set(pending as i64);
            s.metrics.outbox_dead.set(dead as i64);
            s.metrics.health.store_result(None);
        }
        Err(e) => s.metrics.health.store_result(Some(e.to_string())),
    }
    s.metrics
        .healthy
        .set(i64::from(s.metrics.health.problems().is_none()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        s.metrics.encode(format),
    )
        .into_response()
}

async fn status_json(State(s): State<OpsState>) -> Response {
    let watch: Arc<WatchList> = s.watch.read().map(|w| w.clone()).unwrap_or_default();
    let report = s
        .store
        .read_long({
            let now = s.clock.wall();
            move |st| status::snapshot(st, Some(&watch), now)
        })
        .await
        .map(|mut r| {
            r.problems = s.metrics.health.reasons();
            r
        });
    match report {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn json_error(status: StatusCode, field: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "field": field});
    (status, axum::Json(body)).into_response()
}

fn input_error(e: &InputError) -> Response {
    json_error(StatusCode::BAD_REQUEST, &e.field, &e.message)
}

/// The write routes' gate: 404 when writes are off, 401 without the right bearer token.
fn authorize<'a>(s: &'a OpsState, headers: &HeaderMap) -> Result<&'a Writes, Box<Response>> {
    let Some(writes) = s.writes.as_ref() else {
        return Err(Box::new(
            (StatusCode::NOT_FOUND, "not found\n").into_response(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same_secret(given.as_bytes(), writes.token.expose().as_bytes()) {
        Ok(writes)
    } else {
        Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "a valid `Authorization: Bearer <token>` is needed",
        )))
    }
}

/// Constant time whatever the inputs: both sides are hashed first, so neither the position
/// of the first difference nor the length of the secret shows in the timing.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
        && !expected.is_empty()
}

async fn list_watch(State(s): State<OpsState>) -> Response {
    match s.store.read_long(|st| st.watch_entries()).await {
        Ok(entries) => {
            let views: Vec<EntryView> = entries.iter().map(EntryView::from).collect();
            axum::Json(serde_json::json!({ "entries": views })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn add_watch(State(s): State<OpsState>, headers: HeaderMap, body: Bytes) -> Response {
    let writes = match authorize(&s, &headers) {
        Ok(w) => w.clone(),
        Err(r) => return *r,
    };
    let req: AddRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "body", &e.to_string()),
    };
    let entries = match runtime::validate_add(&req, &writes.notifiers, s.clock.wall()) {
        Ok(e) => e,
        Err(e) => return input_error(&e),
    };
    let views: Vec<EntryView> = entries.iter().map(EntryView::from).collect();
    match s
        .store
        .write(move |st| st.add_watch_entries(&entries))
        .await
    {
        Ok(added) => {
            let _ = writes.changed.send(());
            let status = if added > 0 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = serde_json::json!({"added": added, "entries": views});
            (status, axum::Json(body)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct RemoveQuery {
    document_id: Option<String>,
}

async fn remove_watch(
    State(s): State<OpsState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    let writes = match authorize(&s, &headers) {
        Ok(w) => w.clone(),
        Err(r) => return *r,
    };
    let docs: Vec<String> = q.document_id.into_iter().collect();
    let (dataset, docs) = match runtime::validate_remove(&dataset, &docs) {
        Ok(x) => x,
        Err(e) => return input_error(&e),
    };
    match s
        .store
        .write(move |st| st.remove_watch_entries(&dataset, docs.as_deref()))
        .await
    {
        Ok(removed) => {
            let _ = writes.changed.send(());
            axum::Json(serde_json::json!({"removed": removed})).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
