//! What jobwarden's actions reclaimed: CPU and memory a kill saved, and bytes deletions freed,
//! per organisation and per day (`jobwarden report`, `GET /v1/report`, the console's
//! Reclaimed page and, for the last 7 days, `/metrics`).
//!
//! The method ([`METHOD`], stated on the page and in the README):
//!
//! - **When a job is killed** (its soft kill, for a timeout or a cancel), the runtime measures,
//!   just before the step is recorded, what the run uses ([`Usage`]): locally its process
//!   group's average CPU rate since it started (CPU-seconds from `/proc` over the wall time)
//!   and its resident memory now; on Kubernetes the resource requests of its pods that have
//!   not ended. It also notes the latest the run could otherwise have run until
//!   ([`bound`]): the earliest of the end of the timeout it would have had without jobwarden's
//!   cap (when the organisation or platform maximum lowered it), the deadline it had when it
//!   was cancelled before it, and a Kubernetes Job's own `activeDeadlineSeconds`. These go in
//!   the soft kill's audit row (`details.reclaimed`), written with the step.
//! - **The report** counts, for each such kill, time saved = that bound − the run's end (when
//!   it exited after the kill, else the kill), CPU-seconds = rate × time saved, memory
//!   GiB-hours = memory × time saved. They are upper bounds (the job might have finished
//!   earlier on its own). A kill with no bound, or whose rate could not be read, counts as
//!   unknown, never as a number.
//! - **Bytes freed** are the `bytes` the cleanup rows record for the workspaces, log files,
//!   object-storage prefixes (artifacts, partial saves, shipped logs) and orphans they removed.
//!   Deletions whose size jobwarden cannot see (Kubernetes PVCs, Secrets, ConfigMaps) are
//!   counted as deletions, not bytes.
//!
//! Days are UTC dates of the audit row (the kill, the deletion).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{AuditAction, AuditEntry, JobRecord, Timestamp, add, fmt_ts, since};
use crate::policy::Resolution;

/// The method in one sentence (the console's Reclaimed page, `jobwarden report`, README).
pub const METHOD: &str = "For each job jobwarden killed, saved time is the latest it could otherwise have run until (the timeout it would have had without jobwarden's cap, the deadline it had when it was cancelled, or a Kubernetes Job's own activeDeadlineSeconds, whichever is earliest) minus when it ended, and CPU-seconds and memory GiB-hours are that time multiplied by its CPU rate and memory at the kill (locally its process group's average CPU use since it started and its resident memory, read from /proc; on Kubernetes its pods' resource requests): upper bounds, unknown where there is no such bound or measurement; bytes are what the workspace, log, artifact and orphan deletions removed.";

/// `details` key of a kill's audit row holding its [`Usage`].
pub const DETAILS_KEY: &str = "reclaimed";

/// Where a [`Usage`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// A local process group, from `/proc`.
    ProcessGroup,
    /// A Kubernetes Job's pods' resource requests.
    PodRequests,
}

/// What a run used (or reserved) when it was killed, and the latest it could otherwise have
/// run until: `details.reclaimed` of its soft kill's audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Where the figures come from.
    pub basis: Basis,
    /// CPU cores: the process group's average since it started, or the pods' requests.
    pub cpu_cores: Option<f64>,
    /// Memory in bytes: the process group's resident memory, or the pods' requests.
    pub memory_bytes: Option<u64>,
    /// The latest the run could otherwise have run until, if any bound is known.
    pub otherwise_until: Option<Timestamp>,
    /// What that bound is, in words (or why there is none).
    pub bound: String,
}

impl Usage {
    /// The usage kept in an audit row's details, if any.
    pub fn from_details(details: Option<&serde_json::Value>) -> Option<Usage> {
        serde_json::from_value(details?.get(DETAILS_KEY)?.clone()).ok()
    }

    /// Adds it to `details` (an object; made one if it is not).
    pub fn add_to(&self, details: &mut Option<serde_json::Value>) {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        match details {
            Some(serde_json::Value::Object(map)) => {
                map.insert(DETAILS_KEY.to_owned(), value);
            }
            _ => *details = Some(serde_json::json!({ DETAILS_KEY: value })),
        }
    }
}

