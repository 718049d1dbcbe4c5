//! The duration grammar of jobwarden and jobwarden-init: one parser for both binaries, for
//! flags, environment variables, config values, HTTP bodies and annotations.
//!
//! ```text
//! duration = seconds | part+
//! seconds  = digit+                      whole seconds: "7200"
//! part     = digit+ unit                 "90s", "30m", "1h30m", "7d", "1w2d"
//! unit     = "w" | "d" | "h" | "m" | "s"  each at most once, largest first
//! ```
//!
//! Surrounding ASCII whitespace is ignored. `0` and `0s` parse (whether zero is allowed is the
//! caller's rule: a TTL may be 0, a timeout may not). Everything else is an error that says
//! what is wrong: empty, a sign, a fraction, whitespace inside, an unknown unit (`ms`, `y`,
//! `S`), a unit without a number, a number without a unit, a unit repeated or out of order
//! (`1h1h`, `30m1h`), more than [`MAX_SECONDS`]. Nothing is guessed.

use std::time::Duration;

/// Largest accepted duration: 100 years of 365 days. Far beyond any job, and small enough
/// that adding it to any timestamp either binary handles cannot overflow.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// The grammar in words, for error messages and help texts.
pub const GRAMMAR: &str = "whole seconds (300) or whole numbers with units w, d, h, m, s, each at most once, largest first (90s, 30m, 1h30m, 7d)";

/// Why a duration was rejected. `Display` is a short phrase; callers quote the input and name
/// where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("it is empty")]
    Empty,
    /// A leading `-`.
    #[error("negative durations are not allowed")]
    Negative,
    /// A leading `+`.
    #[error("a sign is not allowed")]
    Sign,
    /// A `.` or `,`.
    #[error("fractions are not allowed")]
    Fraction,
    /// A unit that is not one of `w d h m s`.
    #[error("unknown unit {0:?} (expected w, d, h, m or s)")]
    UnknownUnit(String),
    /// A unit with no number before it (`h`, `abc`).
    #[error("unit {0:?} has no number before it (a unit must follow a number)")]
    MissingNumber(char),
    /// A number with no unit after it, after other parts (`1h30`).
    #[error("number {0} has no unit after it")]
    MissingUnit(String),
    /// A unit used twice, or after a smaller one (`1h1h`, `30m1h`).
    #[error(
        "unit {0:?} is repeated or out of order (each unit at most once, largest first: w, d, h, m, s)"
    )]
    UnitOrder(char),
    /// Any other character (whitespace inside, punctuation).
    #[error("unexpected character {0:?}{hint}", hint = if .0.is_whitespace() { " (no spaces inside a duration)" } else { "" })]
    Unexpected(char),
    /// More than [`MAX_SECONDS`].
    #[error("it is too large (more than 100 years)")]
    Overflow,
}

/// The units, largest first, with their length in seconds.
const UNITS: [(char, u64); 5] = [
    ('w', 7 * 24 * 3600),
    ('d', 24 * 3600),
    ('h', 3600),
    ('m', 60),
    ('s', 1),
];

/// Parses `input`; see the crate docs for the grammar.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim_ascii();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s.starts_with('+') {
        return Err(DurationError::Sign);
    }
    if s.contains(['.', ',']) {
        return Err(DurationError::Fraction);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return checked(s.parse::<u64>().map_err(|_| DurationError::Overflow)?);
    }
    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed: each once, largest first.
    let mut next_unit = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .map(char::len_utf8)
            .sum();
        let (unit, after) = after.split_at(unit_len);
        let mut unit_chars = unit.chars();
        let unit_char = match (number.is_empty(), unit_chars.next()) {
            (true, None) => {
                return Err(DurationError::Unexpected(
                    after.chars().next().unwrap_or(' '),
                ));
            }
            (true, Some(c)) => return Err(DurationError::MissingNumber(c)),
            (false, None) => {
                return Err(match after.chars().next() {
                    // "1h30": the last number has no unit; "1 h": a character in between.
                    None => DurationError::MissingUnit(number.to_owned()),
                    Some(c) => DurationError::Unexpected(c),
                });
            }
            (false, Some(c)) => c,
        };
        let position = UNITS
            .iter()
            .position(|(name, _)| unit_chars.as_str().is_empty() && *name == unit_char)
            .ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;
        if position < next_unit {
            return Err(DurationError::UnitOrder(UNITS[position].0));
        }
        next_unit = position + 1;
        let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        let secs = n
            .checked_mul(UNITS[position].1)
            .ok_or(DurationError::Overflow)?;
        total = total.checked_add(secs).ok_or(DurationError::Overflow)?;
        rest = after;
    }
    checked(total)
}

fn checked(secs: u64) -> Result<Duration, DurationError> {
    if secs > MAX_SECONDS {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_secs(secs))
}

