//! Classification of every way a process request can fail (SPEC section 1's table).
//!
//! [`classify`] is a pure function of the HTTP status, the `Retry-After` header and the body
//! bytes, so every row of the table is unit-tested without a socket. Messages carry the API's
//! `msg` and `logid` and never the token.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use super::wire::{DocumentProgress, Envelope};
use crate::ids::DatasetId;

/// Which endpoint a request went to: what permission it needs, for the message of a 4101.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Process,
    ListDatasets,
    ListDocuments,
    CreateDocuments,
}

impl Endpoint {
    /// The token permission the endpoint needs.
    pub fn permission(self) -> &'static str {
        match self {
            Endpoint::Process => "readDocumentProgress",
            Endpoint::ListDatasets => "listKnowledge",
            Endpoint::ListDocuments => "listDocument",
            Endpoint::CreateDocuments => "createDocument",
        }
    }
}

/// What the server said, for messages: HTTP status, body code and msg, log id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub endpoint: Endpoint,
    /// What the request was about: `dataset 123` or `space 456`.
    pub subject: String,
    pub http: u16,
    pub code: Option<i64>,
    pub msg: String,
    pub logid: Option<String>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HTTP {}", self.subject, self.http)?;
        if let Some(code) = self.code {
            write!(f, ", code {code}")?;
        }
        if !self.msg.is_empty() {
            write!(f, ", msg {:?}", self.msg)?;
        }
        if let Some(logid) = &self.logid {
            write!(f, ", logid {logid}")?;
        }
        Ok(())
    }
}

/// Why a transient failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransientKind {
    /// 5xx, or body code 5000.
    Server,
    Timeout,
    Connect,
    /// The connection broke while reading the answer.
    Body,
    /// Not JSON, truncated JSON, wrong types, or over the size cap.
    InvalidBody,
    /// A 3xx; redirects are never followed.
    Redirect,
    /// A non-zero `code` this program does not know.
    UnexpectedCode,
}

impl TransientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransientKind::Server => "server error",
            TransientKind::Timeout => "timeout",
            TransientKind::Connect => "connection failed",
            TransientKind::Body => "connection broken while reading the answer",
            TransientKind::InvalidBody => "unreadable answer",
            TransientKind::Redirect => "redirect (not followed)",
            TransientKind::UnexpectedCode => "unexpected code",
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ApiError {
    #[error(
        "the Coze API rejected the token ({0}): it is invalid or expired; a coze.cn token \
         against api.coze.com, or the reverse, also gives this"
    )]
    Auth(Box<Reply>),
    #[error(
        "the token lacks the {permission} permission or access to the space ({reply})",
        permission = reply.endpoint.permission()
    )]
    Permission { reply: Box<Reply> },
    #[error("dataset not found ({0})")]
    DatasetNotFound(Box<Reply>),
    #[error("rate limited ({reply}){}", retry_after_text(*.retry_after))]
    RateLimited {
        reply: Box<Reply>,
        retry_after: Option<Duration>,
    },
    #[error("bad request for a batch of {batch_len} ids starting at {first_id} ({reply})")]
    BadRequest {
        reply: Box<Reply>,
        batch_len: usize,
        first_id: String,
    },
    #[error("transient error: {} ({detail})", kind.as_str())]
    Transient {
        kind: TransientKind,
        detail: String,
        /// What the server said, when it answered at all (a 5xx, an unknown code).
        reply: Option<Box<Reply>>,
    },
    /// A condition of this process, not of the API: asking again cannot fix it.
    #[error("{0}")]
    Local(LocalError),
}

/// What this process cannot do, whatever the API says.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LocalError {
    #[error("the client is shutting down")]
    ShuttingDown,
    #[error("api.base_url cannot take a path (it is not a plain http(s) URL)")]
    BaseUrlCannotHavePath,
    #[error("the API token contains characters not allowed in an HTTP header")]
    TokenNotAHeader,
}

fn retry_after_text(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(", retry after {}", humantime::format_duration(d)),
        None => String::new(),
    }
}

