//! The write-coalescing policy: which new document states the run loop writes now, and what it
//! keeps in memory instead.
//!
//! A live document's progress, hint, stall clock and last-seen time change at nearly every
//! answer. Writing each would cost a row write per document per poll, so those fields
//! ([`Recent`]) stay in memory ([`Hot`]) and are written when anything else changes, when an
//! event fires, or at least every [`REFRESH_STORED`] so `status` stays current. A changed
//! progress after a restart re-arms the stall clock by itself, so losing `Recent` to a crash
//! costs nothing. This module decides; it never touches the store.

use std::time::Duration;

use crate::tracker::{DocState, Step};
use crate::wall::UnixMs;

/// How stale the stored progress of a live document may get.
pub const REFRESH_STORED: Duration = Duration::from_secs(60);

/// The part of a live document's state that changes at nearly every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recent {
    pub progress: Option<i64>,
    pub remaining_time: Option<i64>,
    pub last_change: UnixMs,
    pub last_seen: Option<UnixMs>,
}

impl Recent {
    pub fn of(d: &DocState) -> Self {
        Recent {
            progress: d.progress,
            remaining_time: d.remaining_time,
            last_change: d.last_change,
            last_seen: d.last_seen,
        }
    }

    /// Puts these fields, newer than the stored row, back on `d`.
    pub fn apply(&self, d: &mut DocState) {
        d.progress = self.progress;
        d.remaining_time = self.remaining_time;
        d.last_change = self.last_change;
        d.last_seen = self.last_seen;
    }
}

/// What the run loop keeps of a live document between polls, besides its id: the fields of
/// its last answer that are newer than its stored row, and when the row was last written.
/// About 80 bytes, where the whole state would be ~700: 100,000 documents fit in a few MB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hot {
    /// `None` until its first poll in this run: the stored row is then current.
    pub recent: Option<Recent>,
    pub persisted_at: Option<UnixMs>,
}

/// Whether a step's new state must be written now. `old` is the state the poll started from
/// (`None`: the store has no row for it yet).
pub fn worth_storing(old: Option<&DocState>, hot: &Hot, step: &Step, now: UnixMs) -> bool {
    let Some(old) = old else {
        return true;
    };
    !step.events.is_empty()
        || differs_materially(&step.state, old)
        || hot
            .persisted_at
            .is_none_or(|t| now.since(t) >= REFRESH_STORED)
}

/// Whether `new` differs from `older` in anything but its [`Recent`] part (and the signed url,
/// which every answer brings anew).
pub fn differs_materially(new: &DocState, older: &DocState) -> bool {
    new.state != older.state
        || new.stalled != older.stalled
        || new.absent_count != older.absent_count
        || new.absent_since != older.absent_since
        || new.unknown_status_warned != older.unknown_status_warned
        || new.progress_reported != older.progress_reported
        || new.status != older.status
        || older.last_seen.is_none()
        || new.info.name != older.info.name
        || new.info.file_type != older.info.file_type
        || new.info.size != older.info.size
        || new.info.update_type != older.info.update_type
        || new.info.update_interval != older.info.update_interval
        || new.info.status_descript != older.info.status_descript
        || new.reason != older.reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coze::DocumentStatus;
    use crate::ids::{DatasetId, DocumentId};
    use crate::tracker::{Observation, TrackerPolicy};

    fn seen(progress: i64, at: i64) -> DocState {
        let mut d = DocState::new(DatasetId::new("1"), DocumentId::new("2"), UnixMs(0));
        d.status = Some(DocumentStatus::Processing);
        d.progress = Some(progress);
        d.last_seen = Some(UnixMs(at));
        d.last_change = UnixMs(at);
        d
    }

    fn step(state: DocState) -> Step {
        Step {
            state,
            events: Vec::new(),
            needs_confirmation: false,
            changed: true,
            new_unknown_status: None,
        }
    }

    #[test]
    fn a_progress_tick_is_written_at_most_once_a_minute() {
        let old = seen(10, 1_000);
        let new = step(seen(20, 2_000));
        let written = Hot {
            recent: Some(Recent::of(&old)),
            persisted_at: Some(UnixMs(1_000)),
        };
        assert!(!worth_storing(Some(&old), &written, &new, UnixMs(2_000)));
        assert!(worth_storing(Some(&old), &written, &new, UnixMs(61_000)));
        assert!(worth_storing(
            Some(&old),
            &Hot::default(),
            &new,
            UnixMs(2_000)
        ));
    }

    #[test]
    fn a_material_change_or_an_event_is_written_at_once() {
        let old = seen(10, 1_000);
        let hot = Hot {
            recent: None,
            persisted_at: Some(UnixMs(1_000)),
        };
        let mut done = seen(100, 2_000);
        done.status = Some(DocumentStatus::Completed);
        assert!(worth_storing(Some(&old), &hot, &step(done), UnixMs(2_000)));
        assert!(worth_storing(
            None,
            &hot,
            &step(seen(10, 2_000)),
            UnixMs(2_000)
        ));
    }

    /// What the tracker makes of an answer `(status, progress)` at minute `at_min`.
    fn see(d: &DocState, status: i64, progress: i64, at_min: i64) -> DocState {
        let answer = crate::coze::DocumentProgress {
            document_id: DocumentId::new("2"),
            document_name: Some("a.pdf".into()),
            status: DocumentStatus::from(status),
            progress: Some(progress),
            remaining_time: Some(30),
            status_descript: None,
            url: None,
            size: Some(10),
            file_type: Some("pdf".into()),
            update_type: Some(0),
            update_interval: Some(0),
        };
        let policy = TrackerPolicy::from(&crate::config::PollConfig::default());
        let at = UnixMs(at_min * 60_000);
        crate::tracker::observe(d, Observation::Seen(&answer), at, &policy).state
    }

    #[test]
    fn progress_alone_is_not_a_material_change_but_a_stall_is() {
        let new = DocState::new(DatasetId::new("1"), DocumentId::new("2"), UnixMs(0));
        let first = see(&new, 0, 10, 1);
        assert!(differs_materially(&first, &new), "first sight");
        let more = see(&first, 0, 15, 2);
        assert!(!differs_materially(&more, &first));
        let stalled = see(&more, 0, 15, 40);
        assert!(stalled.stalled);
        assert!(differs_materially(&stalled, &more));
        let done = see(&stalled, 1, 100, 41);
        assert!(differs_materially(&done, &stalled));
    }

    #[test]
    fn recent_fields_round_trip() {
        let from = seen(42, 5_000);
        let mut to = seen(0, 0);
        Recent::of(&from).apply(&mut to);
        assert_eq!(to.progress, Some(42));
        assert_eq!(to.last_seen, Some(UnixMs(5_000)));
        assert!(!differs_materially(&to, &from));
    }
}
