//! The simulator's HTTP side: the process endpoint as Coze serves it, fault injection, and the
//! `/__sim/*` control and truth endpoints.
//!
//! Handlers only translate between HTTP and the scenario; what a document looks like at an
//! instant is decided by `SimDocument::view_at`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::catalog::{self, Catalog};
use super::scenario::{Faults, Hints, Injection, Scenario, SimDocument};
use crate::coze::limiter::RateLimiter;

/// Request counters, as `GET /__sim/stats` reports them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Every request to the process endpoint, whatever the answer.
    pub requests: u64,
    /// Answers with code 0.
    pub ok: u64,
    pub unauthorized: u64,
    /// 429 answers (injected or quota).
    pub rate_limited: u64,
    /// Answers changed by a fault.
    pub faults: u64,
    /// Document ids asked for, summed over requests.
    pub ids_requested: u64,
    /// `/process` requests refused with code 4000 (a malformed id, too many ids).
    #[serde(default)]
    pub bad_requests: u64,
    /// Requests to the listing endpoints (`/v1/datasets`, the document list).
    #[serde(default)]
    pub listings: u64,
    /// Requests to the create endpoint.
    #[serde(default)]
    pub creates: u64,
    pub by_dataset: BTreeMap<String, u64>,
    /// Every change of the labelled client polling a dataset (see [`Handover`]).
    #[serde(default)]
    pub handovers: Vec<Handover>,
    /// Per dataset: the last labelled client and when (milliseconds since the start).
    #[serde(default)]
    pub last_poller: BTreeMap<String, (String, u64)>,
    pub by_http_status: BTreeMap<u16, u64>,
    /// The most recent requests, oldest first (at most [`RECENT_REQUESTS`]).
    pub recent: VecDeque<RequestRecord>,
}

/// How many requests `Stats::recent` keeps.
pub const RECENT_REQUESTS: usize = 1000;

/// One request as the simulator saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    pub dataset: String,
    /// The ids asked for (empty when the body was unreadable).
    pub ids: Vec<String>,
    pub http_status: u16,
    /// The label of the listener it came in on ([`super::SimHandle::serve_as`]); empty for
    /// the main one.
    #[serde(default)]
    pub instance: String,
    /// Milliseconds since the simulator started.
    #[serde(default)]
    pub at_ms: u64,
}

/// A dataset's polls moving from one labelled client to another: when, and how long after
/// the previous client's last request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handover {
    pub dataset: String,
    pub from: String,
    pub to: String,
    pub at_ms: u64,
    pub gap_ms: u64,
}

/// The label of a listener started by [`super::SimHandle::serve_as`].
#[derive(Clone, Debug)]
pub(crate) struct Label(pub String);

pub(crate) struct SimState {
    token: String,
    pub(crate) hints: Hints,
    pub(crate) catalog: Mutex<Catalog>,
    pub(crate) scenario: Scenario,
    pub(crate) started: Instant,
    pub(crate) started_wall: SystemTime,
    pub(crate) faults: Mutex<Faults>,
    script: Mutex<VecDeque<Injection>>,
    /// Scripted answers of the create endpoint, one per request (status faults and delays).
    pub(crate) create_script: Mutex<VecDeque<Injection>>,
    pub(crate) stats: Mutex<Stats>,
    rng: Mutex<StdRng>,
    quota: Mutex<Option<RateLimiter>>,
    logids: AtomicU64,
}

