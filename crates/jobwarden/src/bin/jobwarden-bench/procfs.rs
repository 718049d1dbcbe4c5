//! Readers of `/proc`: a process's CPU ticks, `status` fields (kB), context switches and open
//! fds, and the system-wide pid headroom.

/// `/proc/<pid>/stat` reports CPU time in USER_HZ ticks, 100 per second on Linux.
pub(crate) const USER_HZ: f64 = 100.0;

pub(crate) fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Threads (pids) in use system-wide and `kernel.pid_max`.
pub(crate) fn pid_headroom() -> Option<(u64, u64)> {
    let load = read_trim("/proc/loadavg")?;
    let used = load
        .split_whitespace()
        .nth(3)?
        .split('/')
        .nth(1)?
        .parse()
        .ok()?;
    let max = read_trim("/proc/sys/kernel/pid_max")?.parse().ok()?;
    Some((used, max))
}

/// utime + stime of `pid`, in ticks.
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A numeric field of `/proc/<pid>/status` (kB for the Vm*/Rss* ones).
pub(crate) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Voluntary and involuntary context switches of all of `pid`'s threads.
pub(crate) fn proc_ctx_switches(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in status.lines() {
            let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                total.0 += num(v);
            } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                total.1 += num(v);
            }
        }
    }
    Some(total)
}

pub(crate) fn proc_fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Open fds of `pid` by kind (`pidfd`, `socket`, `pipe`, `file`, other anon inodes), as text.
pub(crate) fn proc_fd_kinds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "?".into();
    };
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for e in dir.flatten() {
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let kind = if target.starts_with("socket:") {
            "socket".to_owned()
        } else if target.starts_with("pipe:") {
            "pipe".to_owned()
        } else if let Some(a) = target.strip_prefix("anon_inode:") {
            a.trim_matches(|c| c == '[' || c == ']').to_owned()
        } else {
            "file".to_owned()
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
