//! Facts about processes read from `/proc`, and group signals guarded against pid reuse.
//!
//! A pid alone is not an identity: after a daemon restart the pid stored for a job may belong
//! to another process. The pair (pid, start time in clock ticks since boot, field 22 of
//! `/proc/PID/stat`) is: jobwarden never signals a pid whose start time differs.

use std::path::Path;

/// State of a pid as `/proc` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Running (any state but zombie) with this start time.
    Alive {
        /// Start time in clock ticks since boot.
        start_ticks: u64,
    },
    /// Exited, not yet reaped.
    Zombie {
        /// Start time in clock ticks since boot.
        start_ticks: u64,
    },
    /// No such process.
    Gone,
}

/// Reads `/proc/<pid>/stat`.
pub fn proc_state(pid: i32) -> ProcState {
    proc_state_at(Path::new("/proc"), pid)
}

fn proc_state_at(root: &Path, pid: i32) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(root.join(pid.to_string()).join("stat")) else {
        return ProcState::Gone;
    };
    parse_stat(&stat).unwrap_or(ProcState::Gone)
}

/// Parses the state (field 3) and start time (field 22) from a stat line. The command name
/// (field 2) is in parentheses and may itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<ProcState> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    // Fields after the state start at field 4; start time is field 22 → the 19th from here.
    let start_ticks: u64 = fields.nth(18)?.parse().ok()?;
    Some(if state == "Z" || state == "X" {
        ProcState::Zombie { start_ticks }
    } else {
        ProcState::Alive { start_ticks }
    })
}

/// Start time of a live process, if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    match proc_state(pid) {
        ProcState::Alive { start_ticks } | ProcState::Zombie { start_ticks } => Some(start_ticks),
        ProcState::Gone => None,
    }
}

/// Whether `pid` is still the process that started at `ticks` and has not exited.
pub fn is_same_live_process(pid: i32, ticks: u64) -> bool {
    matches!(proc_state(pid), ProcState::Alive { start_ticks } if start_ticks == ticks)
}

/// Outcome of signalling a job's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalResult {
    /// Delivered to the group.
    Sent,
    /// The process is gone (or is a different process now): nothing was signalled.
    Gone,
}

/// Sends `signal` to the process group led by `pid`, only if `pid` is still the process
/// that started at `ticks` (so a reused pid is never signalled).
pub fn signal_group(
    pid: i32,
    ticks: u64,
    signal: rustix::process::Signal,
) -> std::io::Result<SignalResult> {
    let state = proc_state(pid);
    let same = match state {
        ProcState::Alive { start_ticks } | ProcState::Zombie { start_ticks } => {
            start_ticks == ticks
        }
        ProcState::Gone => false,
    };
    if !same {
        return Ok(SignalResult::Gone);
    }
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(SignalResult::Gone);
    };
    match rustix::process::kill_process_group(p, signal) {
        Ok(()) => Ok(SignalResult::Sent),
        Err(rustix::io::Errno::SRCH) => Ok(SignalResult::Gone),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(line),
            Some(ProcState::Alive {
                start_ticks: 987_654
            })
        );
        let z = line.replace(") S ", ") Z ");
        assert_eq!(
            parse_stat(&z),
            Some(ProcState::Zombie {
                start_ticks: 987_654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not_us() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let ticks = start_ticks(me).expect("we exist");
        assert!(is_same_live_process(me, ticks));
        assert!(!is_same_live_process(me, ticks + 1));
        // A pid-reuse guard: wrong ticks → nothing is signalled (SIGTERM would kill the test).
        assert_eq!(
            signal_group(me, ticks + 1, rustix::process::Signal::TERM).expect("no error"),
            SignalResult::Gone
        );
    }
}
