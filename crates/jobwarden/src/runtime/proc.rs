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

/// What a process group has used, read from `/proc` (see [`group_usage`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupUsage {
    /// CPU time in seconds: user + system of every live process of the group, and of their
    /// reaped children (`cutime`, `cstime`: descendants that exited and were waited for).
    pub cpu_seconds: f64,
    /// Resident memory of the live processes of the group, in bytes.
    pub rss_bytes: u64,
    /// How many live processes were counted.
    pub processes: u32,
}

/// The fields of `/proc/PID/stat` accounting reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatUsage {
    pgrp: i64,
    start_ticks: u64,
    /// utime + stime, in clock ticks.
    own_ticks: u64,
    /// cutime + cstime, in clock ticks.
    children_ticks: u64,
    rss_pages: u64,
}

/// Parses the accounting fields of a stat line: pgrp (5), utime (14), stime (15), cutime
/// (16), cstime (17), start time (22), rss (24).
fn parse_stat_usage(stat: &str) -> Option<StatUsage> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the command: field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    let signed = |field: usize| -> Option<i64> { f.get(field - 3)?.parse().ok() };
    Some(StatUsage {
        pgrp: signed(5)?,
        own_ticks: num(14)?.saturating_add(num(15)?),
        children_ticks: signed(16)?.max(0) as u64 + signed(17)?.max(0) as u64,
        start_ticks: num(22)?,
        rss_pages: signed(24)?.max(0) as u64,
    })
}

/// What the process group led by `pid` (started at `ticks`) has used: the leader and every
/// live descendant still in its group, found through `/proc/PID/task/TID/children` (no scan
/// of all of `/proc`, so a burst of kills stays cheap), with their reaped children.
/// None when the leader is gone or is another process now (a reused pid). A kernel without
/// the `children` lists counts the leader and its reaped children only.
pub fn group_usage(pid: i32, ticks: u64) -> Option<GroupUsage> {
    group_usage_at(Path::new("/proc"), pid, ticks, clock_ticks(), page_size())
}

fn group_usage_at(root: &Path, pid: i32, ticks: u64, hz: u64, page: u64) -> Option<GroupUsage> {
    let read = |p: i32| -> Option<StatUsage> {
        let text = std::fs::read_to_string(root.join(p.to_string()).join("stat")).ok()?;
        parse_stat_usage(&text)
    };
    let leader = read(pid).filter(|s| s.start_ticks == ticks)?;
    let mut cpu_ticks = leader.own_ticks.saturating_add(leader.children_ticks);
    let mut rss_pages = leader.rss_pages;
    let mut processes = 1u32;
    let mut seen = std::collections::HashSet::from([pid]);
    let mut queue = children_of(root, pid);
    // Bounded: a fork bomb must not keep the enforcer here.
    while let Some(child) = queue.pop() {
        if seen.len() >= 10_000 || !seen.insert(child) {
            continue;
        }
        let Some(s) = read(child) else { continue };
        queue.extend(children_of(root, child));
        if s.pgrp != i64::from(pid) {
            continue;
        }
        cpu_ticks = cpu_ticks
            .saturating_add(s.own_ticks)
            .saturating_add(s.children_ticks);
        rss_pages = rss_pages.saturating_add(s.rss_pages);
        processes += 1;
    }
    Some(GroupUsage {
        cpu_seconds: cpu_ticks as f64 / hz.max(1) as f64,
        rss_bytes: rss_pages.saturating_mul(page),
        processes,
    })
}

/// The children of every thread of `pid`, as `/proc/PID/task/TID/children` lists them.
fn children_of(root: &Path, pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Clock ticks per second of `/proc`'s times (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The page size `/proc`'s rss is counted in.
fn page_size() -> u64 {
    rustix::param::page_size() as u64
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
    fn stat_usage_reads_the_accounting_fields() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
        let line = "42 (a (b) c) R 1 42 42 0 -1 0 0 0 0 0 150 50 30 20 20 0 1 0 777 1000 256";
        assert_eq!(
            parse_stat_usage(line),
            Some(StatUsage {
                pgrp: 42,
                start_ticks: 777,
                own_ticks: 200,
                children_ticks: 50,
                rss_pages: 256,
            })
        );
        assert_eq!(parse_stat_usage("42 (x) R 1"), None);
    }

    #[test]
    fn group_usage_sums_the_group_and_skips_descendants_that_left_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |pid: i32, pgrp: i32, utime: u64, rss: u64, children: &str| {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("task").join(pid.to_string())).expect("dir");
            std::fs::write(
                dir.join("stat"),
                format!(
                    "{pid} (p) S 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 {utime} 0 10 0 20 0 1 0 {pid}00 1 {rss}"
                ),
            )
            .expect("stat");
            std::fs::write(
                dir.join("task").join(pid.to_string()).join("children"),
                children,
            )
            .expect("children");
        };
        write(10, 10, 100, 5, "11 12 ");
        write(11, 10, 300, 7, "13");
        write(12, 99, 1000, 1000, ""); // setsid: another group, not counted
        write(13, 10, 100, 1, ""); // a grandchild still in the group
        let u = group_usage_at(root.path(), 10, 1000, 100, 4096).expect("usage");
        // (100 + 300 + 100) own and 3 × 10 reaped children's ticks, at 100 Hz.
        assert!((u.cpu_seconds - 5.3).abs() < 1e-9, "{u:?}");
        assert_eq!(u.rss_bytes, (5 + 7 + 1) * 4096);
        assert_eq!(u.processes, 3);
        // A reused pid (another start time) is not the job.
        assert_eq!(group_usage_at(root.path(), 10, 999, 100, 4096), None);
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
