//! The only place that reads the wall clock (STYLE.md §2).
//!
//! Wall-clock time is needed for one thing: turning `FLOWFORGE_DEADLINE` / `FLOWFORGE_TIMEOUT`
//! into "how long from now". Everything else receives `now` as an argument, and intervals
//! (grace budget, heartbeats) use the monotonic `tokio::time::Instant`, which this ban does not
//! cover because it cannot jump.

use chrono::{DateTime, Utc};

/// The current wall-clock time.
#[allow(clippy::disallowed_methods)] // this module is the one sanctioned reader of the clock
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
