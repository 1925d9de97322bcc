//! Chat-bot formats of the webhook notifier: Feishu/Lark, DingTalk, WeCom and Slack.
//!
//! Pure functions: the message text (zh or en; never the document `url`), each service's body,
//! its signature (computed at send time from the current timestamp), and how to read its answer
//! (all four answer HTTP 200 even when they reject a message). The webhook notifier does the
//! sending and the throttle.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::Outcome;
use super::signature::hmac_sha256;
use super::{BatchBody, Body, EventBody};
use crate::config::{Language, WebhookFormat};
use crate::event::EventType;

/// WeCom's limit for a text message, in bytes.
pub const WECOM_MAX_BYTES: usize = 2048;
/// How many names a digest lists.
const DIGEST_NAMES: usize = 10;

/// The largest text each service takes (bytes), with room to spare.
fn max_bytes(format: WebhookFormat) -> usize {
    match format {
        WebhookFormat::Wecom => WECOM_MAX_BYTES,
        WebhookFormat::Dingtalk => 18_000,
        WebhookFormat::Feishu => 30_000,
        WebhookFormat::Slack => 35_000,
        WebhookFormat::Standard => usize::MAX,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

fn elapsed(secs: f64, lang: Language) -> String {
    let s = secs.max(0.0).round() as u64;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match lang {
        Language::Zh if h > 0 => format!("{h}小时{m}分{sec}秒"),
        Language::Zh if m > 0 => format!("{m}分{sec}秒"),
        Language::Zh => format!("{sec}秒"),
        Language::En if h > 0 => format!("{h}h {m}m {sec}s"),
        Language::En if m > 0 => format!("{m}m {sec}s"),
        Language::En => format!("{sec}s"),
    }
}

fn outcome_word(t: EventType, lang: Language) -> &'static str {
    match (t, lang) {
        (EventType::Completed, Language::Zh) => "✅ 文档处理完成",
        (EventType::Failed, Language::Zh) => "❌ 文档处理失败",
        (EventType::Stalled, Language::Zh) => "⚠️ 文档处理停滞",
        (EventType::Missing, Language::Zh) => "❓ 文档已不存在",
        (EventType::TimedOut, Language::Zh) => "⏱️ 文档处理超时",
        (EventType::Progress, Language::Zh) => "⏳ 文档处理中",
        (EventType::Completed, Language::En) => "✅ Document processed",
        (EventType::Failed, Language::En) => "❌ Document processing failed",
        (EventType::Stalled, Language::En) => "⚠️ Document processing stalled",
        (EventType::Missing, Language::En) => "❓ Document missing",
        (EventType::TimedOut, Language::En) => "⏱️ Document processing timed out",
        (EventType::Progress, Language::En) => "⏳ Document processing",
        (EventType::BatchCompleted, Language::Zh) => "📦 批次处理结束",
        (EventType::BatchCompleted, Language::En) => "📦 Batch done",
    }
}

/// The text of any event: a document's (see [`event_text`]) or a batch's summary.
pub fn body_text(body: &Body, lang: Language) -> String {
    match body {
        Body::Document(b) => event_text(b, lang),
        Body::Batch(b) => batch_text(b, lang),
    }
}

/// The most documents a batch message names one by one (the others are counted).
const BATCH_NAMES: usize = 10;

/// One message for a finished batch: counts by outcome, then the documents that did not
/// complete with their reasons (the first [`BATCH_NAMES`]). Never a `url`.
pub fn batch_text(body: &BatchBody, lang: Language) -> String {
    let d = &body.data;
    let c = &d.counts;
    let bad: Vec<String> = d
        .documents
        .iter()
        .filter(|x| x.state != "completed")
        .take(BATCH_NAMES)
        .map(|x| {
            let name = x.document_name.as_deref().unwrap_or(&x.document_id);
            match &x.reason {
                Some(r) => format!("{name} ({}): {}", x.state, truncate_utf8(r, 200)),
                None => format!("{name} ({})", x.state),
            }
        })
        .collect();
    let not_done = c.failed + c.missing + c.timed_out;
    let more = not_done.saturating_sub(bad.len());
    let mut lines = match lang {
        Language::Zh => vec![
            format!("{}：{}", outcome_word(body.event_type, lang), d.batch),
            format!(
                "完成 {}，失败 {}，不存在 {}，超时 {}（共 {} 个文档）",
                c.completed,
                c.failed,
                c.missing,
                c.timed_out,
                d.documents.len()
            ),
        ],
        Language::En => vec![
            format!("{}: {}", outcome_word(body.event_type, lang), d.batch),
            format!(
                "{} completed, {} failed, {} missing, {} timed out ({} documents)",
                c.completed,
                c.failed,
                c.missing,
                c.timed_out,
                d.documents.len()
            ),
        ],
    };
    lines.extend(bad);
    if more > 0 {
        lines.push(match lang {
            Language::Zh => format!("另有 {more} 个未完成"),
            Language::En => format!("and {more} more not completed"),
        });
    }
    lines.join("\n")
}

/// The text of one event: outcome, name, dataset, elapsed time, and the reason where there is
/// one. Never the `url`.
pub fn event_text(body: &EventBody, lang: Language) -> String {
    let d = &body.data;
    let name = d.document_name.as_deref().unwrap_or(&d.document_id);
    let reason = d
        .status_descript
        .as_deref()
        .or(d.reason.as_deref())
        .filter(|r| !r.is_empty());
    let test = if d.test {
        match lang {
            Language::Zh => "（测试消息）",
            Language::En => " (test message)",
        }
    } else {
        ""
    };
    let mut lines = vec![format!(
        "{}{test}: {name}",
        outcome_word(body.event_type, lang)
    )];
    match lang {
        Language::Zh => {
            lines.push(format!("知识库：{}", d.dataset_id));
            lines.push(format!("文档 ID：{}", d.document_id));
            if matches!(body.event_type, EventType::Stalled | EventType::Progress) {
                lines.push(format!("进度：{}%", d.progress.unwrap_or(0)));
            }
            if let Some(r) = reason {
                lines.push(format!("原因：{r}"));
            }
            lines.push(format!("耗时：{}", elapsed(d.elapsed_seconds, lang)));
        }
        Language::En => {
            lines.push(format!("Dataset: {}", d.dataset_id));
            lines.push(format!("Document ID: {}", d.document_id));
            if matches!(body.event_type, EventType::Stalled | EventType::Progress) {
                lines.push(format!("Progress: {}%", d.progress.unwrap_or(0)));
            }
            if let Some(r) = reason {
                lines.push(format!("Reason: {r}"));
            }
            lines.push(format!("Elapsed: {}", elapsed(d.elapsed_seconds, lang)));
        }
    }
    lines.join("\n")
}

/// One message for many events: counts by outcome and the first names.
pub fn digest_text(bodies: &[Body], lang: Language) -> String {
    let mut counts: BTreeMap<EventType, usize> = BTreeMap::new();
    for b in bodies {
        let t = match b {
            Body::Document(d) => d.event_type,
            Body::Batch(x) => x.event_type,
        };
        *counts.entry(t).or_default() += 1;
    }
    let names: Vec<&str> = bodies
        .iter()
        .take(DIGEST_NAMES)
        .map(|b| match b {
            Body::Document(b) => b
                .data
                .document_name
                .as_deref()
                .unwrap_or(&b.data.document_id),
            Body::Batch(x) => &x.data.batch,
        })
        .collect();
    let more = bodies.len().saturating_sub(names.len());
    let counted: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!("{}: {n}", outcome_word(*t, lang)))
        .collect();
    match lang {
        Language::Zh => {
            let mut s = format!(
                "📋 coze-watch 汇总：{} 个文档事件\n{}\n文档：{}",
                bodies.len(),
                counted.join("\n"),
                names.join("、")
            );
            if more > 0 {
                s.push_str(&format!(" 等另外 {more} 个"));
            }
            s
        }
        Language::En => {
            let mut s = format!(
                "📋 coze-watch digest: {} document events\n{}\nDocuments: {}",
                bodies.len(),
                counted.join("\n"),
                names.join(", ")
            );
            if more > 0 {
                s.push_str(&format!(" and {more} more"));
            }
            s
        }
    }
}

