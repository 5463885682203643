//! Where and when an export was made: the git commit the exporter was built from and an RFC 3339
//! time.

use std::time::SystemTime;

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
    rfc3339(SystemTime::now())
}

/// `at` in UTC as RFC 3339 with whole seconds.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn known_instants_format_as_rfc3339() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400` = 2000-02-29 00:00:00 (a leap day in a 400-year leap year).
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        // 2100 is not a leap year: the day after 2100-02-28 is 2100-03-01.
        assert_eq!(at(4_107_456_000), "2100-02-28T00:00:00Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(at(1_795_609_445), "2026-11-25T12:24:05Z");
        // Whole seconds: what the metadata has always carried.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01Z"
        );
    }
}
