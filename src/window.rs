//! A sliding one-minute window: at most `per_minute` events in any 60-second span.
//!
//! Pure logic on explicit instants. The API rate limiter uses it so that a per-second budget
//! never adds up to more than the per-minute quota (a token bucket alone allows its burst on
//! top), and the chat notifiers use it as their `max_per_minute` throttle.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Throttle {
    per_minute: usize,
    sent: VecDeque<Instant>,
}

impl Throttle {
    pub fn new(per_minute: u32) -> Self {
        Throttle {
            per_minute: per_minute.max(1) as usize,
            sent: VecDeque::new(),
        }
    }

    pub fn per_minute(&self) -> usize {
        self.per_minute
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
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
        // The oldest send in the window leaves it 60 s after it happened.
        self.sent.front().map_or(now, |t| *t + WINDOW)
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
