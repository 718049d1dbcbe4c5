//! Durations for annotations, config values, CLI flags and HTTP bodies: the grammar shared
//! with jobwarden-init ([`jobwarden_duration`]), with the input quoted in errors.
//!
//! Accepted: plain whole seconds (`7200`) or whole numbers with units `w d h m s`, each unit
//! at most once, largest first (`90s`, `30m`, `1h30m`, `7d`, `1w2d`). `0` and `0s` parse: a
//! TTL or minimum age of zero means "immediately"; whether zero is allowed for a particular
//! setting (it is not for a timeout) is the caller's validation. Rejected with an error that
//! quotes the input and says what is wrong: empty strings, signs, fractions, whitespace
//! inside, unknown units, a unit without a number, a repeated or out-of-order unit (`1h1h`),
//! and anything over [`MAX_SECONDS`].

use std::fmt;
use std::time::Duration;

use crate::model::Timestamp;

pub use jobwarden_duration::{GRAMMAR, MAX_SECONDS};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}; use {grammar}", grammar = GRAMMAR)]
pub struct DurationError {
    /// The rejected input, verbatim.
    pub input: String,
    /// What is wrong with it.
    pub problem: jobwarden_duration::DurationError,
}

/// Parses a duration; see the module docs for the grammar.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    jobwarden_duration::parse(input).map_err(|problem| DurationError {
        input: input.to_owned(),
        problem,
    })
}

fn check_max(secs: u64) -> Result<Duration, jobwarden_duration::DurationError> {
    if secs > MAX_SECONDS {
        Err(jobwarden_duration::DurationError::Overflow)
    } else {
        Ok(Duration::from_secs(secs))
    }
}

/// Formats a duration the way the parser reads it back: `1h30m`, `45s`, `0s` (whole seconds,
/// the rest dropped: for settings; messages about time use [`time_left`] or [`format_rounded`]).
pub fn format_duration(d: Duration) -> String {
    jobwarden_duration::format(d)
}

/// A duration rounded to the nearest second, for messages: 2.9 s is `3s`, never `2s`.
pub fn format_rounded(d: Duration) -> String {
    jobwarden_duration::format_rounded(d)
}

/// When `t` is, seen from `now`, to the nearest second: `in 3s` / `4s ago` (2.9 s ahead is
/// `in 3s`, not `in 2s`).
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    if t >= now {
        format!("in {}", format_rounded(crate::model::since(t, now)))
    } else {
        format!("{} ago", format_rounded(crate::model::since(now, t)))
    }
}

/// How `now` stands to `deadline`, for messages, to the nearest second: `3s left`,
/// `overdue by 4s`, or `at the deadline` within half a second of it.
pub fn time_left(deadline: Timestamp, now: Timestamp) -> String {
    let ms = (deadline - now).num_milliseconds();
    let rounded = |ms: i64| format_rounded(Duration::from_millis(ms.unsigned_abs()));
    if ms >= 500 {
        format!("{} left", rounded(ms))
    } else if ms <= -500 {
        format!("overdue by {}", rounded(ms))
    } else {
        "at the deadline".to_owned()
    }
}