/// Whether `plan` (a soft kill of `job`) is a cancel: due before the deadline (the local
/// cancel is due when asked, a Kubernetes one when the annotation asked), which a timeout
/// never is.
pub fn cancelled(job: &JobRecord, plan: &crate::engine::plan::StepPlan) -> bool {
    job.deadline.is_some_and(|d| plan.taken.due_at < d)
}

/// The latest `job` could have run until had it not been killed at `killed_at`, and what that
/// bound is: the earliest of the end of the timeout it would have had without jobwarden's cap
/// (only when a cap lowered it), its deadline when it was cancelled before it, and
/// `active_deadline` (a Kubernetes Job's own) from its start. None when no bound is known.
pub fn bound(
    job: &JobRecord,
    cancelled: bool,
    active_deadline: Option<Duration>,
) -> (Option<Timestamp>, String) {
    let Some(started) = job.started_at else {
        return (None, "unknown: the run has no start time".into());
    };
    let mut bounds: Vec<(Timestamp, String)> = Vec::new();
    if let Some(r) = Resolution::from_spec(&job.spec)
        && let Some(cap) = r.capped_by
        && r.uncapped_seconds > job.timeout.as_secs()
    {
        bounds.push((
            add(started, Duration::from_secs(r.uncapped_seconds)),
            format!(
                "its uncapped timeout of {} (capped by {})",
                crate::duration::format_duration(Duration::from_secs(r.uncapped_seconds)),
                cap.words()
            ),
        ));
    }
    if cancelled && let Some(deadline) = job.deadline {
        bounds.push((deadline, "its deadline (it was cancelled)".into()));
    }
    if let Some(ads) = active_deadline {
        bounds.push((
            add(started, ads),
            format!(
                "its Job's activeDeadlineSeconds ({})",
                crate::duration::format_duration(ads)
            ),
        ));
    }
    match bounds.into_iter().min_by_key(|(at, _)| *at) {
        Some((at, what)) => (Some(at), what),
        None => (
            None,
            "unknown: nothing but jobwarden bounded its run (no cap lowered its timeout, no cancel, no activeDeadlineSeconds)".into(),
        ),
    }
}

/// A Kubernetes resource quantity (`500m`, `2`, `1.5`, `128Mi`, `1G`, `1e9`) as a number of
/// units (cores, bytes); None when it does not parse.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .or_else(|| q.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| {
            q.strip_suffix('E')
                .filter(|n| !n.is_empty())
                .map(|n| (n, 1e18))
        })
        .unwrap_or((q, 1.0));
    if number.is_empty() || number.starts_with(['+', '-']) && number.len() == 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let v = value * factor;
    (v.is_finite() && v >= 0.0).then_some(v)
}

// ----- the report -----

/// An audit row the report reads, with what the store knows of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct ReclaimedRow {
    /// The row.
    pub entry: AuditEntry,
    /// The job's organisation (None: none, or no such job: an orphan).
    pub org: Option<String>,
    /// The job's current run.
    pub run_id: Option<String>,
    /// When the job's current run finished.
    pub finished_at: Option<Timestamp>,
}

/// Which rows a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportQuery {
    /// Rows at or after this time.
    pub since: Option<Timestamp>,
    /// Rows before this time.
    pub until: Option<Timestamp>,
    /// Only this organisation's jobs.
    pub org: Option<String>,
}

/// Bytes freed, by what was deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Workspaces.
    pub workspace: u64,
    /// Local log files.
    pub log: u64,
    /// Object-storage prefixes (artifacts, partial saves, shipped logs).
    pub artifacts: u64,
    /// Orphans (workspaces, log files, prefixes) of jobs the store does not know.
    pub orphans: u64,
}

impl Bytes {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.workspace
            .saturating_add(self.log)
            .saturating_add(self.artifacts)
            .saturating_add(self.orphans)
    }

    fn add(&mut self, o: &Bytes) {
        self.workspace = self.workspace.saturating_add(o.workspace);
        self.log = self.log.saturating_add(o.log);
        self.artifacts = self.artifacts.saturating_add(o.artifacts);
        self.orphans = self.orphans.saturating_add(o.orphans);
    }
}

