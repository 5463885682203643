//! Where and when an export was made: the git commit of the working tree and an RFC 3339 time.

use std::process::Command;
use std::time::SystemTime;

/// `git rev-parse HEAD` of the current directory, with `-dirty` appended when tracked files
/// differ from it; `None` outside a git checkout or without `git` on the PATH.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    if commit.is_empty() {
        return None;
    }
    let clean = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .map(|s| s.success())
        .unwrap_or(true);
    Some(if clean { commit } else { format!("{commit}-dirty") })
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
