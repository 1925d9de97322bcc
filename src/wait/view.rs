//! `wait`'s display: progress bars on a terminal, one plain line per change elsewhere, or
//! nothing; and the words for a document's state. It only renders; `wait` decides.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Display;
use crate::ids::DocumentId;
use crate::tracker::{DocState, Lifecycle, Step};

/// The progress display: bars on a terminal, lines elsewhere, or nothing.
pub(super) struct View {
    display: Display,
    multi: Option<MultiProgress>,
    bars: BTreeMap<DocumentId, ProgressBar>,
}

impl View {
    pub(super) fn new(display: Display, docs: &BTreeMap<DocumentId, DocState>) -> Self {
        let mut view = View {
            display,
            multi: None,
            bars: BTreeMap::new(),
        };
        if display == Display::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix:30!} [{bar:30}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            for id in docs.keys() {
                let bar = multi.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(id.to_string());
                bar.set_message("waiting for the first answer");
                view.bars.insert(id.clone(), bar);
            }
            view.multi = Some(multi);
        }
        view
    }

    pub(super) fn update(&mut self, step: &Step) {
        let d = &step.state;
        match self.display {
            Display::Quiet => {}
            Display::Lines => {
                if step.changed || !step.events.is_empty() {
                    eprintln!("{}", line(d));
                }
            }
            Display::Bars => {
                let Some(bar) = self.bars.get(&d.document_id) else {
                    return;
                };
                if let Some(name) = &d.info.name {
                    bar.set_prefix(name.escape_debug().to_string());
                }
                bar.set_position(d.progress.unwrap_or(0).clamp(0, 100) as u64);
                match d.state {
                    Lifecycle::Watching => bar.set_message(eta(d)),
                    Lifecycle::Completed => bar.finish_with_message(format!(
                        "done in {}",
                        secs(
                            d.terminal_at
                                .unwrap_or(d.watched_since)
                                .since(d.watched_since)
                        )
                    )),
                    _ => bar.abandon_with_message(outcome(d)),
                }
            }
        }
    }

    pub(super) fn note(&self, text: &str) {
        match (&self.display, &self.multi) {
            (Display::Quiet, _) => {}
            (Display::Bars, Some(m)) => {
                let _ = m.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    pub(super) fn finish(&mut self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        let _ = std::io::stderr().flush();
    }
}

pub(super) fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(if d.is_zero() {
        0
    } else {
        1
    })))
    .to_string()
}

fn eta(d: &DocState) -> String {
    match d.remaining_time {
        Some(r) if r > 0 => format!("ETA {}", secs(Duration::from_secs(r.unsigned_abs()))),
        _ if d.stalled => "stalled".to_string(),
        _ => "processing".to_string(),
    }
}

fn outcome(d: &DocState) -> String {
    match d.state {
        Lifecycle::Failed => format!(
            "failed: {}",
            d.info
                .status_descript
                .as_deref()
                .unwrap_or("no reason given")
                .escape_debug()
        ),
        Lifecycle::Missing => format!("missing ({})", d.reason.as_deref().unwrap_or("absent")),
        Lifecycle::TimedOut => format!("timed out ({})", d.reason.as_deref().unwrap_or("")),
        Lifecycle::Completed => "completed".to_string(),
        Lifecycle::Watching => eta(d),
    }
}

/// One plain line about a document, for logs and pipes.
pub(super) fn line(d: &DocState) -> String {
    let name = d
        .info
        .name
        .as_deref()
        .map(|n| format!(" {:?}", n))
        .unwrap_or_default();
    let what = match d.state {
        Lifecycle::Watching => format!("processing {}% ({})", d.progress.unwrap_or(0), eta(d)),
        Lifecycle::Completed => format!(
            "completed in {}",
            secs(
                d.terminal_at
                    .unwrap_or(d.watched_since)
                    .since(d.watched_since)
            )
        ),
        _ => outcome(d),
    };
    format!("{}{name}: {what}", d.document_id)
}
