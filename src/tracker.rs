//! The document state machine of SPEC section 5: (old state, observation, now) -> (new state,
//! events).
//!
//! Pure: no I/O, no clock, no randomness. The poller feeds it what an answer said about one
//! document; the store persists what it returns, events included, in one transaction. It must
//! never emit an event for a document that is already terminal, so a terminal document fires
//! exactly once whatever is replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::PollConfig;
use crate::coze::{DocumentProgress, DocumentStatus};
use crate::event::EventType;
use crate::ids::{DatasetId, DocumentId};
use crate::wall::UnixMs;

/// Where a document is in its life. Everything but `Watching` is terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    Watching,
    Completed,
    Failed,
    Missing,
    TimedOut,
}

impl Lifecycle {
    pub fn is_terminal(self) -> bool {
        self != Lifecycle::Watching
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Watching => "watching",
            Lifecycle::Completed => "completed",
            Lifecycle::Failed => "failed",
            Lifecycle::Missing => "missing",
            Lifecycle::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "watching" => Lifecycle::Watching,
            "completed" => Lifecycle::Completed,
            "failed" => Lifecycle::Failed,
            "missing" => Lifecycle::Missing,
            "timed_out" => Lifecycle::TimedOut,
            _ => return None,
        })
    }
}

/// Why a document went missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingReason {
    /// Status 3 (self-hosted Coze Studio).
    Deleted,
    /// Left out of answers (how a deletion looks on the SaaS).
    Absent,
    /// The dataset itself is gone (code 4200).
    DatasetNotFound,
    /// The API refuses the id as malformed (code 4000 on the id alone).
    Rejected,
}

impl MissingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::Deleted => "deleted",
            MissingReason::Absent => "absent",
            MissingReason::DatasetNotFound => "dataset_not_found",
            MissingReason::Rejected => "rejected",
        }
    }
}

/// What the API last said about the document, beyond its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocInfo {
    pub name: Option<String>,
    pub file_type: Option<String>,
    pub size: Option<i64>,
    pub url: Option<String>,
    pub update_type: Option<i64>,
    pub update_interval: Option<i64>,
    pub status_descript: Option<String>,
}

/// Everything coze-watch knows about one watched document. Not serializable: the store keeps
/// its own row type (`store::documents::Row`), so a field added here never breaks an old row.
#[derive(Clone, Debug, PartialEq)]
pub struct DocState {
    pub dataset_id: DatasetId,
    pub document_id: DocumentId,
    pub state: Lifecycle,
    /// A flag on `Watching`: no progress change for `stall_after`.
    pub stalled: bool,
    /// When coze-watch first started watching it.
    pub watched_since: UnixMs,
    /// The last change of status or progress (the stall clock).
    pub last_change: UnixMs,
    pub last_seen: Option<UnixMs>,
    /// Last status seen (open: unknown values are kept).
    pub status: Option<DocumentStatus>,
    pub progress: Option<i64>,
    pub remaining_time: Option<i64>,
    /// Progress at the last `document.progress` event (or at first sight).
    pub progress_reported: Option<i64>,
    pub info: DocInfo,
    /// Successful answers in a row that left it out.
    pub absent_count: u32,
    pub absent_since: Option<UnixMs>,
    /// An unknown status already warned about, so it is logged once.
    pub unknown_status_warned: Option<i64>,
    /// Why it is missing or timed out.
    pub reason: Option<String>,
    pub terminal_at: Option<UnixMs>,
    /// How many events of each type fired for it so far: the occurrence number that derives
    /// an event's id.
    pub fired: BTreeMap<EventType, u32>,
}

impl DocState {
    pub fn new(dataset_id: DatasetId, document_id: DocumentId, now: UnixMs) -> Self {
        DocState {
            dataset_id,
            document_id,
            state: Lifecycle::Watching,
            stalled: false,
            watched_since: now,
            last_change: now,
            last_seen: None,
            status: None,
            progress: None,
            remaining_time: None,
            progress_reported: None,
            info: DocInfo::default(),
            absent_count: 0,
            absent_since: None,
            unknown_status_warned: None,
            reason: None,
            terminal_at: None,
            fired: BTreeMap::new(),
        }
    }

    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Live, last seen processing, and in the last answer: a document whose `remaining_time`
    /// may guide the schedule. The daemon and `wait` both decide by this.
    pub fn is_processing(&self) -> bool {
        self.is_live() && self.status == Some(DocumentStatus::Processing) && self.absent_count == 0
    }
}

