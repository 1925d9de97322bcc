//! Chat formats against local fakes of Feishu, DingTalk, WeCom and Slack on 127.0.0.1. The
//! fakes check each body's shape and recompute each signature with the test's own HMAC.
//! Retry and digest timing run the daemon in-process on virtual time.

mod helper;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coze_watch::sim::Outcome;
use helper::daemon::{Daemon, FAST_POLL, Workdir, watch};
use helper::engine::InProcess;
use helper::receiver::{Received, Receiver, Reply, hmac_sha256};
use helper::{doc, scenario, start_sim, wait_until};

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";
const SECS: fn(u64) -> Duration = Duration::from_secs;
const FEISHU_SECRET: &str = "feishu-test-secret";
const DINGTALK_SECRET: &str = "SEC-dingtalk-test";

/// Feishu's documented algorithm: HMAC-SHA256 keyed by "timestamp\nsecret" over nothing.
fn feishu_sign(ts: &str, secret: &str) -> String {
    STANDARD.encode(hmac_sha256(format!("{ts}\n{secret}").as_bytes(), b""))
}

/// DingTalk's documented algorithm: HMAC-SHA256 keyed by the secret over "timestamp\nsecret".
fn dingtalk_sign(ts: &str, secret: &str) -> String {
    STANDARD.encode(hmac_sha256(
        secret.as_bytes(),
        format!("{ts}\n{secret}").as_bytes(),
    ))
}

