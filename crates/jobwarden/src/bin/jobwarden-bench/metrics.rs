//! The daemon's `/metrics` text summarized in one line: the enforcement-delay histogram and
//! the escalation step counters.

use std::fmt::Write as _;

use crate::report::fmt_ms;

/// The enforcement-delay histogram and step counters of `/metrics`, in one line.
pub(crate) fn summarize_metrics(text: &str) -> String {
    let mut buckets = Vec::new();
    let (mut count, mut sum) = (0.0, 0.0);
    let mut steps = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("jobwarden_enforcement_delay_seconds_bucket{le=\"")
            && let Some((le, v)) = rest.split_once("\"} ")
        {
            buckets.push((le.to_owned(), v.trim().parse::<f64>().unwrap_or(0.0)));
        } else if let Some(v) = line.strip_prefix("jobwarden_enforcement_delay_seconds_count ") {
            count = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("jobwarden_enforcement_delay_seconds_sum ") {
            sum = v.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("jobwarden_escalation_steps_total{action=\"")
            && let Some((a, v)) = rest.split_once("\"} ")
            && v.trim() != "0"
        {
            steps.push(format!("{a} {}", v.trim()));
        }
    }
    let mut out = format!("steps: {}; observations {count}", steps.join(", "));
    if count > 0.0 {
        let _ = write!(out, ", mean {}", fmt_ms(Some(sum / count * 1e3)));
        let q = |p: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= p * count)
                .map(|(le, _)| le.clone())
                .unwrap_or_default()
        };
        let _ = write!(
            out,
            ", p50 ≤ {} s, p99 ≤ {} s; per bucket (le s: n)",
            q(0.5),
            q(0.99)
        );
        let mut prev = 0.0;
        for (le, c) in &buckets {
            if *c > prev {
                let _ = write!(out, " {le}: {}", c - prev);
            }
            prev = *c;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_summary_reads_the_histogram() {
        let text = "jobwarden_escalation_steps_total{action=\"soft_kill\"} 2\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"0.001\"} 1\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"0.0025\"} 2\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"+Inf\"} 2\n\
                    jobwarden_enforcement_delay_seconds_sum 0.003\n\
                    jobwarden_enforcement_delay_seconds_count 2\n";
        let s = summarize_metrics(text);
        assert!(
            s.contains("soft_kill 2") && s.contains("p99 ≤ 0.0025 s") && s.contains("0.001: 1"),
            "{s}"
        );
    }
}