/// What one answer said about one document.
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    Seen(&'a DocumentProgress),
    /// Left out of a successful answer. `confirming`: the answer was to a request that asked
    /// for absent ids alone.
    Absent {
        confirming: bool,
    },
    /// The dataset is not found (4200): counts as absent, with its own reason.
    DatasetNotFound {
        confirming: bool,
    },
    /// The API refused this id alone as malformed (4000).
    Rejected,
}

/// The thresholds the tracker judges by.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackerPolicy {
    pub stall_after: Duration,
    pub give_up_after: Duration,
    pub missing_after: u32,
    pub missing_grace: Duration,
    pub progress_step: u8,
}

impl From<&PollConfig> for TrackerPolicy {
    fn from(p: &PollConfig) -> Self {
        TrackerPolicy {
            stall_after: p.stall_after,
            give_up_after: p.give_up_after,
            missing_after: p.missing_after,
            missing_grace: p.missing_grace,
            progress_step: p.progress_step,
        }
    }
}

/// An event the transition fires; the body is built from it and the new state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDraft {
    pub event_type: EventType,
    pub previous_status: Option<DocumentStatus>,
    pub previous_progress: Option<i64>,
    pub reason: Option<String>,
    /// 1 for the first event of this type for this document, 2 for the second...
    pub occurrence: u32,
}

/// The outcome of one observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub state: DocState,
    pub events: Vec<EventDraft>,
    /// All conditions for `missing` hold but one: ask for the absent ids alone, once more.
    pub needs_confirmation: bool,
    /// Status or progress changed (resets the schedule's growth).
    pub changed: bool,
    /// An unknown status seen for the first time: log it once.
    pub new_unknown_status: Option<i64>,
}

impl Step {
    /// Fires one event for the document, counting its occurrence.
    fn fire(
        &mut self,
        event_type: EventType,
        previous_status: Option<DocumentStatus>,
        previous_progress: Option<i64>,
        reason: Option<String>,
    ) {
        let count = self.state.fired.entry(event_type).or_insert(0);
        *count = count.saturating_add(1);
        self.events.push(EventDraft {
            event_type,
            previous_status,
            previous_progress,
            reason,
            occurrence: *count,
        });
    }
}

/// Applies one observation at `now`. A terminal document is returned unchanged.
pub fn observe(old: &DocState, obs: Observation<'_>, now: UnixMs, policy: &TrackerPolicy) -> Step {
    let mut step = Step {
        state: old.clone(),
        events: Vec::new(),
        needs_confirmation: false,
        changed: false,
        new_unknown_status: None,
    };
    if old.state.is_terminal() {
        return step;
    }
    match obs {
        Observation::Seen(p) => seen(&mut step, p, now, policy),
        Observation::Absent { confirming } => {
            absent(&mut step, MissingReason::Absent, confirming, now, policy)
        }
        Observation::DatasetNotFound { confirming } => absent(
            &mut step,
            MissingReason::DatasetNotFound,
            confirming,
            now,
            policy,
        ),
        Observation::Rejected => finish(
            &mut step,
            Lifecycle::Missing,
            Some(MissingReason::Rejected.as_str().into()),
            now,
        ),
    }
    step
}

fn seen(step: &mut Step, p: &DocumentProgress, now: UnixMs, policy: &TrackerPolicy) {
    let doc = &mut step.state;
    let (prev_status, prev_progress) = (doc.status, doc.progress);
    doc.absent_count = 0;
    doc.absent_since = None;
    doc.last_seen = Some(now);
    update_info(&mut doc.info, p);
    doc.status = Some(p.status);
    doc.progress = p.progress.or(doc.progress);
    doc.remaining_time = p.remaining_time;
    step.changed = prev_status != doc.status || prev_progress != doc.progress;
    if step.changed {
        doc.last_change = now;
        doc.stalled = false;
    }
    match p.status {
        DocumentStatus::Completed => finish_with(
            step,
            Lifecycle::Completed,
            None,
            prev_status,
            prev_progress,
            now,
        ),
        DocumentStatus::Failed => finish_with(
            step,
            Lifecycle::Failed,
            None,
            prev_status,
            prev_progress,
            now,
        ),
        DocumentStatus::Deleted => finish_with(
            step,
            Lifecycle::Missing,
            Some(MissingReason::Deleted.as_str().into()),
            prev_status,
            prev_progress,
            now,
        ),
        DocumentStatus::Unknown(n) => {
            if doc.unknown_status_warned != Some(n) {
                doc.unknown_status_warned = Some(n);
                step.new_unknown_status = Some(n);
            }
        }
        DocumentStatus::Processing => processing(step, prev_status, prev_progress, now, policy),
    }
}

