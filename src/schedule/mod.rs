//! When each dataset is polled next (SPEC section 4): hints, growth, backoff, jitter, and the
//! order in which due datasets get the shared request budget.
//!
//! Pure logic on explicit instants. Randomness comes in as a number `u` in `[0, 1)` from the
//! caller, so every rule is tested exactly. This module never sleeps, never reads a clock and
//! never talks to the API.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{BackoffConfig, PollConfig};
use crate::coze::ApiError;
use crate::ids::{DatasetId, DocumentId};

mod estimate;
use estimate::{HintState, hint_pace, projected};

/// How much a failure's backoff may be stretched: `* (1 + U[0, 0.5])`.
pub const BACKOFF_JITTER: f64 = 0.5;
/// Growth factor of the no-hint delay per poll without any change.
pub const GROWTH: f64 = 1.5;

#[derive(Clone, Debug, PartialEq)]
pub struct SchedulePolicy {
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub jitter: f64,
    pub backoff: BackoffConfig,
}

impl From<&PollConfig> for SchedulePolicy {
    fn from(p: &PollConfig) -> Self {
        SchedulePolicy {
            min_interval: p.min_interval,
            max_interval: p.max_interval,
            jitter: p.jitter,
            backoff: p.error_backoff.clone(),
        }
    }
}

/// What a successful poll saw of one document still processing.
#[derive(Clone, Debug)]
pub struct Processing {
    pub document_id: DocumentId,
    /// `remaining_time` in seconds as reported.
    pub remaining_time: Option<i64>,
    /// Progress in percent as reported.
    pub progress: Option<i64>,
}

/// How a failed poll should be spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Failure {
    /// Transient errors: the dataset's own backoff.
    Backoff,
    /// Rate limited: the backoff, or `Retry-After` when that is longer.
    RateLimited { retry_after: Option<Duration> },
    /// Auth or permission: straight to the backoff maximum.
    AtMaximum,
}

/// What an API error means for the schedule: how the dataset backs off, and how long every
/// request pauses (the token and the quota are shared). The daemon and `wait` both act on it.
/// (After a 401 the client re-reads `token_file` before each request by itself.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorReaction {
    pub failure: Failure,
    pub pause_all: Option<Duration>,
}

/// The reaction to `e` (SPEC section 1's table).
pub fn reaction(e: &ApiError, policy: &SchedulePolicy) -> ErrorReaction {
    let (failure, pause_all) = match e {
        ApiError::Auth(_) => (Failure::AtMaximum, Some(policy.backoff.max)),
        ApiError::Permission { .. } | ApiError::Local(_) => (Failure::AtMaximum, None),
        ApiError::RateLimited { retry_after, .. } => (
            Failure::RateLimited {
                retry_after: *retry_after,
            },
            // With a Retry-After the client has paused itself already.
            retry_after.is_none().then_some(policy.backoff.initial),
        ),
        _ => (Failure::Backoff, None),
    };
    ErrorReaction { failure, pause_all }
}

/// The schedule of one dataset.
#[derive(Clone, Debug)]
pub struct DatasetSchedule {
    pub next_poll: Instant,
    /// Failed polls in a row; backoff is a pure function of it (persisted).
    pub failures: u32,
    /// Successful polls in a row in which nothing changed (drives the x1.5 growth).
    quiet_polls: u32,
    hints: HashMap<DocumentId, HintState>,
}

impl DatasetSchedule {
    pub fn new(next_poll: Instant, failures: u32) -> Self {
        DatasetSchedule {
            next_poll,
            failures,
            quiet_polls: 0,
            hints: HashMap::new(),
        }
    }

