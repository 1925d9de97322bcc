//! The ops endpoint (`http.listen`): `GET /healthz`, `GET /metrics`, `GET /status`.
//!
//! Read-only: it reads the metrics, the health state and the store, and changes nothing.
//! Loopback unless the config says `allow_remote: true` (checked in `config`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::config::WatchList;
use crate::metrics::{Metrics, StateLabel};
use crate::status;
use crate::store::StoreHandle;
use crate::tracker::Lifecycle;
use crate::wall::UnixMs;

#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    pub watch: Arc<RwLock<Arc<WatchList>>>,
}

/// Binds `listen` and serves until `shutdown`. Binding errors are returned (a fatal start-up
/// error); serving errors are logged.
pub async fn serve(
    listen: SocketAddr,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
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

async fn healthz(State(s): State<OpsState>) -> Response {
    match s.metrics.health.problems() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy\n{reasons}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<OpsState>) -> Response {
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
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn status_json(State(s): State<OpsState>) -> Response {
    let watch: Arc<WatchList> = s.watch.read().map(|w| w.clone()).unwrap_or_default();
    let report = s
        .store
        .read_long(move |st| status::snapshot(st, Some(&watch), UnixMs::now()))
        .await;
    match report {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
