//! The plan: what to do with one job at `now`, worked out completely, so that the executor
//! only records and acts (`../../executor`). Pure: no clock, no I/O.
//!
//! [`plan`] turns the engine's [`Decision`] into
//! - for a step: its reason text, the step as recorded, its audit row, the stage it moves the
//!   job to (checked by [`lifecycle::can_transition`]) and the hook events it fires;
//! - for a TTL cleanup: the cleanup tasks with their dedupe keys and due times, the TTL that
//!   expired and the `cleanup` hook;
//! - for a recovery or a mark_failed: the attempt, the reason and the audit row;
//! - the next wake-up.
//!
//! Everything that depends on the retention policy is resolved here, once: the job's TTL
//! ([`retention::ttl_for`]), each artifact kind's retention ([`retention::artifact_ttl`]) and
//! the due time of every task. The texts name what the job's runtime does (a process group's
//! signals, a Job's `activeDeadlineSeconds`), so the audit log reads the same whoever carries
//! the plan out.

use std::path::PathBuf;
use std::time::Duration;

use crate::artifacts;
use crate::duration::format_duration;
use crate::model::{
    AuditAction, AuditEntry, JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, StepTaken,
    Timestamp, add, fmt_ts,
};

use super::decide::{Decision, Policy, decide};
use super::lifecycle::{self, StageError};
use super::recovery::Diagnosis;
use super::retention::{self, ArtifactClass};

/// What to do with a job now, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The work.
    pub work: Work,
    /// The earliest time the answer could change without a new observation.
    pub wake: Option<Timestamp>,
}

/// The work of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Nothing now.
    Nothing,
    /// An escalation step.
    Step(StepPlan),
    /// The run's TTL expired: remove what it left.
    Cleanup(CleanupPlan),
    /// Restart (local) or re-create (Kubernetes) a dead job.
    Recover(RecoverPlan),
    /// Fail a job that cannot be recovered.
    MarkFailed(FailPlan),
}

/// A hook event with the reason its payload carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    /// A stage or a step name.
    pub event: &'static str,
    /// `JOBWARDEN_REASON` / the webhook's `reason`.
    pub reason: Option<String>,
}

/// An escalation step, ready to be recorded and carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// The step as recorded (`at` = now).
    pub taken: StepTaken,
    /// Why, as the audit row, the Event and the Job's annotation say it.
    pub reason: String,
    /// Its audit row (one per step per run).
    pub row: AuditEntry,
    /// The stage the step moves the job to and the record's reason then (a soft kill of a
    /// job that runs: `terminating`).
    pub stage_after: Option<(Stage, String)>,
    /// Hooks to fire once it is carried out, in order.
    pub hooks: Vec<HookEvent>,
    /// Decided, not carried out.
    pub dry_run: bool,
}

impl StepPlan {
    /// Which step.
    pub fn step(&self) -> Step {
        self.taken.step
    }

    /// The job as it is once the step is recorded.
    pub fn apply(&self, job: &JobRecord) -> JobRecord {
        let mut after = job.clone();
        after.steps.push(self.taken.clone());
        if let Some((stage, reason)) = &self.stage_after {
            after.stage = *stage;
            after.reason = Some(reason.clone());
        }
        after
    }
}

/// A durable cleanup task to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// `workspace`, `log` or `artifact_prefix`.
    pub kind: &'static str,
    /// The job.
    pub job_id: String,
    /// Pending tasks with the same key are one task.
    pub dedup_key: String,
    /// What it removes (a path, or a key prefix).
    pub resource_name: String,
    /// What the worker needs (run id; the prefix task).
    pub payload: serde_json::Value,
    /// Higher first.
    pub priority: i32,
    /// When it is due (never before `now`).
    pub due_at: Timestamp,
}