/// What one organisation's jobs reclaimed on one day (or over the whole report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Kills counted.
    pub kills: u64,
    /// Sum of the known CPU-seconds saved.
    pub cpu_seconds: f64,
    /// Kills whose CPU saving is unknown (no bound, or no rate).
    pub cpu_unknown: u64,
    /// Sum of the known memory GiB-hours saved.
    pub memory_gib_hours: f64,
    /// Kills whose memory saving is unknown.
    pub memory_unknown: u64,
    /// Sum of the known time saved, in seconds.
    pub saved_seconds: f64,
    /// Bytes freed.
    pub bytes: Bytes,
    /// Deletions whose size jobwarden cannot see (Kubernetes objects).
    pub deletions_without_size: u64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.kills += o.kills;
        self.cpu_seconds += o.cpu_seconds;
        self.cpu_unknown += o.cpu_unknown;
        self.memory_gib_hours += o.memory_gib_hours;
        self.memory_unknown += o.memory_unknown;
        self.saved_seconds += o.saved_seconds;
        self.bytes.add(&o.bytes);
        self.deletions_without_size += o.deletions_without_size;
    }

    /// The CPU cell: the known sum, `unknown` when every kill's is, and how many are unknown
    /// beside a sum (`1234.5 + 2 unknown`); `0` when nothing was killed.
    pub fn cpu_text(&self) -> String {
        known_text(
            self.kills,
            self.cpu_unknown,
            format_number(self.cpu_seconds),
        )
    }

    /// The memory cell, as [`Figures::cpu_text`].
    pub fn memory_text(&self) -> String {
        known_text(
            self.kills,
            self.memory_unknown,
            format_number(self.memory_gib_hours),
        )
    }
}

fn known_text(kills: u64, unknown: u64, sum: String) -> String {
    match (kills, unknown) {
        (0, _) => "0".into(),
        (k, u) if u >= k => "unknown".into(),
        (_, 0) => sum,
        (_, u) => format!("{sum} + {u} unknown"),
    }
}

/// A number for tables: whole when it is, one decimal from 1 on, three below (`<0.001` for
/// a positive amount too small to show, never a misleading 0).
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() < 0.001 {
        "<0.001".into()
    } else if v.abs() < 1.0 {
        format!("{v:.3}")
    } else if (v - v.round()).abs() < 0.05 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// One line of the report: an organisation's figures on a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The organisation (None: no organisation, or an orphan's unknown job).
    pub org: Option<String>,
    /// What was reclaimed.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The report: one line per (day, organisation) with something in it, oldest day first, and
/// the totals per organisation and overall.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The method, in one sentence.
    pub method: String,
    /// Rows from this time on (None: all).
    pub since: Option<Timestamp>,
    /// Only this organisation.
    pub org: Option<String>,
    /// Per day and organisation.
    pub lines: Vec<ReportLine>,
    /// Per organisation, over the report's time.
    pub by_org: Vec<ReportLine>,
    /// Everything.
    pub total: Figures,
}

