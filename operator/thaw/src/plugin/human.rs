//! Durations as kubectl prints them (apimachinery's `HumanDuration`): `5s`
//! up to two minutes, then `3m2s`, `42m`, `5h10m`, `2d3h`, `400d`, `3y20d`.

use std::time::Duration;

pub fn human(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_rest(minutes, "m", seconds % 60, "s");
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return with_rest(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_rest(days, "d", hours % 24, "h");
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return with_rest(days / 365, "y", days % 365, "d");
    }
    format!("{}y", days / 365)
}

/// `3m` when the rest is zero, `3m2s` otherwise.
fn with_rest(big: u64, big_unit: &str, rest: u64, rest_unit: &str) -> String {
    if rest == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{rest}{rest_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_kubectl() {
        let s = Duration::from_secs;
        let cases = [
            (Duration::from_millis(900), "0s"),
            (s(5), "5s"),
            (s(119), "119s"),
            (s(120), "2m"),
            (s(182), "3m2s"),
            (s(599), "9m59s"),
            (s(600), "10m"),
            (s(179 * 60 + 59), "179m"),
            (s(3 * 3600), "3h"),
            (s(5 * 3600 + 10 * 60), "5h10m"),
            (s(47 * 3600), "47h"),
            (s(48 * 3600), "2d"),
            (s(51 * 3600), "2d3h"),
            (s(400 * 86_400), "400d"),
            (s((2 * 365 + 20) * 86_400), "2y20d"),
            (s(9 * 365 * 86_400), "9y"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want, "{d:?}");
        }
    }
}
