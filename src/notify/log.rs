//! The log notifier: one tracing line per event, with the data fields as structured fields.
//!
//! The event type and document id are literally on the line; untrusted strings (names,
//! failure reasons, labels) are string fields, which text lines quote and escape (so a
//! document name cannot forge log lines) and JSON lines write as JSON strings; `labels` is
//! recorded as JSON text, which JSON lines write as an object. The document `url` (a signed
//! download link) is never logged.

use super::{BatchBody, Body, EventBody};
use crate::event::EventType;

use super::{BoxFuture, Job, Notifier, Outcome};

pub struct LogNotifier {
    name: String,
}

impl LogNotifier {
    pub fn new(name: impl Into<String>) -> Self {
        LogNotifier { name: name.into() }
    }
}

impl Notifier for LogNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match &job.event {
                Body::Document(b) => emit(&self.name, b),
                Body::Batch(b) => emit_batch(&self.name, b),
            }
            Outcome::Delivered
        })
    }
}

fn emit(notifier: &str, body: &EventBody) {
    let d = &body.data;
    let ty = body.event_type.as_str();
    let labels = serde_json::to_string(&d.labels).unwrap_or_default();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "coze_watch::event",
                notifier,
                event = ty,
                event_id = %d.event_id,
                dataset_id = %d.dataset_id,
                document_id = %d.document_id,
                document_name = d.document_name.as_deref(),
                status = d.status,
                progress = d.progress,
                remaining_time = d.remaining_time,
                status_descript = d.status_descript.as_deref(),
                file_type = d.file_type.as_deref(),
                size = d.size,
                previous_status = d.previous_status,
                previous_progress = d.previous_progress,
                reason = d.reason.as_deref(),
                elapsed_seconds = d.elapsed_seconds,
                labels = labels.as_str(),
                "{ty} {} {:?} in dataset {}{}",
                d.document_id,
                d.document_name.as_deref().unwrap_or(""),
                d.dataset_id,
                detail(body),
            )
        };
    }
    match body.event_type {
        EventType::Completed | EventType::Progress => line!(info),
        _ => line!(warn),
    }
}

/// One line for a finished batch: info when every document completed, warn otherwise.
fn emit_batch(notifier: &str, body: &BatchBody) {
    let d = &body.data;
    let c = &d.counts;
    let labels = serde_json::to_string(&d.labels).unwrap_or_default();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "coze_watch::event",
                notifier,
                event = "batch.completed",
                event_id = %d.event_id,
                batch = d.batch.as_str(),
                batch_id = d.batch_id.as_str(),
                documents = d.documents.len(),
                completed = c.completed,
                failed = c.failed,
                missing = c.missing,
                timed_out = c.timed_out,
                labels = labels.as_str(),
                "batch.completed {:?}: {} completed, {} failed, {} missing, {} timed out",
                d.batch, c.completed, c.failed, c.missing, c.timed_out,
            )
        };
    }
    if c.completed == d.documents.len() {
        line!(info)
    } else {
        line!(warn)
    }
}

/// A short human tail for the message: the reason a reader wants first.
fn detail(body: &EventBody) -> String {
    let d = &body.data;
    match body.event_type {
        EventType::Failed => format!(": {:?}", d.status_descript.as_deref().unwrap_or("")),
        EventType::Missing | EventType::TimedOut => {
            format!(": {}", d.reason.as_deref().unwrap_or("unknown"))
        }
        EventType::Progress | EventType::Stalled => {
            format!(" at {}%", d.progress.unwrap_or(0))
        }
        EventType::Completed => format!(" after {:.1}s", d.elapsed_seconds),
        EventType::BatchCompleted => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ids::{DatasetId, DocumentId};
    use crate::tracker::{DocState, EventDraft};
    use crate::wall::UnixMs;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The text line `emit` writes for a document named `name`.
    fn text_line(name: &str) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        let mut doc = DocState::new(DatasetId::new("7"), DocumentId::new("42"), UnixMs(0));
        doc.info.name = Some(name.to_string());
        let draft = EventDraft {
            event_type: EventType::Completed,
            previous_status: None,
            previous_progress: None,
            reason: None,
            occurrence: 1,
        };
        let body = EventBody::build(
            crate::event::EventId::derive("7", "42", EventType::Completed, 1),
            &doc,
            &draft,
            &Default::default(),
            UnixMs(1000),
        );
        tracing::subscriber::with_default(subscriber, || emit("journal", &body));
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_untrusted_name_cannot_forge_a_text_log_line() {
        let text = text_line("a.pdf\nINFO forged line \"quoted\"");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#"document_name="a.pdf\nINFO forged line \"quoted\"""#),
            "{text}"
        );
    }
}
