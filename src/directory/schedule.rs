//! When the server syncs: `daily HH:MM` or `weekly DAY HH:MM` (UTC), and the loop inside
//! `serve` that runs the due sync under the database lease (several instances sharing one
//! PostgreSQL: one of them syncs, the others find the lease taken and skip).

use std::sync::Arc;

use time::{OffsetDateTime, Weekday};

use super::sync::{self, Mode};
use super::{Directory, client::RorClient};
use crate::fhir::interaction::Fhir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// `None`: every day.
    pub weekday: Option<Weekday>,
    pub hour: u8,
    pub minute: u8,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let bad = || format!("`{text}` is not `daily HH:MM` or `weekly DAY HH:MM` (DAY: mon…sun)");
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (weekday, hm) = match parts.as_slice() {
            ["daily", hm] => (None, *hm),
            ["weekly", day, hm] => {
                let d = match day.to_ascii_lowercase().as_str() {
                    "mon" => Weekday::Monday,
                    "tue" => Weekday::Tuesday,
                    "wed" => Weekday::Wednesday,
                    "thu" => Weekday::Thursday,
                    "fri" => Weekday::Friday,
                    "sat" => Weekday::Saturday,
                    "sun" => Weekday::Sunday,
                    _ => return Err(bad()),
                };
                (Some(d), *hm)
            }
            _ => return Err(bad()),
        };
        let (h, m) = hm.split_once(':').ok_or_else(bad)?;
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(Schedule {
            weekday,
            hour,
            minute,
        })
    }

    /// The first instant strictly after `after` that this schedule names.
    pub fn next_after(&self, after: OffsetDateTime) -> OffsetDateTime {
        let mut day = after.date();
        for _ in 0..9 {
            if let Ok(at) = day.with_hms(self.hour, self.minute, 0) {
                let at = at.assume_utc();
                if at > after && self.weekday.is_none_or(|w| day.weekday() == w) {
                    return at;
                }
            }
            match day.next_day() {
                Some(d) => day = d,
                None => break,
            }
        }
        after + time::Duration::days(1)
    }
}

/// Runs the schedules until the process stops. A full sync due at the same time as a delta
/// wins (it covers it). Failures are logged; the next due run resumes.
pub async fn run_forever(fhir: Arc<Fhir>, directory: Arc<Directory>, client: Arc<RorClient>) {
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    loop {
        let now = OffsetDateTime::now_utc();
        let next_full = directory.full_schedule.next_after(now);
        let next_delta = directory.delta_schedule.next_after(now);
        let (at, mode) = if next_full <= next_delta {
            (next_full, Mode::Full)
        } else {
            (next_delta, Mode::Delta)
        };
        tracing::info!(next = %at, ?mode, "ror: next scheduled sync");
        let wait = (at - now).unsigned_abs();
        tokio::time::sleep(wait).await;
        let opts = directory.options(mode, &owner, false);
        match sync::run(&fhir, &client, &directory.mapping, &opts).await {
            Ok(report) => tracing::info!(summary = %report.summary(), "ror: scheduled sync done"),
            Err(sync::SyncError::Busy) => {
                tracing::info!("ror: another instance is syncing; skipped")
            }
            Err(e) => {
                tracing::warn!(error = %e, "ror: scheduled sync failed; the next run resumes")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_and_finds_the_next_time() {
        let d = Schedule::parse("daily 03:00").unwrap();
        assert_eq!(
            d.next_after(datetime!(2026-11-23 02:00 UTC)),
            datetime!(2026-11-23 03:00 UTC)
        );
        assert_eq!(
            d.next_after(datetime!(2026-11-23 03:00 UTC)),
            datetime!(2026-11-24 03:00 UTC)
        );
        let w = Schedule::parse("weekly sun 01:30").unwrap();
        // 2026-11-23 is a Monday
        assert_eq!(
            w.next_after(datetime!(2026-11-23 12:00 UTC)),
            datetime!(2026-11-29 01:30 UTC)
        );
        for bad in ["", "hourly", "daily 25:00", "weekly xyz 01:00", "daily 3"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