/// A run's TTL expired.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    /// When the TTL expired.
    pub due_at: Timestamp,
    /// The TTL that expired.
    pub ttl: Duration,
    /// The finish time is later than now (clock skew); cleanup waited for finish + TTL.
    pub finish_in_future: bool,
    /// Why, for audit rows.
    pub reason: String,
    /// The tasks to queue (none in dry-run).
    pub tasks: Vec<TaskPlan>,
    /// The row saying the job's `jobs/<org>/` prefix can never be cleaned, when its
    /// organisation cannot be part of a key ([`artifact_tasks`]).
    pub refused: Option<AuditEntry>,
    /// Hooks once the job moved to `cleanup` (none in dry-run).
    pub hooks: Vec<HookEvent>,
    /// Decided, not carried out.
    pub dry_run: bool,
}

/// A recovery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoverPlan {
    /// 1-based.
    pub attempt: u32,
    /// Why.
    pub reason: String,
    /// Its audit row.
    pub row: AuditEntry,
    /// Decided, not carried out.
    pub dry_run: bool,
}

/// A job to fail.
#[derive(Debug, Clone, PartialEq)]
pub struct FailPlan {
    /// Why.
    pub reason: String,
    /// Its audit row.
    pub row: AuditEntry,
    /// Decided, not carried out.
    pub dry_run: bool,
}

/// Where a local job's files are: `<data-dir>/workspaces/<id>` and `<data-dir>/logs/<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    /// Under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Layout {
            data_dir: data_dir.into(),
        }
    }

    /// `<data-dir>/workspaces`.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// `<data-dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// `<data-dir>/workspaces/<id>`.
    pub fn workspace(&self, id: &JobId) -> PathBuf {
        self.workspaces_dir().join(id.as_str())
    }

    /// `<data-dir>/logs/<id>.log`.
    pub fn log(&self, id: &JobId) -> PathBuf {
        self.logs_dir().join(format!("{}.log", id.as_str()))
    }
}

/// `JobRecord.spec` key of a mark_failed decided for the run (written by the executor).
pub const MARKED_FAILED: &str = "marked_failed";

/// `JobRecord.spec` key: when a cancel of the run was requested (RFC 3339), by a runtime
/// that takes it asynchronously (Kubernetes: the `<prefix>cancel-requested` annotation any
/// replica's API sets, read by the leader). [`plan`] answers it with the soft kill.
pub const CANCEL_REQUESTED: &str = "cancel_requested";

/// The deadline of a run that started at `started`: the one formula.
pub fn deadline(started: Timestamp, timeout: Duration) -> Timestamp {
    add(started, timeout)
}

/// What to do with `job` at `now`, given what its runtime diagnosed. `dry_run`: decided,
/// audited, not carried out.
pub fn plan(
    job: &JobRecord,
    diagnosis: &Diagnosis,
    policy: &Policy,
    now: Timestamp,
    dry_run: bool,
) -> Plan {
    let requested = job
        .spec
        .get(CANCEL_REQUESTED)
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Timestamp>().ok());
    if let Some(at) = requested
        && let Some(step) = cancel_plan(job, at.min(now), now, dry_run)
    {
        // The rest of the ladder counts from it: the next plan decides the hard kill.
        return Plan {
            work: Work::Step(step),
            wake: None,
        };
    }
    let (decision, wake) = decide(job, diagnosis, policy, now);
    let work = match decision {
        Decision::Nothing => Work::Nothing,
        Decision::Step { step, due_at } => {
            Work::Step(step_plan(job, step, due_at, now, "timeout", dry_run))
        }
        Decision::Cleanup {
            due_at,
            finish_in_future,
        } => Work::Cleanup(cleanup_plan(
            job,
            due_at,
            finish_in_future,
            policy,
            now,
            dry_run,
        )),
        Decision::Recover { attempt, reason } => Work::Recover(RecoverPlan {
            row: dry(
                job_row(
                    job,
                    now,
                    AuditAction::Recover,
                    &format!("recovery attempt {attempt}: {reason}"),
                ),
                dry_run,
            ),
            attempt,
            reason,
            dry_run,
        }),
        // Once per run: a run marked failed already (in dry-run: audited) is not again.
        Decision::MarkFailed { .. } if job.spec.get(MARKED_FAILED).is_some() => Work::Nothing,
        Decision::MarkFailed { reason } => Work::MarkFailed(fail_plan(job, reason, now, dry_run)),
    };
    Plan { work, wake }
}

