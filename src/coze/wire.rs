//! Wire types of `POST /v1/datasets/{dataset_id}/process`: lenient where the API is loose,
//! strict where a wrong value would mislead.
//!
//! Ids accept strings or numbers and stay strings; `status` is an open enum; every optional
//! field tolerates absence and `null`; unknown fields are ignored. A value of the wrong type
//! (a string where a number belongs, a number too large) fails the whole body, which the client
//! then treats as a transient error: we would rather ask again than act on a misread.

use serde::{Deserialize, Serialize};

use crate::ids::DocumentId;

/// `status` of a document. Open: values we do not know are kept, logged and polled again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocumentStatus {
    Processing,
    Completed,
    Failed,
    /// Status 3, returned by self-hosted Coze Studio for a deleted document.
    Deleted,
    Unknown(i64),
}

impl DocumentStatus {
    pub fn code(self) -> i64 {
        match self {
            DocumentStatus::Processing => 0,
            DocumentStatus::Completed => 1,
            DocumentStatus::Deleted => 3,
            DocumentStatus::Failed => 9,
            DocumentStatus::Unknown(n) => n,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DocumentStatus::Completed | DocumentStatus::Failed | DocumentStatus::Deleted
        )
    }
}

impl From<i64> for DocumentStatus {
    fn from(n: i64) -> Self {
        match n {
            0 => DocumentStatus::Processing,
            1 => DocumentStatus::Completed,
            3 => DocumentStatus::Deleted,
            9 => DocumentStatus::Failed,
            n => DocumentStatus::Unknown(n),
        }
    }
}

impl<'de> Deserialize<'de> for DocumentStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(DocumentStatus::from)
    }
}

impl Serialize for DocumentStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

/// One document's progress as the API reports it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct DocumentProgress {
    pub document_id: DocumentId,
    #[serde(default)]
    pub document_name: Option<String>,
    pub status: DocumentStatus,
    #[serde(default)]
    pub progress: Option<i64>,
    #[serde(default)]
    pub remaining_time: Option<i64>,
    #[serde(default)]
    pub status_descript: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default, rename = "type")]
    pub file_type: Option<String>,
    #[serde(default)]
    pub update_type: Option<i64>,
    #[serde(default)]
    pub update_interval: Option<i64>,
}

/// The response envelope. `data` is absent or null on errors.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub msg: Option<String>,
    #[serde(default)]
    pub data: Option<EnvelopeData>,
    #[serde(default)]
    pub detail: Option<Detail>,
}

#[derive(Debug, Deserialize)]
pub struct EnvelopeData {
    #[serde(default)]
    pub data: Option<Vec<DocumentProgress>>,
}

#[derive(Debug, Deserialize)]
pub struct Detail {
    #[serde(default)]
    pub logid: Option<String>,
}

/// The request body.
#[derive(Debug, Serialize)]
pub struct ProcessRequest<'a> {
    pub document_ids: &'a [DocumentId],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_become_strings_and_unknown_status_is_kept() {
        let body = r#"{"code":0,"msg":"","data":{"data":[
            {"document_id": 7442585813587123456, "status": 7, "progress": 40, "extra": {"x": 1}}
        ]},"detail":{"logid":"L1"}}"#;
        let env: Envelope = serde_json::from_str(body).unwrap();
        let docs = env.data.unwrap().data.unwrap();
        assert_eq!(docs[0].document_id.as_str(), "7442585813587123456");
        assert_eq!(docs[0].status, DocumentStatus::Unknown(7));
        assert_eq!(docs[0].remaining_time, None);
    }

    #[test]
    fn nulls_and_missing_optional_fields_are_tolerated() {
        let body = r#"{"document_id":"1","status":1,"progress":null,"document_name":null}"#;
        let d: DocumentProgress = serde_json::from_str(body).unwrap();
        assert_eq!(d.status, DocumentStatus::Completed);
        assert_eq!(d.progress, None);
    }

    #[test]
    fn wrong_types_are_rejected() {
        let body = r#"{"document_id":"1","status":"done"}"#;
        assert!(serde_json::from_str::<DocumentProgress>(body).is_err());
        let body = r#"{"document_id":"1","status":0,"progress":1e400}"#;
        assert!(serde_json::from_str::<DocumentProgress>(body).is_err());
    }
}
