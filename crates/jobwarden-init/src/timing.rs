//! Time arithmetic, as plain functions of their inputs (STYLE.md §1, §2): defaults, the grace
//! budget, the deadline, the checkpoint time, heartbeat back-off. No clock is read here.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How often a heartbeat is sent when `--heartbeat-url` is set without `--heartbeat-every`.
pub const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// The most of the grace period kept back from saving.
pub const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(2);

/// The part of the grace period not spent saving: a tenth of it, at most two seconds.
///
/// It leaves time, before the runtime's SIGKILL at the end of the grace period, to stop git,
/// kill whatever still runs in the job's process group, reap it and write the summary.
pub fn safety_margin(grace: Duration) -> Duration {
    MAX_SAFETY_MARGIN.min(grace / 10)
}

/// How long after SIGTERM saving may go on; also when the job's process group is SIGKILLed if
/// it is still running.
pub fn save_budget(grace: Duration) -> Duration {
    grace.saturating_sub(safety_margin(grace))
}

/// The job's deadline: `FLOWFORGE_DEADLINE` when set, else start time plus `FLOWFORGE_TIMEOUT`.
pub fn resolve_deadline(
    deadline: Option<DateTime<Utc>>,
    timeout: Option<Duration>,
    started: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    deadline.or_else(|| {
        let timeout = TimeDelta::from_std(timeout?).ok()?;
        started.checked_add_signed(timeout)
    })
}

/// When the checkpoint runs: `before` ahead of the deadline; `None` without both.
pub fn checkpoint_at(
    deadline: Option<DateTime<Utc>>,
    before: Option<Duration>,
) -> Option<DateTime<Utc>> {
    let before = TimeDelta::from_std(before?).ok()?;
    deadline?.checked_sub_signed(before)
}

/// Maps a wall-clock `target` onto the monotonic clock, given one reading of each clock taken
/// together. A target in the past maps to `now_mono` (act at once).
pub fn to_instant(target: DateTime<Utc>, now_wall: DateTime<Utc>, now_mono: Instant) -> Instant {
    let ahead = (target - now_wall).to_std().unwrap_or(Duration::ZERO);
    now_mono.checked_add(ahead).unwrap_or(now_mono)
}

/// Delay before the next heartbeat: the interval after a success; after failures a quick
/// retry (1 s, 2 s, 4 s, ...) that never waits longer than the interval.
pub fn heartbeat_delay(every: Duration, consecutive_failures: u32) -> Duration {
    if consecutive_failures == 0 {
        return every;
    }
    let backoff = Duration::from_secs(1u64 << (consecutive_failures - 1).min(20));
    backoff.min(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid test timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn margin_is_a_tenth_of_grace_capped_at_two_seconds() {
        assert_eq!(
            safety_margin(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(safety_margin(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            save_budget(Duration::from_secs(30)),
            Duration::from_secs(28)
        );
        assert_eq!(
            save_budget(Duration::from_secs(3)),
            Duration::from_millis(2700)
        );
        assert_eq!(save_budget(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn explicit_deadline_wins_over_timeout() {
        let started = t("2030-01-01T10:00:00Z");
        let fixed = t("2030-01-01T10:05:00Z");
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(resolve_deadline(Some(fixed), hour, started), Some(fixed));
        assert_eq!(
            resolve_deadline(None, hour, started),
            Some(t("2030-01-01T11:00:00Z"))
        );
        assert_eq!(resolve_deadline(None, None, started), None);
    }

    #[test]
    fn checkpoint_is_before_the_deadline_and_needs_both() {
        let deadline = Some(t("2030-01-01T11:00:00Z"));
        let ten_min = Some(Duration::from_secs(600));
        assert_eq!(
            checkpoint_at(deadline, ten_min),
            Some(t("2030-01-01T10:50:00Z"))
        );
        assert_eq!(checkpoint_at(None, ten_min), None);
        assert_eq!(checkpoint_at(deadline, None), None);
    }

    #[test]
    fn wall_clock_targets_map_onto_the_monotonic_clock() {
        let mono = Instant::now();
        let now = t("2030-01-01T10:00:00Z");
        assert_eq!(
            to_instant(t("2030-01-01T10:01:30Z"), now, mono),
            mono + Duration::from_secs(90)
        );
        assert_eq!(to_instant(t("2029-12-31T00:00:00Z"), now, mono), mono);
        assert_eq!(to_instant(now, now, mono), mono);
    }

    #[test]
    fn heartbeats_retry_quickly_but_never_slower_than_the_interval() {
        let every = Duration::from_secs(30);
        assert_eq!(heartbeat_delay(every, 0), every);
        assert_eq!(heartbeat_delay(every, 1), Duration::from_secs(1));
        assert_eq!(heartbeat_delay(every, 2), Duration::from_secs(2));
        assert_eq!(heartbeat_delay(every, 5), Duration::from_secs(16));
        assert_eq!(heartbeat_delay(every, 6), every);
        assert_eq!(heartbeat_delay(every, u32::MAX), every);
        let short = Duration::from_secs(1);
        assert_eq!(heartbeat_delay(short, 3), short);
    }
}
