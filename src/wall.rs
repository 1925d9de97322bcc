//! UTC wall time as persisted and printed: milliseconds since the Unix epoch; and [`Clock`],
//! the daemon's one source of both times.
//!
//! Wall time is used only for what outlives the process (stored times, event timestamps, the
//! `stall_after`/`give_up_after` clocks that must survive restarts). Schedules and timeouts use
//! the monotonic clock (`tokio::time::Instant`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The run's one clock. The monotonic instant is always tokio's (so `tokio::time::pause`
/// drives it); the wall time is the system's ([`Clock::system`], production: it follows the
/// system clock across long runs, NTP steps included) or, for tests, derived from tokio's
/// instant after an anchor ([`Clock::anchored`]: a paused clock moves both together, so a
/// 30-minute stall rule passes in a moment of real time).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: Option<(UnixMs, Instant)>,
}

impl Clock {
    pub fn system() -> Self {
        Clock { anchor: None }
    }

    /// Wall time `wall` now, advancing with tokio's clock from here on.
    pub fn anchored(wall: UnixMs) -> Self {
        Clock {
            anchor: Some((wall, Instant::now())),
        }
    }

    pub fn wall(&self) -> UnixMs {
        match self.anchor {
            None => UnixMs::now(),
            Some((wall, at)) => wall.plus(Instant::now().saturating_duration_since(at)),
        }
    }

    pub fn instant(&self) -> Instant {
        Instant::now()
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMs(d.as_millis() as i64)
    }

    /// `self - earlier`, or zero when `earlier` is later (a clock stepped back).
    pub fn since(self, earlier: UnixMs) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    pub fn plus(self, d: Duration) -> UnixMs {
        UnixMs(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }

    /// RFC 3339 with milliseconds, `2026-11-30T18:40:00.123Z`.
    pub fn rfc3339_millis(self) -> String {
        humantime::format_rfc3339_millis(self.to_system_time()).to_string()
    }

    /// RFC 3339 to the second, `2026-11-30T18:40:00Z`.
    pub fn rfc3339_seconds(self) -> String {
        humantime::format_rfc3339_seconds(self.to_system_time()).to_string()
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_subtracts() {
        let t = UnixMs(1_796_064_000_123);
        assert_eq!(t.rfc3339_millis(), "2026-11-30T18:40:00.123Z");
        assert_eq!(t.rfc3339_seconds(), "2026-11-30T18:40:00Z");
        assert_eq!(
            t.plus(Duration::from_secs(2)).since(t),
            Duration::from_secs(2)
        );
        assert_eq!(t.since(t.plus(Duration::from_secs(2))), Duration::ZERO);
    }
}
