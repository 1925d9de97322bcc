//! The Coze client against the in-process simulator, over real HTTP on 127.0.0.1.

mod helper;

use std::time::Duration;

use coze_watch::config::ApiLimits;
use coze_watch::coze::{ApiError, ClientSettings, CozeClient, DocumentStatus};
use coze_watch::ids::{DatasetId, DocumentId};
use coze_watch::secret::Secret;
use coze_watch::sim::{Injection, Outcome, SimHandle};
use helper::{doc, scenario, start_sim};

const DS: &str = "7400000000000000001";

fn ids(n: usize) -> Vec<DocumentId> {
    (1..=n)
        .map(|i| DocumentId::new(format!("{}", 1000 + i)))
        .collect()
}

async fn sim_with(n: usize) -> SimHandle {
    let docs = (1..=n)
        .map(|i| doc(&format!("{}", 1000 + i), 3600, Outcome::Completed))
        .collect();
    start_sim(scenario(vec![(DS, docs)])).await
}

fn client(sim: &SimHandle, token: &str, batch: usize) -> std::sync::Arc<CozeClient> {
    CozeClient::new(ClientSettings {
        base_url: sim.base_url().parse().unwrap(),
        token: Secret::new(token),
        limits: ApiLimits {
            request_timeout: Duration::from_secs(2),
            max_ids_per_request: batch,
            max_requests_per_second: 1000.0,
            max_requests_per_day: None,
            max_concurrent_requests: 4,
        },
        token_file: None,
    })
    .unwrap()
}

