//! Wall-clock timestamps as they are stored and shown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// Formats Unix seconds as an RFC 3339 UTC timestamp, e.g. `2026-12-03T19:24:00Z`. Times past
/// the year 9999 (a provider's absurd `expires_in`, say) show as its last second.
pub(crate) fn rfc3339(unix: u64) -> String {
    let unix = unix.min(LAST_RFC3339_SECOND);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_any_time_without_panicking() {
        assert_eq!(rfc3339(1_796_325_840), "2026-12-03T19:24:00Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
