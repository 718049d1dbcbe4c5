//! The two baselines: (a) a loop checking every job every 30 s, simulated over the measured
//! due times ([`poll_delay_micros`]); (b) GNU `timeout(1)` running one probe, the
//! single-process floor ([`floor_baseline`]).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jobwarden::clock;
use jobwarden::model::add;

use crate::probe::{ARRIVAL_FILE, read_arrival};
use crate::timing::micros_between;

/// The seed design's check interval (baseline a).
pub(crate) const POLL_PERIOD_MICROS: i64 = 30_000_000;
/// Random phases the 30 s poll baseline is pooled over.
pub(crate) const POLL_PHASES: usize = 200;

/// Runs `timeout --kill-after=5s 1 <probe>` `runs` times, one after another; returns the
/// delays (ms) between spawn + 1 s and the probe's SIGTERM arrival. The spawn time is taken
/// just before spawning timeout(1), so its own exec is included in the delay.
pub(crate) async fn floor_baseline(
    exe: &Path,
    dir: &Path,
    token: &str,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for i in 0..runs {
        let d = dir.join(i.to_string());
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let t0 = clock::now();
        let status = tokio::process::Command::new("timeout")
            .arg("--kill-after=5s")
            .arg("1")
            .arg(exe)
            .args(["probe", "--token", token, "--max-secs", "30"])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("running timeout(1): {e}"))?;
        let arrival = read_arrival(&d.join(ARRIVAL_FILE))
            .ok_or_else(|| format!("timeout(1) run {i}: no arrival recorded (status {status})"))?;
        let expected = add(t0, Duration::from_secs(1));
        out.push(micros_between(expected, arrival) as f64 / 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Baseline (a): a loop checking every job at `phase + k·30 s`; the delay of a job due at
/// `due` is the time to the first tick at or after it.
pub(crate) fn poll_delay_micros(due: i64, phase: i64) -> i64 {
    let k = (due - phase).div_euclid(POLL_PERIOD_MICROS);
    let mut tick = phase + k * POLL_PERIOD_MICROS;
    if tick < due {
        tick += POLL_PERIOD_MICROS;
    }
    tick - due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delay_is_time_to_next_tick() {
        assert_eq!(poll_delay_micros(0, 0), 0);
        assert_eq!(poll_delay_micros(1, 0), POLL_PERIOD_MICROS - 1);
        assert_eq!(poll_delay_micros(10_000_000, 25_000_000), 15_000_000);
        assert_eq!(poll_delay_micros(26_000_000, 25_000_000), 29_000_000);
    }
}