/// A cancel requested at `requested_at`: the soft kill, taken at `now` (the rest of the
/// ladder counts from it). None when the job is not active or was soft-killed already.
pub fn cancel_plan(
    job: &JobRecord,
    requested_at: Timestamp,
    now: Timestamp,
    dry_run: bool,
) -> Option<StepPlan> {
    (job.stage.is_active() && !job.has_step(Step::SoftKill))
        .then(|| step_plan(job, Step::SoftKill, requested_at, now, "cancelled", dry_run))
}

/// Failing `job` for `reason`.
pub fn fail_plan(job: &JobRecord, reason: String, now: Timestamp, dry_run: bool) -> FailPlan {
    FailPlan {
        row: dry(job_row(job, now, AuditAction::MarkFailed, &reason), dry_run),
        reason,
        dry_run,
    }
}

/// Step `step` of `job`, due at `due_at`, taken at `now`; `why` is `timeout` or `cancelled`.
pub fn step_plan(
    job: &JobRecord,
    step: Step,
    due_at: Timestamp,
    now: Timestamp,
    why: &str,
    dry_run: bool,
) -> StepPlan {
    let reason = step_reason(job, step, now, why);
    let mut row = dry(job_row(job, now, step.into(), &reason), dry_run);
    row.details = Some(serde_json::json!({"due_at": fmt_ts(due_at), "run_id": job.run_id}));
    // A soft kill ends a job that runs (or is ending on its own): it is terminating now.
    // Dry-run records decisions, never a state it did not bring about.
    let terminating = step == Step::SoftKill
        && !dry_run
        && matches!(job.stage, Stage::Running | Stage::Completing)
        && lifecycle::can_transition(job.stage, Stage::Terminating);
    let mut hooks = Vec::new();
    if terminating {
        hooks.push(HookEvent {
            event: "terminating",
            reason: Some(reason.clone()),
        });
    }
    hooks.push(HookEvent {
        event: step.as_str(),
        reason: Some(reason.clone()),
    });
    StepPlan {
        taken: StepTaken {
            step,
            due_at,
            at: now,
        },
        row,
        stage_after: terminating.then(|| (Stage::Terminating, why.to_owned())),
        hooks,
        reason,
        dry_run,
    }
}

/// The TTL cleanup of a finished run: for a local job its workspace now, and its log and its
/// object-storage prefixes by their own retention; for a Kubernetes Job (whose objects the
/// runtime deletes) its object-storage prefixes.
pub fn cleanup_plan(
    job: &JobRecord,
    due_at: Timestamp,
    finish_in_future: bool,
    policy: &Policy,
    now: Timestamp,
    dry_run: bool,
) -> CleanupPlan {
    let ttl = retention::ttl_for(job, &policy.retention);
    let reason = format!(
        "TTL after {} expired at {}",
        job.outcome.map(Outcome::as_str).unwrap_or("finish"),
        fmt_ts(due_at)
    );
    let mut tasks = Vec::new();
    let mut refused = None;
    if !dry_run {
        if job.runtime == RuntimeKind::Local {
            tasks.push(TaskPlan {
                kind: "workspace",
                job_id: job.id.to_string(),
                dedup_key: format!("workspace:{}:{}", job.id, job.run_id),
                resource_name: policy
                    .layout
                    .as_ref()
                    .map(|l| l.workspace(&job.id).display().to_string())
                    .unwrap_or_default(),
                payload: serde_json::json!({ "run_id": job.run_id, "ttl_seconds": ttl.as_secs() }),
                priority: 10,
                due_at: now,
            });
        }
        let (more, row) = retention_tasks(job, policy, now);
        tasks.extend(more);
        refused = row;
    }
    CleanupPlan {
        due_at,
        ttl,
        finish_in_future,
        reason,
        tasks,
        refused,
        hooks: if dry_run {
            Vec::new()
        } else {
            vec![HookEvent {
                event: "cleanup",
                reason: None,
            }]
        },
        dry_run,
    }
}