/// Formats whole seconds the way [`parse`] reads them back: `1d2h`, `1h30m`, `45s`, `0s`
/// (sub-second parts are dropped; see [`format_rounded`] for messages).
pub fn format(d: Duration) -> String {
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

/// [`format`] of `d` rounded to the nearest second (2.9 s is `3s`, not `2s`): for messages
/// about time left or overdue, which must never say a second less than there is.
pub fn format_rounded(d: Duration) -> String {
    let rounded = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    format(Duration::from_secs(rounded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: &str) -> Result<u64, DurationError> {
        parse(s).map(|d| d.as_secs())
    }

    #[test]
    fn accepts_seconds_and_units_largest_first() {
        assert_eq!(secs("7200"), Ok(7200));
        assert_eq!(secs("0"), Ok(0));
        assert_eq!(secs("0s"), Ok(0));
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("30m"), Ok(1800));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("1w"), Ok(604_800));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("1d2h3m4s"), Ok(93_784));
        assert_eq!(secs("1w2d3h4m5s"), Ok(9 * 86_400 + 3 * 3600 + 4 * 60 + 5));
        assert_eq!(secs("1m90s"), Ok(150));
        assert_eq!(secs(" 300 "), Ok(300));
        assert_eq!(secs(" 45s\n"), Ok(45));
    }

    #[test]
    fn rejects_what_it_cannot_read_exactly() {
        use DurationError::*;
        for (input, want) in [
            ("", Empty),
            ("   ", Empty),
            ("-5", Negative),
            ("-5m", Negative),
            ("+5", Sign),
            ("1.5h", Fraction),
            ("1,5h", Fraction),
            ("1.5", Fraction),
            ("10x", UnknownUnit("x".into())),
            ("10y", UnknownUnit("y".into())),
            ("10ms", UnknownUnit("ms".into())),
            ("10min", UnknownUnit("min".into())),
            ("10S", UnknownUnit("S".into())),
            ("h", MissingNumber('h')),
            ("abc", MissingNumber('a')),
            ("1h30", MissingUnit("30".into())),
            ("1h1h", UnitOrder('h')),
            ("30m1h", UnitOrder('h')),
            ("1s1m", UnitOrder('m')),
            ("1h 30m", Unexpected(' ')),
            ("10 m", Unexpected(' ')),
            ("1h_30m", Unexpected('_')),
            ("5ü", Unexpected('ü')),
            ("99999999999999999999", Overflow),
            ("99999999999999999999s", Overflow),
            ("5000000000w", Overflow),
            ("18446744073709551615s", Overflow),
        ] {
            assert_eq!(secs(input), Err(want), "{input:?}");
        }
        assert_eq!(secs(&MAX_SECONDS.to_string()), Ok(MAX_SECONDS));
        assert_eq!(secs(&(MAX_SECONDS + 1).to_string()), Err(Overflow));
        let e = parse("1h 30m").expect_err("space").to_string();
        assert!(e.contains("no spaces"), "{e}");
        let e = parse("1h1h").expect_err("repeated").to_string();
        assert!(e.contains("repeated or out of order"), "{e}");
    }

    #[test]
    fn formats_round_trip_and_round_for_messages() {
        for s in [0, 1, 59, 60, 61, 3600, 5400, 86_400, 93_784, MAX_SECONDS] {
            let d = Duration::from_secs(s);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(2999)), "2s");
        assert_eq!(format_rounded(Duration::from_millis(2999)), "3s");
        assert_eq!(format_rounded(Duration::from_millis(2500)), "3s");
        assert_eq!(format_rounded(Duration::from_millis(2499)), "2s");
        assert_eq!(format_rounded(Duration::from_millis(400)), "0s");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
        ))]
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            if let Ok(d) = parse(&s) {
                prop_assert!(d.as_secs() <= MAX_SECONDS);
            }
        }

        /// Parts in order add up; the same parts with a unit repeated or out of order are
        /// refused.
        #[test]
        fn ordered_parts_add_up_others_are_refused(
            parts in prop::collection::vec((0u64..100_000, 0usize..5), 1..6),
        ) {
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
            let ordered = parts.windows(2).all(|w| w[0].1 < w[1].1);
            let total = parts.iter().try_fold(0u64, |t, (n, u)| n.checked_mul(UNITS[*u].1).and_then(|v| t.checked_add(v)));
            match (ordered, total, parse(&text)) {
                (true, Some(t), Ok(d)) => prop_assert_eq!(d.as_secs(), t),
                (true, Some(t), Err(e)) => prop_assert!(t > MAX_SECONDS, "{text} rejected: {e}"),
                (true, None, r) => prop_assert!(r.is_err(), "{text}: overflow accepted"),
                (false, _, r) => prop_assert!(matches!(r, Err(DurationError::UnitOrder(_))), "{text}: {r:?}"),
            }
        }

        #[test]
        fn format_round_trips(secs in 0..=MAX_SECONDS) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
