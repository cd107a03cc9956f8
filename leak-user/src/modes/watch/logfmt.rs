//! `watch`'s log: one logfmt line per event, with UTC times (RFC 3339), and the time stamps
//! in report file names.
use super::*;

/// One structured log line on stderr, logfmt: `ts=… event=… key=value …`.
pub fn log_event(event: &str, fields: &[(&str, String)]) {
    eprintln!("{}", logfmt_line(SystemTime::now(), event, fields));
}

/// The text of a log line (values with spaces, quotes or `=` are quoted).
pub fn logfmt_line(at: SystemTime, event: &str, fields: &[(&str, String)]) -> String {
    let mut line = format!("ts={} event={event}", rfc3339(at));
    for (key, value) in fields {
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\');
        if plain {
            let _ = write!(line, " {key}={value}");
        } else {
            let _ = write!(line, " {key}={value:?}");
        }
    }
    line
}

/// Civil date (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

/// (year, month, day, hour, minute, second) in UTC.
pub(super) fn utc_parts(at: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    (
        year,
        month,
        day,
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
    )
}

/// "2026-11-24T02:45:00Z".
pub fn rfc3339(at: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(at);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// "20261124T024500Z", for file names.
pub fn file_stamp(at: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(at);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_log_lines() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_919_100);
        assert_eq!(rfc3339(at), "2026-11-29T02:25:00Z");
        assert_eq!(file_stamp(at), "20261129T022500Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        let line = logfmt_line(
            at,
            "window_opened",
            &[
                ("pid", "12".into()),
                ("reason", "memory rising 100 KiB/s".into()),
            ],
        );
        assert_eq!(
            line,
            "ts=2026-11-29T02:25:00Z event=window_opened pid=12 reason=\"memory rising 100 KiB/s\""
        );
    }
}
