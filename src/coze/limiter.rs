//! The shared request budget: never more than `floor(max_requests_per_second)` (at least 1)
//! requests in any sliding second, nor 60 times that in any sliding minute (Coze's "2 per
//! second, 60 per minute", read strictly), the configured average rate, an optional daily
//! budget, and a pause that 429s and auth failures impose on every request.
//!
//! A request holds its place in the per-second and per-minute windows from the moment it is
//! let go until its answer comes, and is then counted at the answer: the server counts it
//! somewhere in between, so the next request the window admits reaches the server at least a
//! second after it, whatever the delays between deciding to send and the bytes arriving.
//!
//! Pure logic on explicit instants: it never sleeps and never reads the clock itself. The client
//! wraps it in a mutex and sleeps until the instant it names, or until a request ends.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::Throttle;

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
    /// The average rate (no burst: a bucket of one). `None` for a server's quota, which counts
    /// only the windows (its clients' requests arrive with jitter, not evenly spaced).
    rate: Option<Bucket>,
    /// At most `floor(rate)` (at least 1) in any sliding second: a bucket alone lets a fraction
    /// of a second's tokens and the next second's fall in one window.
    per_second: Throttle,
    /// At most 60 times that in any sliding minute.
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
        let whole = per_second.floor().clamp(1.0, f64::from(u32::MAX / 60)) as u32;
        RateLimiter {
            rate: Some(Bucket::new(1.0, per_second, now)),
            per_second: Throttle::per(whole, Duration::from_secs(1)),
            per_minute: Throttle::new(whole * 60),
            per_day,
            paused_until: None,
        }
    }

    /// A server's quota of `per_second` (as Coze states it: at most that many in any sliding
    /// second, 60 times that in any sliding minute): the windows alone, and for a quota under
    /// one a second, its average rate.
    pub fn server_quota(per_second: f64, now: Instant) -> Self {
        let mut l = Self::new(per_second, None, now);
        if per_second >= 1.0 {
            l.rate = None;
        }
        l
    }

    /// Takes one request permit at `now` for a request counted at once (a server's own view),
    /// or says when to ask again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        match self.try_begin(now) {
            Ok(()) => {
                self.end(now);
                Ok(())
            }
            // Nothing is ever open here, so a window always names its instant.
            Err(at) => Err(at.unwrap_or(now)),
        }
    }

    /// Lets a request go at `now` that holds its place until [`RateLimiter::end`], or says
    /// when to ask again: `Some(instant)`, or `None` when only the end of a request in flight
    /// can make room.
    pub fn try_begin(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(Some(until));
            }
            self.paused_until = None;
        }
        if let Some(rate) = &mut self.rate {
            rate.refill(now);
        }
        let (Some(second), Some(minute)) =
            (self.per_second.ready_at(now), self.per_minute.ready_at(now))
        else {
            return Err(None);
        };
        let mut ready = second.max(minute);
        if let Some(rate) = &self.rate {
            ready = ready.max(rate.ready_at(now));
        }
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
            return Err(Some(ready));
        }
        if let Some(rate) = &mut self.rate {
            rate.tokens -= 1.0;
        }
        self.per_second.begin();
        self.per_minute.begin();
        if let Some(day) = &mut self.per_day {
            day.tokens -= 1.0;
        }
        Ok(())
    }

    /// Ends a request let go by [`RateLimiter::try_begin`]: answered, failed or abandoned at `now`.
    pub fn end(&mut self, now: Instant) {
        self.per_second.end(now);
        self.per_minute.end(now);
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

    /// The most grants in any half-open window of `span` starting at a grant.
    fn most_in_any(got: &[Duration], span: Duration) -> usize {
        (0..got.len())
            .map(|i| got[i..].iter().filter(|x| **x - got[i] < span).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_more_than_floor_rps_in_any_sliding_second() {
        let t0 = Instant::now();
        for (rps, per_second) in [(1.0, 1), (1.5, 1), (2.0, 2), (2.7, 2), (10.0, 10), (0.5, 1)] {
            let mut l = RateLimiter::new(rps, None, t0);
            let got = grants_until(&mut l, t0, t0 + Duration::from_secs(30));
            let most = most_in_any(&got, Duration::from_secs(1));
            assert!(most <= per_second, "rps {rps}: {most} in one second");
            assert!(most_in_any(&got, Duration::from_secs(60)) <= per_second * 60);
        }
    }

    #[test]
    fn a_request_exactly_one_second_after_another_is_in_a_new_window() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1.0, None, t0);
        assert_eq!(l.try_acquire(t0), Ok(()));
        let second = t0 + Duration::from_secs(1);
        assert_eq!(l.try_acquire(t0 + Duration::from_millis(999)), Err(second));
        assert_eq!(l.try_acquire(second), Ok(()));
        let mut two = RateLimiter::new(2.0, None, t0);
        let got = grants_until(&mut two, t0, t0 + Duration::from_secs(2));
        let ms: Vec<u128> = got.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 500, 1000, 1500, 2000],
            "evenly spaced, edges included"
        );
    }

    #[test]
    fn a_request_in_flight_holds_its_place_until_its_answer_then_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = RateLimiter::new(2.0, None, t0);
        assert_eq!(l.try_begin(t0), Ok(()));
        assert_eq!(l.try_begin(t0 + ms(500)), Ok(()));
        assert_eq!(
            l.try_begin(t0 + ms(1000)),
            Err(None),
            "both still in flight"
        );
        l.end(t0 + ms(1200));
        assert_eq!(
            l.try_begin(t0 + ms(1300)),
            Err(Some(t0 + ms(2200))),
            "the answered one counts from its answer, and leaves a second later"
        );
        l.end(t0 + ms(1400));
        assert_eq!(l.try_begin(t0 + ms(1500)), Err(Some(t0 + ms(2200))));
        assert_eq!(l.try_begin(t0 + ms(2200)), Ok(()));
    }

    #[test]
    fn answered_requests_never_fall_two_in_a_second_as_the_server_sees_them() {
        // The server counts each request somewhere between its start and its answer: with
        // answers 0..300 ms after the start, any arrival times stay a second apart per pair.
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2.0, None, t0);
        let mut now = t0;
        let mut spans = Vec::new();
        let mut in_flight: Vec<(Instant, Instant)> = Vec::new();
        let mut k = 0u64;
        while now < t0 + Duration::from_secs(20) {
            in_flight.retain(|&(start, end)| {
                if end <= now {
                    l.end(end);
                    spans.push((start, end));
                    false
                } else {
                    true
                }
            });
            if l.try_begin(now).is_ok() {
                k += 1;
                in_flight.push((now, now + Duration::from_millis(k * 37 % 300)));
            }
            now += Duration::from_millis(1);
        }
        assert!(spans.len() >= 25, "{}", spans.len());
        // Three requests could meet in one second only if the latest start came less than a
        // second after the earliest answer.
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate().skip(i + 1) {
                for c in spans.iter().skip(j + 1) {
                    let latest_start = a.0.max(b.0).max(c.0);
                    let earliest_end = a.1.min(b.1).min(c.1);
                    assert!(
                        latest_start.saturating_duration_since(earliest_end)
                            >= Duration::from_secs(1),
                        "{a:?} {b:?} {c:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_server_quota_counts_windows_not_spacing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = RateLimiter::server_quota(2.0, t0);
        // Two arrivals 100 ms apart are within "2 per second"; a third in that second is not.
        assert_eq!(q.try_acquire(t0), Ok(()));
        assert_eq!(q.try_acquire(t0 + ms(100)), Ok(()));
        assert_eq!(q.try_acquire(t0 + ms(900)), Err(t0 + ms(1000)));
        assert_eq!(q.try_acquire(t0 + ms(1000)), Ok(()));
        let mut half = RateLimiter::server_quota(0.5, t0);
        assert_eq!(half.try_acquire(t0), Ok(()));
        assert_eq!(half.try_acquire(t0 + ms(1500)), Err(t0 + ms(2000)));
    }

    #[test]
    fn a_fractional_rate_keeps_its_average() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0.5, None, t0);
        let got = grants_until(&mut l, t0, t0 + Duration::from_secs(60));
        assert_eq!(got.len(), 31, "one at once, then one every 2 s: {got:?}");
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
        // 2/s is 120 a minute.
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
