//! Time as the gateway uses it: an injectable clock (tests move time instead of sleeping),
//! FHIR instants for `meta.lastUpdated`, and FHIR date/dateTime/instant values as the
//! [low, high] range of microseconds they cover, which is what date search compares.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Micros;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        d.as_micros() as Micros
    }
}

/// A clock that only moves when told to.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Micros) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start)))
    }
    pub fn advance(&self, by: Micros) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}

pub const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1)
}

/// `2026-11-23T11:12:14.123Z`: the instant form the server writes (millisecond precision).
pub fn format_instant(t: Micros) -> String {
    let days = t.div_euclid(MICROS_PER_DAY);
    let rem = t.rem_euclid(MICROS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let secs = rem / MICROS_PER_SEC;
    let millis = (rem % MICROS_PER_SEC) / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Truncates to the millisecond, the precision of [`format_instant`].
pub fn to_millis_precision(t: Micros) -> Micros {
    t - t.rem_euclid(1000)
}

pub fn http_date(t: Micros) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_micros(t.max(0) as u64);
    httpdate::fmt_http_date(st)
}

pub fn parse_http_date(s: &str) -> Option<Micros> {
    let st = httpdate::parse_http_date(s).ok()?;
    Some(st.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros() as Micros)
}

/// The inclusive range of microseconds a FHIR `date`, `dateTime` or `instant` covers:
/// `2020` is the whole year, `2020-03-01T10:00:00+01:00` one second. Values without a
/// time zone are read as UTC. `None` when the text is not such a value.
pub fn fhir_date_range(s: &str) -> Option<(Micros, Micros)> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    if b.len() == 4 {
        let lo = days_from_civil(year, 1, 1) * MICROS_PER_DAY;
        return Some((lo, days_from_civil(year + 1, 1, 1) * MICROS_PER_DAY - 1));
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 {
        let lo = days_from_civil(year, month, 1) * MICROS_PER_DAY;
        let hi = lo + days_in_month(year, month) * MICROS_PER_DAY - 1;
        return Some((lo, hi));
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = num(8, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_start = days_from_civil(year, month, day) * MICROS_PER_DAY;
    if b.len() == 10 {
        return Some((day_start, day_start + MICROS_PER_DAY - 1));
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hour = num(11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = num(14, 2)?;
    let mut pos = 16;
    let (mut second, mut frac, mut precision) = (0i64, 0i64, 60 * MICROS_PER_SEC);
    if b.get(pos) == Some(&b':') {
        second = num(17, 2)?;
        pos = 19;
        precision = MICROS_PER_SEC;
        if b.get(pos) == Some(&b'.') {
            let start = pos + 1;
            let mut end = start;
            while b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == start {
                return None;
            }
            let digits = &s[start..end];
            let kept = &digits[..digits.len().min(6)];
            let scale = 10i64.pow(6 - kept.len() as u32);
            frac = kept.parse::<i64>().ok()? * scale;
            precision = if digits.len() >= 6 { 1 } else { scale };
            pos = end;
        }
    }
    if hour > 24 || minute > 59 || second > 60 {
        return None;
    }
    let offset = match b.get(pos) {
        None => 0,
        Some(b'Z') if b.len() == pos + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == pos + 6 && b.get(pos + 3) == Some(&b':') => {
            let o = (num(pos + 1, 2)? * 60 + num(pos + 4, 2)?) * 60 * MICROS_PER_SEC;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let lo = day_start + ((hour * 60 + minute) * 60 + second) * MICROS_PER_SEC + frac - offset;
    Some((lo, lo + precision - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let (lo, _) = fhir_date_range("2026-11-23T11:12:14.123Z").unwrap();
        assert_eq!(format_instant(lo), "2026-11-23T11:12:14.123Z");
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn ranges_follow_precision() {
        let (lo, hi) = fhir_date_range("2020").unwrap();
        assert_eq!(format_instant(lo), "2020-01-01T00:00:00.000Z");
        assert_eq!(format_instant(hi), "2020-12-31T23:59:59.999Z");
        let (lo, hi) = fhir_date_range("2024-02").unwrap();
        assert_eq!(hi - lo + 1, 29 * MICROS_PER_DAY);
        let (lo, hi) = fhir_date_range("2020-03-01T10:00:00+01:00").unwrap();
        assert_eq!(format_instant(lo), "2020-03-01T09:00:00.000Z");
        assert_eq!(hi - lo + 1, MICROS_PER_SEC);
        let (lo, hi) = fhir_date_range("2020-03-01T10:00").unwrap();
        assert_eq!(hi - lo + 1, 60 * MICROS_PER_SEC);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "20",
            "2020-13",
            "2020-02-30",
            "2020-1-01",
            "2020-01-01T",
            "2020-01-01T10",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10:00:00+0100",
            "2020-01-01 10:00",
        ] {
            assert!(fhir_date_range(bad).is_none(), "{bad}");
        }
    }
}
