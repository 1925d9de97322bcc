//! Wire types of the listing endpoints (`coze-api/discovery.md`): the knowledge bases of a
//! space (`GET /v1/datasets`) and the documents of a knowledge base
//! (`POST /open_api/knowledge/document/list`).
//!
//! Lenient like `wire`: ids as strings or numbers, counts as numbers or numeric strings,
//! `null` or absent lists as empty, unknown fields ignored; the document page is read at the
//! top level or under `data`. Pure: parsing only.

use serde::{Deserialize, Deserializer};

use super::wire::DocumentStatus;
use crate::ids::{DatasetId, DocumentId};

/// The page size of the space probe (the endpoint's maximum): 300 knowledge bases a request.
pub const DATASETS_PER_PAGE: u32 = 300;
/// The page size of a document listing.
pub const DOCUMENTS_PER_PAGE: u32 = 100;

/// One knowledge base of a space.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DatasetInfo {
    pub dataset_id: DatasetId,
    #[serde(default)]
    pub name: Option<String>,
    /// 1 enabled, 3 disabled.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub status: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub doc_count: Option<i64>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub update_time: Option<i64>,
    /// The documents processing now: the cheapest discovery signal.
    #[serde(default, deserialize_with = "lenient_ids")]
    pub processing_file_id_list: Vec<DocumentId>,
    /// Not documented: a marker of a Volcano-engine knowledge base, when a server sends one
    /// (`dataset_type: "volcano"`).
    #[serde(default)]
    pub dataset_type: Option<String>,
}

impl DatasetInfo {
    pub fn is_disabled(&self) -> bool {
        self.status == Some(3)
    }

    pub fn is_volcano(&self) -> bool {
        self.dataset_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("volcano"))
    }
}

/// One page of `GET /v1/datasets`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetPage {
    pub total: Option<u64>,
    pub datasets: Vec<DatasetInfo>,
}

/// One document of a knowledge base, as listed.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DocumentInfo {
    pub document_id: DocumentId,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_status")]
    pub status: Option<DocumentStatus>,
    /// Unix seconds of the upload.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub create_time: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub update_time: Option<i64>,
}

/// One page of the document list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocumentPage {
    pub total: Option<u64>,
    pub documents: Vec<DocumentInfo>,
}

#[derive(Deserialize)]
struct RawDatasetData {
    #[serde(default, deserialize_with = "lenient_i64")]
    total_count: Option<i64>,
    #[serde(default)]
    dataset_list: Option<Vec<DatasetInfo>>,
}

#[derive(Deserialize)]
struct RawDocumentData {
    #[serde(default, deserialize_with = "lenient_i64")]
    total: Option<i64>,
    #[serde(default)]
    document_infos: Option<Vec<DocumentInfo>>,
}

/// Reads a `GET /v1/datasets` answer (`data.dataset_list`, `data.total_count`).
pub fn dataset_page(answer: &serde_json::Value) -> Result<DatasetPage, String> {
    if answer["data"].is_null() {
        return Ok(DatasetPage::default());
    }
    let raw: RawDatasetData =
        serde_json::from_value(answer["data"].clone()).map_err(|e| format!("dataset list: {e}"))?;
    Ok(DatasetPage {
        total: raw.total_count.and_then(|n| u64::try_from(n).ok()),
        datasets: raw.dataset_list.unwrap_or_default(),
    })
}

/// Reads a document-list answer: `document_infos` and `total` at the top level, or the same
/// under `data`.
pub fn document_page(answer: &serde_json::Value) -> Result<DocumentPage, String> {
    let top = answer.get("document_infos").is_some() || answer.get("total").is_some();
    let src = if top { answer } else { &answer["data"] };
    if src.is_null() {
        return Ok(DocumentPage::default());
    }
    let raw: RawDocumentData =
        serde_json::from_value(src.clone()).map_err(|e| format!("document list: {e}"))?;
    Ok(DocumentPage {
        total: raw.total.and_then(|n| u64::try_from(n).ok()),
        documents: raw.document_infos.unwrap_or_default(),
    })
}

/// A number, a numeric string (some answers send `"0"`), or null.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Text(String),
    }
    Ok(match Option::<Num>::deserialize(d)? {
        Some(Num::Int(n)) => Some(n),
        Some(Num::Float(f)) if f.is_finite() => Some(f as i64),
        Some(Num::Text(t)) => t.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DocumentStatus>, D::Error> {
    Ok(lenient_i64(d)?.map(DocumentStatus::from))
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DocumentId>, D::Error> {
    Ok(Option::<Vec<DocumentId>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dataset_page_tolerates_numbers_as_strings_and_null_lists() {
        let v = json!({"code": 0, "data": {"total_count": 2, "dataset_list": [
            {"dataset_id": 7400000000000000001u64, "status": 1, "doc_count": "3",
             "update_time": 1733817948, "processing_file_id_list": ["75"], "all_file_size": "0"},
            {"dataset_id": "7400000000000000002", "status": 3, "processing_file_id_list": null,
             "dataset_type": "volcano"}
        ]}});
        let page = dataset_page(&v).unwrap();
        assert_eq!(page.total, Some(2));
        let a = &page.datasets[0];
        assert_eq!(a.dataset_id.as_str(), "7400000000000000001");
        assert_eq!(a.doc_count, Some(3));
        assert_eq!(a.processing_file_id_list, [DocumentId::new("75")]);
        let b = &page.datasets[1];
        assert!(b.is_disabled() && b.is_volcano());
        assert!(b.processing_file_id_list.is_empty());
    }

    #[test]
    fn a_document_page_is_read_at_the_top_level_or_under_data() {
        let doc = json!({"document_id": "76", "name": "a.pdf", "status": 1, "update_time": 5});
        let top = json!({"code": 0, "document_infos": [doc.clone()], "total": 1});
        let wrapped = json!({"code": 0, "data": {"document_infos": [doc], "total": 1}});
        for v in [top, wrapped] {
            let page = document_page(&v).unwrap();
            assert_eq!(page.total, Some(1));
            assert_eq!(page.documents[0].status, Some(DocumentStatus::Completed));
        }
        assert_eq!(
            document_page(&json!({"code": 0})).unwrap(),
            DocumentPage::default()
        );
    }
}
