//! Wall-clock time as berth reports it (unix seconds in statuses, events and reports), behind
//! a trait so the engine's tests can set it. Timers use tokio's clock, which tests pause.

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Unix seconds now.
    fn now_unix(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        now_unix()
    }
}

/// Unix seconds now, by the system's clock.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01 (`days_from_civil`).
fn days(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `2026-12-01 20:43:10 UTC`.
pub fn format_unix(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Unix seconds as RFC 3339 in UTC: `2026-12-01T20:43:10Z`.
pub fn format_rfc3339(secs: u64) -> String {
    format_unix(secs).replace(" UTC", "Z").replacen(' ', "T", 1)
}

/// Unix seconds of an RFC 3339 time as Podman writes it (`2026-12-01T20:43:10.123456789Z`,
/// or with an offset such as `+01:00`); `None` for anything else, and for Go's zero time
/// (`0001-01-01T00:00:00Z`, "never").
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if y < 1970 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let m = u32::try_from(mo).ok()?;
    let dd = u32::try_from(d).ok()?;
    let t = days(y, m, dd) * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).ok()
}

/// A duration in seconds as `3 s`, `5 min`, `2 h 10 min`, `4 days`.
pub fn format_age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => {
            let m = secs / 60 % 60;
            if m == 0 {
                format!("{} h", secs / 3600)
            } else {
                format!("{} h {m} min", secs / 3600)
            }
        }
        _ => {
            let d = secs / 86_400;
            format!("{d} day{}", if d == 1 { "" } else { "s" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_format_and_parse_back() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_796_158_990), "2026-12-01 21:03:10 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_rfc3339(1_796_158_990), "2026-12-01T21:03:10Z");
        assert_eq!(
            parse_rfc3339(&format_rfc3339(1_796_158_990)),
            Some(1_796_158_990)
        );
        for t in [0u64, 951_782_400, 1_796_158_990, 4_102_444_799] {
            let text = format_unix(t).replace(" UTC", "Z").replacen(' ', "T", 1);
            assert_eq!(parse_rfc3339(&text), Some(t), "{text}");
        }
    }

    #[test]
    fn podman_times_parse_with_fractions_and_offsets() {
        assert_eq!(
            parse_rfc3339("2026-12-01T21:03:10.123456789Z"),
            Some(1_796_158_990)
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T22:03:10.5+01:00"),
            Some(1_796_158_990)
        );
        assert_eq!(
            parse_rfc3339("0001-01-01T00:00:00Z"),
            None,
            "Go's zero time"
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(format_age(5), "5 s");
        assert_eq!(format_age(300), "5 min");
        assert_eq!(format_age(7800), "2 h 10 min");
        assert_eq!(format_age(7200), "2 h");
        assert_eq!(format_age(86_400), "1 day");
        assert_eq!(format_age(4 * 86_400), "4 days");
    }
}
