//! When a finished job's artifacts are due for deletion: per artifact kind, counted from the
//! job's finish (`[retention.artifacts]`).
//!
//! Pure decisions (`(job, policy) -> tasks`, `(task, job now) -> still applies?`); no clock, no
//! I/O. The daemon turns each [`RetentionTask`] into one durable cleanup-queue task scheduled
//! at [`RetentionTask::due_at`] (so a due deletion starts as soon as the queue wakes, not on
//! the next sweep), and before running it re-checks [`RetentionTask::still_applies`] against
//! the job as stored then; the deletion itself is [`delete_prefix`](super::delete_prefix).
//!
//! A job that has not finished (no `finished_at`, or an active stage) gets no tasks: a live
//! job's artifacts are never scheduled for deletion.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::keys::{self, ArtifactKind};
use crate::duration::Dur;
use crate::model::{JobId, JobRecord, Timestamp};

/// `[retention.artifacts]`: how long each kind is kept after the job finished.
///
/// The defaults are placeholders pending the product decision: artifacts and logs 30 days,
/// partial artifacts 7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactRetention {
    /// Final artifacts (`jobs/<org>/<id>/…`).
    pub artifacts: Dur,
    /// Partial artifacts saved on termination (`partial/<id>/…`).
    pub partial: Dur,
    /// Logs (`logs/<id>/…`).
    pub logs: Dur,
}

impl Default for ArtifactRetention {
    fn default() -> Self {
        ArtifactRetention {
            artifacts: Dur::secs(30 * 86_400),
            partial: Dur::secs(7 * 86_400),
            logs: Dur::secs(30 * 86_400),
        }
    }
}

impl ArtifactRetention {
    /// The retention of `kind`.
    pub fn for_kind(&self, kind: ArtifactKind) -> Duration {
        match kind {
            ArtifactKind::Artifacts => self.artifacts.0,
            ArtifactKind::Partial => self.partial.0,
            ArtifactKind::Logs => self.logs.0,
        }
    }
}

/// One deletion to queue: a kind of one run of one job, due at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionTask {
    /// Which kind.
    pub kind: ArtifactKind,
    /// The job.
    pub job_id: JobId,
    /// The run whose finish started the clock ([`JobRecord::run_id`]).
    pub run_id: String,
    /// The run's attempt number.
    pub attempt: u32,
    /// When the run finished.
    pub finished_at: Timestamp,
    /// The prefix to delete (relative to the store's base prefix).
    pub prefix: String,
    /// `finished_at + retention`.
    pub due_at: Timestamp,
}

impl RetentionTask {
    /// Whether the task is due at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.due_at <= now
    }

    /// Whether the task still applies to `job` as stored now: same run, still finished at the
    /// same time. A job that was restarted (new run or attempt), or is active again, keeps its
    /// artifacts; the new run's finish schedules new tasks.
    pub fn still_applies(&self, job: &JobRecord) -> bool {
        job.id == self.job_id
            && job.run_id == self.run_id
            && job.attempt == self.attempt
            && !job.stage.is_active()
            && job.finished_at == Some(self.finished_at)
    }
}

/// [`plan_for_job`] for a job whose every prefix can be built; the error otherwise.
pub fn tasks_for_job(job: &JobRecord, retention: &ArtifactRetention) -> Result<Vec<RetentionTask>> {
    match plan_for_job(job, retention) {
        (tasks, None) => Ok(tasks),
        (_, Some(e)) => Err(e),
    }
}

