//! The `jobs` table's shape, shared by both backends: the filter type, how a [`JobRecord`]
//! becomes column values and back, and how `update_job` merges fields that other writers
//! change concurrently (steps of the current run, the last heartbeat).

use std::time::Duration;

use crate::model::{JobRecord, RuntimeKind, Step, StepTaken, Timestamp};

use super::convert::{RowExt, int_u64, secs};
use super::{Error, Result};

/// Which jobs [`super::Store::list_jobs`] returns. The default is every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs whose process/pods may still run (`pre_start`, `running`, `terminating`).
    pub active_only: bool,
    /// Only jobs of this runtime.
    pub runtime: Option<RuntimeKind>,
    /// Keyset paging: only ids greater than this.
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Only this organisation's jobs.
    pub org: Option<String>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only jobs in this stage.
    pub stage: Option<crate::model::Stage>,
    /// Only jobs whose process/pods cannot run any more (the complement of `active_only`).
    pub finished_only: bool,
    /// Ordered by finish (else creation) time, newest first, instead of by id.
    pub newest_first: bool,
    /// Skip this many (after ordering).
    pub offset: Option<u32>,
}

/// The `jobs` column list in the order [`JobParams`] binds them (a macro so that `concat!`
/// can build `&'static str` queries from it).
macro_rules! job_columns {
    () => {
        "id, run_id, attempt, runtime, namespace, name, org, job_type, stage, outcome, reason, \
         created_at, started_at, finished_at, timeout_secs, grace_secs, ttl_secs, deadline, \
         steps, heartbeat_timeout_secs, last_heartbeat, recovery_attempts, pid, \
         pid_start_ticks, exit_code, signal, spec, dry_run"
    };
}
pub(crate) use job_columns;

/// The `stage` values of active jobs, as an SQL list (kept beside [`crate::model::Stage::is_active`]).
pub(crate) const ACTIVE_STAGES_SQL: &str = "('pre_start', 'running', 'terminating', 'completing')";

/// A job's column values, in [`COLUMNS`] order, checked to fit the columns. JSON is kept as
/// text so both backends can bind it (PostgreSQL casts it to `jsonb`).
pub(crate) struct JobParams<'a> {
    pub id: &'a str,
    pub run_id: &'a str,
    pub attempt: i64,
    pub runtime: &'static str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub org: Option<&'a str>,
    pub job_type: Option<&'a str>,
    pub stage: &'static str,
    pub outcome: Option<&'static str>,
    pub reason: Option<&'a str>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub timeout_secs: i64,
    pub grace_secs: i64,
    pub ttl_secs: Option<i64>,
    pub deadline: Option<Timestamp>,
    pub steps: String,
    pub heartbeat_timeout_secs: Option<i64>,
    pub last_heartbeat: Option<Timestamp>,
    pub recovery_attempts: i64,
    pub pid: Option<i64>,
    pub pid_start_ticks: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub spec: String,
    pub dry_run: bool,
}

fn opt_secs(d: Option<Duration>, what: &'static str) -> Result<Option<i64>> {
    d.map(|d| secs(d, what)).transpose()
}

fn to_json<T: serde::Serialize>(v: &T, what: &'static str) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt {
        what: what.into(),
        problem: format!("cannot be serialised: {e}"),
    })
}