/// Locks a std mutex, recovering from poisoning (a panicked handler must not take the
/// simulator down). Never held across an await.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimState {
    pub(crate) fn new(mut scenario: Scenario, seed: u64) -> Self {
        let catalog = Mutex::new(Catalog::new(&scenario.datasets));
        let now = Instant::now();
        let faults = std::mem::take(&mut scenario.faults);
        let script = faults.script.iter().cloned().collect();
        SimState {
            token: scenario.token.clone(),
            hints: scenario.hints,
            catalog,
            quota: Mutex::new(
                scenario
                    .quota_per_second
                    .map(|q| RateLimiter::server_quota(q, now)),
            ),
            scenario,
            started: now,
            started_wall: SystemTime::now(),
            faults: Mutex::new(Faults {
                script: Vec::new(),
                ..faults
            }),
            script: Mutex::new(script),
            create_script: Mutex::new(VecDeque::new()),
            stats: Mutex::new(Stats::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            logids: AtomicU64::new(1),
        }
    }

    pub(crate) fn set_faults(&self, mut faults: Faults) {
        let script = std::mem::take(&mut faults.script);
        *lock(&self.faults) = faults;
        lock(&self.script).extend(script);
    }

    pub(crate) fn inject(&self, injections: Vec<Injection>) {
        lock(&self.script).extend(injections);
    }

    pub(crate) fn next_logid(&self) -> String {
        format!("SIM{:016X}", self.logids.fetch_add(1, Ordering::Relaxed))
    }

    /// What every listing and create request goes through: counted, the token, the quota
    /// (shared with `/process`: the quota is per space), and the permission faults. `Some`:
    /// the refusal to send.
    pub(crate) fn gate(&self, headers: &HeaderMap, logid: &str, gate: Gate) -> Option<Response> {
        {
            let mut st = lock(&self.stats);
            match gate {
                Gate::Listing => st.listings += 1,
                Gate::Create => st.creates += 1,
            }
        }
        let refusal = self.refusal(headers, logid).or_else(|| {
            let f = lock(&self.faults);
            let denied = match gate {
                Gate::Listing => f.listing_denied,
                Gate::Create => f.create_denied,
            };
            denied.then(|| envelope_error(StatusCode::OK, 4101, "permission denied", logid))
        })?;
        let mut st = lock(&self.stats);
        *st.by_http_status
            .entry(refusal.status().as_u16())
            .or_default() += 1;
        count_refusal(&mut st, refusal.status());
        Some(with_logid(refusal, logid))
    }

    /// A listing or create answered with code 0.
    pub(crate) fn answered(&self) {
        *lock(&self.stats).by_http_status.entry(200).or_default() += 1;
    }

    /// The bearer token and the quota: `Some` refusal when either says no.
    fn refusal(&self, headers: &HeaderMap, logid: &str) -> Option<Response> {
        let expected = format!("Bearer {}", self.token);
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected);
        if !authorized {
            return Some(envelope_error(
                StatusCode::UNAUTHORIZED,
                4100,
                "authentication failed",
                logid,
            ));
        }
        let over_quota = lock(&self.quota)
            .as_mut()
            .is_some_and(|q| q.try_acquire(Instant::now()).is_err());
        if over_quota {
            let mut r = envelope_error(StatusCode::TOO_MANY_REQUESTS, 4013, "rate limited", logid);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Some(r);
        }
        None
    }
}

/// Which kind of request [`SimState::gate`] admits.
#[derive(Clone, Copy)]
pub(crate) enum Gate {
    Listing,
    Create,
}

pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/datasets/{dataset_id}/process", post(process))
        .route("/__sim/stats", get(stats))
        .route("/__sim/scenario", get(scenario))
        .route("/__sim/faults", post(set_faults))
        .route("/__sim/inject", post(inject))
        .route("/v1/datasets", get(catalog::list_datasets))
        .route(
            "/open_api/knowledge/document/list",
            post(catalog::list_documents),
        )
        .route(
            "/open_api/knowledge/document/create",
            post(catalog::create_documents),
        )
        .route("/__sim/datasets", post(catalog::add_dataset))
        .route("/__sim/delete", post(catalog::delete_document))
        .with_state(state)
}

async fn stats(State(s): State<Arc<SimState>>) -> axum::Json<Stats> {
    axum::Json(lock(&s.stats).clone())
}

async fn scenario(State(s): State<Arc<SimState>>) -> axum::Json<Value> {
    axum::Json(super::truth(&s))
}

async fn set_faults(State(s): State<Arc<SimState>>, axum::Json(f): axum::Json<Faults>) {
    s.set_faults(f);
}

async fn inject(State(s): State<Arc<SimState>>, axum::Json(list): axum::Json<Vec<Injection>>) {
    s.inject(list);
}

/// What to do with one request, decided before the normal answer is built.
enum Plan {
    Normal,
    Fault(Injection),
}

