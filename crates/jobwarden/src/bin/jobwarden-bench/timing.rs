//! Wall-clock helpers: sleeping until a timestamp and the signed distance between two.

use jobwarden::clock;
use jobwarden::model::{Timestamp, since};

pub(crate) async fn sleep_until(t: Timestamp) {
    let d = since(t, clock::now());
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// `b − a` in microseconds (negative if `b` is earlier).
pub(crate) fn micros_between(a: Timestamp, b: Timestamp) -> i64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX)
}