fn update_info(info: &mut DocInfo, p: &DocumentProgress) {
    let keep = |new: &Option<String>, old: &mut Option<String>| {
        if new.is_some() {
            old.clone_from(new);
        }
    };
    keep(&p.document_name, &mut info.name);
    keep(&p.file_type, &mut info.file_type);
    keep(&p.url, &mut info.url);
    info.size = p.size.or(info.size);
    info.update_type = p.update_type.or(info.update_type);
    info.update_interval = p.update_interval.or(info.update_interval);
    // Only a failed answer carries a reason; never keep a stale one.
    info.status_descript = p.status_descript.clone().filter(|s| !s.is_empty());
}

fn processing(
    step: &mut Step,
    prev_status: Option<DocumentStatus>,
    prev_progress: Option<i64>,
    now: UnixMs,
    policy: &TrackerPolicy,
) {
    let (progress, reported) = (step.state.progress, step.state.progress_reported);
    if let Some(progress) = progress {
        match reported {
            None => step.state.progress_reported = Some(progress),
            Some(base) if progress >= base + i64::from(policy.progress_step) => {
                step.state.progress_reported = Some(progress);
                step.fire(EventType::Progress, prev_status, prev_progress, None);
            }
            // Backwards or a small step: tolerated, nothing to say.
            Some(_) => {}
        }
    }
    if now.since(step.state.watched_since) >= policy.give_up_after {
        let reason = format!(
            "not terminal after {}",
            humantime::format_duration(policy.give_up_after)
        );
        finish_with(
            step,
            Lifecycle::TimedOut,
            Some(reason),
            prev_status,
            prev_progress,
            now,
        );
        return;
    }
    if !step.state.stalled && now.since(step.state.last_change) >= policy.stall_after {
        step.state.stalled = true;
        step.fire(EventType::Stalled, prev_status, prev_progress, None);
    }
}

fn absent(
    step: &mut Step,
    reason: MissingReason,
    confirming: bool,
    now: UnixMs,
    policy: &TrackerPolicy,
) {
    let doc = &mut step.state;
    doc.absent_count = doc.absent_count.saturating_add(1);
    let since = *doc.absent_since.get_or_insert(now);
    let enough =
        doc.absent_count >= policy.missing_after && now.since(since) >= policy.missing_grace;
    if !enough {
        return;
    }
    if confirming {
        finish(step, Lifecycle::Missing, Some(reason.as_str().into()), now);
    } else {
        step.needs_confirmation = true;
    }
}

fn finish(step: &mut Step, to: Lifecycle, reason: Option<String>, now: UnixMs) {
    let (s, p) = (step.state.status, step.state.progress);
    finish_with(step, to, reason, s, p, now);
}