/// The figures one row contributes.
fn figures_of(row: &ReclaimedRow) -> Option<Figures> {
    let e = &row.entry;
    if !e.success || e.dry_run {
        return None;
    }
    match e.action {
        AuditAction::SoftKill => {
            let usage = Usage::from_details(e.details.as_ref())?;
            let killed_at = e.timestamp;
            // The run's end after the kill, when the row's run is the job's finished run.
            let row_run = e
                .details
                .as_ref()
                .and_then(|d| d.get("run_id"))
                .and_then(|v| v.as_str());
            let ended = match (row_run, &row.run_id, row.finished_at) {
                (Some(a), Some(b), Some(f)) if a == b && f >= killed_at => f,
                _ => killed_at,
            };
            let saved = usage
                .otherwise_until
                .map(|until| since(until, ended).as_secs_f64());
            let mut f = Figures {
                kills: 1,
                ..Figures::default()
            };
            match saved {
                Some(s) => f.saved_seconds = s,
                None => {
                    f.cpu_unknown = 1;
                    f.memory_unknown = 1;
                    return Some(f);
                }
            }
            let seconds = f.saved_seconds;
            match usage.cpu_cores {
                Some(c) => f.cpu_seconds = c * seconds,
                None => f.cpu_unknown = 1,
            }
            match usage.memory_bytes {
                Some(b) => f.memory_gib_hours = b as f64 / GIB * seconds / 3600.0,
                None => f.memory_unknown = 1,
            }
            Some(f)
        }
        AuditAction::TtlCleanup | AuditAction::OrphanCleanup => {
            let bytes = e
                .details
                .as_ref()
                .and_then(|d| d.get("bytes"))
                .and_then(serde_json::Value::as_u64);
            let mut f = Figures::default();
            match bytes {
                None => {
                    // A deletion jobwarden cannot size; skipped rows delete nothing.
                    if e.reason.starts_with("skipped") {
                        return None;
                    }
                    f.deletions_without_size = 1;
                }
                Some(b) if e.action == AuditAction::OrphanCleanup => f.bytes.orphans = b,
                Some(b) => match e.resource_type.as_str() {
                    "workspace" => f.bytes.workspace = b,
                    "log" => f.bytes.log = b,
                    _ => f.bytes.artifacts = b,
                },
            }
            Some(f)
        }
        _ => None,
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The report over `rows` (as [`crate::store::Store::reclaimed_rows`] returns them).
pub fn report(rows: &[ReclaimedRow], query: &ReportQuery) -> Report {
    let mut per_day: BTreeMap<(String, Option<String>), Figures> = BTreeMap::new();
    let mut per_org: BTreeMap<Option<String>, Figures> = BTreeMap::new();
    let mut total = Figures::default();
    for row in rows {
        let Some(f) = figures_of(row) else { continue };
        let day = row.entry.timestamp.format("%Y-%m-%d").to_string();
        per_day.entry((day, row.org.clone())).or_default().add(&f);
        per_org.entry(row.org.clone()).or_default().add(&f);
        total.add(&f);
    }
    Report {
        method: METHOD.to_owned(),
        since: query.since,
        org: query.org.clone(),
        lines: per_day
            .into_iter()
            .map(|((day, org), figures)| ReportLine { day, org, figures })
            .collect(),
        by_org: per_org
            .into_iter()
            .map(|(org, figures)| ReportLine {
                day: "all".into(),
                org,
                figures,
            })
            .collect(),
        total,
    }
}

/// The report as `jobwarden report` prints it: a table per day and organisation, the totals,
/// and the method.
pub fn report_table(r: &Report) -> String {
    let mut out = String::new();
    let header = [
        "DAY",
        "ORG",
        "KILLS",
        "CPU-SECONDS",
        "MEMORY-GIB-HOURS",
        "WORKSPACE",
        "LOG",
        "ARTIFACTS",
        "ORPHANS",
    ];
    let cells = |l: &ReportLine| -> Vec<String> {
        vec![
            l.day.clone(),
            l.org.clone().unwrap_or_else(|| "-".into()),
            l.figures.kills.to_string(),
            l.figures.cpu_text(),
            l.figures.memory_text(),
            format_bytes(l.figures.bytes.workspace),
            format_bytes(l.figures.bytes.log),
            format_bytes(l.figures.bytes.artifacts),
            format_bytes(l.figures.bytes.orphans),
        ]
    };
    let mut rows: Vec<Vec<String>> = r.lines.iter().map(cells).collect();
    rows.push(cells(&ReportLine {
        day: "total".into(),
        org: r.org.clone(),
        figures: r.total.clone(),
    }));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i < 2 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| (*s).to_owned()).collect());
    for row in rows {
        line(row);
    }
    if r.total.deletions_without_size > 0 {
        out.push_str(&format!(
            "{} deletions of objects whose size jobwarden cannot see (not in the bytes)\n",
            r.total.deletions_without_size
        ));
    }
    out.push_str(&format!("\nMethod: {}\n", r.method));
    out
}

