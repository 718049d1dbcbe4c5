//! The escalation ladder around a job's deadline D with grace G.
//!
//! Steps and their due times: `warn` at D − warn_before (one per configured offset),
//! `soft_kill` at D, `hard_kill` at D + G, `force_delete` at D + 2G. Each step fires once per
//! run (the store records it before the next is considered) and only while the job is still
//! active: a job that ends inside its grace period is never hard-killed.
//!
//! When jobwarden was down past several due times, the steps still run in order, and the
//! grace promised to the job is kept: hard_kill is due no earlier than G after the soft_kill
//! that actually happened, force_delete no earlier than G after the actual hard_kill.
//! A cancel takes soft_kill before D; the rest of the ladder then counts from the cancel.

use std::time::Duration;

use crate::model::{JobRecord, Step, Timestamp, add, sub};

/// The next step of the ladder for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextStep {
    /// Which step.
    pub step: Step,
    /// When it is due.
    pub due_at: Timestamp,
}

/// The untaken step with the earliest due time, whether or not it is due yet; None when the
/// ladder is over (job not running, finished, or every step taken).
pub fn next_step(job: &JobRecord, warn_before: &[Duration]) -> Option<NextStep> {
    if !job.stage.is_active() || job.finished_at.is_some() {
        return None;
    }
    let (Some(started), Some(deadline)) = (job.started_at, job.deadline) else {
        return None;
    };
    let taken_at = |step: Step| job.steps.iter().find(|s| s.step == step).map(|s| s.at);
    let soft = taken_at(Step::SoftKill);
    if soft.is_none() {
        // Warnings, latest offset first (i.e. earliest due first).
        let mut offsets = warn_before.to_vec();
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        for off in offsets {
            // A warning that would fall before the start is due at the start.
            let due_at = sub(deadline, off).max(started);
            let taken = job
                .steps
                .iter()
                .any(|s| s.step == Step::Warn && s.due_at == due_at);
            if !taken {
                return Some(NextStep {
                    step: Step::Warn,
                    due_at,
                });
            }
        }
        return Some(NextStep {
            step: Step::SoftKill,
            due_at: deadline,
        });
    }
    // Each kill step is due a grace period after the previous one actually happened: later
    // than D + G when jobwarden was down, earlier when the job was cancelled before D.
    let grace = job.grace;
    let soft_at = soft.unwrap_or(deadline);
    let hard_due = add(soft_at, grace);
    let Some(hard_at) = taken_at(Step::HardKill) else {
        return Some(NextStep {
            step: Step::HardKill,
            due_at: hard_due,
        });
    };
    if taken_at(Step::ForceDelete).is_some() {
        return None;
    }
    let force_due = add(hard_at, grace);
    Some(NextStep {
        step: Step::ForceDelete,
        due_at: force_due,
    })
}

