//! Shared fixtures for integration tests: scenarios, an in-process simulator, temp dirs.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::net::SocketAddr;
use std::time::Duration;

use coze_watch::sim::{self, Outcome, Scenario, SimDataset, SimDocument};

pub const LOOPBACK: &str = "127.0.0.1:0";

pub fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// A document with the given outcome, finishing after `secs` seconds.
pub fn doc(id: &str, secs: u64, outcome: Outcome) -> SimDocument {
    SimDocument {
        id: id.to_string(),
        name: Some(format!("file-{id}.pdf")),
        file_type: "pdf".into(),
        size: 1234,
        start_after: Duration::ZERO,
        duration: Duration::from_secs(secs),
        outcome,
        reason: (outcome == Outcome::Failed).then(|| "parse error: encrypted pdf".to_string()),
        stall_at: 50,
    }
}

pub fn scenario(datasets: Vec<(&str, Vec<SimDocument>)>) -> Scenario {
    Scenario {
        token: sim::DEFAULT_TOKEN.to_string(),
        hints: sim::Hints::Honest,
        faults: sim::Faults::default(),
        quota_per_second: None,
        max_ids: None,
        studio: false,
        create_duration: std::time::Duration::from_secs(3),
        datasets: datasets
            .into_iter()
            .map(|(id, documents)| SimDataset {
                id: id.to_string(),
                documents,
                ..SimDataset::default()
            })
            .collect(),
    }
}

/// Waits until `f` holds, checking every 50 ms; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn start_sim(s: Scenario) -> sim::SimHandle {
    sim::start(s, loopback()).await.unwrap()
}

/// A plain HTTP client for talking to test servers (with the project's TLS set-up).
pub fn http() -> reqwest::Client {
    coze_watch::http::client_builder().build().unwrap()
}

pub async fn get_json(url: String) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

pub mod daemon;
pub mod engine;
pub mod receiver;
pub mod workload;

/// `GET /metrics` of a daemon's ops endpoint (no `Accept`: the classic text format).
pub async fn metrics_text(listen: SocketAddr) -> String {
    http()
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
