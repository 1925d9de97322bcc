//! A webhook receiver on 127.0.0.1 for tests: scripted answers, every request recorded, and
//! its own Standard Webhooks verification, written independently of the crate's (plain SHA-256
//! from `sha2`, HMAC built by hand per RFC 2104).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// This status with this body.
    StatusBody(u16, &'static str),
    /// HTTP 200 with this body (a chat service's own answer).
    Body(&'static str),
    RetryAfter(u16, u64),
    Redirect(&'static str),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

struct RecState {
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    requests: Mutex<Vec<Received>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<RecState>,
    cancel: CancellationToken,
}

/// A free loopback port, for a receiver started later.
pub fn reserve_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Receiver {
    pub async fn start(script: Vec<Reply>) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> Receiver {
        Self::start_with_default(addr, script, Reply::Status(200)).await
    }

    /// Answers with `script` first, then `default` for ever.
    pub async fn start_with_default(
        addr: SocketAddr,
        script: Vec<Reply>,
        default: Reply,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RecState {
            default,
            script: Mutex::new(script.into()),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        Receiver {
            addr,
            state,
            cancel,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

async fn handle(
    State(s): State<Arc<RecState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| s.default.clone());
    let response = match &reply {
        Reply::Status(code) => StatusCode::from_u16(*code).unwrap().into_response(),
        Reply::Body(text) => (StatusCode::OK, *text).into_response(),
        Reply::StatusBody(code, text) => {
            (StatusCode::from_u16(*code).unwrap(), *text).into_response()
        }
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(*code).unwrap(),
            [(header::RETRY_AFTER, secs.to_string())],
        )
            .into_response(),
        Reply::Redirect(to) => {
            (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
        }
    };
    s.requests.lock().unwrap().push(Received {
        at: Instant::now(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: response.status().as_u16(),
    });
    response
}

/// HMAC-SHA256 by RFC 2104, on top of plain SHA-256.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner_key: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_key)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Standard Webhooks verification: any `v1,` signature in the space-separated header matches.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &str, signature_header: &str) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let signed = format!("{id}.{timestamp}.{body}");
    let expected = STANDARD.encode(hmac_sha256(&key, signed.as_bytes()));
    signature_header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// Verifies a recorded request.
pub fn verify_request(secret: &str, r: &Received) -> bool {
    verify(
        secret,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        &r.body,
        r.header("webhook-signature"),
    )
}
