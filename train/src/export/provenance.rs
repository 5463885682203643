//! Where and when an export was made: the git commit the exporter was built from and an RFC 3339
//! time, without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// The commit of the checkout this crate was built from (`git rev-parse HEAD` at build time, by
/// `build.rs`), with `-dirty` appended when the files it is built from differed from it; `None`
/// for a build outside a git checkout or without `git`. Read at build time because the directory
/// an export runs in may be any repository, or none.
pub fn git_commit() -> Option<String> {
    option_env!("TRAIN_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

/// The current UTC time as RFC 3339 with seconds, e.g. `2026-11-25T18:04:05Z`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Seconds since the Unix epoch (UTC) as RFC 3339.
pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`):
/// shift the year to start in March so the leap day is last, then split 400-year eras.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_as_rfc3339() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400` = 2000-02-29 00:00:00 (a leap day in a 400-year leap year).
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix(951_868_799), "2000-02-29T23:59:59Z");
        // 2100 is not a leap year: the day after 2100-02-28 is 2100-03-01.
        assert_eq!(rfc3339_from_unix(4_107_456_000), "2100-02-28T00:00:00Z");
        assert_eq!(rfc3339_from_unix(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_795_609_445), "2026-11-25T12:24:05Z");
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // Across four centuries the date advances by exactly one calendar day each step.
        let month_len = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut prev = civil_from_days(-1);
        assert_eq!(prev, (1969, 12, 31));
        for day in 0..146_097 {
            let cur = civil_from_days(day);
            let expected = if prev.2 < month_len(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 == 12 {
                (prev.0 + 1, 1, 1)
            } else {
                (prev.0, prev.1 + 1, 1)
            };
            assert_eq!(cur, expected, "day {day}");
            prev = cur;
        }
    }
}