impl ApiError {
    /// A short stable label, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Auth(_) => "auth",
            ApiError::Permission { .. } => "permission",
            ApiError::DatasetNotFound(_) => "dataset_not_found",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::Transient { .. } => "transient",
            ApiError::Local(_) => "local",
        }
    }

    /// What the server said, when it answered.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ApiError::Auth(r)
            | ApiError::Permission { reply: r }
            | ApiError::DatasetNotFound(r)
            | ApiError::RateLimited { reply: r, .. }
            | ApiError::BadRequest { reply: r, .. } => Some(r),
            ApiError::Transient { reply, .. } => reply.as_deref(),
            ApiError::Local(_) => None,
        }
    }

    /// The log id the server gave, if any.
    pub fn logid(&self) -> Option<&str> {
        self.reply().and_then(|r| r.logid.as_deref())
    }

    /// The server's `msg`, if it answered with one.
    pub fn msg(&self) -> Option<&str> {
        self.reply()
            .map(|r| r.msg.as_str())
            .filter(|m| !m.is_empty())
    }
}

/// A good answer: the documents the server knows (unknown ids are left out) and its log id.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub documents: Vec<DocumentProgress>,
    pub logid: Option<String>,
}

/// Everything `classify` needs to know about one HTTP exchange.
pub struct Exchange<'a> {
    pub dataset: &'a DatasetId,
    pub batch: &'a [crate::ids::DocumentId],
    pub http: u16,
    pub retry_after: Option<&'a str>,
    pub header_logid: Option<&'a str>,
    pub body: &'a [u8],
}

/// Turns one HTTP exchange into an answer or a classified error. Both the HTTP status and the
/// body `code` are checked: a known non-zero `code` decides whatever the status; otherwise the
/// status decides.
pub fn classify(x: &Exchange<'_>) -> Result<Answer, ApiError> {
    if (300..400).contains(&x.http) {
        return Err(ApiError::Transient {
            kind: TransientKind::Redirect,
            detail: format!("dataset {}: HTTP {}", x.dataset, x.http),
            reply: None,
        });
    }
    let envelope: Result<Envelope, _> = serde_json::from_slice(x.body);
    let (code, msg, logid, docs) = match envelope {
        Ok(e) => {
            let logid = e
                .detail
                .and_then(|d| d.logid)
                .filter(|l| !l.is_empty())
                .or_else(|| x.header_logid.map(str::to_string));
            let docs = e.data.and_then(|d| d.data);
            (e.code, e.msg.unwrap_or_default(), logid, Some(docs))
        }
        Err(err) => (
            None,
            invalid_body_text(&err, x.body.len()),
            x.header_logid.map(str::to_string),
            None,
        ),
    };
    let reply = Reply {
        endpoint: Endpoint::Process,
        subject: format!("dataset {}", x.dataset),
        http: x.http,
        code,
        msg,
        logid,
    };
    let bad = BadRequestContext {
        batch_len: x.batch.len(),
        first_id: x.batch.first().map(|d| d.to_string()).unwrap_or_default(),
    };
    let parsed = docs.is_some();
    let reply = judge(reply, parsed, x.retry_after, bad)?;
    Ok(Answer {
        documents: docs.flatten().unwrap_or_default(),
        logid: reply.logid,
    })
}

/// One exchange with a listing or create endpoint.
pub struct ListExchange<'a> {
    pub endpoint: Endpoint,
    /// `dataset 123` or `space 456`.
    pub subject: &'a str,
    pub http: u16,
    pub retry_after: Option<&'a str>,
    pub header_logid: Option<&'a str>,
    pub body: &'a [u8],
}

/// A listing's answer as JSON (the caller reads its shape) and its log id, or the classified
/// error, by the same rules as [`classify`].
pub fn classify_listing(
    x: &ListExchange<'_>,
) -> Result<(serde_json::Value, Option<String>), ApiError> {
    if (300..400).contains(&x.http) {
        return Err(ApiError::Transient {
            kind: TransientKind::Redirect,
            detail: format!("{}: HTTP {}", x.subject, x.http),
            reply: None,
        });
    }
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(x.body);
    let (code, msg, logid, value) = match parsed {
        Ok(v) if v.is_object() => {
            let logid = v["detail"]["logid"]
                .as_str()
                .filter(|l| !l.is_empty())
                .or(x.header_logid)
                .map(str::to_string);
            let msg = v["msg"].as_str().unwrap_or_default().to_string();
            (v["code"].as_i64(), msg, logid, Some(v))
        }
        Ok(_) => (
            None,
            "not a JSON object".into(),
            x.header_logid.map(str::to_string),
            None,
        ),
        Err(err) => (
            None,
            invalid_body_text(&err, x.body.len()),
            x.header_logid.map(str::to_string),
            None,
        ),
    };
    let reply = Reply {
        endpoint: x.endpoint,
        subject: x.subject.to_string(),
        http: x.http,
        code,
        msg,
        logid,
    };
    let reply = judge(
        reply,
        value.is_some(),
        x.retry_after,
        BadRequestContext::default(),
    )?;
    Ok((value.unwrap_or_default(), reply.logid))
}

