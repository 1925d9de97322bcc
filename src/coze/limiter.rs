//! The shared request budget: a token bucket per second (burst 2), an optional daily budget,
//! and a pause that 429s and auth failures impose on every request.
//!
//! Pure logic on explicit instants: it never sleeps and never reads the clock itself. The client
//! wraps it in a mutex and sleeps until the instant it names.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::Throttle;

/// Requests allowed at once before the per-second rate applies.
pub const BURST: f64 = 2.0;
const DAY: f64 = 86_400.0;

#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    /// Tokens per second.
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        Bucket {
            capacity,
            tokens: capacity,
            rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// When one whole token will be there (now if it already is).
    fn ready_at(&self, now: Instant) -> Instant {
        if self.tokens >= 1.0 {
            return now;
        }
        let missing = 1.0 - self.tokens;
        now + Duration::from_secs_f64(missing / self.rate)
    }
}

#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: Bucket,
    /// At most `60 * per_second` in any minute, burst included (Coze quotas are per second
    /// and per minute).
    per_minute: Throttle,
    /// Capacity and rate are chosen so that no 24-hour window holds more than the budget:
    /// capacity + rate * 1 day == budget.
    per_day: Option<Bucket>,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: f64, per_day: Option<u64>, now: Instant) -> Self {
        let per_day = per_day.map(|budget| {
            let budget = budget as f64;
            let capacity = (budget / 48.0).max(1.0).min(budget);
            Bucket::new(capacity, (budget - capacity).max(0.0) / DAY, now)
        });
        RateLimiter {
            per_minute: Throttle::new(
                (per_second * 60.0).floor().clamp(1.0, u32::MAX as f64) as u32
            ),
            per_second: Bucket::new(BURST, per_second, now),
            per_day,
            paused_until: None,
        }
    }

    /// Takes one request permit at `now`, or says when to ask again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until);
            }
            self.paused_until = None;
        }
        self.per_second.refill(now);
        let mut ready = self
            .per_second
            .ready_at(now)
            .max(self.per_minute.ready_at(now));
        if let Some(day) = &mut self.per_day {
            day.refill(now);
            if day.rate <= 0.0 && day.tokens < 1.0 {
                // A budget of one request a day, spent: ask again in a day.
                ready = ready.max(now + Duration::from_secs_f64(DAY));
            } else {
                ready = ready.max(day.ready_at(now));
            }
        }
        if ready > now {
            return Err(ready);
        }
        self.per_second.tokens -= 1.0;
        self.per_minute.record(now);
        if let Some(day) = &mut self.per_day {
            day.tokens -= 1.0;
        }
        Ok(())
    }

    /// Stops every request until `until` (a 429's `Retry-After`, or an auth failure's backoff).
    /// A shorter pause never cuts a longer one.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants as many permits as possible, asking again exactly when told, until `end`.
    fn grants_until(l: &mut RateLimiter, start: Instant, end: Instant) -> Vec<Duration> {
        let mut now = start;
        let mut out = Vec::new();
        while now <= end {
            match l.try_acquire(now) {
                Ok(()) => out.push(now - start),
                Err(next) => now = next,
            }
        }
        out
    }

    #[test]
    fn burst_of_two_then_the_configured_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1.0, None, t0);
        let got = grants_until(&mut l, t0, t0 + Duration::from_secs(10));
        assert_eq!(got[0], Duration::ZERO);
        assert_eq!(got[1], Duration::ZERO);
        assert_eq!(got.len(), 12, "2 burst + 10 at 1/s: {got:?}");
        for w in got[2..].windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= Duration::from_millis(999), "gap {gap:?}");
        }
    }

    #[test]
    fn one_per_second_never_exceeds_60_in_any_minute() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1.0, None, t0);
        let got = grants_until(&mut l, t0, t0 + Duration::from_secs(600));
        for (i, g) in got.iter().enumerate() {
            let in_minute = got[i..]
                .iter()
                .filter(|x| **x - *g < Duration::from_secs(60))
                .count();
            assert!(
                in_minute <= 60,
                "{in_minute} requests within a minute of request {i}"
            );
        }
    }

    #[test]
    fn holds_the_rate_over_a_long_burst_of_demand() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2.0, None, t0);
        let got = grants_until(&mut l, t0, t0 + Duration::from_millis(59_999));
        // 2/s is 120 a minute, burst included.
        assert!(got.len() <= 120 && got.len() >= 118, "{}", got.len());
    }

    #[test]
    fn daily_budget_is_never_exceeded_in_a_day() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(100.0, Some(3000), t0);
        let got = grants_until(&mut l, t0, t0 + Duration::from_secs(86_400));
        assert!(got.len() <= 3000, "{}", got.len());
        assert!(got.len() >= 2990, "{}", got.len());
    }

    #[test]
    fn pause_blocks_every_request_until_it_ends() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1.0, None, t0);
        l.pause_until(t0 + Duration::from_secs(30));
        l.pause_until(t0 + Duration::from_secs(5));
        assert_eq!(l.try_acquire(t0), Err(t0 + Duration::from_secs(30)));
        assert_eq!(l.try_acquire(t0 + Duration::from_secs(30)), Ok(()));
    }
}