#[tokio::test]
async fn a_large_batch_is_split_by_max_ids_per_request() {
    let sim = sim_with(7).await;
    let c = client(&sim, sim.token(), 3);
    let outcomes = c.process(&DatasetId::new(DS), &ids(7)).await;
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes.iter().map(|o| o.ids.len()).collect::<Vec<_>>(),
        [3, 3, 1]
    );
    let docs: usize = outcomes
        .iter()
        .map(|o| o.result.as_ref().unwrap().documents.len())
        .sum();
    assert_eq!(docs, 7);
    assert_eq!(sim.stats().requests, 3);
    assert_eq!(sim.stats().ids_requested, 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_good_answer_has_progress_and_a_logid() {
    let sim = sim_with(2).await;
    let c = client(&sim, sim.token(), 50);
    let a = c.process_batch(&DatasetId::new(DS), &ids(2)).await.unwrap();
    assert_eq!(a.documents.len(), 2);
    let d = &a.documents[0];
    assert_eq!(d.status, DocumentStatus::Processing);
    assert!(d.remaining_time.unwrap() > 3500);
    assert!(a.logid.as_deref().unwrap().starts_with("SIM"));
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_are_left_out() {
    let sim = sim_with(1).await;
    let c = client(&sim, sim.token(), 50);
    let asked = [DocumentId::new("1001"), DocumentId::new("9999")];
    let a = c.process_batch(&DatasetId::new(DS), &asked).await.unwrap();
    assert_eq!(a.documents.len(), 1);
    assert_eq!(a.documents[0].document_id.as_str(), "1001");
    sim.shutdown().await;
}

async fn classify(sim: &SimHandle, inj: Injection) -> ApiError {
    sim.inject(vec![inj]);
    let c = client(sim, sim.token(), 50);
    c.process_batch(&DatasetId::new(DS), &ids(2))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn every_failure_class_in_http_status_form_and_body_code_form() {
    let sim = sim_with(2).await;
    let table = [
        (401, 4100, "auth"),
        (403, 4101, "permission"),
        (404, 4200, "dataset_not_found"),
        (429, 4013, "rate_limited"),
        (400, 4000, "bad_request"),
        (500, 5000, "transient"),
    ];
    for (http, code, kind) in table {
        let by_status = Injection::Status {
            http,
            code: None,
            retry_after_secs: None,
        };
        // A 404 needs a Coze body to mean "dataset not found"; see html_404_is_not_a_missing_dataset.
        let by_status = if http == 404 {
            Injection::Status {
                http,
                code: Some(0),
                retry_after_secs: None,
            }
        } else {
            by_status
        };
        let e = classify(&sim, by_status).await;
        assert_eq!(e.kind(), kind, "HTTP {http}: {e}");
        let by_code = Injection::Status {
            http: 200,
            code: Some(code),
            retry_after_secs: None,
        };
        let e = classify(&sim, by_code).await;
        assert_eq!(e.kind(), kind, "code {code}: {e}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limited_carries_retry_after() {
    let sim = sim_with(2).await;
    let e = classify(
        &sim,
        Injection::Status {
            http: 429,
            code: Some(4013),
            retry_after_secs: Some(1),
        },
    )
    .await;
    match e {
        ApiError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_pauses_the_shared_limiter_for_retry_after() {
    let sim = sim_with(2).await;
    let c = client(&sim, sim.token(), 50);
    sim.inject(vec![Injection::Status {
        http: 429,
        code: Some(4013),
        retry_after_secs: Some(1),
    }]);
    let ds = DatasetId::new(DS);
    assert!(c.process_batch(&ds, &ids(2)).await.is_err());
    let started = std::time::Instant::now();
    c.process_batch(&ds, &ids(2)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the next request went out after {:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_truncated_reset_and_oversize_bodies_are_transient() {
    let sim = sim_with(2).await;
    for inj in [
        Injection::Html { http: 200 },
        Injection::Html { http: 502 },
        Injection::Truncated,
        Injection::Reset,
        Injection::Oversize,
    ] {
        let e = classify(&sim, inj.clone()).await;
        assert_eq!(e.kind(), "transient", "{inj:?}: {e}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_past_the_request_timeout_is_a_transient_timeout() {
    let sim = sim_with(2).await;
    let e = classify(&sim, Injection::Delay { ms: 2500 }).await;
    assert!(
        matches!(
            e,
            ApiError::Transient {
                kind: coze_watch::coze::TransientKind::Timeout,
                ..
            }
        ),
        "{e:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn numeric_ids_are_read_as_strings_and_unknown_status_is_kept() {
    let sim = sim_with(2).await;
    let c = client(&sim, sim.token(), 50);
    let ds = DatasetId::new(DS);
    sim.inject(vec![Injection::NumericIds]);
    let a = c.process_batch(&ds, &ids(2)).await.unwrap();
    assert_eq!(a.documents[0].document_id.as_str(), "1001");
    sim.inject(vec![Injection::UnknownStatus { status: 7 }]);
    let a = c.process_batch(&ds, &ids(2)).await.unwrap();
    assert_eq!(a.documents[0].status, DocumentStatus::Unknown(7));
    sim.inject(vec![Injection::ExtraFields]);
    let a = c.process_batch(&ds, &ids(2)).await.unwrap();
    assert_eq!(a.documents.len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_error_that_never_shows_the_token() {
    let sim = sim_with(2).await;
    let c = client(&sim, "pat_WRONGSENTINEL", 50);
    let e = c
        .process_batch(&DatasetId::new(DS), &ids(2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "auth");
    for text in [e.to_string(), format!("{e:?}"), format!("{c:?}")] {
        assert!(!text.contains("WRONGSENTINEL"), "{text}");
    }
    assert_eq!(sim.stats().unauthorized, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_dataset_is_not_found() {
    let sim = sim_with(1).await;
    let c = client(&sim, sim.token(), 50);
    let e = c
        .process_batch(&DatasetId::new("7400000000000000999"), &ids(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "dataset_not_found");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_malformed_id_is_a_bad_request_naming_the_batch() {
    let sim = sim_with(1).await;
    let c = client(&sim, sim.token(), 50);
    let e = c
        .process_batch(&DatasetId::new(DS), &[DocumentId::new("abc")])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "bad_request");
    assert!(e.to_string().contains("starting at abc"), "{e}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_connection_refused_is_transient() {
    let sim = sim_with(1).await;
    let c = client(&sim, sim.token(), 50);
    sim.shutdown().await;
    let e = c
        .process_batch(&DatasetId::new(DS), &ids(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "transient", "{e}");
}

#[tokio::test]
async fn hostile_bodies_are_transient_errors_never_panics() {
    let sim = sim_with(2).await;
    let doc = |status: &str| {
        format!(
            r#"{{"code":0,"msg":"","data":{{"data":[{{"document_id":"1001","status":{status}}}]}}}}"#
        )
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        ("huge number", doc("1e999")),
        ("huge integer", doc("123456789012345678901234567890")),
        ("null status", doc("null")),
        ("string status", doc("\"done\"")),
        (
            "null code",
            r#"{"code":null,"data":{"data":[]}}"#.to_string(),
        ),
        (
            "code as string",
            r#"{"code":"0","data":{"data":[]}}"#.to_string(),
        ),
        (
            "data not an object",
            r#"{"code":0,"data":[1,2,3]}"#.to_string(),
        ),
        (
            "documents not a list",
            r#"{"code":0,"data":{"data":{"a":1}}}"#.to_string(),
        ),
        (
            "id as object",
            r#"{"code":0,"data":{"data":[{"document_id":{"x":1},"status":1}]}}"#.to_string(),
        ),
        ("deep nesting", deep),
        ("empty body", String::new()),
        (
            "invalid utf-8 escape",
            "{\"code\":0,\"msg\":\"\\ud800\"}".to_string(),
        ),
        ("top-level array", "[]".to_string()),
    ];
    for (what, body) in cases {
        let e = classify(&sim, Injection::Raw { http: 200, body }).await;
        assert_eq!(e.kind(), "transient", "{what}: {e}");
    }
    let e = classify(&sim, Injection::Oversize).await;
    assert_eq!(e.kind(), "transient", "over the size cap: {e}");
    assert!(e.to_string().contains("larger than"), "{e}");
    sim.shutdown().await;
}