    /// After a good answer: the smallest usable hint, else the growing delay, clamped, then
    /// jittered (only ever later). Returns the next poll time.
    pub fn on_success(
        &mut self,
        now: Instant,
        processing: &[Processing],
        changed: bool,
        policy: &SchedulePolicy,
        u: f64,
    ) -> Instant {
        self.failures = 0;
        self.quiet_polls = if changed {
            0
        } else {
            self.quiet_polls.saturating_add(1)
        };
        let growth = self.growth_delay(policy);
        let mut delay: Option<Duration> = None;
        let mut still: HashMap<DocumentId, HintState> = HashMap::new();
        for doc in processing {
            let mut hint = self.hints.remove(&doc.document_id).unwrap_or_default();
            if hint.deadline.is_some_and(|d| now >= d) {
                hint.failed = true;
            }
            let rate = projected(&mut hint, doc.progress, now);
            let first_sight = hint.first_hint.is_none();
            let pace = hint_pace(&mut hint, doc.remaining_time, now);
            let wanted = match doc.remaining_time.filter(|r| *r > 0) {
                Some(secs) if !hint.failed => {
                    let secs = Duration::from_secs(secs.unsigned_abs());
                    hint.deadline = Some(now + secs);
                    // A pessimistic hint: the progress rate or the hint's own pace says it
                    // ends earlier.
                    let mut aim = [rate, pace].into_iter().flatten().fold(secs, Duration::min);
                    if first_sight {
                        // The second look comes early: it tells whether the hint lies.
                        aim = aim.min(secs / 2);
                    }
                    clamp(aim, policy)
                }
                _ => {
                    hint.deadline = None;
                    growth
                }
            };
            delay = Some(delay.map_or(wanted, |d| d.min(wanted)));
            still.insert(doc.document_id.clone(), hint);
        }
        self.hints = still;
        // Nothing processing (only absent documents): keep confirming at the growing pace.
        let delay = delay.unwrap_or(growth);
        self.next_poll = now + delay + spread(delay, policy, u);
        self.next_poll
    }

    /// After a failed poll. Returns the next poll time.
    pub fn on_failure(
        &mut self,
        now: Instant,
        failure: Failure,
        policy: &SchedulePolicy,
        u: f64,
    ) -> Instant {
        self.failures = self.failures.saturating_add(1);
        let delay = match failure {
            Failure::Backoff => backoff(&policy.backoff, self.failures, u),
            Failure::RateLimited { retry_after } => {
                let b = backoff(&policy.backoff, self.failures, u);
                retry_after.map_or(b, |r| r.max(b))
            }
            Failure::AtMaximum => stretch(policy.backoff.max, BACKOFF_JITTER, u),
        };
        self.next_poll = now + delay;
        self.next_poll
    }

    fn growth_delay(&self, policy: &SchedulePolicy) -> Duration {
        let factor = GROWTH.powi(self.quiet_polls.min(64) as i32);
        clamp_f64(policy.min_interval.as_secs_f64() * factor, policy)
    }
}

fn clamp(d: Duration, policy: &SchedulePolicy) -> Duration {
    d.clamp(policy.min_interval, policy.max_interval)
}

fn clamp_f64(secs: f64, policy: &SchedulePolicy) -> Duration {
    let max = policy.max_interval.as_secs_f64();
    clamp(Duration::from_secs_f64(secs.min(max).max(0.0)), policy)
}

/// The jitter after a good answer: `U[0, min(d * jitter, min_interval)]`, only ever a delay.
///
/// It spreads datasets that got the same hint so they do not poll in the same instant; a
/// second or two does that. Uncapped, `d * jitter` on a 2-minute hint moved the poll that was
/// aimed at a completion up to 12 s past it (the `sparse` benchmark's p95 was 8.7 s), so the
/// spread is capped at `min_interval`, the latency the user asked for anyway. Hints up to
/// `min_interval / jitter` (20 s by default) are stretched by the full fraction, as before.
pub fn spread(d: Duration, policy: &SchedulePolicy, u: f64) -> Duration {
    d.mul_f64(policy.jitter.max(0.0))
        .min(policy.min_interval)
        .mul_f64(u.clamp(0.0, 1.0))
}

