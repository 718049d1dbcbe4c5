//! Durations such as `300`, `90s`, `30m`, `2h`, `1h30m`, `7d`, `1w`: the grammar shared with
//! `jobwarden` ([`jobwarden_duration`], one parser for both binaries). Plain digits are
//! seconds; otherwise each unit (`w`, `d`, `h`, `m`, `s`) appears at most once, largest first,
//! each with a whole number. Anything else — empty, negative, fractional, unknown units,
//! `1h1h`, overflow — is an error; nothing is guessed.

pub use jobwarden_duration::{DurationError, GRAMMAR, parse};