/// The tasks queued as soon as a run finished, each due by its own retention: a local job's
/// log file (`[retention.artifacts] logs`) and the run's object-storage prefixes
/// ([`artifact_tasks`]); and, for a job whose organisation cannot be part of a key, the audit
/// row that says its `jobs/<org>/` prefix is never cleaned. Nothing for a run that has not
/// finished.
pub fn retention_tasks(
    job: &JobRecord,
    policy: &Policy,
    now: Timestamp,
) -> (Vec<TaskPlan>, Option<AuditEntry>) {
    if job.stage.is_active() || job.finished_at.is_none() {
        return (Vec::new(), None);
    }
    let (mut tasks, refused) = artifact_tasks(job, policy, now);
    if job.runtime == RuntimeKind::Local {
        let finished = job.finished_at.unwrap_or(now);
        let logs = retention::artifact_ttl(ArtifactClass::Logs, job, &policy.retention);
        tasks.push(TaskPlan {
            kind: "log",
            job_id: job.id.to_string(),
            dedup_key: format!("log:{}", job.id),
            resource_name: policy
                .layout
                .as_ref()
                .map(|l| l.log(&job.id).display().to_string())
                .unwrap_or_default(),
            payload: serde_json::json!({ "run_id": job.run_id }),
            priority: 0,
            due_at: add(finished, logs).max(now),
        });
    }
    (tasks, refused)
}

/// The `artifact_prefix` tasks of a finished run, one per artifact kind (`jobs/<org>/<id>/`,
/// `partial/<id>/`, `logs/<id>/`, laid out by [`artifacts::retention::plan_for_job`]), each
/// due at the run's finish plus that kind's retention ([`retention::artifact_ttl`]:
/// `artifacts` defaults to the job's TTL), with the dedupe key
/// `artifacts:<root>:<job id>:<run id>`, so a second queueing of the same run merges with the
/// pending tasks. A job whose organisation cannot be a key segment (stored by an older
/// version, or by hand) gets no `jobs/<org>/` task and a failed `ttl_cleanup` row saying so;
/// its `partial/` and `logs/` are cleaned as usual.
pub fn artifact_tasks(
    job: &JobRecord,
    policy: &Policy,
    now: Timestamp,
) -> (Vec<TaskPlan>, Option<AuditEntry>) {
    let ttl = |class| crate::duration::Dur(retention::artifact_ttl(class, job, &policy.retention));
    let per_kind = artifacts::retention::ArtifactRetention {
        artifacts: ttl(ArtifactClass::Artifacts),
        partial: ttl(ArtifactClass::Partial),
        logs: ttl(ArtifactClass::Logs),
    };
    let (planned, refused) = artifacts::retention::plan_for_job(job, &per_kind);
    let tasks = planned
        .into_iter()
        .map(|t| TaskPlan {
            kind: "artifact_prefix",
            job_id: job.id.to_string(),
            dedup_key: format!("artifacts:{}:{}:{}", t.kind.root(), job.id, job.run_id),
            resource_name: t.prefix.clone(),
            payload: serde_json::to_value(&t).unwrap_or(serde_json::Value::Null),
            priority: 0,
            due_at: t.due_at.max(now),
        })
        .collect();
    let row = refused.map(|e| {
        let mut row = job_row(
            job,
            now,
            AuditAction::TtlCleanup,
            "artifacts under jobs/<org>/ are not cleaned: the job's organisation cannot be part of an object key (partial/ and logs/ are cleaned as usual)",
        );
        row.resource_type = "object_prefix".into();
        row.resource_name = format!(
            "jobs/{}/{}",
            job.org.as_deref().map(|o| format!("{o:?}")).unwrap_or_default(),
            job.id
        );
        row.success = false;
        row.error_message = Some(e.to_string());
        row
    });
    (tasks, row)
}

/// Moves `job` to `to`, refusing a transition the lifecycle does not allow (a stale or
/// replayed update: a late exit report must not resurrect a cleaned job).
pub fn move_stage(job: &mut JobRecord, to: Stage) -> Result<(), StageError> {
    if !lifecycle::can_transition(job.stage, to) {
        return Err(StageError {
            job: job.id.to_string(),
            from: job.stage,
            to,
        });
    }
    job.stage = to;
    Ok(())
}