/// What a 400 names: the batch it refused (empty for a listing).
#[derive(Default)]
struct BadRequestContext {
    batch_len: usize,
    first_id: String,
}

/// The shared rule: a known non-zero `code` decides whatever the HTTP status; otherwise the
/// status decides. `parsed`: the body was a Coze answer of the expected shape.
fn judge(
    reply: Reply,
    parsed: bool,
    retry_after: Option<&str>,
    bad: BadRequestContext,
) -> Result<Reply, ApiError> {
    let ok_http = (200..300).contains(&reply.http);
    match reply.code {
        Some(0) if parsed && ok_http => Ok(reply),
        Some(c) if c != 0 && by_code(c).is_some() => {
            Err(build(by_code(c), reply, retry_after, bad))
        }
        None if ok_http && !parsed => Err(ApiError::Transient {
            kind: TransientKind::InvalidBody,
            detail: reply.to_string(),
            reply: Some(Box::new(reply)),
        }),
        None if ok_http => Err(ApiError::Transient {
            kind: TransientKind::InvalidBody,
            detail: format!("{reply}: no `code` in the answer"),
            reply: Some(Box::new(reply)),
        }),
        _ if !ok_http => {
            // A 404 without a Coze JSON body is a wrong base_url or a proxy, not a dataset.
            if reply.http == 404 && !parsed {
                return Err(ApiError::Transient {
                    kind: TransientKind::InvalidBody,
                    detail: format!("{reply}: HTTP 404 without a Coze answer (is base_url right?)"),
                    reply: Some(Box::new(reply)),
                });
            }
            let class = by_http(reply.http);
            Err(build(class, reply, retry_after, bad))
        }
        _ => Err(ApiError::Transient {
            kind: TransientKind::UnexpectedCode,
            detail: reply.to_string(),
            reply: Some(Box::new(reply)),
        }),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Auth,
    Permission,
    NotFound,
    RateLimited,
    BadRequest,
    Server,
}

fn by_code(code: i64) -> Option<Class> {
    Some(match code {
        4100 => Class::Auth,
        4101 => Class::Permission,
        4200 => Class::NotFound,
        4013 => Class::RateLimited,
        4000 => Class::BadRequest,
        5000 => Class::Server,
        _ => return None,
    })
}

fn by_http(status: u16) -> Option<Class> {
    Some(match status {
        401 => Class::Auth,
        403 => Class::Permission,
        404 => Class::NotFound,
        429 => Class::RateLimited,
        400 => Class::BadRequest,
        500..=599 => Class::Server,
        _ => return None,
    })
}

fn build(
    class: Option<Class>,
    reply: Reply,
    retry_after: Option<&str>,
    bad: BadRequestContext,
) -> ApiError {
    let reply = Box::new(reply);
    match class {
        Some(Class::Auth) => ApiError::Auth(reply),
        Some(Class::Permission) => ApiError::Permission { reply },
        Some(Class::NotFound) => ApiError::DatasetNotFound(reply),
        Some(Class::RateLimited) => ApiError::RateLimited {
            reply,
            retry_after: retry_after.and_then(crate::http::parse_retry_after),
        },
        Some(Class::BadRequest) => ApiError::BadRequest {
            reply,
            batch_len: bad.batch_len,
            first_id: bad.first_id,
        },
        Some(Class::Server) => ApiError::Transient {
            kind: TransientKind::Server,
            detail: reply.to_string(),
            reply: Some(reply),
        },
        None => ApiError::Transient {
            kind: TransientKind::UnexpectedCode,
            detail: reply.to_string(),
            reply: Some(reply),
        },
    }
}

fn invalid_body_text(err: &serde_json::Error, len: usize) -> String {
    if err.is_eof() {
        format!("truncated JSON ({len} bytes)")
    } else if err.is_syntax() {
        format!("not JSON ({len} bytes)")
    } else {
        format!("unexpected JSON shape: {err}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DocumentId;

    fn run(http: u16, body: &str, retry_after: Option<&str>) -> Result<Answer, ApiError> {
        let ds = DatasetId::new("ds1");
        let batch = [DocumentId::new("d1"), DocumentId::new("d2")];
        classify(&Exchange {
            dataset: &ds,
            batch: &batch,
            http,
            retry_after,
            header_logid: Some("HDR"),
            body: body.as_bytes(),
        })
    }

    fn err(code: i64) -> String {
        format!(r#"{{"code":{code},"msg":"m","detail":{{"logid":"BODY"}}}}"#)
    }

    #[test]
    fn good_answer_uses_body_logid_then_header() {
        let a = run(
            200,
            r#"{"code":0,"msg":"","data":{"data":[]},"detail":{"logid":"L"}}"#,
            None,
        )
        .unwrap();
        assert_eq!(a.logid.as_deref(), Some("L"));
        let a = run(200, r#"{"code":0,"data":{"data":[]}}"#, None).unwrap();
        assert_eq!(a.logid.as_deref(), Some("HDR"));
    }

    #[test]
    fn every_class_by_body_code_even_with_http_200() {
        assert_eq!(run(200, &err(4100), None).unwrap_err().kind(), "auth");
        assert_eq!(run(200, &err(4101), None).unwrap_err().kind(), "permission");
        assert_eq!(
            run(200, &err(4200), None).unwrap_err().kind(),
            "dataset_not_found"
        );
        assert_eq!(
            run(200, &err(4013), None).unwrap_err().kind(),
            "rate_limited"
        );
        assert_eq!(
            run(200, &err(4000), None).unwrap_err().kind(),
            "bad_request"
        );
        assert_eq!(run(200, &err(5000), None).unwrap_err().kind(), "transient");
        assert_eq!(run(200, &err(777), None).unwrap_err().kind(), "transient");
    }

    #[test]
    fn every_class_by_http_status() {
        let body = r#"{"msg":"x"}"#;
        assert_eq!(run(401, body, None).unwrap_err().kind(), "auth");
        assert_eq!(
            run(403, "forbidden", None).unwrap_err().kind(),
            "permission"
        );
        assert_eq!(
            run(404, body, None).unwrap_err().kind(),
            "dataset_not_found"
        );
        assert_eq!(run(429, "", Some("7")).unwrap_err().kind(), "rate_limited");
        assert_eq!(run(400, body, None).unwrap_err().kind(), "bad_request");
        assert_eq!(
            run(502, "<html>bad gateway</html>", None)
                .unwrap_err()
                .kind(),
            "transient"
        );
        assert_eq!(run(302, "", None).unwrap_err().kind(), "transient");
    }

    #[test]
    fn retry_after_is_read_and_capped() {
        match run(429, &err(4013), Some("7")).unwrap_err() {
            ApiError::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn html_404_is_not_a_missing_dataset() {
        assert_eq!(
            run(404, "<html>nope</html>", None).unwrap_err().kind(),
            "transient"
        );
    }

    #[test]
    fn malformed_and_truncated_bodies_are_transient() {
        assert_eq!(run(200, "<html>", None).unwrap_err().kind(), "transient");
        assert_eq!(
            run(200, r#"{"code":0,"data":{"da"#, None)
                .unwrap_err()
                .kind(),
            "transient"
        );
        assert_eq!(
            run(
                200,
                r#"{"code":0,"data":{"data":[{"document_id":"1","status":"x"}]}}"#,
                None
            )
            .unwrap_err()
            .kind(),
            "transient"
        );
        assert_eq!(
            run(200, r#"{"data":{"data":[]}}"#, None)
                .unwrap_err()
                .kind(),
            "transient"
        );
    }

    #[test]
    fn auth_error_carries_the_region_hint_and_logid() {
        let text = run(401, &err(4100), None).unwrap_err().to_string();
        assert!(
            text.contains("coze.cn token against api.coze.com"),
            "{text}"
        );
        assert!(text.contains("logid BODY"), "{text}");
        let text = run(403, &err(4101), None).unwrap_err().to_string();
        assert!(text.contains("readDocumentProgress"), "{text}");
    }
}