/// `d * (1 + u * fraction)`: jitter that only ever delays.
pub fn stretch(d: Duration, fraction: f64, u: f64) -> Duration {
    d.mul_f64(1.0 + u.clamp(0.0, 1.0) * fraction.max(0.0))
}

/// `min(max, initial * multiplier^(failures-1)) * (1 + U[0, 0.5])`: the delay after the
/// `failures`-th failure in a row. A pure function of the count, so it survives restarts.
pub fn backoff(policy: &BackoffConfig, failures: u32, u: f64) -> Duration {
    stretch(policy.delay(failures), BACKOFF_JITTER, u)
}

/// Datasets waiting for their next poll, ordered by when it is due.
///
/// Taking the earliest due first means the dataset that has waited longest always goes next,
/// so none starves however scarce requests are. O(log n) per change, so 100,000 documents in
/// thousands of datasets cost nothing per wake-up.
/// Generic over the key: datasets for polls, discovery scopes for listings.
#[derive(Debug)]
pub struct DueQueue<K = DatasetId> {
    order: BTreeSet<(Instant, K)>,
    due: HashMap<K, Instant>,
}

impl<K> Default for DueQueue<K> {
    fn default() -> Self {
        DueQueue {
            order: BTreeSet::new(),
            due: HashMap::new(),
        }
    }
}

impl<K: Ord + Clone + std::hash::Hash> DueQueue<K> {
    /// Queues `dataset` for `at`, replacing any earlier entry.
    pub fn insert(&mut self, dataset: K, at: Instant) {
        if let Some(old) = self.due.insert(dataset.clone(), at) {
            self.order.remove(&(old, dataset.clone()));
        }
        self.order.insert((at, dataset));
    }

    pub fn remove(&mut self, dataset: &K) {
        if let Some(old) = self.due.remove(dataset) {
            self.order.remove(&(old, dataset.clone()));
        }
    }

    /// When `key` is due, if queued.
    pub fn due_at(&self, key: &K) -> Option<Instant> {
        self.due.get(key).copied()
    }