/// Settles a run: outcome, stage (through [`move_stage`]: `completed` for an exit status 0,
/// even after jobwarden's SIGTERM, [`lifecycle::stage_after_exit`]), finish time, exit status
/// and reason; returns the hook event of the stage it settled in.
pub fn settle(
    job: &mut JobRecord,
    outcome: Outcome,
    exit: (Option<i32>, Option<i32>),
    reason: String,
    now: Timestamp,
) -> Result<HookEvent, StageError> {
    let stage = lifecycle::stage_after_exit(outcome, exit.0, exit.1);
    move_stage(job, stage)?;
    job.outcome = Some(outcome);
    job.finished_at = Some(now);
    (job.exit_code, job.signal) = exit;
    job.reason = Some(reason.clone());
    Ok(HookEvent {
        event: stage.as_str(),
        reason: Some(reason),
    })
}

/// Why a step is taken, in the words of the job's runtime: `why` is `timeout` (the deadline
/// passed) or `cancelled` (a user asked; a soft kill only).
pub fn step_reason(job: &JobRecord, step: Step, now: Timestamp, why: &str) -> String {
    let deadline = job.deadline.map(fmt_ts).unwrap_or_default();
    let timeout = format_duration(job.timeout);
    let grace = format_duration(job.grace);
    match (job.runtime, step) {
        (_, Step::Warn) => {
            crate::duration::deadline_note(job.deadline.unwrap_or(now), now, job.timeout)
        }
        (RuntimeKind::Local, Step::SoftKill) if why == "timeout" => format!(
            "{why}: deadline {deadline} reached; SIGTERM to the process group, grace {grace}"
        ),
        (RuntimeKind::Local, Step::SoftKill) => {
            format!("{why}: SIGTERM to the process group, grace {grace}")
        }
        (RuntimeKind::Local, Step::HardKill) => {
            format!("still running {grace} after SIGTERM; SIGKILL to the process group")
        }
        (RuntimeKind::Local, Step::ForceDelete) => {
            "still present after SIGKILL; removing the workspace and marking the job".into()
        }
        (RuntimeKind::Kubernetes, Step::SoftKill) if why == "timeout" => format!(
            "timeout {timeout} reached at {deadline}: the Job's activeDeadlineSeconds ends it, grace {grace}"
        ),
        (RuntimeKind::Kubernetes, Step::SoftKill) => {
            format!("{why}: the Job's activeDeadlineSeconds ends it, grace {grace}")
        }
        (RuntimeKind::Kubernetes, Step::HardKill) => {
            "grace period over: remaining pods deleted with grace 0".to_owned()
        }
        (RuntimeKind::Kubernetes, Step::ForceDelete) => {
            "pods outlived the hard kill: Job deleted, stuck pods removed".to_owned()
        }
    }
}

/// An audit row about `job` itself: its process group (local) or its Job (Kubernetes).
pub fn job_row(job: &JobRecord, now: Timestamp, action: AuditAction, reason: &str) -> AuditEntry {
    let (resource_type, resource_name) = match job.runtime {
        RuntimeKind::Local => (
            "process_group",
            job.pid.map(|p| p.to_string()).unwrap_or_default(),
        ),
        RuntimeKind::Kubernetes => (
            "job",
            format!(
                "{}/{}",
                job.namespace.as_deref().unwrap_or_default(),
                job.name
            ),
        ),
    };
    AuditEntry {
        id: 0,
        timestamp: now,
        job_id: job.id.to_string(),
        resource_type: resource_type.to_owned(),
        resource_name,
        action,
        reason: reason.to_owned(),
        initiated_by: "jobwarden".to_owned(),
        success: true,
        error_message: None,
        dry_run: job.dry_run,
        details: None,
    }
}