async fn process(
    State(s): State<Arc<SimState>>,
    label: Option<axum::Extension<Label>>,
    Path(dataset_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let instance = label.map(|l| l.0.0).unwrap_or_default();
    let logid = s.next_logid();
    let (latency, plan) = plan(&s);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    {
        // Counted on arrival: a client that gives up (a timeout) never sees the answer, and
        // the handler is dropped with its connection.
        let mut st = lock(&s.stats);
        st.requests += 1;
        st.faults += u64::from(matches!(plan, Plan::Fault(_)));
        *st.by_dataset.entry(dataset_id.clone()).or_default() += 1;
    }
    let response = answer(&s, &dataset_id, &headers, &body, plan, &logid).await;
    let ids = parse_request(&body).unwrap_or_default();
    record(&s, &dataset_id, ids, &response, instance);
    with_logid(response, &logid)
}

fn plan(s: &SimState) -> (Duration, Plan) {
    let faults = lock(&s.faults).clone();
    let latency = Duration::from_millis(faults.latency_ms);
    if let Some(inj) = lock(&s.script).pop_front() {
        return (latency, Plan::Fault(inj));
    }
    let mut rng = lock(&s.rng);
    let mut roll = |p: f64| p > 0.0 && rng.random_bool(p.clamp(0.0, 1.0));
    let plan = if roll(faults.error_rate) {
        Plan::Fault(Injection::Status {
            http: 500,
            code: Some(5000),
            retry_after_secs: None,
        })
    } else if roll(faults.rate_limit_rate) {
        Plan::Fault(Injection::Status {
            http: 429,
            code: Some(4013),
            retry_after_secs: Some(faults.retry_after_secs.unwrap_or(1)),
        })
    } else if roll(faults.malformed_rate) {
        Plan::Fault(Injection::Html { http: 200 })
    } else if roll(faults.code_error_rate) {
        Plan::Fault(Injection::Status {
            http: 200,
            code: Some(5000),
            retry_after_secs: None,
        })
    } else {
        Plan::Normal
    };
    (latency, plan)
}

async fn answer(
    s: &SimState,
    dataset_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    plan: Plan,
    logid: &str,
) -> Response {
    if let Some(r) = s.refusal(headers, logid) {
        return r;
    }
    let mut modifier = None;
    match plan {
        Plan::Normal | Plan::Fault(Injection::Pass) => {}
        Plan::Fault(Injection::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Plan::Fault(
            inj @ (Injection::ExtraFields
            | Injection::UnknownStatus { .. }
            | Injection::ProgressBack
            | Injection::NumericIds),
        ) => modifier = Some(inj),
        Plan::Fault(inj) => return fault_response(inj, logid),
    }
    let ids = match parse_request(body) {
        Ok(ids) => ids,
        Err(msg) => {
            lock(&s.stats).bad_requests += 1;
            return envelope_error(StatusCode::OK, 4000, &msg, logid);
        }
    };
    if let Some(max) = s.scenario.max_ids
        && ids.len() > max
    {
        lock(&s.stats).bad_requests += 1;
        let msg = format!("too many document_ids (at most {max})");
        return envelope_error(StatusCode::OK, 4000, &msg, logid);
    }
    lock(&s.stats).ids_requested += ids.len() as u64;
    let data: Vec<Value> = {
        let catalog = lock(&s.catalog);
        if !catalog.datasets.contains_key(dataset_id) {
            return envelope_error(StatusCode::OK, 4200, "dataset not found", logid);
        }
        let elapsed = s.started.elapsed();
        ids.iter()
            .filter_map(|id| catalog.document(dataset_id, id))
            .filter_map(|doc| doc.view_at(elapsed, s.hints).map(|v| document_json(doc, v)))
            .collect()
    };
    let mut value = json!({
        "code": 0,
        "msg": "",
        "data": {"data": data},
        "detail": {"logid": logid},
    });
    if let Some(m) = modifier {
        modify(&mut value, &m);
    }
    lock(&s.stats).ok += 1;
    (StatusCode::OK, axum::Json(value)).into_response()
}

#[derive(Deserialize)]
struct ProcessBody {
    document_ids: Vec<String>,
}

/// The ids of a request. Coze converts ids to int64 server-side, so a non-numeric id is a bad
/// request (code 4000), as is a body that is not `{"document_ids": [strings]}`.
fn parse_request(body: &[u8]) -> Result<Vec<String>, String> {
    let req: ProcessBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    if req.document_ids.is_empty() {
        return Err("document_ids is empty".into());
    }
    if let Some(bad) = req
        .document_ids
        .iter()
        .find(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid document_id {bad:?}"));
    }
    Ok(req.document_ids)
}

fn document_json(doc: &SimDocument, v: super::scenario::View) -> Value {
    let mut obj = json!({
        "document_id": doc.id,
        "document_name": doc.name.clone().unwrap_or_else(|| format!("{}.{}", doc.id, doc.file_type)),
        "status": v.status,
        "progress": v.progress,
        "remaining_time": v.remaining_time,
        "url": format!(
            "https://sim.invalid/files/{}.{}?x-expires=1733819246&x-signature=SIMSIGNATURE",
            doc.id, doc.file_type
        ),
        "size": doc.size,
        "type": doc.file_type,
        "update_type": 0,
        "update_interval": 0,
    });
    if let (Some(d), Some(map)) = (v.status_descript, obj.as_object_mut()) {
        map.insert("status_descript".into(), Value::String(d));
    }
    obj
}

fn modify(value: &mut Value, injection: &Injection) {
    let docs = value
        .pointer_mut("/data/data")
        .and_then(Value::as_array_mut);
    match injection {
        Injection::ExtraFields => {
            if let Some(docs) = docs {
                for d in docs.iter_mut().filter_map(Value::as_object_mut) {
                    d.insert("chunk_strategy".into(), json!({"max_tokens": 800}));
                    d.insert("new_field_2027".into(), json!([1, "two", null]));
                }
            }
            if let Some(o) = value.as_object_mut() {
                o.insert("trace".into(), json!({"region": "sim"}));
            }
        }
        Injection::UnknownStatus { status } => {
            for d in docs.into_iter().flatten().filter_map(Value::as_object_mut) {
                d.insert("status".into(), json!(status));
            }
        }
        Injection::ProgressBack => {
            for d in docs.into_iter().flatten().filter_map(Value::as_object_mut) {
                let p = d.get("progress").and_then(Value::as_i64).unwrap_or(0);
                d.insert("progress".into(), json!((p - 30).max(0)));
            }
        }
        Injection::NumericIds => {
            for d in docs.into_iter().flatten().filter_map(Value::as_object_mut) {
                let id = d.get("document_id").and_then(Value::as_str).unwrap_or("0");
                // Numbers built from the id's text, so no precision is lost on the wire.
                if let Ok(n) = serde_json::from_str::<serde_json::Number>(id) {
                    d.insert("document_id".into(), Value::Number(n));
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn fault_response(inj: Injection, logid: &str) -> Response {
    match inj {
        Injection::Status {
            http,
            code,
            retry_after_secs,
        } => {
            let status = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = match code {
                Some(c) => envelope_error(status, c, "injected fault", logid),
                None => (status, "injected fault").into_response(),
            };
            if let Some(secs) = retry_after_secs {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
        Injection::Html { http } => {
            let status = StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response()
        }
        Injection::Truncated => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"code":0,"msg":"","data":{"data":[{"document_id":"1","sta"#,
        )
            .into_response(),
        Injection::Reset => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"code\":0,\"data\":")),
                Err(std::io::Error::other("simulated connection reset")),
            ];
            let mut r = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
            r
        }
        Injection::Raw { http, body } => (
            StatusCode::from_u16(http).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Injection::Oversize => {
            let mut body = b"{\"code\":0,\"msg\":\"".to_vec();
            body.resize(body.len() + 5 * 1024 * 1024, b'x');
            body.extend_from_slice(b"\"}");
            (StatusCode::OK, body).into_response()
        }
        // These change a normal answer instead of replacing it; `answer` handles them.
        Injection::Pass
        | Injection::Delay { .. }
        | Injection::ExtraFields
        | Injection::UnknownStatus { .. }
        | Injection::ProgressBack
        | Injection::NumericIds => envelope_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            5000,
            "simulator bug",
            logid,
        ),
    }
}

pub(crate) fn envelope_error(status: StatusCode, code: i64, msg: &str, logid: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "msg": msg, "detail": {"logid": logid}})),
    )
        .into_response()
}

fn with_logid(mut r: Response, logid: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(logid) {
        r.headers_mut().insert("x-tt-logid", v);
    }
    r
}

fn record(s: &SimState, dataset: &str, ids: Vec<String>, r: &Response, instance: String) {
    let at_ms = s.started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
    let mut st = lock(&s.stats);
    if st.recent.len() == RECENT_REQUESTS {
        st.recent.pop_front();
    }
    if !instance.is_empty() {
        let last = st
            .last_poller
            .insert(dataset.to_string(), (instance.clone(), at_ms));
        if let Some((from, then)) = last
            && from != instance
        {
            st.handovers.push(Handover {
                dataset: dataset.to_string(),
                from,
                to: instance.clone(),
                at_ms,
                gap_ms: at_ms.saturating_sub(then),
            });
        }
    }
    st.recent.push_back(RequestRecord {
        dataset: dataset.to_string(),
        ids,
        http_status: r.status().as_u16(),
        instance,
        at_ms,
    });
    *st.by_http_status.entry(r.status().as_u16()).or_default() += 1;
    count_refusal(&mut st, r.status());
}

fn count_refusal(st: &mut Stats, status: StatusCode) {
    match status {
        StatusCode::UNAUTHORIZED => st.unauthorized += 1,
        StatusCode::TOO_MANY_REQUESTS => st.rate_limited += 1,
        _ => {}
    }
}
