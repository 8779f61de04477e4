//! Durations printed the way Go's `time.Duration.String` prints them
//! (`5m0s`, `1.5s`, `250ms`), the same notation users write in a
//! Function's `keepAlive` and `timeout`.

use std::{fmt, time::Duration};

/// Displays a [`Duration`] Go-style: `0s`, `250ms`, `1.5s`, `5m0s`, `1h0m0s`,
/// rounded to the millisecond from a millisecond up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoStyle(pub Duration);

/// `d` formatted Go-style; see [`GoStyle`].
pub fn format_duration(d: Duration) -> String {
    GoStyle(d).to_string()
}

/// `whole` followed by the fraction `part / 10^digits` with trailing zeros
/// trimmed, e.g. (1, 500, 3) -> "1.5".
fn decimal(f: &mut fmt::Formatter<'_>, whole: u128, part: u128, digits: usize) -> fmt::Result {
    if part == 0 {
        return write!(f, "{whole}");
    }
    let fraction = format!("{part:0digits$}");
    write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
}

impl fmt::Display for GoStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Past a millisecond, finer digits are measurement noise in
        // everything thaw prints (events, summaries, annotations).
        let raw = self.0.as_nanos();
        let nanos = if raw >= 1_000_000 {
            (raw + 500_000) / 1_000_000 * 1_000_000
        } else {
            raw
        };
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            decimal(f, nanos / 1_000, nanos % 1_000, 3)?;
            return f.write_str("µs");
        }
        if nanos < 1_000_000_000 {
            decimal(f, nanos / 1_000_000, nanos % 1_000_000, 6)?;
            return f.write_str("ms");
        }
        let secs = nanos / 1_000_000_000;
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        decimal(f, seconds, nanos % 1_000_000_000, 9)?;
        f.write_str("s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go_to_the_millisecond() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1_500), "2ms"),
            (Duration::from_micros(525_631), "526ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(86_400), "24h0m0s"),
            (Duration::from_millis(61_250), "1m1.25s"),
            (Duration::new(3, 1), "3s"),
            (Duration::new(5, 5_698_289), "5.006s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
    }
}