fn dry(mut row: AuditEntry, dry_run: bool) -> AuditEntry {
    row.dry_run = row.dry_run || dry_run;
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::ladder::tests::{running, t, take};

    fn policy() -> Policy {
        let mut p = Policy::from_config(&Config::default());
        p.layout = Some(Layout::new("/data"));
        p
    }

    #[test]
    fn a_soft_kill_of_a_running_job_moves_it_to_terminating_with_its_hooks() {
        let mut j = running();
        take(&mut j, Step::Warn, 0, 0);
        let Work::Step(s) = plan(&j, &Diagnosis::Healthy, &policy(), t(100), false).work else {
            panic!("a step");
        };
        assert_eq!(
            (s.step(), s.taken.due_at, s.taken.at),
            (Step::SoftKill, t(100), t(100))
        );
        assert_eq!(
            s.stage_after,
            Some((Stage::Terminating, "timeout".to_owned()))
        );
        let events: Vec<&str> = s.hooks.iter().map(|h| h.event).collect();
        assert_eq!(events, ["terminating", "soft_kill"]);
        assert!(
            s.hooks
                .iter()
                .all(|h| h.reason.as_deref() == Some(&s.reason)),
            "every hook gets the step's reason"
        );
        assert!(s.reason.contains("SIGTERM"), "{}", s.reason);
        assert_eq!(s.row.action, AuditAction::SoftKill);
        assert_eq!(s.row.details.as_ref().expect("details")["run_id"], "run-1");
        let after = s.apply(&j);
        assert_eq!((after.stage, after.steps.len()), (Stage::Terminating, 2));
        // In dry-run the stage stays, and so does the record's reason.
        let Work::Step(d) = plan(&j, &Diagnosis::Healthy, &policy(), t(100), true).work else {
            panic!("a step");
        };
        assert_eq!(d.stage_after, None);
        assert!(d.row.dry_run);
        let events: Vec<&str> = d.hooks.iter().map(|h| h.event).collect();
        assert_eq!(events, ["soft_kill"]);
    }

    #[test]
    fn a_cancel_is_a_soft_kill_now_once() {
        let j = running();
        let s = cancel_plan(&j, t(30), t(30), false).expect("a soft kill");
        assert_eq!((s.step(), s.taken.due_at), (Step::SoftKill, t(30)));
        assert!(s.reason.starts_with("cancelled"), "{}", s.reason);
        let after = s.apply(&j);
        assert_eq!(cancel_plan(&after, t(31), t(31), false), None);
    }

    #[test]
    fn a_requested_cancel_is_planned_as_the_soft_kill_then_the_ladder_counts_from_it() {
        let mut j = running();
        take(&mut j, Step::Warn, 0, 0);
        // Requested at t(30) (deadline t(100)), seen at t(31).
        j.spec[CANCEL_REQUESTED] = serde_json::json!(fmt_ts(t(30)));
        let Work::Step(s) = plan(&j, &Diagnosis::Healthy, &policy(), t(31), false).work else {
            panic!("a step");
        };
        assert_eq!(
            (s.step(), s.taken.due_at, s.taken.at),
            (Step::SoftKill, t(30), t(31))
        );
        assert!(s.reason.starts_with("cancelled"), "{}", s.reason);
        // Once: then the hard kill a grace period (10 s) after the soft kill, not at D + G.
        let after = s.apply(&j);
        let p = plan(&after, &Diagnosis::Healthy, &policy(), t(32), false);
        assert_eq!(p.work, Work::Nothing);
        assert_eq!(p.wake, Some(t(41)));
        // A request dated later than `now` (clock skew between replicas) is taken now.
        j.spec[CANCEL_REQUESTED] = serde_json::json!(fmt_ts(t(50)));
        let Work::Step(s) = plan(&j, &Diagnosis::Healthy, &policy(), t(40), false).work else {
            panic!("a step");
        };
        assert_eq!(s.taken.due_at, t(40));
        // Nothing for a job that is no longer active, or a value that is not a time.
        let mut done = j.clone();
        done.stage = Stage::Completed;
        done.outcome = Some(Outcome::Succeeded);
        done.finished_at = Some(t(35));
        assert!(!matches!(
            plan(&done, &Diagnosis::Healthy, &policy(), t(40), false).work,
            Work::Step(_)
        ));
        j.spec[CANCEL_REQUESTED] = serde_json::json!("soon");
        assert_eq!(
            plan(&j, &Diagnosis::Healthy, &policy(), t(40), false).work,
            Work::Nothing
        );
    }

    #[test]
    fn a_local_cleanup_queues_the_workspace_now_and_the_log_and_artifacts_by_retention() {
        let mut j = running();
        j.stage = Stage::Completed;
        j.outcome = Some(Outcome::Succeeded);
        j.finished_at = Some(t(100));
        j.org = Some("acme".into());
        let p = policy();
        let Work::Cleanup(c) = plan(&j, &Diagnosis::Healthy, &p, t(100 + 3600), false).work else {
            panic!("cleanup");
        };
        assert_eq!(c.ttl, Duration::from_secs(3600), "successful: 1 h");
        let kinds: Vec<(&str, &str)> = c
            .tasks
            .iter()
            .map(|t| (t.kind, t.dedup_key.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("workspace", "workspace:job-1:run-1"),
                ("artifact_prefix", "artifacts:jobs:job-1:run-1"),
                ("artifact_prefix", "artifacts:partial:job-1:run-1"),
                ("artifact_prefix", "artifacts:logs:job-1:run-1"),
                ("log", "log:job-1"),
            ]
        );
        assert_eq!(c.tasks[0].resource_name, "/data/workspaces/job-1");
        assert_eq!(c.tasks[0].due_at, t(3700));
        // Artifacts default to the job's TTL; partial 3 d; logs 7 d; never before now.
        assert_eq!(c.tasks[1].resource_name, "jobs/acme/job-1");
        assert_eq!(c.tasks[1].due_at, t(3700));
        assert_eq!(c.tasks[2].due_at, t(100 + 3 * 86_400));
        assert_eq!(c.tasks[4].due_at, t(100 + 7 * 86_400));
        assert_eq!(c.tasks[4].resource_name, "/data/logs/job-1.log");
        assert_eq!(c.hooks.len(), 1);
        // Kubernetes: its objects are the runtime's; the object-storage prefixes are queued.
        j.runtime = RuntimeKind::Kubernetes;
        let Work::Cleanup(k) = plan(&j, &Diagnosis::Healthy, &p, t(3700), false).work else {
            panic!("cleanup");
        };
        assert!(k.tasks.iter().all(|t| t.kind == "artifact_prefix"));
        assert_eq!(k.tasks.len(), 3);
        // Dry-run queues nothing and fires nothing.
        let Work::Cleanup(d) = plan(&j, &Diagnosis::Healthy, &p, t(3700), true).work else {
            panic!("cleanup");
        };
        assert!(d.tasks.is_empty() && d.hooks.is_empty());
    }

    #[test]
    fn an_org_that_cannot_be_a_key_gets_no_jobs_prefix_task_and_an_audit_row() {
        let mut j = running();
        j.stage = Stage::Failed;
        j.outcome = Some(Outcome::Failed);
        j.finished_at = Some(t(100));
        j.org = Some("../x".into());
        let (tasks, refused) = retention_tasks(&j, &policy(), t(200));
        let prefixes: Vec<&str> = tasks.iter().map(|t| t.resource_name.as_str()).collect();
        assert_eq!(
            prefixes,
            ["partial/job-1", "logs/job-1", "/data/logs/job-1.log"],
            "partial/, logs/ and the log file are still ours"
        );
        let row = refused.expect("the refusal is audited");
        assert!(
            !row.success && row.resource_type == "object_prefix",
            "{row:?}"
        );
        assert!(row.error_message.is_some_and(|e| e.contains("../x")));
    }

    #[test]
    fn stages_move_only_forward() {
        let mut j = running();
        j.stage = Stage::Cleaned;
        let e = move_stage(&mut j, Stage::Running).expect_err("refused");
        assert_eq!((e.from, e.to), (Stage::Cleaned, Stage::Running));
        assert_eq!(j.stage, Stage::Cleaned);
        let mut j = running();
        let hook = settle(
            &mut j,
            Outcome::Terminated,
            (None, Some(9)),
            "killed".into(),
            t(5),
        )
        .expect("settles");
        assert_eq!(
            (j.stage, j.outcome, j.finished_at, j.signal),
            (
                Stage::Failed,
                Some(Outcome::Terminated),
                Some(t(5)),
                Some(9)
            )
        );
        assert_eq!(hook.event, "failed");
    }
}
