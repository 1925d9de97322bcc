//! The simulator's knowledge bases as they change at run time, and the endpoints that list and
//! create documents: `GET /v1/datasets`, `POST /open_api/knowledge/document/list`,
//! `POST /open_api/knowledge/document/create`, plus `/__sim/datasets` (a knowledge base
//! appears) and `/__sim/delete` (a document is deleted).
//!
//! A document is listed from its upload (`start_after`); a knowledge base's `update_time` is
//! its latest upload. What a document reports is `SimDocument::view_at`, as for `/process`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::scenario::{Injection, Outcome, SimDataset, SimDocument};
use super::server::{Gate, SimState, envelope_error, lock};

/// Every knowledge base, by id.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) datasets: BTreeMap<String, SimDataset>,
    next_id: u64,
}

impl Catalog {
    pub(crate) fn new(datasets: &[SimDataset]) -> Self {
        Catalog {
            datasets: datasets.iter().map(|d| (d.id.clone(), d.clone())).collect(),
            next_id: super::scenario::FIRST_DOCUMENT_ID + 900_000_000,
        }
    }

    pub(crate) fn document(&self, dataset: &str, id: &str) -> Option<&SimDocument> {
        self.datasets
            .get(dataset)?
            .documents
            .iter()
            .find(|d| d.id == id)
    }
}

/// Unix seconds of `offset` after the simulator started.
fn unix_secs(s: &SimState, offset: Duration) -> i64 {
    let start = s
        .started_wall
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (start + offset).as_secs() as i64
}

/// Documents uploaded by now.
fn visible(d: &SimDataset, elapsed: Duration) -> impl Iterator<Item = &SimDocument> {
    d.documents
        .iter()
        .filter(move |doc| doc.start_after <= elapsed)
}

#[derive(Deserialize)]
pub(crate) struct DatasetsQuery {
    space_id: Option<String>,
    page_num: Option<usize>,
    page_size: Option<usize>,
}

