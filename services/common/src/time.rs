//! Timestamps: ISO-8601 strings in UTC with a `Z`, as the contract prescribes.

use chrono::{SecondsFormat, Utc};

/// The current time as an ISO-8601 UTC string with millisecond precision, e.g.
/// `2021-08-01T00:00:00.000Z`.
pub fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whether `value` parses as an RFC 3339 / ISO-8601 timestamp with an offset.
pub fn is_iso_timestamp(value: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_utc_iso() {
        let now = now_iso();
        assert!(now.ends_with('Z'), "{now}");
        assert!(is_iso_timestamp(&now));
    }

    #[test]
    fn rejects_garbage() {
        assert!(is_iso_timestamp("2021-08-01T00:00:00Z"));
        assert!(!is_iso_timestamp("yesterday"));
        assert!(!is_iso_timestamp(""));
    }
}
