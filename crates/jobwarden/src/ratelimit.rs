//! A token bucket for destructive cleanup actions (`[safety] max_deletions_per_minute`).
//!
//! The timeout ladder's signals never pass through it: a runaway job is stopped on time
//! however many deletions are queued.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `per_minute` actions per minute, with bursts up to that many.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    state: Mutex<(f64, Option<Instant>)>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` actions per minute.
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        RateLimiter {
            capacity,
            per_sec: capacity / 60.0,
            state: Mutex::new((capacity, None)),
        }
    }

    /// Takes one token at monotonic time `now`; otherwise returns how long to wait.
    pub fn try_take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = s.1 {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            s.0 = (s.0 + refill).min(self.capacity);
        }
        s.1 = Some(now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_sec))
        }
    }

    /// Waits for a token.
    pub async fn take(&self) {
        loop {
            match self.try_take_at(Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_capacity_then_refills_at_rate() {
        let l = RateLimiter::per_minute(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(l.try_take_at(t0).is_ok());
        }
        let wait = l.try_take_at(t0).expect_err("empty");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(l.try_take_at(t0 + Duration::from_secs(1)).is_ok());
        assert!(l.try_take_at(t0 + Duration::from_secs(1)).is_err());
    }
}
