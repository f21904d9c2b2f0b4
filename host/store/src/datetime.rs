//! ISO 8601 / RFC 3339 date-times for HAR's `startedDateTime`: [`Timestamp`]s written as
//! `2024-05-01T12:34:56.123456Z` and read back with any fraction and UTC offset (HAR
//! writers use `Z`, `+00:00` and local offsets). Civil-date arithmetic after Howard
//! Hinnant's `days_from_civil`; no time zone database, no clock.

use flowgate_flow::Timestamp;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn format(t: Timestamp) -> String {
    let micros = t.as_micros();
    let secs = (micros / 1_000_000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        micros % 1_000_000
    )
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (no offset: UTC); the
/// fraction is rounded to the microsecond.
pub(crate) fn parse(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0u64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let fraction = &text[at + 1..at + 1 + digits];
        let value: f64 = format!("0.{fraction}").parse().ok()?;
        micros = (value * 1e6).round() as u64;
        at += 1 + digits;
    }
    let offset_secs: i64 = match &text[at..] {
        "" | "Z" | "z" => 0,
        zone => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(Timestamp::from_micros(secs.checked_mul(1_000_000)?.checked_add(micros)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(format(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(parse("2023-11-14T22:13:20.123456Z"), Some(t));
        assert_eq!(parse("2023-11-14T22:13:20.123456+00:00"), Some(t));
        assert_eq!(parse("2023-11-15T00:13:20.123456+02:00"), Some(t));
        assert_eq!(parse("2023-11-14T17:13:20.123456-0500"), Some(t));
        assert_eq!(parse("2023-11-14T22:13:20.123Z"), Some(Timestamp::from_micros(1_700_000_000_123_000)));
        assert_eq!(parse("2023-11-14T22:13:20"), Some(Timestamp::from_micros(1_700_000_000_000_000)));
        assert_eq!(format(Timestamp::EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(parse("2000-02-29T00:00:00Z"), Some(Timestamp::from_micros(951_782_400_000_000)));
        for bad in ["", "2023-11-14", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20.Z", "2023-11-14T22:13:20+2", "x"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // Every day over four centuries goes out and back.
        for day in (-1_000i64..146_097).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }
}
