//! Inline SVG charts (no script, no library): a job's ladder as a timeline, and the reclaimed
//! figures per day. Each has a text alternative; the tables beside them hold the same data.

use maud::{Markup, html};

use crate::model::{Timestamp, fmt_ts};
use crate::reclaimed::{Report, format_bytes, format_number};

use super::jobs::TimelineStep;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;

/// The ladder on a time axis from the run's start: a hollow mark where each step was due, a
/// filled one where it was taken, and a line for now.
pub fn timeline(steps: &[TimelineStep], start: Timestamp, now: Timestamp) -> Markup {
    if steps.is_empty() {
        return html! {};
    }
    let end = steps
        .iter()
        .flat_map(|s| [Some(s.due_at), s.at])
        .flatten()
        .chain([now])
        .max()
        .unwrap_or(now);
    let span = (end - start).num_milliseconds().max(1) as f64;
    let x = |t: Timestamp| {
        LEFT + ((t - start).num_milliseconds() as f64 / span).clamp(0.0, 1.0)
            * (WIDTH - LEFT - RIGHT)
    };
    let row_h = 26.0;
    let height = 30.0 + row_h * steps.len() as f64;
    let label = format!(
        "Timeline of the ladder from the start at {} to {}: hollow marks are due times, filled marks when each step was taken",
        fmt_ts(start),
        fmt_ts(end)
    );
    html! {
        svg.chart role="img" aria-label=(label) viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height) {
            title { (label) }
            line x1=(LEFT) y1="18" x2=(WIDTH - RIGHT) y2="18" stroke="#4a4a4a" stroke-width="1" {}
            text x=(LEFT) y="12" { "start" }
            text x=(WIDTH - RIGHT) y="12" text-anchor="end" { (super::relative(end, now)) }
            line x1=(x(now)) y1="14" x2=(x(now)) y2=(height - 4.0) stroke="#0b4f9c" stroke-dasharray="3 3" {}
            @for (i, s) in steps.iter().enumerate() {
                @let y = 36.0 + row_h * i as f64;
                text x="4" y=(y + 4.0) { (s.step) }
                line x1=(LEFT) y1=(y) x2=(WIDTH - RIGHT) y2=(y) stroke="#e2e2e2" {}
                circle cx=(x(s.due_at)) cy=(y) r="6" fill="#fff" stroke="#1b1b1b" stroke-width="2" {
                    title { (s.step) " due " (fmt_ts(s.due_at)) }
                }
                @if let Some(at) = s.at {
                    circle cx=(x(at)) cy=(y) r="4" fill="#a11212" {
                        title { (s.step) " taken " (fmt_ts(at)) }
                    }
                }
            }
        }
    }
}

/// Bars per day: CPU-seconds saved (known part) and bytes freed, each scaled to its own
/// maximum; days with nothing are left out.
pub fn reclaimed(report: &Report) -> Markup {
    let mut days: Vec<(String, f64, u64, u64)> = Vec::new();
    for l in &report.lines {
        match days.last_mut() {
            Some(d) if d.0 == l.day => {
                d.1 += l.figures.cpu_seconds;
                d.2 = d.2.saturating_add(l.figures.bytes.total());
                d.3 += l.figures.cpu_unknown;
            }
            _ => days.push((
                l.day.clone(),
                l.figures.cpu_seconds,
                l.figures.bytes.total(),
                l.figures.cpu_unknown,
            )),
        }
    }
    if days.is_empty() {
        return html! {};
    }
    let max_cpu = days.iter().map(|d| d.1).fold(0.0, f64::max).max(1e-9);
    let max_bytes = days.iter().map(|d| d.2).max().unwrap_or(0).max(1) as f64;
    let bar_w = 200.0;
    let row_h = 24.0;
    let height = 34.0 + row_h * days.len() as f64;
    let label = "Per day: CPU-seconds saved (left bars) and bytes freed (right bars)";
    html! {
        svg.chart role="img" aria-label=(label) viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height) {
            title { (label) }
            text x="100" y="14" { "CPU-seconds saved" }
            text x="480" y="14" { "Bytes freed" }
            @for (i, (day, cpu, bytes, unknown)) in days.iter().enumerate() {
                @let y = 24.0 + row_h * i as f64;
                text x="4" y=(y + 13.0) { (day) }
                rect x="100" y=(y) width=(format!("{:.1}", cpu / max_cpu * bar_w)) height="16" fill="#2f6db3" {
                    title { (day) ": " (format_number(*cpu)) " CPU-seconds" }
                }
                text x=(100.0 + cpu / max_cpu * bar_w + 4.0) y=(y + 13.0) {
                    (format_number(*cpu))
                    @if *unknown > 0 { " + " (unknown) " unknown" }
                }
                rect x="480" y=(y) width=(format!("{:.1}", *bytes as f64 / max_bytes * bar_w)) height="16" fill="#3c8a4f" {
                    title { (day) ": " (format_bytes(*bytes)) }
                }
                text x=(480.0 + *bytes as f64 / max_bytes * bar_w + 4.0) y=(y + 13.0) { (format_bytes(*bytes)) }
            }
        }
    }
}
