//! Restart back-off like kubelet's, and Go-style duration parsing/formatting.

use std::time::Duration;

/// The longest back-off kubelet uses between container restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Kubelet's per-container crash back-off.
///
/// The first restart after a crash is immediate; the next waits `base`, then
/// `2*base`, doubling up to `cap`. A container that ran for longer than
/// `2*cap` before it exited starts over (kubelet forgets back-off entries that
/// have not been touched for twice the maximum).
#[derive(Debug, Clone)]
pub struct CrashBackoff {
    base: Duration,
    cap: Duration,
    current: Option<Duration>,
}

impl CrashBackoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            current: None,
        }
    }

    /// How long to wait before restarting a container that exited after running
    /// for `ran_for`. Zero means restart right away.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.cap * 2 {
            self.current = None;
        }
        match self.current {
            None => {
                self.current = Some(self.base);
                Duration::ZERO
            }
            Some(d) => {
                self.current = Some((d * 2).min(self.cap));
                d
            }
        }
    }
}

/// Plain doubling back-off (image "pulls", sandbox creation): `base`, `2*base`, ... `cap`.
#[derive(Debug, Clone)]
pub struct Doubling {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Doubling {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            next: base,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.cap);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Formats a duration as Go's `time.Duration.String()` does: `10s`, `1m20s`, `5m0s`, `500ms`.
pub fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d < Duration::from_secs(1) {
        let nanos = d.as_nanos();
        if nanos.is_multiple_of(1_000_000) {
            return format!("{}ms", nanos / 1_000_000);
        }
        if nanos.is_multiple_of(1_000) {
            return format!("{}µs", nanos / 1_000);
        }
        return format!("{nanos}ns");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    let frac = d.subsec_nanos();
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let digits = format!("{frac:09}");
        format!("{s}.{}s", digits.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Parses Go-style durations: `10s`, `1m30s`, `500ms`, `1.5s`, `2h`. A bare
/// number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit"))?;
        if num_len == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?}: bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_is_immediate_first_then_doubles_to_cap() {
        let mut b = CrashBackoff::new(Duration::from_secs(10), MAX_BACKOFF);
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn crash_backoff_resets_after_a_long_run() {
        let mut b = CrashBackoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let short = Duration::from_millis(10);
        assert_eq!(b.next_delay(short), Duration::ZERO);
        assert_eq!(b.next_delay(short), Duration::from_secs(1));
        assert_eq!(b.next_delay(short), Duration::from_secs(2));
        assert_eq!(b.next_delay(Duration::from_secs(601)), Duration::ZERO);
        assert_eq!(b.next_delay(short), Duration::from_secs(1));
    }

    #[test]
    fn doubling_caps_and_resets() {
        let mut b = Doubling::new(Duration::from_secs(1), Duration::from_secs(5));
        let d: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
