//! Wall-clock times (what the API shows) and monotonic instants (what the
//! scaling core decides with), converted through one observed pair of both.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The monotonic instant of wall-clock time `at`, given that `wall` is `now`.
pub fn instant_at(at: Timestamp, wall: Timestamp, now: Instant) -> Instant {
    let offset = wall.duration_since(at);
    match Duration::try_from(offset) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(_) => now + Duration::try_from(-offset).unwrap_or_default(),
    }
}

/// The wall-clock time of monotonic instant `at`, given that `now` is `wall`.
pub fn wall_at(at: Instant, now: Instant, wall: Timestamp) -> Timestamp {
    let offset = if at >= now {
        SignedDuration::try_from(at - now).unwrap_or_default()
    } else {
        -SignedDuration::try_from(now - at).unwrap_or_default()
    };
    wall.checked_add(offset).unwrap_or(wall)
}

/// `t` without its fraction of a second, as annotations show it.
pub fn round_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_and_monotonic_times_convert_both_ways() {
        let now = Instant::now();
        let wall: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let earlier: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let at = instant_at(earlier, wall, now);
        assert_eq!(now.duration_since(at), Duration::from_secs(60));
        assert_eq!(wall_at(at, now, wall), earlier);
        let later = wall_at(now + Duration::from_secs(5), now, wall);
        assert_eq!(later.duration_since(wall), SignedDuration::from_secs(5));
    }
}
