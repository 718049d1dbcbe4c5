//! The one duration parser, used for annotations, config values, CLI flags and HTTP bodies.
//!
//! Accepted: plain whole seconds (`7200`) and unit strings made of one or more `<digits><unit>`
//! parts with units `s`, `m`, `h`, `d`, `w` in any combination (`90s`, `30m`, `1h30m`, `7d`).
//! `0` and `0s` parse: a TTL or minimum age of zero means "immediately"; whether zero is allowed
//! for a particular setting (it is not for a timeout) is the caller's validation.
//! Rejected with an error that quotes the input: empty strings, signs, fractions, whitespace
//! inside, unknown units, a unit without a number, and anything that overflows
//! [`MAX_SECONDS`].

use std::fmt;
use std::time::Duration;

/// Largest accepted duration: 100 years. Far beyond any sensible timeout, and small enough
/// that adding it to any timestamp we handle cannot overflow.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {problem} (use whole seconds like \"7200\" or units like \"90s\", \"30m\", \"2h\", \"1h30m\", \"7d\", \"1w\")"
)]
pub struct DurationError {
    /// The rejected input, verbatim.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Parses a duration; see the module docs for the grammar.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |problem| DurationError {
        input: input.to_owned(),
        problem,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    if s.starts_with('+') {
        return Err(err("a sign is not allowed"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| err("the number is too large"))?;
        return check_max(secs).map_err(err);
    }
    let mut total: u64 = 0;
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(if rest[0] == b'.' || rest[0] == b',' {
                err("fractions are not allowed")
            } else if rest[0].is_ascii_alphabetic() {
                err("a unit must follow a number")
            } else {
                err("unexpected character")
            });
        }
        let number: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| err("the number is too large"))?;
        rest = &rest[digits..];
        let Some((&unit, tail)) = rest.split_first() else {
            return Err(err("the last number has no unit"));
        };
        let factor = match unit {
            b's' => 1,
            b'm' => 60,
            b'h' => 3600,
            b'd' => 86_400,
            b'w' => 604_800,
            b'.' | b',' => return Err(err("fractions are not allowed")),
            c if c.is_ascii_whitespace() => {
                return Err(err("unexpected character: no spaces inside a duration"));
            }
            _ => return Err(err("unknown unit (expected s, m, h, d or w)")),
        };
        rest = tail;
        if rest.first().is_some_and(|b| b.is_ascii_alphabetic()) {
            return Err(err("unknown unit (expected s, m, h, d or w)"));
        }
        total = number
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("the duration is too large"))?;
    }
    check_max(total).map_err(err)
}

fn check_max(secs: u64) -> Result<Duration, &'static str> {
    if secs > MAX_SECONDS {
        Err("the duration is too large (more than 100 years)")
    } else {
        Ok(Duration::from_secs(secs))
    }
}

/// Formats a duration the way the parser reads it back: `1h30m`, `45s`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: &str) -> u64 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_secs()
    }

    #[test]
    fn accepts_seconds_and_units() {
        assert_eq!(secs("7200"), 7200);
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("0s"), 0);
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("30m"), 1800);
        assert_eq!(secs("2h"), 7200);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("1w"), 604_800);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1d2h3m4s"), 93_784);
        assert_eq!(secs(" 300 "), 300);
    }

    #[test]
    fn rejects_garbage_with_quoted_input() {
        for (input, problem) in [
            ("", "empty"),
            ("   ", "empty"),
            ("-5", "negative"),
            ("-5m", "negative"),
            ("+5", "sign"),
            ("1.5h", "fractions"),
            ("1.5", "fractions"),
            ("99999999999999999999", "too large"),
            ("99999999999999999999s", "too large"),
            ("5000000000w", "too large"),
            ("10y", "unknown unit"),
            ("10ms", "unknown unit"),
            ("10 m", "unexpected"),
            ("h", "must follow"),
            ("1h30", "no unit"),
            ("abc", "must follow"),
            ("1h 30m", "unexpected"),
        ] {
            let e = parse_duration(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.contains(problem), "{input:?}: {msg}");
            assert!(msg.contains(&format!("{input:?}")), "{input:?}: {msg}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in [0, 1, 59, 60, 61, 3600, 5400, 86_400, 93_784, MAX_SECONDS] {
            let d = Duration::from_secs(s);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
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
            r#"{"d":true}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn never_panics_on_duration_like(s in "[0-9smhdw.+ -]{0,24}") {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d.as_secs() <= MAX_SECONDS);
            }
        }

        #[test]
        fn sum_of_parts(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s");
            prop_assert_eq!(secs(&text), h * 3600 + m * 60 + s);
        }
    }
}