impl<'a> JobParams<'a> {
    /// Column values for `job`, with `steps` and `last_heartbeat` as given (they may be merged
    /// with the stored ones first).
    pub(crate) fn new(
        job: &'a JobRecord,
        steps: &[StepTaken],
        last_heartbeat: Option<Timestamp>,
    ) -> Result<Self> {
        Ok(JobParams {
            id: job.id.as_str(),
            run_id: &job.run_id,
            attempt: i64::from(job.attempt),
            runtime: job.runtime.as_str(),
            namespace: job.namespace.as_deref(),
            name: &job.name,
            org: job.org.as_deref(),
            job_type: job.job_type.as_deref(),
            stage: job.stage.as_str(),
            outcome: job.outcome.map(|o| o.as_str()),
            reason: job.reason.as_deref(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            timeout_secs: secs(job.timeout, "jobs.timeout")?,
            grace_secs: secs(job.grace, "jobs.grace")?,
            ttl_secs: opt_secs(job.ttl, "jobs.ttl")?,
            deadline: job.deadline,
            steps: to_json(&steps, "jobs.steps")?,
            heartbeat_timeout_secs: opt_secs(job.heartbeat_timeout, "jobs.heartbeat_timeout")?,
            last_heartbeat,
            recovery_attempts: i64::from(job.recovery_attempts),
            pid: job.pid.map(i64::from),
            pid_start_ticks: job
                .pid_start_ticks
                .map(|t| int_u64(t, "jobs.pid_start_ticks"))
                .transpose()?,
            exit_code: job.exit_code.map(i64::from),
            signal: job.signal.map(i64::from),
            spec: to_json(&job.spec, "jobs.spec")?,
            dry_run: job.dry_run,
        })
    }
}

/// What `update_job` writes for the two merged fields, given what is stored.
///
/// Steps: for the same run, the stored steps plus any of `job.steps` not stored yet (a step
/// recorded by `record_step` after `job` was read is never dropped); a step in both keeps the
/// later `at` (a kill carried out later than it was recorded: the next step's grace counts
/// from when it happened, never from earlier); for a new run, `job.steps`.
/// Heartbeat: the later of the two.
pub(crate) fn merge_for_update(
    job: &JobRecord,
    stored_run_id: &str,
    stored_steps: Vec<StepTaken>,
    stored_heartbeat: Option<Timestamp>,
) -> (Vec<StepTaken>, Option<Timestamp>) {
    let steps = if stored_run_id == job.run_id {
        let mut steps = stored_steps;
        for s in &job.steps {
            if let Some(t) = steps
                .iter_mut()
                .find(|t| t.step == s.step && t.due_at == s.due_at)
            {
                t.at = t.at.max(s.at);
            } else if s.step == Step::Warn || !steps.iter().any(|t| t.step == s.step) {
                // Warnings are one per due time; every other step one per run.
                steps.push(s.clone());
            }
        }
        steps
    } else {
        job.steps.clone()
    };
    let heartbeat = match (stored_heartbeat, job.last_heartbeat) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (steps, heartbeat)
}

/// Reads the `steps` column.
pub(crate) fn decode_steps(row: &impl RowExt) -> Result<Vec<StepTaken>> {
    serde_json::from_value(row.json("steps")?)
        .map_err(|e| row.corrupt("steps", format!("not a list of steps: {e}")))
}

/// Reads a `jobs` row.
pub(crate) fn decode_job(row: &impl RowExt) -> Result<JobRecord> {
    let id = row.text("id")?;
    let runtime = match row.text("runtime")?.as_str() {
        "local" => RuntimeKind::Local,
        "kubernetes" => RuntimeKind::Kubernetes,
        other => {
            return Err(row.corrupt(
                "runtime",
                format!("unknown runtime {other:?} (expected local or kubernetes)"),
            ));
        }
    };
    Ok(JobRecord {
        id: crate::model::JobId::parse(&id).map_err(|e| row.corrupt("id", e.to_string()))?,
        run_id: row.text("run_id")?,
        attempt: row.count("attempt")?,
        runtime,
        namespace: row.opt_text("namespace")?,
        name: row.text("name")?,
        org: row.opt_text("org")?,
        job_type: row.opt_text("job_type")?,
        stage: row.parsed("stage")?,
        outcome: row.opt_parsed("outcome")?,
        reason: row.opt_text("reason")?,
        created_at: row.ts("created_at")?,
        started_at: row.opt_ts("started_at")?,
        finished_at: row.opt_ts("finished_at")?,
        timeout: row.duration("timeout_secs")?,
        grace: row.duration("grace_secs")?,
        ttl: row.opt_duration("ttl_secs")?,
        deadline: row.opt_ts("deadline")?,
        steps: decode_steps(row)?,
        heartbeat_timeout: row.opt_duration("heartbeat_timeout_secs")?,
        last_heartbeat: row.opt_ts("last_heartbeat")?,
        recovery_attempts: row.count("recovery_attempts")?,
        pid: row.opt_i32("pid")?,
        pid_start_ticks: row
            .opt_int("pid_start_ticks")?
            .map(|v| {
                u64::try_from(v).map_err(|_| row.corrupt("pid_start_ticks", format!("{v} < 0")))
            })
            .transpose()?,
        exit_code: row.opt_i32("exit_code")?,
        signal: row.opt_i32("signal")?,
        spec: row.json("spec")?,
        dry_run: row.flag("dry_run")?,
    })
}

/// The JSON text of one step, as appended to the `steps` array.
pub(crate) fn step_json(step: &StepTaken) -> Result<String> {
    to_json(step, "jobs.steps")
}

/// The JSON text of a step write's [`super::StepWrite::spec_after`], if any.
pub(crate) fn spec_after_json(w: &super::StepWrite) -> Result<Option<String>> {
    w.spec_after
        .as_ref()
        .map(|v| to_json(v, "jobs.spec"))
        .transpose()
}

/// A step's `due_at` exactly as [`step_json`] writes it. Warnings are recorded once per due
/// time (several `warn_before` offsets give several warnings per run); every other step
/// once per run.
pub(crate) fn due_at_json(step: &StepTaken) -> String {
    match serde_json::to_value(step.due_at) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ladder::tests::{running, t as ts};
    use crate::model::Step;

    /// A job of run `run` whose `steps` were all due and taken at `ts(1)`.
    fn job(run: &str, steps: &[Step], hb: Option<i64>) -> JobRecord {
        let mut j = running();
        j.run_id = run.into();
        j.steps = steps
            .iter()
            .map(|&step| StepTaken {
                step,
                due_at: ts(1),
                at: ts(1),
            })
            .collect();
        j.last_heartbeat = hb.map(ts);
        j
    }

    #[test]
    fn same_run_keeps_stored_steps_and_adds_new_ones() {
        let stored = job("r1", &[Step::Warn, Step::SoftKill], None).steps;
        let (steps, _) = merge_for_update(
            &job("r1", &[Step::Warn, Step::HardKill], None),
            "r1",
            stored,
            None,
        );
        let names: Vec<Step> = steps.iter().map(|s| s.step).collect();
        assert_eq!(names, [Step::Warn, Step::SoftKill, Step::HardKill]);
    }

    #[test]
    fn a_step_carried_out_later_keeps_the_later_time_never_an_earlier_one() {
        let stored = job("r1", &[Step::SoftKill], None).steps;
        let mut later = job("r1", &[Step::SoftKill], None);
        later.steps[0].at = ts(7);
        let (steps, _) = merge_for_update(&later, "r1", stored.clone(), None);
        assert_eq!((steps.len(), steps[0].at), (1, ts(7)));
        // An older copy of the record never moves it back.
        let (steps, _) = merge_for_update(&job("r1", &[Step::SoftKill], None), "r1", steps, None);
        assert_eq!(steps[0].at, ts(7));
        // Another warning (another due time) is added; a second soft kill of the run is not.
        let mut more = job("r1", &[Step::Warn, Step::SoftKill], None);
        more.steps[0].due_at = ts(5);
        more.steps[1].due_at = ts(9);
        let (steps, _) = merge_for_update(&more, "r1", stored, None);
        let names: Vec<(Step, Timestamp)> = steps.iter().map(|s| (s.step, s.due_at)).collect();
        assert_eq!(names, [(Step::SoftKill, ts(1)), (Step::Warn, ts(5))]);
    }

    #[test]
    fn new_run_replaces_steps() {
        let stored = job("r1", &[Step::Warn, Step::SoftKill], None).steps;
        let (steps, _) = merge_for_update(&job("r2", &[], None), "r1", stored, None);
        assert!(steps.is_empty());
    }

    #[test]
    fn heartbeat_never_moves_backwards() {
        let j = job("r1", &[], Some(5));
        assert_eq!(
            merge_for_update(&j, "r1", vec![], Some(ts(9))).1,
            Some(ts(9))
        );
        assert_eq!(
            merge_for_update(&j, "r1", vec![], Some(ts(1))).1,
            Some(ts(5))
        );
        assert_eq!(merge_for_update(&j, "r1", vec![], None).1, Some(ts(5)));
        assert_eq!(
            merge_for_update(&job("r1", &[], None), "r1", vec![], Some(ts(2))).1,
            Some(ts(2))
        );
    }
}
