//! The machine the benchmark runs on: raising the soft `RLIMIT_NOFILE` and `RLIMIT_NPROC` to
//! their hard limits (inherited by the daemon and its jobs) and the facts printed with the
//! report ([`Environment`]).

use std::fmt::Write as _;

use crate::procfs::read_trim;

/// Limits and machine facts, after raising the soft limits.
pub(crate) struct Environment {
    pub(crate) lines: Vec<String>,
}

impl Environment {
    pub(crate) fn probe_and_raise(max_n: usize) -> Self {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let mut lines = Vec::new();
        let show = |v: Option<u64>| {
            v.map(|v| v.to_string())
                .unwrap_or_else(|| "unlimited".into())
        };
        for (name, res) in [
            ("RLIMIT_NOFILE", Resource::Nofile),
            ("RLIMIT_NPROC", Resource::Nproc),
        ] {
            let before = getrlimit(res);
            let mut line = format!(
                "{name}: soft {} hard {}",
                show(before.current),
                show(before.maximum)
            );
            if before.current != before.maximum {
                let new = Rlimit {
                    current: before.maximum,
                    maximum: before.maximum,
                };
                match setrlimit(res, new) {
                    Ok(()) => {
                        let after = getrlimit(res);
                        let _ = write!(
                            line,
                            "; raised soft to {} (inherited by the daemon and its jobs)",
                            show(after.current)
                        );
                    }
                    Err(e) => {
                        let _ = write!(line, "; raising the soft limit failed: {e}");
                    }
                }
            } else {
                line.push_str("; soft already at hard (inherited by the daemon and its jobs)");
            }
            lines.push(line);
        }
        let nofile = getrlimit(Resource::Nofile).current;
        if let Some(limit) = nofile
            && limit < max_n as u64 + 200
        {
            lines.push(format!(
                "warning: RLIMIT_NOFILE {limit} may be too low for {max_n} jobs (the daemon holds about one fd per job)"
            ));
        }
        let pid_max = read_trim("/proc/sys/kernel/pid_max");
        let threads_max = read_trim("/proc/sys/kernel/threads-max");
        let loadavg = read_trim("/proc/loadavg");
        lines.push(format!(
            "kernel.pid_max {}, kernel.threads-max {}, loadavg {}, {} CPUs",
            pid_max.as_deref().unwrap_or("?"),
            threads_max.as_deref().unwrap_or("?"),
            loadavg.as_deref().unwrap_or("?"),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ));
        Environment { lines }
    }
}
