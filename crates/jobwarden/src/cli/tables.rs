//! What the commands print: aligned tables and human times.

use super::*;
use crate::duration::relative;

/// The `jobs` table: STAGE says where the job is (`completed`: its process exited 0,
/// `failed`: it did not), OUTCOME who ended it (`succeeded`, `terminated`, …), NEXT STEP what
/// jobwarden does next and when (a ladder step, or the cleanup after the TTL). Every column is
/// as wide as its widest cell, so long organisations, types and Kubernetes job ids line up.
pub fn jobs_table(jobs: &[JobView], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let elapsed = match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => crate::duration::format_duration(crate::model::since(f, s)),
                (Some(s), None) => crate::duration::format_duration(crate::model::since(now, s)),
                _ => "-".into(),
            };
            vec![
                j.id.clone(),
                clip(&j.name, 24),
                j.org.clone().unwrap_or_else(|| "-".into()),
                j.job_type.clone().unwrap_or_else(|| "-".into()),
                j.stage.as_str().to_owned(),
                j.outcome.map_or("-", |o| o.as_str()).to_owned(),
                elapsed,
                crate::duration::format_duration(Duration::from_secs(j.effective_timeout_seconds)),
                next_step(j, now),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    table(
        &[
            ("ID", L),
            ("NAME", L),
            ("ORG", L),
            ("TYPE", L),
            ("STAGE", L),
            ("OUTCOME", L),
            ("ELAPSED", R),
            ("TIMEOUT", R),
            ("NEXT STEP", L),
        ],
        &rows,
    )
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Align {
    Left,
    Right,
}

/// `rows` under a header, each column as wide as its widest cell (in characters), two spaces
/// apart; the last column is not padded.
pub(super) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([columns[i].0.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(columns.len()) {
            let last = i + 1 == columns.len();
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match columns[i].1 {
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
                Align::Left if last => out.push_str(cell),
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut columns.iter().map(|c| c.0));
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// `s` cut to at most `max` characters (never inside a character), `…` marking a cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The NEXT STEP cell: the next ladder step, or a finished job's cleanup, with when.
pub(super) fn next_step(j: &JobView, now: Timestamp) -> String {
    match (&j.next_step, j.cleanup_at) {
        (Some(n), _) => format!("{} {}", n.step, relative(n.due_at, now)),
        (None, Some(at)) if at > now => format!("cleanup {}", relative(at, now)),
        (None, Some(_)) => "cleanup now".to_owned(),
        (None, None) => "-".to_owned(),
    }
}

pub(super) fn print_jobs(jobs: &[JobView], now: Timestamp) {
    print!("{}", jobs_table(jobs, now));
}

pub(super) fn print_job(j: &JobView) {
    let opt = |t: Option<Timestamp>| t.map(fmt_ts).unwrap_or_else(|| "-".into());
    println!("id:        {}", j.id);
    println!("name:      {}", j.name);
    println!(
        "org/type:  {} / {}",
        j.org.as_deref().unwrap_or("-"),
        j.job_type.as_deref().unwrap_or("-")
    );
    println!("stage:     {}", j.stage);
    println!(
        "outcome:   {}",
        j.outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("reason:    {}", j.reason.as_deref().unwrap_or("-"));
    println!(
        "pid:       {}",
        j.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("started:   {}", opt(j.started_at));
    println!("finished:  {}", opt(j.finished_at));
    println!(
        "timeout:   {}  grace: {}",
        crate::duration::format_duration(Duration::from_secs(j.effective_timeout_seconds)),
        crate::duration::format_duration(Duration::from_secs(j.grace_period_seconds))
    );
    println!("deadline:  {}", opt(j.deadline));
    for s in &j.steps {
        println!(
            "step:      {:<12} due {}  taken {}",
            s.step.as_str(),
            fmt_ts(s.due_at),
            fmt_ts(s.at)
        );
    }
    if let Some(n) = &j.next_step {
        println!("next:      {} at {}", n.step, fmt_ts(n.due_at));
    }
    if let Some(at) = j.cleanup_at {
        println!("cleanup:   at {} (its TTL)", fmt_ts(at));
    }
}

pub(super) fn print_audit(rows: &[AuditEntry]) {
    print!("{}", audit_table(rows));
}

/// The `audit` table.
pub(super) fn audit_table(rows: &[AuditEntry]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                fmt_ts(r.timestamp),
                r.job_id.clone(),
                r.action.as_str().to_owned(),
                r.success.to_string(),
                if r.dry_run { "yes" } else { "" }.to_owned(),
                format!(
                    "{}{}",
                    r.reason,
                    r.error_message
                        .as_deref()
                        .map(|e| format!(" (error: {e})"))
                        .unwrap_or_default()
                ),
            ]
        })
        .collect();
    use Align::Left as L;
    table(
        &[
            ("TIME", L),
            ("JOB", L),
            ("ACTION", L),
            ("OK", L),
            ("DRY", L),
            ("REASON", L),
        ],
        &cells,
    )
}

/// The `dead-letters` table.
pub(super) fn dead_letters_table(tasks: &[crate::store::Task]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.kind.clone(),
                t.job_id.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", t.attempts, t.max_attempts),
                fmt_ts(t.updated_at),
                t.resource_name.clone(),
                t.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    table(
        &[
            ("ID", R),
            ("KIND", L),
            ("JOB", L),
            ("ATTEMPTS", R),
            ("DEAD SINCE", L),
            ("RESOURCE", L),
            ("LAST ERROR", L),
        ],
        &rows,
    )
}

pub(super) fn print_plan(plan: &[PlanEntry], now: Timestamp) {
    let cells: Vec<Vec<String>> = plan
        .iter()
        .map(|p| {
            let when = match (p.due_now, p.due_at) {
                (true, _) => "now".to_owned(),
                (false, Some(t)) => relative(t, now),
                (false, None) => "-".to_owned(),
            };
            vec![
                p.job_id.clone(),
                clip(&p.name, 24),
                p.stage.as_str().to_owned(),
                p.action.clone(),
                format!(
                    "{when}{}",
                    p.detail
                        .as_deref()
                        .map(|d| format!("  ({d})"))
                        .unwrap_or_default()
                ),
            ]
        })
        .collect();
    use Align::Left as L;
    print!(
        "{}",
        table(
            &[
                ("JOB", L),
                ("NAME", L),
                ("STAGE", L),
                ("ACTION", L),
                ("WHEN", L)
            ],
            &cells
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobId, JobRecord, Outcome, RuntimeKind, Stage};

    fn job(id: &str, name: &str, org: Option<&str>, stage: Stage) -> JobView {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        JobView::from(&JobRecord {
            org: org.map(Into::into),
            stage,
            outcome: (stage == Stage::Completed).then_some(Outcome::Terminated),
            started_at: Some(t),
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            ..JobRecord::new(
                JobId::parse(id).expect("id"),
                "r",
                RuntimeKind::Local,
                name,
                t,
            )
        })
    }

    /// Where each header word starts in `line`'s columns: every row must put a cell there.
    fn column_starts(header: &str) -> Vec<usize> {
        let chars: Vec<char> = header.chars().collect();
        (0..chars.len())
            .filter(|&i| {
                chars[i] != ' ' && (i == 0 || chars[i - 1] == ' ' && (i < 2 || chars[i - 2] == ' '))
            })
            .collect()
    }

    #[test]
    fn the_jobs_table_stays_aligned_with_long_names_orgs_and_ids() {
        let now = chrono::DateTime::from_timestamp(1_800_000_060, 0).expect("ts");
        let jobs = [
            job("01aaaaaaaaaaaaaaaaaaaaaaaa", "short", None, Stage::Running),
            job(
                "a-kubernetes-job-id-that-is-far-longer-than-a-ulid",
                "ünïcode-nämé-that-goes-on-and-on",
                Some("engineering-platform"),
                Stage::Completed,
            ),
        ];
        let text = jobs_table(&jobs, now);
        let lines: Vec<&str> = text.lines().collect();
        let starts = column_starts(lines[0]);
        assert_eq!(starts.len(), 9, "{text}");
        for row in &lines[1..] {
            let chars: Vec<char> = row.chars().collect();
            // Left-aligned columns (all but ELAPSED and TIMEOUT) start where their header does.
            for (col, &at) in starts
                .iter()
                .enumerate()
                .filter(|(c, _)| ![6, 7].contains(c))
            {
                assert!(
                    chars.get(at).is_some_and(|c| *c != ' ') && (at == 0 || chars[at - 1] == ' '),
                    "column {col} misaligned in:\n{text}"
                );
            }
        }
        assert!(text.contains("engineering-platform  -"), "{text}");
        assert!(text.contains("ünïcode-nämé-that-goes-…"), "{text}");
    }
}