/// Bytes in binary units to one decimal (`0 B`, `1.5 KiB`, `12.0 MiB`).
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `/metrics` lines for the report of the last [`METRICS_WINDOW`] (the same numbers as
/// `jobwarden report --since 7d`): gauges per organisation (`_` for none, and for orphans).
/// A window, not all time: each refresh reads only that window's rows (the audit log is
/// append-only and grows for ever).
pub fn metrics_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let org = |l: &ReportLine| l.org.clone().unwrap_or_else(|| "_".into());
    let mut gauge = |name: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        for (labels, value) in lines {
            let _ = writeln!(o, "{name}{{{labels}}} {value}");
        }
    };
    gauge(
        "jobwarden_reclaimed_cpu_seconds",
        "CPU-seconds jobwarden's kills saved in the last 7 days (the known part; see jobwarden_reclaimed_unknown).",
        r.by_org
            .iter()
            .map(|l| {
                (
                    format!("org=\"{}\"", org(l)),
                    l.figures.cpu_seconds.to_string(),
                )
            })
            .collect(),
    );
    gauge(
        "jobwarden_reclaimed_memory_gib_hours",
        "Memory GiB-hours jobwarden's kills saved in the last 7 days (the known part).",
        r.by_org
            .iter()
            .map(|l| {
                (
                    format!("org=\"{}\"", org(l)),
                    l.figures.memory_gib_hours.to_string(),
                )
            })
            .collect(),
    );
    gauge(
        "jobwarden_reclaimed_unknown",
        "Kills in the last 7 days whose saving is unknown, by resource.",
        r.by_org
            .iter()
            .flat_map(|l| {
                [
                    ("cpu", l.figures.cpu_unknown),
                    ("memory", l.figures.memory_unknown),
                ]
                .map(|(res, n)| {
                    (
                        format!("org=\"{}\",resource=\"{res}\"", org(l)),
                        n.to_string(),
                    )
                })
            })
            .collect(),
    );
    gauge(
        "jobwarden_reclaimed_bytes",
        "Bytes jobwarden's deletions freed in the last 7 days, by kind.",
        r.by_org
            .iter()
            .flat_map(|l| {
                let b = l.figures.bytes;
                [
                    ("workspace", b.workspace),
                    ("log", b.log),
                    ("artifacts", b.artifacts),
                    ("orphans", b.orphans),
                ]
                .map(|(kind, n)| (format!("org=\"{}\",kind=\"{kind}\"", org(l)), n.to_string()))
            })
            .collect(),
    );
    o
}

/// The window `/metrics` reports: the last 7 days.
pub const METRICS_WINDOW: Duration = Duration::from_secs(7 * 86400);

/// How often the `/metrics` figures are recomputed from the store.
pub const METRICS_EVERY: Duration = Duration::from_secs(10);

