//! Points in time on a flow: integer microseconds since the Unix epoch, given by the
//! caller. This crate never reads the clock; mitmproxy's float seconds convert in and out.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in whole microseconds since 1970-01-01T00:00:00Z.
///
/// Integer microseconds round-trip exactly through any serde format; mitmproxy's float
/// seconds are converted by [`Timestamp::from_secs_f64`] and [`Timestamp::as_secs_f64`].
/// The default is the epoch itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

const MICROS_PER_SEC: f64 = 1_000_000.0;

impl Timestamp {
    /// The epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The time `since_epoch` after the epoch (as from `SystemTime::duration_since(UNIX_EPOCH)`
    /// in the caller), truncated to the microsecond; saturates past the year 586 000.
    pub fn from_duration_since_epoch(since_epoch: Duration) -> Timestamp {
        Timestamp(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }

    /// The time since the epoch.
    pub const fn duration_since_epoch(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// Converts mitmproxy's float seconds since the epoch, rounded to the nearest
    /// microsecond; `None` for NaN, infinities, negative times and times too far ahead to
    /// count in `u64` microseconds.
    pub fn from_secs_f64(secs: f64) -> Option<Timestamp> {
        let micros = (secs * MICROS_PER_SEC).round();
        // `u64::MAX as f64` is 2^64, itself out of range, hence `<`; below it, a finite,
        // non-negative, integral float converts to `u64` exactly.
        if micros.is_finite() && micros >= 0.0 && micros < u64::MAX as f64 {
            Some(Timestamp(micros as u64))
        } else {
            None
        }
    }

    /// Float seconds since the epoch, as mitmproxy stores them. Exact to the microsecond
    /// for any time before the year 2255 (below 2^53 microseconds).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_SEC
    }

    /// How long after `earlier` this is; `None` if it is before `earlier`.
    pub fn checked_duration_since(self, earlier: Timestamp) -> Option<Duration> {
        self.0.checked_sub(earlier.0).map(Duration::from_micros)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_seconds_convert_to_the_microsecond() {
        let t = Timestamp::from_secs_f64(1_700_000_000.123_456).expect("in range");
        assert_eq!(t.as_micros(), 1_700_000_000_123_456);
        assert_eq!(t.as_secs_f64(), 1_700_000_000.123_456);
        assert_eq!(format!("{t:?}"), "1700000000.123456");
        // Times spread over a day in 2023 go out to float seconds and back unchanged.
        for micros in (1_700_000_000_000_000..1_700_086_400_000_000).step_by(7_919_777) {
            let t = Timestamp::from_micros(micros);
            assert_eq!(Timestamp::from_secs_f64(t.as_secs_f64()), Some(t));
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 1e20] {
            assert_eq!(Timestamp::from_secs_f64(bad), None, "{bad}");
        }
        assert_eq!(Timestamp::from_secs_f64(-0.0), Some(Timestamp::EPOCH));
    }

    #[test]
    fn durations() {
        let t = Timestamp::from_duration_since_epoch(Duration::new(5, 1_999));
        assert_eq!(t, Timestamp::from_micros(5_000_001));
        assert_eq!(t.duration_since_epoch(), Duration::from_micros(5_000_001));
        assert_eq!(Timestamp::from_duration_since_epoch(Duration::MAX).as_micros(), u64::MAX);
        assert_eq!(t.checked_duration_since(Timestamp::from_micros(1)), Some(Duration::from_micros(5_000_000)));
        assert_eq!(Timestamp::EPOCH.checked_duration_since(t), None);
    }
}