/// The retention tasks of a finished job, one per kind, in [`ArtifactKind::ALL`] order (none
/// for a job that has not finished), kind by kind: the tasks of every kind whose prefix can be
/// built, and the error of the one that cannot (only `artifacts`, `jobs/<org>/<id>`, depends on the
/// organisation). A job stored with an organisation that breaks the naming rule (by an older
/// version, or by hand) still has its `partial/` and `logs/` cleaned.
pub fn plan_for_job(
    job: &JobRecord,
    retention: &ArtifactRetention,
) -> (Vec<RetentionTask>, Option<super::error::Error>) {
    let Some(finished_at) = job.finished_at else {
        return (Vec::new(), None);
    };
    if job.stage.is_active() {
        return (Vec::new(), None);
    }
    let mut tasks = Vec::new();
    let mut refused = None;
    for &kind in ArtifactKind::ALL {
        match keys::prefix_for(kind, job.org.as_deref(), &job.id) {
            Ok(prefix) => tasks.push(RetentionTask {
                kind,
                job_id: job.id.clone(),
                run_id: job.run_id.clone(),
                attempt: job.attempt,
                finished_at,
                prefix: prefix.to_string(),
                due_at: crate::model::add(finished_at, retention.for_kind(kind)),
            }),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    (tasks, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tasks of a job whose every prefix can be built.
    fn ok(
        (tasks, refused): (Vec<RetentionTask>, Option<super::super::error::Error>),
    ) -> Vec<RetentionTask> {
        assert!(refused.is_none(), "{refused:?}");
        tasks
    }
    use crate::model::{RuntimeKind, Stage};

    fn ts(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(secs, 0).expect("ts")
    }

    fn job(id: &str, stage: Stage, finished_at: Option<Timestamp>) -> JobRecord {
        JobRecord {
            org: Some("acme".into()),
            stage,
            started_at: Some(ts(1_000)),
            finished_at,
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            ..JobRecord::new(
                JobId::parse(id).expect("id"),
                "run-1",
                RuntimeKind::Local,
                id,
                ts(1_000),
            )
        }
    }

    #[test]
    fn each_kind_is_due_its_retention_after_the_finish() {
        let r = ArtifactRetention {
            artifacts: Dur::secs(300),
            partial: Dur::secs(60),
            logs: Dur::secs(120),
        };
        let tasks = ok(plan_for_job(
            &job("j1", Stage::Completed, Some(ts(10_000))),
            &r,
        ));
        let got: Vec<_> = tasks
            .iter()
            .map(|t| (t.kind, t.prefix.as_str(), t.due_at))
            .collect();
        assert_eq!(
            got,
            [
                (ArtifactKind::Artifacts, "jobs/acme/j1", ts(10_300)),
                (ArtifactKind::Partial, "partial/j1", ts(10_060)),
                (ArtifactKind::Logs, "logs/j1", ts(10_120)),
            ]
        );
        let partial = &tasks[1];
        let just_before = partial.due_at - chrono::TimeDelta::milliseconds(1);
        assert!(!partial.is_due(just_before));
        assert!(
            partial.is_due(partial.due_at),
            "due exactly at finish + retention"
        );
    }

    #[test]
    fn an_org_that_cannot_be_a_key_still_gets_partial_and_logs_cleaned() {
        let r = ArtifactRetention::default();
        let mut j = job("j1", Stage::Failed, Some(ts(10_000)));
        j.org = Some("../../x".into());
        let (tasks, refused) = plan_for_job(&j, &r);
        let prefixes: Vec<_> = tasks.iter().map(|t| t.prefix.as_str()).collect();
        assert_eq!(prefixes, ["partial/j1", "logs/j1"]);
        let e = refused
            .expect("the artifacts prefix is refused")
            .to_string();
        assert!(e.contains("organisation \"../../x\""), "{e}");
    }

    #[test]
    fn live_jobs_get_no_tasks() {
        let r = ArtifactRetention::default();
        for stage in [Stage::PreStart, Stage::Running, Stage::Terminating] {
            assert_eq!(ok(plan_for_job(&job("j", stage, None), &r)), []);
            // An active stage wins even if an earlier run left a finish time behind.
            assert_eq!(ok(plan_for_job(&job("j", stage, Some(ts(5))), &r)), []);
        }
        assert_eq!(ok(plan_for_job(&job("j", Stage::Completed, None), &r)), []);
    }

    #[test]
    fn a_restarted_job_invalidates_earlier_tasks() {
        let r = ArtifactRetention::default();
        let finished = job("j", Stage::Failed, Some(ts(10_000)));
        let task = ok(plan_for_job(&finished, &r)).remove(0);
        assert!(task.still_applies(&finished));
        assert!(task.still_applies(&JobRecord {
            stage: Stage::Cleanup,
            ..finished.clone()
        }));

        let restarted = JobRecord {
            run_id: "run-2".into(),
            attempt: 1,
            stage: Stage::Running,
            finished_at: None,
            ..finished.clone()
        };
        assert!(!task.still_applies(&restarted));
        let finished_again = JobRecord {
            stage: Stage::Completed,
            finished_at: Some(ts(20_000)),
            ..restarted
        };
        assert!(!task.still_applies(&finished_again));
    }

    #[test]
    fn config_section_parses_with_defaults_and_refuses_typos() {
        let r: ArtifactRetention = toml::from_str("partial = \"2d\"").expect("parse");
        assert_eq!(r.partial, Dur::secs(2 * 86_400));
        assert_eq!(r.logs, ArtifactRetention::default().logs);
        assert!(toml::from_str::<ArtifactRetention>("artefacts = \"1d\"").is_err());
    }
}