/// A duration as it appears in TOML config and JSON bodies: a string (`"2h"`) or a
/// non-negative integer number of seconds (`7200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Seconds, for convenience.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Whole seconds.
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"2h\" or a whole number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                check_max(v)
                    .map(Dur)
                    .map_err(|p| E::custom(format!("invalid duration {v}: {p}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    Err(E::custom(format!(
                        "invalid duration {v}: negative durations are not allowed"
                    )))
                } else {
                    self.visit_u64(v.unsigned_abs())
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: fractions are not allowed (use whole seconds or units like \"90s\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// The warning's message (audit reason, hook reason, log): how far the deadline is, rounded to
/// the nearest second, the deadline and the timeout. `3s left before the deadline D (timeout
/// 10s)`; `overdue by 4s: the deadline D (timeout 10s) has passed` when the warning is taken
/// late (jobwarden was down); `the deadline D (timeout 10s) is now`.
pub fn deadline_note(deadline: Timestamp, now: Timestamp, timeout: Duration) -> String {
    let at = crate::model::fmt_ts(deadline);
    let timeout = format_duration(timeout);
    let ms = (deadline - now).num_milliseconds();
    if ms >= 500 {
        format!(
            "{} before the deadline {at} (timeout {timeout})",
            time_left(deadline, now)
        )
    } else if ms <= -500 {
        format!(
            "{}: the deadline {at} (timeout {timeout}) has passed",
            time_left(deadline, now)
        )
    } else {
        format!("the deadline {at} (timeout {timeout}) is now")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_secs()
    }

    #[test]
    fn the_shared_grammar_with_the_input_quoted() {
        assert_eq!(secs("7200"), 7200);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1d2h3m4s"), 93_784);
        for (input, problem) in [
            ("", "empty"),
            ("-5m", "negative"),
            ("+5", "sign"),
            ("1.5h", "fractions"),
            ("99999999999999999999", "too large"),
            ("10ms", "unknown unit"),
            ("1h 30m", "no spaces"),
            ("h", "must follow"),
            ("1h30", "no unit"),
            ("1h1h", "repeated or out of order"),
            ("30m1h", "repeated or out of order"),
        ] {
            let e = parse_duration(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.contains(problem), "{input:?}: {msg}");
            assert!(msg.contains(&format!("{input:?}")), "{input:?}: {msg}");
            assert!(msg.contains("largest first"), "{input:?}: {msg}");
        }
    }

    #[test]
    fn relative_rounds_to_the_second_either_way() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        let at = |ms: i64| now + chrono::TimeDelta::milliseconds(ms);
        assert_eq!(relative(at(2_900), now), "in 3s");
        assert_eq!(relative(at(0), now), "in 0s");
        assert_eq!(relative(at(-4_000), now), "4s ago");
        assert_eq!(relative(at(-3_700_000), now), "1h1m40s ago");
    }

    #[test]
    fn time_left_rounds_to_the_second_and_says_overdue() {
        let deadline = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        let at = |ms: i64| deadline - chrono::TimeDelta::milliseconds(ms);
        // warn_before = "3s", taken a few milliseconds late: 3 s left, not 2.
        assert_eq!(time_left(deadline, at(2_993)), "3s left");
        assert_eq!(time_left(deadline, at(3_000)), "3s left");
        assert_eq!(time_left(deadline, at(61_400)), "1m1s left");
        assert_eq!(time_left(deadline, at(100)), "at the deadline");
        assert_eq!(time_left(deadline, at(-400)), "at the deadline");
        // 4 s past the deadline is overdue by 4s, not "0s left".
        assert_eq!(time_left(deadline, at(-4_000)), "overdue by 4s");
        assert_eq!(time_left(deadline, at(-3_600)), "overdue by 4s");
        let t = Duration::from_secs(10);
        assert_eq!(
            deadline_note(deadline, at(2_993), t),
            "3s left before the deadline 2027-01-15T08:00:00.000Z (timeout 10s)"
        );
        assert_eq!(
            deadline_note(deadline, at(-4_000), t),
            "overdue by 4s: the deadline 2027-01-15T08:00:00.000Z (timeout 10s) has passed"
        );
        assert_eq!(
            deadline_note(deadline, at(0), t),
            "the deadline 2027-01-15T08:00:00.000Z (timeout 10s) is now"
        );
    }

    #[test]
    fn serde_accepts_strings_and_integers_only() {
        #[derive(serde::Deserialize)]
        struct T {
            d: Dur,
        }
        let t: T = serde_json::from_str(r#"{"d":"2h"}"#).expect("string");
        assert_eq!(t.d.as_secs(), 7200);
        let t: T = serde_json::from_str(r#"{"d":60}"#).expect("integer");
        assert_eq!(t.d.as_secs(), 60);
        for bad in [
            r#"{"d":-1}"#,
            r#"{"d":1.5}"#,
            r#"{"d":"x"}"#,
            r#"{"d":"1h1h"}"#,
            r#"{"d":true}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }
}
