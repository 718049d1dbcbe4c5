//! The one place that reads the wall clock (`clippy.toml` forbids it elsewhere).
//!
//! Every decision takes `now` as an argument; the daemon, workers and CLI call [`now`] once per
//! activation and pass the value down. `clippy.toml` bans the clock everywhere else.

use crate::model::Timestamp;

/// The current wall-clock time, truncated to microseconds (what PostgreSQL stores).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Timestamp {
    let t = chrono::Utc::now();
    let micros = t.timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or(t)
}