pub(crate) async fn list_datasets(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<DatasetsQuery>,
) -> Response {
    let logid = s.next_logid();
    if let Some(r) = s.gate(&headers, &logid, Gate::Listing) {
        return r;
    }
    let Some(space) = q.space_id.filter(|s| !s.is_empty()) else {
        return envelope_error(StatusCode::OK, 4000, "space_id is required", &logid);
    };
    let size = q.page_size.unwrap_or(10).clamp(1, 300);
    let page = q.page_num.unwrap_or(1).max(1);
    let elapsed = s.started.elapsed();
    let catalog = lock(&s.catalog);
    let all: Vec<&SimDataset> = catalog
        .datasets
        .values()
        .filter(|d| d.space.as_deref() == Some(space.as_str()))
        .collect();
    let list: Vec<Value> = all
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|d| dataset_json(&s, d, elapsed))
        .collect();
    s.answered();
    let body = json!({"code": 0, "msg": "", "data": {"total_count": all.len(), "dataset_list": list},
                      "detail": {"logid": logid}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn dataset_json(s: &SimState, d: &SimDataset, elapsed: Duration) -> Value {
    let docs: Vec<&SimDocument> = visible(d, elapsed).collect();
    let latest = docs
        .iter()
        .map(|doc| doc.start_after)
        .max()
        .unwrap_or_default();
    let processing: Vec<&str> = docs
        .iter()
        .filter(|doc| doc.view_at(elapsed, s.hints).is_some_and(|v| v.status == 0))
        .map(|doc| doc.id.as_str())
        .collect();
    let mut v = json!({
        "dataset_id": d.id,
        "name": d.name.clone().unwrap_or_else(|| format!("kb-{}", d.id)),
        "space_id": d.space,
        "status": if d.disabled { 3 } else { 1 },
        "format_type": 0,
        "doc_count": docs.len(),
        "update_time": unix_secs(s, latest),
        "create_time": unix_secs(s, Duration::ZERO),
        "processing_file_id_list": processing,
        "all_file_size": "0",
    });
    if d.volcano
        && let Some(o) = v.as_object_mut()
    {
        o.insert("dataset_type".into(), json!("volcano"));
    }
    v
}

#[derive(Deserialize)]
struct ListBody {
    dataset_id: String,
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    size: Option<usize>,
}

pub(crate) async fn list_documents(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let logid = s.next_logid();
    if let Some(r) = s.gate(&headers, &logid, Gate::Listing) {
        return r;
    }
    let req: ListBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return envelope_error(StatusCode::OK, 4000, &format!("invalid body: {e}"), &logid);
        }
    };
    let elapsed = s.started.elapsed();
    let catalog = lock(&s.catalog);
    let Some(d) = catalog.datasets.get(&req.dataset_id) else {
        return envelope_error(StatusCode::OK, 4200, "dataset not found", &logid);
    };
    let size = req.size.unwrap_or(10).max(1);
    let first = usize::from(!s.scenario.studio);
    let page = req.page.unwrap_or(first);
    // A server that ignores the page number (a fault): every page is the first.
    let index = if lock(&s.faults).repeat_pages {
        0
    } else {
        page.saturating_sub(first)
    };
    let docs: Vec<(&SimDocument, i64)> = visible(d, elapsed)
        .filter_map(|doc| doc.view_at(elapsed, s.hints).map(|v| (doc, v.status)))
        .collect();
    let infos: Vec<Value> = docs
        .iter()
        .skip(index * size)
        .take(size)
        .map(|(doc, status)| document_info(&s, doc, *status))
        .collect();
    s.answered();
    let body = json!({"code": 0, "msg": "", "document_infos": infos, "total": docs.len(),
                      "detail": {"logid": logid}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn document_info(s: &SimState, doc: &SimDocument, status: i64) -> Value {
    json!({
        "document_id": doc.id,
        "name": doc.name.clone().unwrap_or_else(|| format!("{}.{}", doc.id, doc.file_type)),
        "status": status,
        "type": doc.file_type,
        "size": doc.size,
        "create_time": unix_secs(s, doc.start_after),
        "update_time": unix_secs(s, doc.start_after),
        "update_type": 0,
        "update_interval": 0,
        "format_type": 0,
        "source_type": 0,
    })
}

#[derive(Deserialize)]
struct CreateBody {
    dataset_id: String,
    document_bases: Vec<DocumentBase>,
}

#[derive(Deserialize)]
struct DocumentBase {
    name: String,
    source_info: SourceInfo,
}

#[derive(Deserialize)]
struct SourceInfo {
    #[serde(default)]
    file_base64: Option<String>,
    #[serde(default)]
    file_type: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
}

pub(crate) async fn create_documents(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let logid = s.next_logid();
    if let Some(r) = s.gate(&headers, &logid, Gate::Create) {
        return r;
    }
    let scripted = lock(&s.create_script).pop_front();
    match scripted {
        None | Some(Injection::Pass) => {}
        Some(Injection::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(inj) => return super::server::fault_response(inj, &logid),
    }
    let req: CreateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return envelope_error(StatusCode::OK, 4000, &format!("invalid body: {e}"), &logid);
        }
    };
    if req.document_bases.is_empty() || req.document_bases.len() > 10 {
        return envelope_error(
            StatusCode::OK,
            4000,
            "document_bases: 1 to 10 documents",
            &logid,
        );
    }
    let elapsed = s.started.elapsed();
    let mut catalog = lock(&s.catalog);
    let mut next = catalog.next_id;
    let Some(d) = catalog.datasets.get_mut(&req.dataset_id) else {
        return envelope_error(StatusCode::OK, 4200, "dataset not found", &logid);
    };
    let mut created = Vec::new();
    for base in req.document_bases {
        next += 1;
        let src = &base.source_info;
        let file_type = src.file_type.clone().unwrap_or_else(|| {
            if src.web_url.is_some() {
                "url".into()
            } else {
                "txt".into()
            }
        });
        let size = src
            .file_base64
            .as_ref()
            .map_or(0, |b| b.len() as i64 * 3 / 4);
        // A file named fail-* fails to process, so upload-and-wait can be tried both ways.
        let fails = base.name.starts_with("fail");
        let doc = SimDocument {
            id: next.to_string(),
            name: Some(base.name),
            file_type,
            size,
            start_after: elapsed,
            duration: s.scenario.create_duration,
            outcome: if fails {
                Outcome::Failed
            } else {
                Outcome::Completed
            },
            reason: fails.then(|| "parse error: the file cannot be read".to_string()),
            stall_at: 50,
        };
        created.push(document_info(&s, &doc, 0));
        d.documents.push(doc);
    }
    catalog.next_id = next;
    s.answered();
    let body = json!({"code": 0, "msg": "", "document_infos": created, "detail": {"logid": logid}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `POST /__sim/datasets`: a knowledge base appears (or is replaced).
pub(crate) async fn add_dataset(
    State(s): State<Arc<SimState>>,
    axum::Json(d): axum::Json<SimDataset>,
) {
    lock(&s.catalog).datasets.insert(d.id.clone(), d);
}

#[derive(Deserialize)]
pub(crate) struct DeleteBody {
    dataset_id: String,
    document_id: String,
}

/// `POST /__sim/delete`: a document is deleted (left out of every answer from now on).
pub(crate) async fn delete_document(
    State(s): State<Arc<SimState>>,
    axum::Json(b): axum::Json<DeleteBody>,
) {
    if let Some(d) = lock(&s.catalog).datasets.get_mut(&b.dataset_id) {
        d.documents.retain(|doc| doc.id != b.document_id);
    }
}