/// Recomputes the report of the last [`METRICS_WINDOW`] into `metrics` every
/// [`METRICS_EVERY`] until `shutdown` (both runtimes run one). A store error keeps the last
/// figures and is counted.
pub async fn refresh_metrics(
    store: crate::store::Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let query = ReportQuery {
            since: Some(crate::model::sub(crate::clock::now(), METRICS_WINDOW)),
            ..ReportQuery::default()
        };
        match store.reclaimed_rows(&query).await {
            Ok(rows) => metrics.set_reclaimed(metrics_text(&report(&rows, &query))),
            Err(e) => {
                metrics.error("store");
                tracing::warn!("computing the reclaimed figures for /metrics: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(METRICS_EVERY) => {}
        }
    }
}

/// A usage row for tests and examples: `details` of a soft kill carrying `usage`.
pub fn kill_details(run_id: &str, due_at: Timestamp, usage: &Usage) -> serde_json::Value {
    let mut d = Some(serde_json::json!({ "due_at": fmt_ts(due_at), "run_id": run_id }));
    usage.add_to(&mut d);
    d.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ladder::tests::{running, t};

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (q, v) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5", 1.5),
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("1Gi", GIB),
            ("1G", 1e9),
            ("1e9", 1e9),
            ("100k", 1e5),
            ("250u", 250e-6),
        ] {
            let got = parse_quantity(q).expect(q);
            assert!((got - v).abs() < v * 1e-9, "{q}: {got}");
        }
        for bad in ["", "m", "abc", "-1", "1Xi", "Gi"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    fn kill(job: &JobRecord, at: i64, usage: Usage) -> ReclaimedRow {
        let mut row = crate::engine::plan::job_row(job, t(at), AuditAction::SoftKill, "timeout");
        row.details = Some(kill_details(&job.run_id, t(at), &usage));
        ReclaimedRow {
            entry: row,
            org: job.org.clone(),
            run_id: Some(job.run_id.clone()),
            finished_at: job.finished_at,
        }
    }

    fn usage(cores: Option<f64>, mem: Option<u64>, until: Option<i64>) -> Usage {
        Usage {
            basis: Basis::ProcessGroup,
            cpu_cores: cores,
            memory_bytes: mem,
            otherwise_until: until.map(t),
            bound: "test".into(),
        }
    }

    #[test]
    fn a_kill_saves_its_rate_times_the_time_to_its_bound_from_its_end() {
        let mut job = running();
        job.org = Some("acme".into());
        // Killed at 100, exited at 110, could have run until 3700: 3590 s saved.
        job.finished_at = Some(t(110));
        let rows = [kill(
            &job,
            100,
            usage(Some(0.5), Some(2 * 1024 * 1024 * 1024), Some(3700)),
        )];
        let r = report(&rows, &ReportQuery::default());
        assert_eq!(r.lines.len(), 1);
        let f = &r.total;
        assert_eq!(f.kills, 1);
        assert!((f.saved_seconds - 3590.0).abs() < 1e-6, "{f:?}");
        assert!((f.cpu_seconds - 1795.0).abs() < 1e-6, "{f:?}");
        assert!((f.memory_gib_hours - 2.0 * 3590.0 / 3600.0).abs() < 1e-9);
        assert_eq!(r.lines[0].org.as_deref(), Some("acme"));
        assert_eq!(f.cpu_text(), "1795");
    }

    #[test]
    fn unknown_is_unknown_never_a_number() {
        let job = running();
        let rows = [
            kill(&job, 100, usage(Some(1.0), Some(1024), None)),
            kill(&job, 100, usage(None, Some(1024), Some(200))),
        ];
        let r = report(&rows, &ReportQuery::default());
        assert_eq!(r.total.kills, 2);
        assert_eq!(r.total.cpu_unknown, 2);
        assert_eq!(r.total.cpu_text(), "unknown");
        assert_eq!(r.total.memory_unknown, 1);
        assert!(r.total.memory_text().ends_with("+ 1 unknown"), "{r:?}");
        let text = report_table(&r);
        assert!(text.contains("unknown"), "{text}");
        assert!(text.contains(METHOD), "{text}");
        let m = metrics_text(&r);
        assert!(
            m.contains("jobwarden_reclaimed_unknown{org=\"_\",resource=\"cpu\"} 2"),
            "{m}"
        );
    }

    #[test]
    fn bytes_come_from_the_cleanup_rows_by_kind() {
        let job = running();
        let row = |action: AuditAction, rtype: &str, bytes: Option<u64>, reason: &str| {
            let mut e = crate::engine::plan::job_row(&job, t(50), action, reason);
            e.resource_type = rtype.into();
            e.details = bytes.map(|b| serde_json::json!({ "bytes": b }));
            ReclaimedRow {
                entry: e,
                org: None,
                run_id: None,
                finished_at: None,
            }
        };
        let mut dry = row(AuditAction::TtlCleanup, "workspace", Some(999), "dry");
        dry.entry.dry_run = true;
        let rows = [
            row(AuditAction::TtlCleanup, "workspace", Some(10), "removed"),
            row(AuditAction::TtlCleanup, "log", Some(20), "removed"),
            row(
                AuditAction::TtlCleanup,
                "object_prefix",
                Some(30),
                "deleted",
            ),
            row(AuditAction::OrphanCleanup, "workspace", Some(40), "removed"),
            row(AuditAction::TtlCleanup, "pvc", None, "deleted"),
            row(AuditAction::TtlCleanup, "pvc", None, "skipped: gone"),
            dry,
        ];
        let r = report(&rows, &ReportQuery::default());
        assert_eq!(
            r.total.bytes,
            Bytes {
                workspace: 10,
                log: 20,
                artifacts: 30,
                orphans: 40
            }
        );
        assert_eq!(r.total.deletions_without_size, 1);
        assert_eq!(r.total.kills, 0);
        assert_eq!(r.total.cpu_text(), "0");
    }

    #[test]
    fn the_bound_is_the_earliest_known_one() {
        let mut job = running();
        // No cap, not cancelled, no activeDeadlineSeconds: unknown.
        let (at, why) = bound(&job, false, None);
        assert_eq!(at, None);
        assert!(why.starts_with("unknown"), "{why}");
        job.spec = serde_json::json!({
            "policy": {"source": "job", "capped_by": "organization_max", "uncapped_seconds": 3600}
        });
        let started = job.started_at.expect("started");
        let (at, why) = bound(&job, false, None);
        assert_eq!(at, Some(add(started, Duration::from_secs(3600))));
        assert!(why.contains("capped by the organisation maximum"), "{why}");
        // A Job's own activeDeadlineSeconds, earlier: it wins.
        let (at, _) = bound(&job, false, Some(Duration::from_secs(600)));
        assert_eq!(at, Some(add(started, Duration::from_secs(600))));
        // Cancelled: its deadline.
        let (at, why) = bound(&job, true, None);
        assert_eq!(at, job.deadline);
        assert!(why.contains("cancelled"), "{why}");
    }
}