/// The step due at `now`, if any.
pub fn due_step(job: &JobRecord, warn_before: &[Duration], now: Timestamp) -> Option<NextStep> {
    next_step(job, warn_before).filter(|s| s.due_at <= now)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{JobId, Outcome, RuntimeKind, Stage, StepTaken};

    pub(crate) fn t(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("ts")
    }

    /// A running job started at t(0) with timeout 100 s and grace 10 s.
    pub(crate) fn running() -> JobRecord {
        JobRecord {
            stage: Stage::Running,
            started_at: Some(t(0)),
            timeout: Duration::from_secs(100),
            grace: Duration::from_secs(10),
            deadline: Some(t(100)),
            ..JobRecord::new(
                JobId::parse("job-1").expect("id"),
                "run-1",
                RuntimeKind::Local,
                "job-1",
                t(0),
            )
        }
    }

    pub(crate) fn take(job: &mut JobRecord, step: Step, due: i64, at: i64) {
        job.steps.push(StepTaken {
            step,
            due_at: t(due),
            at: t(at),
        });
        if step == Step::SoftKill {
            job.stage = Stage::Terminating;
        }
    }

    const WARN: &[Duration] = &[Duration::from_secs(20)];

    fn next(job: &JobRecord) -> Option<(Step, Timestamp)> {
        next_step(job, WARN).map(|s| (s.step, s.due_at))
    }

    #[test]
    fn steps_fall_due_at_d_minus_warn_d_d_plus_g_d_plus_2g() {
        let mut j = running();
        assert_eq!(next(&j), Some((Step::Warn, t(80))));
        assert_eq!(due_step(&j, WARN, t(79)), None);
        assert!(due_step(&j, WARN, t(80)).is_some());
        take(&mut j, Step::Warn, 80, 80);
        assert_eq!(next(&j), Some((Step::SoftKill, t(100))));
        take(&mut j, Step::SoftKill, 100, 100);
        assert_eq!(next(&j), Some((Step::HardKill, t(110))));
        take(&mut j, Step::HardKill, 110, 110);
        assert_eq!(next(&j), Some((Step::ForceDelete, t(120))));
        take(&mut j, Step::ForceDelete, 120, 120);
        assert_eq!(next(&j), None);
    }

    #[test]
    fn each_step_once_per_run() {
        let mut j = running();
        take(&mut j, Step::Warn, 80, 80);
        // Re-deciding at the same instant never returns the warn again.
        assert_ne!(due_step(&j, WARN, t(85)).map(|s| s.step), Some(Step::Warn));
        assert_eq!(due_step(&j, WARN, t(85)), None);
    }

    #[test]
    fn several_warnings_in_order() {
        let j = running();
        let offsets = [Duration::from_secs(10), Duration::from_secs(50)];
        let s = next_step(&j, &offsets).expect("step");
        assert_eq!((s.step, s.due_at), (Step::Warn, t(50)));
        let mut j = j;
        take(&mut j, Step::Warn, 50, 50);
        let s = next_step(&j, &offsets).expect("step");
        assert_eq!((s.step, s.due_at), (Step::Warn, t(90)));
    }

    #[test]
    fn warning_before_start_is_due_at_start() {
        let mut j = running();
        j.timeout = Duration::from_secs(5);
        j.deadline = Some(t(5));
        let s = next_step(&j, &[Duration::from_secs(600)]).expect("step");
        assert_eq!((s.step, s.due_at), (Step::Warn, t(0)));
    }

    #[test]
    fn job_that_ends_inside_grace_is_never_hard_killed() {
        let mut j = running();
        take(&mut j, Step::Warn, 80, 80);
        take(&mut j, Step::SoftKill, 100, 100);
        j.finished_at = Some(t(104));
        j.stage = Stage::Failed;
        j.outcome = Some(Outcome::Terminated);
        assert_eq!(next(&j), None);
        assert_eq!(due_step(&j, WARN, t(1000)), None);
    }

    #[test]
    fn finished_or_unstarted_jobs_have_no_ladder() {
        let mut j = running();
        j.finished_at = Some(t(50));
        j.stage = Stage::Completed;
        assert_eq!(next(&j), None);
        let mut j = running();
        j.started_at = None;
        j.deadline = None;
        j.stage = Stage::PreStart;
        assert_eq!(next(&j), None);
    }

    #[test]
    fn late_soft_kill_still_gets_its_full_grace() {
        // jobwarden was down from t(90) to t(200): soft_kill happens late, at t(200);
        // hard_kill must wait the full grace after it, not fire at once.
        let mut j = running();
        take(&mut j, Step::Warn, 80, 80);
        take(&mut j, Step::SoftKill, 100, 200);
        assert_eq!(next(&j), Some((Step::HardKill, t(210))));
        take(&mut j, Step::HardKill, 210, 210);
        assert_eq!(next(&j), Some((Step::ForceDelete, t(220))));
    }

    #[test]
    fn cancel_before_the_deadline_starts_the_ladder_from_the_cancel() {
        // Cancelled at t(30), deadline t(100): SIGKILL a grace period after the cancel, not
        // after the deadline.
        let mut j = running();
        take(&mut j, Step::SoftKill, 30, 30);
        assert_eq!(next(&j), Some((Step::HardKill, t(40))));
        take(&mut j, Step::HardKill, 40, 40);
        assert_eq!(next(&j), Some((Step::ForceDelete, t(50))));
    }

    #[test]
    fn zero_grace_escalates_immediately() {
        let mut j = running();
        j.grace = Duration::ZERO;
        take(&mut j, Step::Warn, 80, 80);
        take(&mut j, Step::SoftKill, 100, 100);
        assert_eq!(next(&j), Some((Step::HardKill, t(100))));
    }
}
