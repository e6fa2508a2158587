//! Durations (`30s`, `5m`, `250ms`) and sizes (`64MiB`, `1 GiB`) as written in manifests.

use std::time::Duration;

/// Parse a human duration such as `90s`, `5m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `30s`, `5m`, `1h`"))
}

/// Parse a size such as `64MiB`, `512 MB` or `1GiB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. `64MiB`, `1GiB`"))
}

/// Format bytes for people, e.g. `64.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("`soon` is not a duration")
        );
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert_eq!(format_size(64 << 20), "64.0 MiB");
    }
}
