//! Human durations for flags: "250ms", "2s", "500us", "1m" or a bare number
//! of milliseconds. The server and the client parse their flags with it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration; use e.g. 500us, 2ms, 1.5s or 1m")]
    NotANumber(String),
    #[error("unknown duration unit {unit:?} in {input:?}; use ns, us, ms, s or m")]
    UnknownUnit { unit: String, input: String },
    #[error("{0:?} is not a valid duration (negative or too large)")]
    OutOfRange(String),
}

/// Parses "250ms", "2s", "500us", "1m" or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_string()))?;
    let secs = match unit.trim() {
        "" | "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "s" => v,
        "m" => v * 60.0,
        other => {
            return Err(DurationError::UnknownUnit {
                unit: other.to_string(),
                input: s.to_string(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::OutOfRange(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(matches!(
            parse_duration("fast"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(
            parse_duration("3h")
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
    }
}