/// Feishu/Lark: base64(HMAC-SHA256 keyed by `timestamp + "\n" + secret`, over nothing).
pub fn feishu_sign(timestamp_secs: i64, secret: &str) -> String {
    let key = format!("{timestamp_secs}\n{secret}");
    STANDARD.encode(hmac_sha256(key.as_bytes(), &[]))
}

/// DingTalk: base64(HMAC-SHA256 keyed by `secret`, over `timestamp + "\n" + secret`), to be
/// URL-encoded into the query.
pub fn dingtalk_sign(timestamp_ms: i64, secret: &str) -> String {
    let msg = format!("{timestamp_ms}\n{secret}");
    STANDARD.encode(hmac_sha256(secret.as_bytes(), &[msg.as_bytes()]))
}

/// The request for one message: the URL to post to (DingTalk signs in the query) and the body.
pub fn request(
    format: WebhookFormat,
    url: &url::Url,
    text: &str,
    secret: Option<&str>,
    now_ms: i64,
) -> (url::Url, Value) {
    let text = truncate_utf8(text, max_bytes(format));
    let mut url = url.clone();
    let body = match format {
        WebhookFormat::Feishu => {
            let mut b = json!({"msg_type": "text", "content": {"text": text}});
            if let (Some(secret), Some(obj)) = (secret, b.as_object_mut()) {
                let ts = now_ms / 1000;
                obj.insert("timestamp".into(), Value::String(ts.to_string()));
                obj.insert("sign".into(), Value::String(feishu_sign(ts, secret)));
            }
            b
        }
        WebhookFormat::Dingtalk => {
            if let Some(secret) = secret {
                url.query_pairs_mut()
                    .append_pair("timestamp", &now_ms.to_string())
                    .append_pair("sign", &dingtalk_sign(now_ms, secret));
            }
            json!({"msgtype": "text", "text": {"content": text}})
        }
        WebhookFormat::Wecom => json!({"msgtype": "text", "text": {"content": text}}),
        WebhookFormat::Slack | WebhookFormat::Standard => json!({"text": text}),
    };
    (url, body)
}

