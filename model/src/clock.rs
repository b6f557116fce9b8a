//! Time as a dependency: `decide` gets `now` from the engine's clock, so tests can pin it.
//!
//! The store keeps time at microsecond resolution (an event record's timestamp is microseconds
//! since the epoch). [`truncate_to_micros`] is the one definition of that resolution: both
//! clocks here return truncated times, and [`DecideContext::new`](crate::DecideContext::new)
//! and the test helper's `given().at()` truncate too, so what `decide` sees in a unit test,
//! through the engine and after a reload is the same instant — a booking completed "at
//! exactly its end time" is decided alike everywhere.

use chrono::{DateTime, Utc};
use std::sync::Mutex;

/// The store's time resolution: microseconds. Idempotent.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Where the engine reads "now". Implementations should return times at microsecond
/// resolution ([`truncate_to_micros`]); the engine truncates again where it builds a
/// [`DecideContext`](crate::DecideContext), so a coarser or finer clock is still safe.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock, truncated to microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_to_micros(Utc::now())
    }
}

/// A clock that moves only when told to: for deterministic tests of deadlines and timers.
/// It keeps microsecond resolution: a start or a step with nanoseconds is truncated.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(truncate_to_micros(start)))
    }
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = truncate_to_micros(to);
    }
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now = truncate_to_micros(*now + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_keeps_microseconds_like_the_store() {
        let start = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now().timestamp_subsec_nanos(), 123_456_000);
        clock.advance(chrono::Duration::nanoseconds(999));
        assert_eq!(clock.now().timestamp_subsec_nanos(), 123_456_000);
        clock.set(start);
        assert_eq!(clock.now(), truncate_to_micros(start));
        assert_eq!(truncate_to_micros(clock.now()), clock.now());
    }
}
