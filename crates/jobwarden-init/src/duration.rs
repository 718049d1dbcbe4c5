//! Parses durations such as `300`, `90s`, `30m`, `2h`, `1h30m`, `7d`, `1w`.
//!
//! Private to this crate on purpose (the `jobwarden` crate has its own; this binary must not
//! depend on it). Plain digits are seconds. Otherwise each unit (`w`, `d`, `h`, `m`, `s`)
//! appears at most once, largest first, each with a whole number. Anything else — empty,
//! negative, fractional, unknown units, overflow — is an error; nothing is guessed.

use std::time::Duration;

/// Why a duration string was rejected. `Display` is a short phrase; the caller quotes the
/// input and names the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("fractions are not allowed")]
    Fraction,
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("unit {0:?} has no number before it")]
    MissingNumber(char),
    #[error("number {0} has no unit after it")]
    MissingUnit(String),
    #[error("unit {0:?} repeated or out of order")]
    UnitOrder(char),
    #[error("unexpected character {0:?}")]
    Unexpected(char),
    #[error("it is too large")]
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

/// The largest accepted duration: 100 years. Far beyond any job, and small enough that every
/// `Instant`/`DateTime` computation with it stays in range.
const MAX_SECS: u64 = 100 * 366 * 24 * 3600;

/// Parses `input` (surrounding ASCII whitespace is ignored).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim_ascii();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s.contains('.') || s.contains(',') {
        return Err(DurationError::Fraction);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return checked_secs(s.parse::<u64>().map_err(|_| DurationError::Overflow)?);
    }

    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed; enforces "each once, largest first".
    let mut next_unit = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let unit_len = after.chars().take_while(char::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        match (number.is_empty(), unit.is_empty()) {
            (true, true) => {
                let c = after.chars().next().unwrap_or(' ');
                return Err(DurationError::Unexpected(c));
            }
            (true, false) => {
                let c = unit.chars().next().unwrap_or(' ');
                return Err(DurationError::MissingNumber(c));
            }
            (false, true) => return Err(DurationError::MissingUnit(number.to_owned())),
            (false, false) => {}
        }
        let position = UNITS
            .iter()
            .position(|(name, _)| unit.len() == 1 && unit.starts_with(*name))
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
    checked_secs(total)
}

fn checked_secs(secs: u64) -> Result<Duration, DurationError> {
    if secs > MAX_SECS {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Result<u64, DurationError> {
        parse(s).map(|d| d.as_secs())
    }

    #[test]
    fn accepts_plain_seconds_and_unit_strings() {
        assert_eq!(secs("300"), Ok(300));
        assert_eq!(secs("0"), Ok(0));
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("30m"), Ok(1800));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("7d"), Ok(7 * 86400));
        assert_eq!(secs("1w"), Ok(7 * 86400));
        assert_eq!(
            secs("1w2d3h4m5s"),
            Ok(7 * 86400 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5)
        );
        assert_eq!(secs(" 45s\n"), Ok(45));
        assert_eq!(secs("1m90s"), Ok(150));
    }

    #[test]
    fn rejects_what_it_cannot_read_exactly() {
        assert_eq!(secs(""), Err(DurationError::Empty));
        assert_eq!(secs("   "), Err(DurationError::Empty));
        assert_eq!(secs("-5"), Err(DurationError::Negative));
        assert_eq!(secs("-5s"), Err(DurationError::Negative));
        assert_eq!(secs("1.5h"), Err(DurationError::Fraction));
        assert_eq!(secs("1,5h"), Err(DurationError::Fraction));
        assert_eq!(secs("10x"), Err(DurationError::UnknownUnit("x".into())));
        assert_eq!(secs("10ms"), Err(DurationError::UnknownUnit("ms".into())));
        assert_eq!(secs("10min"), Err(DurationError::UnknownUnit("min".into())));
        assert_eq!(secs("10S"), Err(DurationError::UnknownUnit("S".into())));
        assert_eq!(secs("h"), Err(DurationError::MissingNumber('h')));
        assert_eq!(secs("1h30"), Err(DurationError::MissingUnit("30".into())));
        assert_eq!(secs("30m1h"), Err(DurationError::UnitOrder('h')));
        assert_eq!(secs("1h1h"), Err(DurationError::UnitOrder('h')));
        assert_eq!(secs("1h 30m"), Err(DurationError::Unexpected(' ')));
        assert_eq!(secs("+5"), Err(DurationError::Unexpected('+')));
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert_eq!(
            secs("99999999999999999999999"),
            Err(DurationError::Overflow)
        );
        assert_eq!(secs("99999999999999999w"), Err(DurationError::Overflow));
        assert_eq!(secs("18446744073709551615s"), Err(DurationError::Overflow));
        // The largest accepted value is exactly 100 years of 366 days.
        assert_eq!(secs(&MAX_SECS.to_string()), Ok(MAX_SECS));
        assert_eq!(
            secs(&(MAX_SECS + 1).to_string()),
            Err(DurationError::Overflow)
        );
    }
}