/// Reads a chat service's answer to an HTTP 200: delivered, rate limited (retry), or rejected.
pub fn read_answer(format: WebhookFormat, body: &str) -> Outcome {
    let rejected = |code: String, msg: String| Outcome::Permanent {
        error: format!("rejected by the service: code {code}: {msg}"),
    };
    let limited = |code: i64, msg: &str| Outcome::Retry {
        error: format!("rate limited by the service: code {code}: {msg}"),
        retry_after: None,
    };
    if format == WebhookFormat::Slack {
        return if body.trim() == "ok" {
            Outcome::Delivered
        } else {
            rejected("-".into(), body.chars().take(200).collect())
        };
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Outcome::Retry {
            error: format!(
                "unreadable answer: {:?}",
                body.chars().take(200).collect::<String>()
            ),
            retry_after: None,
        };
    };
    let (code, msg, limit_code) = match format {
        WebhookFormat::Feishu => (
            v.get("code")
                .or_else(|| v.get("StatusCode"))
                .and_then(Value::as_i64),
            v.get("msg").or_else(|| v.get("StatusMessage")),
            11232,
        ),
        WebhookFormat::Dingtalk => (
            v.get("errcode").and_then(Value::as_i64),
            v.get("errmsg"),
            130_101,
        ),
        WebhookFormat::Wecom => (
            v.get("errcode").and_then(Value::as_i64),
            v.get("errmsg"),
            45009,
        ),
        WebhookFormat::Slack | WebhookFormat::Standard => (Some(0), None, -1),
    };
    let msg = msg.and_then(Value::as_str).unwrap_or("").to_string();
    match code {
        Some(0) => Outcome::Delivered,
        Some(c) if c == limit_code => limited(c, &msg),
        Some(c) => rejected(c.to_string(), msg),
        None => rejected("missing".into(), body.chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wall::UnixMs;

    fn body(t: EventType, name: &str) -> EventBody {
        let mut b = EventBody::test_event(UnixMs(1_796_064_000_000));
        b.event_type = t;
        b.data.test = false;
        b.data.document_name = Some(name.into());
        b.data.url = Some("https://sim.invalid/signed?x-signature=SECRETLINK".into());
        b.data.elapsed_seconds = 125.0;
        b
    }

    #[test]
    fn texts_name_the_outcome_document_dataset_reason_and_elapsed_but_never_the_url() {
        let mut b = body(EventType::Failed, "合同.pdf");
        b.data.status_descript = Some("OCR failed".into());
        let zh = event_text(&b, Language::Zh);
        assert!(zh.contains("文档处理失败"), "{zh}");
        assert!(
            zh.contains("合同.pdf") && zh.contains("知识库：0") && zh.contains("原因：OCR failed")
        );
        assert!(zh.contains("耗时：2分5秒"), "{zh}");
        let en = event_text(&b, Language::En);
        assert!(
            en.contains("Document processing failed: 合同.pdf") && en.contains("Elapsed: 2m 5s"),
            "{en}"
        );
        for t in [zh, en] {
            assert!(
                !t.contains("SECRETLINK") && !t.contains("sim.invalid"),
                "{t}"
            );
        }
    }

    #[test]
    fn truncation_keeps_utf8_and_the_limit() {
        let long = "文".repeat(1000); // 3000 bytes
        let cut = truncate_utf8(&long, WECOM_MAX_BYTES);
        assert!(cut.len() <= WECOM_MAX_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(std::str::from_utf8(cut.as_bytes()).is_ok());
        assert_eq!(truncate_utf8("short", 10), "short");
    }

    #[test]
    fn answers_need_the_services_own_success_code() {
        assert_eq!(
            read_answer(WebhookFormat::Feishu, r#"{"code":0,"msg":"success"}"#),
            Outcome::Delivered
        );
        assert_eq!(
            read_answer(WebhookFormat::Feishu, r#"{"StatusCode":0}"#),
            Outcome::Delivered
        );
        assert!(matches!(
            read_answer(
                WebhookFormat::Feishu,
                r#"{"code":19021,"msg":"sign match fail"}"#
            ),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            read_answer(
                WebhookFormat::Feishu,
                r#"{"code":11232,"msg":"frequency limited"}"#
            ),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            read_answer(WebhookFormat::Dingtalk, r#"{"errcode":0,"errmsg":"ok"}"#),
            Outcome::Delivered
        );
        assert!(matches!(
            read_answer(
                WebhookFormat::Dingtalk,
                r#"{"errcode":130101,"errmsg":"send too fast"}"#
            ),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            read_answer(
                WebhookFormat::Dingtalk,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#
            ),
            Outcome::Permanent { .. }
        ));
        assert_eq!(
            read_answer(WebhookFormat::Wecom, r#"{"errcode":0,"errmsg":"ok"}"#),
            Outcome::Delivered
        );
        assert!(matches!(
            read_answer(
                WebhookFormat::Wecom,
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#
            ),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            read_answer(
                WebhookFormat::Wecom,
                r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#
            ),
            Outcome::Permanent { .. }
        ));
        assert_eq!(read_answer(WebhookFormat::Slack, "ok"), Outcome::Delivered);
        assert!(matches!(
            read_answer(WebhookFormat::Slack, "invalid_token"),
            Outcome::Permanent { .. }
        ));
    }

    #[test]
    fn a_batch_is_one_summary_within_every_services_limit() {
        use crate::ids::{DatasetId, DocumentId};
        use crate::tracker::{DocState, Lifecycle};
        use crate::wall::UnixMs;
        let docs: Vec<DocState> = (0..1000)
            .map(|i| {
                let mut d = DocState::new(
                    DatasetId::new("7"),
                    DocumentId::new(format!("{i}")),
                    UnixMs(1_796_064_000_000),
                );
                d.info.name = Some(format!("{}-{i}.pdf", "long name ".repeat(20)));
                if i % 2 == 0 {
                    d.state = Lifecycle::Completed;
                } else {
                    d.state = Lifecycle::Failed;
                    d.info.status_descript = Some("reason ".repeat(100));
                }
                d.terminal_at = Some(UnixMs(1_796_064_100_000));
                d
            })
            .collect();
        let body = BatchBody::build(
            crate::event::EventId::for_batch("bat_x", 1),
            "nightly",
            &docs,
            &Default::default(),
            UnixMs(1_796_064_100_000),
        );
        assert_eq!(body.data.counts.completed, 500);
        assert_eq!(body.data.counts.failed, 500);
        let text = batch_text(&body, Language::En);
        assert!(text.starts_with("📦 Batch done: nightly\n500 completed, 500 failed, 0 missing, 0 timed out (1000 documents)"), "{text}");
        assert!(text.ends_with("and 490 more not completed"), "{text}");
        let url = url::Url::parse("https://chat.example/hook").unwrap();
        for format in [
            WebhookFormat::Feishu,
            WebhookFormat::Dingtalk,
            WebhookFormat::Wecom,
            WebhookFormat::Slack,
        ] {
            let (_, req) = request(format, &url, &text, None, 0);
            let sent = req.to_string();
            let shown = ["content", "text"]
                .iter()
                .find_map(|k| {
                    req[k]["text"]
                        .as_str()
                        .or(req[k]["content"].as_str())
                        .or(req[k].as_str())
                })
                .unwrap_or_default();
            assert!(
                shown.len() <= max_bytes(format),
                "{format:?}: {} bytes",
                shown.len()
            );
            assert!(
                sent.contains("500 completed, 500 failed"),
                "{format:?}: {sent}"
            );
        }
    }

    #[test]
    fn digest_counts_outcomes_and_lists_the_first_names() {
        let mut bodies: Vec<Body> = (0..30)
            .map(|i| Body::Document(body(EventType::Completed, &format!("d{i}.pdf"))))
            .collect();
        bodies.push(Body::Document(body(EventType::Failed, "bad.pdf")));
        let en = digest_text(&bodies, Language::En);
        assert!(en.contains("31 document events"), "{en}");
        assert!(
            en.contains("Document processed: 30") && en.contains("Document processing failed: 1"),
            "{en}"
        );
        assert!(
            en.contains("d0.pdf, d1.pdf") && en.contains("and 21 more"),
            "{en}"
        );
        assert!(digest_text(&bodies, Language::Zh).contains("31 个文档事件"));
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    /// Known answers computed outside this crate (Python's hmac module).
    #[test]
    fn feishu_and_dingtalk_signatures_match_known_answers() {
        assert_eq!(
            feishu_sign(1_700_000_000, "feishu-test-secret"),
            "e3MJ8Q5llVxGJ8pVkGPBhexDAgjvYqpjPP1GkY9XceI="
        );
        assert_eq!(
            dingtalk_sign(1_700_000_000_000, "SEC-dingtalk-test"),
            "8Csh22w7El+HZGIjWmUsa4KVCBt2ofWCeMiYCrnWBmg="
        );
        let url = url::Url::parse("https://oapi.dingtalk.com/robot/send?access_token=T").unwrap();
        let (signed, _) = request(
            WebhookFormat::Dingtalk,
            &url,
            "x",
            Some("SEC-dingtalk-test"),
            1_700_000_000_000,
        );
        assert_eq!(
            signed.query(),
            Some(
                "access_token=T&timestamp=1700000000000&sign=8Csh22w7El%2BHZGIjWmUsa4KVCBt2ofWCeMiYCrnWBmg%3D"
            )
        );
    }
}