fn query_param(r: &Received, name: &str) -> String {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[test]
fn the_tests_own_signatures_match_known_answers() {
    assert_eq!(
        feishu_sign("1700000000", FEISHU_SECRET),
        "e3MJ8Q5llVxGJ8pVkGPBhexDAgjvYqpjPP1GkY9XceI="
    );
    assert_eq!(
        dingtalk_sign("1700000000000", DINGTALK_SECRET),
        "8Csh22w7El+HZGIjWmUsa4KVCBt2ofWCeMiYCrnWBmg="
    );
}

fn chat(name: &str, format: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    type: webhook\n    format: {format}\n    url: {url}\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_gets_its_own_body_and_signature() {
    let mut failed = doc(B, 1, Outcome::Failed);
    failed.name = Some("合同.pdf".into());
    let sim = start_sim(scenario(vec![(DS, vec![failed])])).await;
    let feishu =
        Receiver::start(vec![Reply::Body(r#"{"code":0,"msg":"success","data":{}}"#)]).await;
    let dingtalk = Receiver::start(vec![Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#)]).await;
    let wecom = Receiver::start(vec![Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#)]).await;
    let slack = Receiver::start(vec![Reply::Body("ok")]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}{}{}{}{}",
        chat(
            "fs",
            "feishu",
            &feishu.url("/open-apis/bot/v2/hook/KEY"),
            &format!("    secret: {FEISHU_SECRET}\n")
        ),
        chat(
            "dt",
            "dingtalk",
            &dingtalk.url("/robot/send?access_token=TOKEN"),
            &format!("    secret: {DINGTALK_SECRET}\n")
        ),
        chat("wc", "wecom", &wecom.url("/cgi-bin/webhook/send?key=K"), ""),
        chat("sl", "slack", &slack.url("/services/T/B/X"), ""),
        watch(DS, &[B])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    wait_until("all four services", SECS(15), || {
        [&feishu, &dingtalk, &wecom, &slack]
            .iter()
            .all(|r| !r.requests().is_empty())
    })
    .await;

    let f = &feishu.requests()[0];
    let body = f.json();
    assert_eq!(body["msg_type"], "text");
    let text = body["content"]["text"].as_str().unwrap();
    assert!(
        text.contains("文档处理失败") && text.contains("合同.pdf"),
        "{text}"
    );
    assert!(text.contains("原因：parse error: encrypted pdf"), "{text}");
    assert!(!text.contains("sim.invalid"), "never the url: {text}");
    let ts = body["timestamp"].as_str().unwrap();
    assert_eq!(
        body["sign"].as_str().unwrap(),
        feishu_sign(ts, FEISHU_SECRET)
    );
    let age = coze_watch::wall::UnixMs::now().0 / 1000 - ts.parse::<i64>().unwrap();
    assert!(
        (0..=5).contains(&age),
        "signed at send time, in seconds: {age}"
    );

    let g = &dingtalk.requests()[0];
    assert_eq!(g.json()["msgtype"], "text");
    assert!(
        g.json()["text"]["content"]
            .as_str()
            .unwrap()
            .contains("合同.pdf")
    );
    assert_eq!(query_param(g, "access_token"), "TOKEN");
    let ts = query_param(g, "timestamp");
    assert_eq!(ts.len(), 13, "milliseconds");
    assert_eq!(query_param(g, "sign"), dingtalk_sign(&ts, DINGTALK_SECRET));

    let w = &wecom.requests()[0];
    assert_eq!(w.json()["msgtype"], "text");
    assert!(
        w.json()["text"]["content"]
            .as_str()
            .unwrap()
            .contains("文档处理失败")
    );
    assert_eq!(query_param(w, "key"), "K");

    let s = &slack.requests()[0];
    let text = s.json()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("Document processing failed: 合同.pdf"),
        "slack is English: {text}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.count("delivery is dead"), 0, "{}", d.lines().join("\n"));
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_in_the_body_is_not_delivered() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let feishu = Receiver::start(vec![Reply::Body(r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#)]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}{}",
        chat(
            "fs",
            "feishu",
            &feishu.url("/hook"),
            &format!("    secret: {FEISHU_SECRET}\n")
        ),
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    d.wait_for("delivery is dead", SECS(15)).await;
    let dead = d
        .lines()
        .into_iter()
        .find(|l| l.contains("delivery is dead"))
        .unwrap();
    assert!(
        dead.contains("sign match fail"),
        "the service's own message is logged: {dead}"
    );
    d.stop().await;
    let store = coze_watch::store::Store::open_read_only(&work.state_dir()).unwrap();
    let delivered = store.deliveries("delivered", 100).unwrap();
    assert!(
        delivered.iter().all(|r| r.notifier != "fs"),
        "{delivered:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_answer_is_retried() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let dt = Receiver::start(vec![
        Reply::Body(r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#),
        Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#),
    ])
    .await;
    let rest = format!(
        "{}{}",
        chat(
            "dt",
            "dingtalk",
            &dt.url("/robot/send?access_token=T"),
            "    retry: {initial: 1s, max: 1s, multiplier: 1}\n"
        ),
        watch(DS, &[A])
    );
    let d = InProcess::start(&sim, FAST_POLL, &rest).await;
    d.until("the retry", SECS(15), |_| dt.requests().len() >= 2)
        .await;
    d.advance(SECS(60)).await;
    let reqs = dt.requests();
    assert_eq!(reqs.len(), 2);
    // The dispatcher's own backoff (retry.initial 1 s) between the two.
    let gap = reqs[1].at - reqs[0].at;
    assert!((SECS(1)..SECS(2)).contains(&gap), "{gap:?}");
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wecom_message_is_cut_to_2048_bytes_of_valid_utf8() {
    let mut long = doc(A, 1, Outcome::Failed);
    long.reason = Some("解析失败".repeat(400));
    let sim = start_sim(scenario(vec![(DS, vec![long])])).await;
    let wecom = Receiver::start(vec![Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#)]).await;
    let work = Workdir::new();
    let rest = format!(
        "{}{}",
        chat("wc", "wecom", &wecom.url("/send?key=K"), ""),
        watch(DS, &[A])
    );
    work.write_config(&sim.base_url(), FAST_POLL, &rest);
    let mut d = Daemon::start(&work);
    wait_until("the message", SECS(15), || !wecom.requests().is_empty()).await;
    let content = wecom.requests()[0].json()["text"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(content.len() <= 2048, "{} bytes", content.len());
    assert!(
        content.len() > 2000,
        "cut close to the limit: {}",
        content.len()
    );
    assert!(content.ends_with('…'));
    d.stop().await;
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_backlog_of_100_events_goes_out_as_one_digest_each_delivered_once() {
    let docs: Vec<_> = (1..=100)
        .map(|i| {
            doc(
                &format!("{}", 7_500_000_000_000_000_000u64 + i),
                1,
                Outcome::Completed,
            )
        })
        .collect();
    let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let sim = start_sim(scenario(vec![(DS, docs)])).await;
    let slack =
        Receiver::start_with_default("127.0.0.1:0".parse().unwrap(), vec![], Reply::Body("ok"))
            .await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rest = format!(
        "{}{}",
        chat(
            "sl",
            "slack",
            &slack.url("/hook"),
            "    max_per_minute: 5\n"
        ),
        watch(DS, &id_refs)
    );
    let d = InProcess::start(&sim, FAST_POLL, &rest).await;
    d.until("the digest", SECS(30), |_| !slack.requests().is_empty())
        .await;
    d.advance(SECS(120)).await;
    let reqs = slack.requests();
    assert_eq!(reqs.len(), 1, "one digest, not 100 messages");
    let text = reqs[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("100 document events"), "{text}");
    assert!(text.contains("Document processed: 100"), "{text}");
    assert!(text.contains("and 90 more"), "{text}");
    let work = d.stop().await;
    let store = coze_watch::store::Store::open_read_only(&work.state_dir()).unwrap();
    let delivered: Vec<_> = store
        .deliveries("delivered", 1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.notifier == "sl")
        .collect();
    assert_eq!(delivered.len(), 100);
    let mut event_ids: Vec<&str> = delivered.iter().map(|r| r.event_id.as_str()).collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 100, "each event once");
    assert!(store.deliveries("pending", 10).unwrap().is_empty());
    sim.shutdown().await;
}
