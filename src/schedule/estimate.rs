//! When a processing document will finish, as the schedule estimates it: the hint it was
//! given, the progress rate it showed, and the hint's own pace (a hint that falls faster than
//! time overstates what is left). Pure, explicit instants.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Debug, Default)]
pub(super) struct HintState {
    /// When the document said it would be done.
    pub(super) deadline: Option<Instant>,
    /// It was still processing after its hinted time: its hints are not used again.
    pub(super) failed: bool,
    /// The first (time, progress) of its current run, for the progress rate.
    pub(super) sample: Option<(Instant, i64)>,
    /// The first (time, remaining_time) of its current hint run, for the hint's own pace.
    pub(super) first_hint: Option<(Instant, i64)>,
}

/// The completion a hint's own pace projects. An honest `remaining_time` falls one second a
/// second; one that falls faster overstates what is left by that factor (a hint twice the
/// truth falls two seconds a second), so the rest is `remaining / pace`. One second of
/// rounding is allowed for, so an honest hint never makes an estimate. A hint that rises
/// starts a new run.
pub(super) fn hint_pace(
    hint: &mut HintState,
    remaining: Option<i64>,
    now: Instant,
) -> Option<Duration> {
    let h = remaining.filter(|r| *r > 0)?;
    let Some((t0, h0)) = hint.first_hint else {
        hint.first_hint = Some((now, h));
        return None;
    };
    if h > h0 {
        hint.first_hint = Some((now, h));
        return None;
    }
    let secs = now.saturating_duration_since(t0).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let pace = ((h0 - h - 1) as f64 / secs).max(0.0);
    (pace > 1.25).then(|| Duration::from_secs_f64(h as f64 / pace))
}

/// The completion the progress rate projects: `(100 - p) / rate`, the rate averaged since the
/// first sample (so a jump or a pause does not swing it). `None` when progress has not moved
/// forward since then; a backwards step starts a new run.
pub(super) fn projected(
    hint: &mut HintState,
    progress: Option<i64>,
    now: Instant,
) -> Option<Duration> {
    let p = progress?;
    let Some((t0, p0)) = hint.sample else {
        hint.sample = Some((now, p));
        return None;
    };
    if p < p0 {
        hint.sample = Some((now, p));
        return None;
    }
    let secs = now.saturating_duration_since(t0).as_secs_f64();
    if p == p0 || secs <= 0.0 {
        return None;
    }
    let rate = (p - p0) as f64 / secs;
    let left = (100 - p).max(0) as f64 / rate;
    Some(Duration::from_secs_f64(left.min(1e9)))
}