    /// When the earliest queued poll is due.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes up to `slots` datasets due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant, slots: usize) -> Vec<K> {
        let mut out = Vec::new();
        while out.len() < slots {
            match self.order.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            if let Some((_, ds)) = self.order.pop_first() {
                self.due.remove(&ds);
                out.push(ds);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SchedulePolicy {
        SchedulePolicy {
            min_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(120),
            jitter: 0.1,
            backoff: BackoffConfig {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(300),
                multiplier: 2.0,
            },
        }
    }

    fn proc(id: &str, remaining: Option<i64>) -> Processing {
        Processing {
            document_id: DocumentId::new(id),
            remaining_time: remaining,
            progress: None,
        }
    }

    fn at(id: &str, remaining: i64, progress: i64) -> Processing {
        Processing {
            progress: Some(progress),
            ..proc(id, Some(remaining))
        }
    }

    /// The delay the schedule picks after answers `(seconds after t0, remaining, progress)`.
    fn delays(answers: &[(u64, i64, i64)]) -> Vec<Duration> {
        let t0 = Instant::now();
        let p = SchedulePolicy {
            jitter: 0.0,
            ..policy()
        };
        let mut s = DatasetSchedule::new(t0, 0);
        answers
            .iter()
            .map(|(secs, remaining, progress)| {
                let now = t0 + S(*secs);
                s.on_success(now, &[at("a", *remaining, *progress)], true, &p, 0.0) - now
            })
            .collect()
    }

    #[test]
    fn a_steady_progress_rate_corrects_a_pessimistic_hint() {
        // 1 % a second, 100 s in all, but the hint says twice the rest.
        let got = delays(&[(0, 200, 0), (10, 180, 10), (20, 160, 20)]);
        assert_eq!(got[0], S(100), "no rate yet: half the hint");
        assert_eq!(got[1], S(90), "90 % left at 1 %/s");
        assert_eq!(got[2], S(80));
    }

    #[test]
    fn a_hint_that_falls_too_fast_is_read_at_its_pace() {
        // No progress reported; the hint falls 2 s a second: twice the truth.
        let t0 = Instant::now();
        let p = SchedulePolicy {
            jitter: 0.0,
            ..policy()
        };
        let mut s = DatasetSchedule::new(t0, 0);
        let mut next = |secs: u64, remaining: i64| {
            let now = t0 + S(secs);
            s.on_success(now, &[proc("a", Some(remaining))], true, &p, 0.0) - now
        };
        assert_eq!(
            next(0, 400),
            S(120),
            "first sight: half the hint, at most max_interval"
        );
        let d = next(100, 200);
        // (400 - 200 - 1) / 100 = 1.99 s a second: 200 / 1.99 = 100.5 s, the truth is 100 s.
        assert!(d >= S(100) && d <= S(101), "{d:?}");
    }

    #[test]
    fn an_honest_hint_is_followed_whatever_its_rounding() {
        // remaining_time is whole seconds: an honest one may fall 3 in 2 s.
        let got = delays(&[(0, 100, 0), (2, 97, 0), (4, 96, 0), (30, 70, 0)]);
        assert_eq!(got[0], S(50), "first sight: half the hint");
        assert_eq!(got[1], S(97), "(100 - 97 - 1) / 2 = 1 s a second: honest");
        assert_eq!(got[2], S(96));
        assert_eq!(got[3], S(70));
    }

    #[test]
    fn an_honest_hint_is_never_delayed_by_the_rate() {
        // The rate says later than the hint: the hint wins.
        let got = delays(&[(0, 50, 0), (10, 40, 5)]);
        assert_eq!(got[1], S(40));
    }

    #[test]
    fn jumpy_progress_is_averaged_since_the_first_sample() {
        // 0 -> 50 in 10 s, then nothing for 40 s: 50 % in 50 s is 1 %/s, 50 s left.
        let got = delays(&[(0, 300, 0), (10, 300, 50), (50, 300, 50)]);
        assert_eq!(
            got[1],
            S(10),
            "a jump projects 10 s, clamped at min_interval at most"
        );
        assert_eq!(got[2], S(50));
    }

    #[test]
    fn stuck_or_backwards_progress_makes_no_estimate() {
        let stuck = delays(&[(0, 60, 30), (10, 50, 30)]);
        assert_eq!(stuck[1], S(50), "no movement: the hint");
        let back = delays(&[(0, 60, 40), (10, 50, 20), (20, 40, 30)]);
        assert_eq!(back[1], S(50), "backwards: a new run starts, the hint");
        assert_eq!(
            back[2],
            S(40),
            "10 % in 10 s projects 70 s: the hint is earlier"
        );
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// A schedule that saw these documents a second before `t0`, with honest hints: the
    /// first-sight rule (an early second look) is behind it.
    fn seen_before(t0: Instant, docs: &[Processing]) -> DatasetSchedule {
        let mut s = DatasetSchedule::new(t0, 0);
        let earlier: Vec<Processing> = docs
            .iter()
            .map(|d| Processing {
                remaining_time: d.remaining_time.map(|r| if r > 0 { r + 1 } else { r }),
                ..d.clone()
            })
            .collect();
        s.on_success(t0 - S(1), &earlier, true, &policy(), 0.0);
        s
    }

    #[test]
    fn a_first_sight_looks_again_at_half_the_hint() {
        let t0 = Instant::now();
        let mut s = DatasetSchedule::new(t0, 0);
        let next = s.on_success(t0, &[proc("a", Some(40))], true, &policy(), 0.0);
        assert_eq!(next - t0, S(20));
    }

    #[test]
    fn follows_the_smallest_hint() {
        let t0 = Instant::now();
        let docs = [proc("a", Some(40)), proc("b", Some(20))];
        let mut s = seen_before(t0, &docs);
        let next = s.on_success(t0, &docs, true, &policy(), 0.0);
        assert_eq!(next - t0, S(20));
    }

    #[test]
    fn hints_are_clamped_to_the_interval_bounds() {
        let t0 = Instant::now();
        let mut s = DatasetSchedule::new(t0, 0);
        assert_eq!(
            s.on_success(t0, &[proc("a", Some(1))], true, &policy(), 0.0) - t0,
            S(2)
        );
        let mut s = DatasetSchedule::new(t0, 0);
        assert_eq!(
            s.on_success(t0, &[proc("a", Some(3600))], true, &policy(), 0.0) - t0,
            S(120)
        );
    }

    #[test]
    fn the_spread_of_a_long_hint_is_capped_at_min_interval() {
        let t0 = Instant::now();
        let long = [proc("a", Some(100))];
        let mut s = seen_before(t0, &long);
        let next = s.on_success(t0, &long, true, &policy(), 1.0);
        assert_eq!(
            next - t0,
            S(102),
            "10 % would be 10 s; min_interval caps it at 2 s"
        );
        let mut s = seen_before(t0, &long);
        let next = s.on_success(t0, &long, true, &policy(), 0.5);
        assert_eq!(next - t0, S(101));
        let short = [proc("a", Some(10))];
        let mut s = seen_before(t0, &short);
        let next = s.on_success(t0, &short, true, &policy(), 1.0);
        assert_eq!(next - t0, S(11), "short hints get the full 10 %");
    }

    #[test]
    fn jitter_only_ever_delays() {
        let t0 = Instant::now();
        let docs = [proc("a", Some(20))];
        let mut s = seen_before(t0, &docs);
        let next = s.on_success(t0, &docs, true, &policy(), 0.999);
        assert!(next - t0 >= S(20));
        assert!(next - t0 <= S(22));
    }

    #[test]
    fn without_a_hint_the_delay_starts_at_min_and_grows_by_half_until_a_change() {
        let t0 = Instant::now();
        let p = policy();
        let mut s = DatasetSchedule::new(t0, 0);
        let zero = [proc("a", Some(0))];
        let d = |next: Instant, at: Instant| (next - at).as_millis();
        assert_eq!(d(s.on_success(t0, &zero, true, &p, 0.0), t0), 2000);
        assert_eq!(d(s.on_success(t0, &zero, false, &p, 0.0), t0), 3000);
        assert_eq!(d(s.on_success(t0, &zero, false, &p, 0.0), t0), 4500);
        assert_eq!(
            d(s.on_success(t0, &[proc("a", None)], false, &p, 0.0), t0),
            6750
        );
        assert_eq!(
            d(s.on_success(t0, &zero, true, &p, 0.0), t0),
            2000,
            "a change resets"
        );
        for _ in 0..30 {
            s.on_success(t0, &zero, false, &p, 0.0);
        }
        assert_eq!(
            d(s.on_success(t0, &zero, false, &p, 0.0), t0),
            120_000,
            "capped at max"
        );
    }

    #[test]
    fn a_hint_that_failed_once_is_not_trusted_again() {
        let t0 = Instant::now();
        let p = policy();
        let mut s = seen_before(t0, &[proc("a", Some(20))]);
        let next = s.on_success(t0, &[proc("a", Some(20))], true, &p, 0.0);
        // Still processing at the hinted time, claiming 20 s more: the hint failed.
        let next = s.on_success(next, &[proc("a", Some(20))], false, &p, 0.0);
        assert_eq!(
            next - (t0 + S(20)),
            S(3),
            "growth (2 s * 1.5), not the hint"
        );
        // Other documents' hints still count.
        let t2 = next;
        let n = s.on_success(
            t2,
            &[proc("a", Some(20)), proc("b", Some(2))],
            false,
            &p,
            0.0,
        );
        assert_eq!(n - t2, S(2));
    }

    #[test]
    fn a_poll_before_the_hinted_time_does_not_fail_the_hint() {
        let t0 = Instant::now();
        let p = policy();
        let mut s = DatasetSchedule::new(t0, 0);
        // Clamped to max: 120 s, long before the hinted 3600 s.
        let next = s.on_success(t0, &[proc("a", Some(3600))], true, &p, 0.0);
        let next2 = s.on_success(next, &[proc("a", Some(3480))], true, &p, 0.0);
        assert_eq!(next2 - next, S(120));
    }

    #[test]
    fn backoff_is_a_pure_function_of_the_failure_count() {
        let b = policy().backoff;
        assert_eq!(backoff(&b, 1, 0.0), S(2));
        assert_eq!(backoff(&b, 2, 0.0), S(4));
        assert_eq!(backoff(&b, 3, 0.0), S(8));
        assert_eq!(backoff(&b, 30, 0.0), S(300));
        assert_eq!(backoff(&b, 1, 1.0), S(3), "jitter adds at most 50 %");
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let t0 = Instant::now();
        let p = policy();
        let mut s = DatasetSchedule::new(t0, 2);
        assert_eq!(
            s.on_failure(t0, Failure::Backoff, &p, 0.0) - t0,
            S(8),
            "resumes from a stored count"
        );
        assert_eq!(s.failures, 3);
        s.on_success(t0, &[proc("a", Some(10))], true, &p, 0.0);
        assert_eq!(s.failures, 0);
        assert_eq!(s.on_failure(t0, Failure::Backoff, &p, 0.0) - t0, S(2));
    }

    #[test]
    fn retry_after_wins_when_longer_and_auth_goes_to_the_maximum() {
        let t0 = Instant::now();
        let p = policy();
        let mut s = DatasetSchedule::new(t0, 0);
        let r = Failure::RateLimited {
            retry_after: Some(S(30)),
        };
        assert_eq!(s.on_failure(t0, r, &p, 0.0) - t0, S(30));
        let r = Failure::RateLimited {
            retry_after: Some(S(1)),
        };
        assert_eq!(
            s.on_failure(t0, r, &p, 0.0) - t0,
            S(4),
            "backoff when longer"
        );
        assert_eq!(s.on_failure(t0, Failure::AtMaximum, &p, 0.0) - t0, S(300));
    }

    #[test]
    fn earliest_due_goes_first_and_none_starves() {
        let t0 = Instant::now();
        let ids: Vec<DatasetId> = (0..4).map(|i| DatasetId::new(i.to_string())).collect();
        let mut q = DueQueue::default();
        for (id, at) in ids.iter().zip([S(3), S(1), S(2), S(100)]) {
            q.insert(id.clone(), t0 + at);
        }
        assert_eq!(q.next(), Some(t0 + S(1)));
        assert_eq!(q.pop_due(t0 + S(5), 2), [ids[1].clone(), ids[2].clone()]);
        assert_eq!(
            q.pop_due(t0 + S(5), 2),
            [ids[0].clone()],
            "only what is due"
        );
        // One slot a round, every served dataset due again at once: all are served in turn.
        for id in &ids[..3] {
            q.insert(id.clone(), t0 + S(6));
        }
        let mut served = Vec::new();
        let mut now = t0 + S(200);
        for _ in 0..4 {
            let p = q.pop_due(now, 1);
            served.push(p[0].clone());
            q.insert(p[0].clone(), now + S(1));
            now += S(1);
        }
        served.sort();
        assert_eq!(served, ids);
    }

    #[test]
    fn requeueing_replaces_the_old_time() {
        let t0 = Instant::now();
        let mut q = DueQueue::default();
        let a = DatasetId::new("a");
        q.insert(a.clone(), t0 + S(10));
        q.insert(a.clone(), t0 + S(1));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next(), Some(t0 + S(1)));
        q.remove(&a);
        assert!(q.is_empty());
    }
}
