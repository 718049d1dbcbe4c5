//! Statistics and the printed report: nearest-rank percentiles, millisecond / ratio / MB
//! formatting, and the Markdown report of every run ([`report`]).

use std::fmt::Write as _;

use crate::Opts;
use crate::baseline::POLL_PHASES;
use crate::environment::Environment;
use crate::run::{GRACE, RunResult};

/// Nearest-rank percentile of sorted values.
pub(crate) fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{:.1} s", v / 1e3),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
    }
}

fn fmt_ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("×{:.0}", a / b),
        _ => "n/a".into(),
    }
}

fn fmt_ratio2(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("×{:.1}", a / b),
        _ => "n/a".into(),
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

pub(crate) fn report(
    command_line: &str,
    o: &Opts,
    env: &Environment,
    floor: &[f64],
    seed: u64,
    results: &[RunResult],
    failure: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Enforcement benchmark\n");
    let _ = writeln!(s, "Command: `{command_line}`  ");
    let _ = writeln!(
        s,
        "Window {}, warn_before {}, grace {}, {} submissions in flight, idle sample {}, 30 s poll pooled over {POLL_PHASES} random phases (seed {seed}).  ",
        o.window, o.warn_before, GRACE, o.concurrency, o.idle
    );
    for l in &env.lines {
        let _ = writeln!(s, "{l}  ");
    }
    let _ = writeln!(
        s,
        "\nDelay = SIGTERM arrival in the job's process − the job's deadline (due time of soft_kill).\n"
    );
    let floor_med = pct(floor, 0.5);
    let _ = writeln!(
        s,
        "| N | median | p99 | max | 30s-poll median/p99 | ratio p99 (poll/jobwarden) | timeout(1) floor median | daemon CPU idle % | daemon peak RSS | RSS/job |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let p99 = pct(&r.delays_ms, 0.99);
        let poll_p99 = pct(&r.poll_ms, 0.99);
        let per_job_kb = r.rss_idle_kb.saturating_sub(r.rss_base_kb) as f64 / r.n as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {:.1} KB |",
            r.n,
            fmt_ms(pct(&r.delays_ms, 0.5)),
            fmt_ms(p99),
            fmt_ms(r.delays_ms.last().copied()),
            fmt_ms(pct(&r.poll_ms, 0.5)),
            fmt_ms(poll_p99),
            fmt_ratio(poll_p99, p99),
            fmt_ms(floor_med),
            r.idle_cpu_pct
                .map(|c| format!("{c:.2} %"))
                .unwrap_or_else(|| "n/a".into()),
            mb(r.hwm_final_kb),
            per_job_kb
        );
    }
    let _ = writeln!(
        s,
        "\ntimeout(1) floor over {} runs: median {}, p99 {}, max {} (spawn + 1 s → arrival; includes timeout(1)'s own exec).",
        floor.len(),
        fmt_ms(floor_med),
        fmt_ms(pct(floor, 0.99)),
        fmt_ms(floor.last().copied())
    );
    let _ = writeln!(s, "\n### Ratios\n");
    let _ = writeln!(
        s,
        "| N | median / floor median | p99 / floor p99 | max / floor max | poll median / median | poll p99 / p99 | poll max / max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in results {
        let d = &r.delays_ms;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            fmt_ratio2(pct(d, 0.5), floor_med),
            fmt_ratio2(pct(d, 0.99), pct(floor, 0.99)),
            fmt_ratio2(d.last().copied(), floor.last().copied()),
            fmt_ratio(pct(&r.poll_ms, 0.5), pct(d, 0.5)),
            fmt_ratio(pct(&r.poll_ms, 0.99), pct(d, 0.99)),
            fmt_ratio(r.poll_ms.last().copied(), d.last().copied()),
        );
    }
    let _ = writeln!(s, "\n### Details\n");
    for r in results {
        let _ = writeln!(s, "**N = {}**  ", r.n);
        let _ = writeln!(
            s,
            "- submitted {} ({} failed{}) in {:.1} s = {:.0} jobs/s; lead {:.1} s; deadlines spread over {:.2} s; {} deadline(s) fell before the last submission finished",
            r.submitted,
            r.submit_failures,
            r.first_submit_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            r.submit_secs,
            r.submit_rate,
            r.lead_secs,
            r.span_secs,
            r.overlap
        );
        let _ = writeln!(
            s,
            "- arrivals {} of {}{}; outcomes {}",
            r.delays_ms.len(),
            r.submitted,
            if r.missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}: {}", r.missing_count, r.missing.join("; "))
            },
            r.outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let stats = |v: &[f64]| {
            format!(
                "min {} median {} p99 {} max {}",
                fmt_ms(v.first().copied()),
                fmt_ms(pct(v, 0.5)),
                fmt_ms(pct(v, 0.99)),
                fmt_ms(v.last().copied())
            )
        };
        let _ = writeln!(s, "- delay deadline → arrival: {}", stats(&r.delays_ms));
        let _ = writeln!(
            s,
            "- largest delays (ms @ due time, s after the first deadline): {}",
            r.worst
                .iter()
                .map(|(d, at)| format!("{d:.1} @ {at:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "- daemon's soft_kill step, due → taken (`steps[].at − due_at`): {}",
            stats(&r.daemon_ms)
        );
        let _ = writeln!(
            s,
            "- step taken → arrival (store write, kill(2), probe wake-up): {}",
            stats(&r.after_step_ms)
        );
        let early = r.after_step_ms.iter().filter(|d| **d < 0.0).count();
        if early > 0 {
            let _ = writeln!(
                s,
                "- **{early} arrival(s) came before the daemon's soft_kill step was taken**: SIGTERM was sent by an earlier step (e.g. warn)"
            );
        }
        let _ = writeln!(
            s,
            "- 30 s poll, same due times, pooled over {POLL_PHASES} random phases: {}",
            stats(&r.poll_ms)
        );
        let _ = writeln!(
            s,
            "- daemon CPU idle (all {} jobs waiting, none due, {:.1} s sample): {}; during the window: {:.2} s CPU over {:.1} s wall ({:.0} % of one core)",
            r.submitted,
            r.idle_secs,
            r.idle_cpu_pct
                .map(|c| format!("{c:.2} %"))
                .unwrap_or_else(|| "not measured (lead too short)".into()),
            r.window_cpu_secs,
            r.window_wall_secs,
            if r.window_wall_secs > 0.0 {
                r.window_cpu_secs / r.window_wall_secs * 100.0
            } else {
                0.0
            }
        );
        if let Some((v, i)) = r.window_ctx {
            let _ = writeln!(
                s,
                "- daemon context switches during the window (all threads): {v} voluntary + {i} involuntary = {:.1} per job",
                (v + i) as f64 / r.submitted.max(1) as f64
            );
        }
        let _ = writeln!(
            s,
            "- daemon memory: RSS {} before jobs, {} with all jobs waiting ({:.1} KB/job); VmHWM {} before `GET /v1/jobs`, {} after it; {} threads",
            mb(r.rss_base_kb),
            mb(r.rss_idle_kb),
            r.rss_idle_kb.saturating_sub(r.rss_base_kb) as f64 / r.n as f64,
            mb(r.hwm_before_list_kb),
            mb(r.hwm_final_kb),
            r.threads_idle
        );
        let _ = writeln!(
            s,
            "- daemon fds: {} before jobs ({}), {} with all jobs waiting ({}; sockets include the bench's pooled HTTP connections): {:.2} per job",
            r.fds_base,
            r.fd_kinds_base,
            r.fds_idle,
            r.fd_kinds_idle,
            r.fds_idle.saturating_sub(r.fds_base) as f64 / r.n as f64
        );
        let _ = writeln!(
            s,
            "- one probe process (median of ≤ 21 sampled): VmRSS {} KB, RssAnon {} KB",
            r.probe_rss_kb
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            r.probe_anon_kb
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(s, "- daemon /metrics: {}", r.metrics);
        if r.leftovers_killed > 0 {
            let _ = writeln!(
                s,
                "- {} probe(s) still running at the end were killed",
                r.leftovers_killed
            );
        }
        let _ = writeln!(s);
    }
    if let Some(f) = failure {
        let _ = writeln!(s, "**Stopped:** {f}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), Some(50.0));
        assert_eq!(pct(&v, 0.99), Some(99.0));
        assert_eq!(pct(&v, 1.0), Some(100.0));
        assert_eq!(pct(&[], 0.5), None);
    }
}