fn finish_with(
    step: &mut Step,
    to: Lifecycle,
    reason: Option<String>,
    previous_status: Option<DocumentStatus>,
    previous_progress: Option<i64>,
    now: UnixMs,
) {
    let event_type = match to {
        Lifecycle::Completed => EventType::Completed,
        Lifecycle::Failed => EventType::Failed,
        Lifecycle::Missing => EventType::Missing,
        Lifecycle::TimedOut => EventType::TimedOut,
        Lifecycle::Watching => return,
    };
    let doc = &mut step.state;
    doc.state = to;
    doc.stalled = false;
    doc.reason.clone_from(&reason);
    doc.terminal_at = Some(now);
    step.changed = true;
    step.fire(event_type, previous_status, previous_progress, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn policy() -> TrackerPolicy {
        TrackerPolicy {
            stall_after: Duration::from_secs(30 * 60),
            give_up_after: Duration::from_secs(24 * 3600),
            missing_after: 3,
            missing_grace: Duration::from_secs(600),
            progress_step: 10,
        }
    }

    fn doc() -> DocState {
        DocState::new(DatasetId::new("1"), DocumentId::new("2"), UnixMs(0))
    }

    fn answer(status: i64, progress: i64) -> DocumentProgress {
        DocumentProgress {
            document_id: DocumentId::new("2"),
            document_name: Some("a.pdf".into()),
            status: DocumentStatus::from(status),
            progress: Some(progress),
            remaining_time: Some(30),
            status_descript: (status == 9).then(|| "bad pdf".to_string()),
            url: None,
            size: Some(10),
            file_type: Some("pdf".into()),
            update_type: Some(0),
            update_interval: Some(0),
        }
    }

    fn see(d: &DocState, status: i64, progress: i64, at_min: i64) -> Step {
        observe(
            d,
            Observation::Seen(&answer(status, progress)),
            UnixMs(at_min * MIN),
            &policy(),
        )
    }

    fn types(s: &Step) -> Vec<EventType> {
        s.events.iter().map(|e| e.event_type).collect()
    }

    #[test]
    fn completion_fires_once_with_previous_values() {
        let s1 = see(&doc(), 0, 40, 1);
        assert!(s1.events.is_empty());
        let s2 = see(&s1.state, 1, 100, 2);
        assert_eq!(types(&s2), [EventType::Completed]);
        assert_eq!(
            s2.events[0].previous_status,
            Some(DocumentStatus::Processing)
        );
        assert_eq!(s2.events[0].previous_progress, Some(40));
        assert_eq!(s2.state.state, Lifecycle::Completed);
        let s3 = see(&s2.state, 1, 100, 3);
        assert!(
            s3.events.is_empty(),
            "a terminal document never fires again"
        );
        assert_eq!(s3.state, s2.state);
    }

    #[test]
    fn failure_keeps_the_reason() {
        let s = see(&see(&doc(), 0, 10, 1).state, 9, 30, 2);
        assert_eq!(types(&s), [EventType::Failed]);
        assert_eq!(s.state.info.status_descript.as_deref(), Some("bad pdf"));
    }

    #[test]
    fn terminal_at_first_sight_fires_once_with_null_previous() {
        let s = see(&doc(), 1, 100, 1);
        assert_eq!(types(&s), [EventType::Completed]);
        assert_eq!(s.events[0].previous_status, None);
        assert_eq!(s.events[0].previous_progress, None);
    }

    #[test]
    fn status_3_is_missing_deleted() {
        let s = see(&doc(), 3, 0, 1);
        assert_eq!(types(&s), [EventType::Missing]);
        assert_eq!(s.events[0].reason.as_deref(), Some("deleted"));
        assert_eq!(s.state.state, Lifecycle::Missing);
    }

    #[test]
    fn unknown_status_stays_watching_and_warns_once() {
        let s1 = see(&doc(), 7, 10, 1);
        assert_eq!(s1.state.state, Lifecycle::Watching);
        assert_eq!(s1.new_unknown_status, Some(7));
        let s2 = see(&s1.state, 7, 10, 2);
        assert_eq!(s2.new_unknown_status, None);
        assert!(s2.events.is_empty());
    }

    #[test]
    fn progress_events_by_step_and_backwards_is_tolerated() {
        let s = see(&doc(), 0, 5, 1);
        assert!(s.events.is_empty(), "first sight sets the baseline");
        let s = see(&s.state, 0, 14, 2);
        assert!(s.events.is_empty());
        let s = see(&s.state, 0, 15, 3);
        assert_eq!(types(&s), [EventType::Progress]);
        let s = see(&s.state, 0, 2, 4);
        assert!(s.events.is_empty(), "backwards: no event");
        assert!(s.changed);
        let s = see(&s.state, 0, 24, 5);
        assert!(
            s.events.is_empty(),
            "the baseline stays at the highest reported"
        );
        let s = see(&s.state, 0, 25, 6);
        assert_eq!(types(&s), [EventType::Progress]);
    }

    #[test]
    fn stall_fires_once_and_rearms_when_progress_moves() {
        let s = see(&doc(), 0, 40, 1);
        let s = see(&s.state, 0, 40, 30);
        assert!(
            s.events.is_empty(),
            "29 minutes without change is not a stall"
        );
        let s = see(&s.state, 0, 40, 31);
        assert_eq!(types(&s), [EventType::Stalled]);
        assert!(s.state.stalled);
        let s = see(&s.state, 0, 40, 90);
        assert!(s.events.is_empty(), "fired once per stall");
        let s = see(&s.state, 0, 41, 91);
        assert!(!s.state.stalled, "re-armed by progress");
        let s = see(&s.state, 0, 41, 121);
        assert_eq!(types(&s), [EventType::Stalled]);
    }

    #[test]
    fn no_stall_or_timeout_without_a_successful_answer_showing_processing() {
        // An outage: nothing observed for two days. Then the document is absent once.
        let s = see(&doc(), 0, 40, 1);
        let s2 = observe(
            &s.state,
            Observation::Absent { confirming: false },
            UnixMs(48 * 60 * MIN),
            &policy(),
        );
        assert!(s2.events.is_empty());
        assert_eq!(s2.state.state, Lifecycle::Watching);
    }

    #[test]
    fn timed_out_after_give_up_after() {
        let s = see(&doc(), 0, 40, 1);
        let s = see(&s.state, 0, 41, 24 * 60 - 1);
        assert_eq!(s.state.state, Lifecycle::Watching);
        let s = see(&s.state, 0, 42, 24 * 60);
        assert_eq!(types(&s), [EventType::TimedOut]);
        assert_eq!(s.state.state, Lifecycle::TimedOut);
        assert_eq!(
            s.events[0].reason.as_deref(),
            Some("not terminal after 1day")
        );
    }

    #[test]
    fn missing_needs_count_grace_and_confirmation() {
        let p = policy();
        let absent = |d: &DocState, min: i64, confirming: bool| {
            observe(d, Observation::Absent { confirming }, UnixMs(min * MIN), &p)
        };
        let s = absent(&doc(), 0, false);
        let s = absent(&s.state, 1, false);
        let s = absent(&s.state, 2, false);
        assert!(
            !s.needs_confirmation,
            "3 answers but only 2 minutes of grace"
        );
        let s = absent(&s.state, 10, false);
        assert!(s.needs_confirmation, "count and grace hold");
        assert!(s.events.is_empty(), "not without the confirming request");
        let s = absent(&s.state, 10, true);
        assert_eq!(types(&s), [EventType::Missing]);
        assert_eq!(s.events[0].reason.as_deref(), Some("absent"));
    }

    #[test]
    fn grace_alone_is_not_enough() {
        let p = policy();
        let s = observe(
            &doc(),
            Observation::Absent { confirming: false },
            UnixMs(0),
            &p,
        );
        let s = observe(
            &s.state,
            Observation::Absent { confirming: true },
            UnixMs(60 * MIN),
            &p,
        );
        assert!(s.events.is_empty(), "only 2 answers in a row");
    }

    #[test]
    fn reappearing_resets_the_absence_count() {
        let p = policy();
        let mut d = doc();
        for m in 0..2 {
            d = observe(
                &d,
                Observation::Absent { confirming: false },
                UnixMs(m * MIN),
                &p,
            )
            .state;
        }
        d = see(&d, 0, 10, 3).state;
        assert_eq!(d.absent_count, 0);
        assert_eq!(d.absent_since, None);
    }

    #[test]
    fn dataset_not_found_counts_as_absent_with_its_reason() {
        let p = policy();
        let mut d = doc();
        for m in [0, 5, 11] {
            d = observe(
                &d,
                Observation::DatasetNotFound { confirming: false },
                UnixMs(m * MIN),
                &p,
            )
            .state;
        }
        let s = observe(
            &d,
            Observation::DatasetNotFound { confirming: true },
            UnixMs(12 * MIN),
            &p,
        );
        assert_eq!(s.events[0].reason.as_deref(), Some("dataset_not_found"));
    }

    #[test]
    fn a_rejected_id_is_missing_at_once() {
        let s = observe(&doc(), Observation::Rejected, UnixMs(0), &policy());
        assert_eq!(types(&s), [EventType::Missing]);
        assert_eq!(s.events[0].reason.as_deref(), Some("rejected"));
    }
}
