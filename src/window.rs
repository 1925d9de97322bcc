//! A sliding window: at most `limit` events in any span of `window` (one minute unless told).
//!
//! Pure logic on explicit instants. The API rate limiter uses it for Coze's per-second and
//! per-minute quotas (an event exactly `window` after another is in a new window), and the
//! chat notifiers use it as their `max_per_minute` throttle.
//!
//! An event may also be *open*: begun at an instant the other side cannot see (a request sent
//! but not yet answered: the server counts it somewhere between the two). An open event holds
//! its place in every window until it ends, and is then recorded at its end.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Throttle {
    per_minute: usize,
    window: Duration,
    /// Ended events in the last `window`, oldest first.
    sent: VecDeque<Instant>,
    /// Events begun and not yet ended.
    open: usize,
}

impl Throttle {
    /// At most `per_minute` events in any minute.
    pub fn new(per_minute: u32) -> Self {
        Self::per(per_minute, WINDOW)
    }

    /// At most `limit` (at least 1) events in any span of `window`.
    pub fn per(limit: u32, window: Duration) -> Self {
        Throttle {
            per_minute: limit.max(1) as usize,
            window,
            sent: VecDeque::new(),
            open: 0,
        }
    }

    /// The most events in one window.
    pub fn per_minute(&self) -> usize {
        self.per_minute
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// When the next event may begin: `Some(now)` if at once, `None` when only the end of an
    /// open event can make room.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.forget_before(now);
        let taken = self.sent.len() + self.open;
        if taken < self.per_minute {
            return Some(now);
        }
        // Room comes when enough ended events leave the window, each `window` after it ended.
        let must_leave = taken - self.per_minute + 1;
        self.sent
            .get(must_leave.checked_sub(1)?)
            .map(|t| *t + self.window)
    }

    /// Records an event that happened at `now`.
    pub fn record(&mut self, now: Instant) {
        self.begin();
        self.end(now);
    }

    /// Opens an event: it counts in every window until [`Throttle::end`].
    pub fn begin(&mut self) {
        self.open += 1;
    }

    /// Ends an open event at `now`: from here on it counts as having happened at `now`.
    pub fn end(&mut self, now: Instant) {
        self.open = self.open.saturating_sub(1);
        self.forget_before(now);
        let at = self.sent.partition_point(|t| *t <= now);
        self.sent.insert(at, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_per_minute_in_any_window() {
        let t0 = Instant::now();
        let mut th = Throttle::new(20);
        let mut now = t0;
        let mut sends = Vec::new();
        while now < t0 + Duration::from_secs(180) {
            let at = th.ready_at(now).unwrap_or(now);
            if at > now {
                now = at;
                continue;
            }
            th.record(now);
            sends.push(now);
            now += Duration::from_millis(100);
        }
        assert_eq!(sends.len(), 60, "20 a minute for 3 minutes");
        for (i, s) in sends.iter().enumerate() {
            let in_window = sends[i..].iter().filter(|t| **t - *s < WINDOW).count();
            assert!(
                in_window <= 20,
                "{in_window} sends within a minute of send {i}"
            );
        }
    }

    #[test]
    fn the_first_messages_go_at_once_then_wait_for_the_window() {
        let t0 = Instant::now();
        let mut th = Throttle::new(2);
        assert_eq!(th.ready_at(t0), Some(t0));
        th.record(t0);
        th.record(t0 + Duration::from_secs(1));
        assert_eq!(th.ready_at(t0 + Duration::from_secs(2)), Some(t0 + WINDOW));
        assert_eq!(th.ready_at(t0 + WINDOW), Some(t0 + WINDOW));
    }

    #[test]
    fn an_open_event_holds_its_place_until_it_ends_then_a_window_longer() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut th = Throttle::per(2, sec);
        th.record(t0);
        th.begin();
        assert_eq!(th.ready_at(t0 + sec), Some(t0 + sec), "the ended one left");
        th.begin();
        assert_eq!(
            th.ready_at(t0 + sec * 5),
            None,
            "two open: only an end helps"
        );
        let end = t0 + sec * 6;
        th.end(end);
        assert_eq!(th.ready_at(end), Some(end + sec), "counted at its end");
        assert_eq!(
            th.ready_at(end + sec),
            Some(end + sec),
            "it left; one open, one free"
        );
        th.begin();
        assert_eq!(th.ready_at(end + sec), None, "two open again");
        th.end(end + sec * 2);
        assert_eq!(th.ready_at(end + sec * 2), Some(end + sec * 3));
    }

    #[test]
    fn events_ending_out_of_order_are_kept_in_order() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut th = Throttle::per(2, sec * 10);
        th.begin();
        th.begin();
        th.end(t0 + sec * 3);
        th.end(t0 + sec);
        assert_eq!(th.ready_at(t0 + sec * 4), Some(t0 + sec * 11));
    }
}
