//! A sliding window: at most `limit` events in any span of `window` (one minute unless told).
//!
//! Pure logic on explicit instants. The API rate limiter uses it for Coze's per-second and
//! per-minute quotas (an event exactly `window` after another is in a new window), and the
//! chat notifiers use it as their `max_per_minute` throttle.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Throttle {
    per_minute: usize,
    window: Duration,
    sent: VecDeque<Instant>,
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

    /// When the next message may be sent (`now` if it may go at once).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.forget_before(now);
        if self.sent.len() < self.per_minute {
            return now;
        }
        // The oldest send in the window leaves it `window` after it happened.
        self.sent.front().map_or(now, |t| *t + self.window)
    }

    /// Records a message sent at `now`.
    pub fn record(&mut self, now: Instant) {
        self.forget_before(now);
        self.sent.push_back(now);
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
            let at = th.ready_at(now);
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
        assert_eq!(th.ready_at(t0), t0);
        th.record(t0);
        th.record(t0 + Duration::from_secs(1));
        assert_eq!(th.ready_at(t0 + Duration::from_secs(2)), t0 + WINDOW);
        assert_eq!(th.ready_at(t0 + WINDOW), t0 + WINDOW);
    }
}
