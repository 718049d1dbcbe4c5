//! Retention: when a finished job's resources may be removed.
//!
//! TTL after finish = the job's own TTL (annotation / `--ttl`) or, without one, the retention
//! for its outcome (`[retention]` successful / failed / terminated; `lost` counts as failed).
//! Artifacts follow their own per-type retention (`[retention.artifacts]`).
//!
//! Semantics follow Kubernetes' TTL-after-finished controller, including its edge cases:
//! - the expiry is recomputed from the *current* TTL on every decision, so a TTL changed
//!   after the finish moves the expiry (earlier or later);
//! - a finish time in the future (clock skew) defers cleanup until finish + TTL, with a flag
//!   so the caller can warn;
//! - a missing finish time never expires: the caller records when it first observed the
//!   finish and uses that (never earlier than the truth, so never deletes early);
//! - TTL 0 expires at the finish itself;
//! - expiry is keyed on the run identity: a cleanup planned for one run never applies to a
//!   retried run of the same job ([`cleanup_applies`]).

use std::time::Duration;

use super::policy::RetentionConfig;
use crate::model::{JobRecord, Outcome, Timestamp, add};

/// The TTL that applies to a finished job.
pub fn ttl_for(job: &JobRecord, retention: &RetentionConfig) -> Duration {
    job.ttl.unwrap_or(match job.outcome {
        Some(Outcome::Succeeded) => retention.successful.0,
        Some(Outcome::Terminated) => retention.terminated.0,
        Some(Outcome::Failed) | Some(Outcome::Lost) | None => retention.failed.0,
    })
}

/// When a finished run expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Not finished, or no finish time known: nothing expires.
    Never,
    /// Expires at `at`. `finish_in_future` is set when the finish time is after `now`.
    At {
        /// finish + TTL.
        at: Timestamp,
        /// Clock skew: the recorded finish is later than `now`.
        finish_in_future: bool,
    },
}

/// Expiry of a run that finished at `finished_at` with `ttl`, seen at `now`.
pub fn expiry(finished_at: Option<Timestamp>, ttl: Duration, now: Timestamp) -> Expiry {
    match finished_at {
        None => Expiry::Never,
        Some(f) => Expiry::At {
            at: add(f, ttl),
            finish_in_future: f > now,
        },
    }
}

/// Expiry of a job record under the retention config.
pub fn job_expiry(job: &JobRecord, retention: &RetentionConfig, now: Timestamp) -> Expiry {
    if job.outcome.is_none() || job.stage.is_active() {
        return Expiry::Never;
    }
    expiry(job.finished_at, ttl_for(job, retention), now)
}

/// Whether a cleanup planned for run `planned_run_id` may act on `job` as it is now: the
/// same run, still finished. A retried run (new run id) or a running job is never cleaned
/// by an earlier run's TTL.
pub fn cleanup_applies(planned_run_id: &str, job: &JobRecord) -> bool {
    job.run_id == planned_run_id && job.finished_at.is_some() && !job.stage.is_active()
}

/// Kinds of stored artifact with their own retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactClass {
    /// `logs/<id>/` and the local log file.
    Logs,
    /// `partial/<id>/` (saved on termination).
    Partial,
    /// `jobs/<org>/<id>/`.
    Artifacts,
}

/// Retention of an artifact class for a job: `[retention.artifacts]`, with `artifacts`
/// defaulting to the job's own TTL.
pub fn artifact_ttl(
    class: ArtifactClass,
    job: &JobRecord,
    retention: &RetentionConfig,
) -> Duration {
    match class {
        ArtifactClass::Logs => retention.artifacts.logs.0,
        ArtifactClass::Partial => retention.artifacts.partial.0,
        ArtifactClass::Artifacts => retention
            .artifacts
            .artifacts
            .map(|d| d.0)
            .unwrap_or_else(|| ttl_for(job, retention)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ladder::tests::{running, t};
    use crate::model::Stage;

    fn finished(outcome: Outcome, at: i64) -> JobRecord {
        let mut j = running();
        j.outcome = Some(outcome);
        j.finished_at = Some(t(at));
        j.stage = if outcome == Outcome::Succeeded {
            Stage::Completed
        } else {
            Stage::Failed
        };
        j
    }

    fn at(e: Expiry) -> Option<Timestamp> {
        match e {
            Expiry::At { at, .. } => Some(at),
            Expiry::Never => None,
        }
    }

    #[test]
    fn ttl_per_outcome_with_override() {
        let r = RetentionConfig::default();
        assert_eq!(
            ttl_for(&finished(Outcome::Succeeded, 0), &r).as_secs(),
            3600
        );
        assert_eq!(ttl_for(&finished(Outcome::Failed, 0), &r).as_secs(), 86_400);
        assert_eq!(
            ttl_for(&finished(Outcome::Terminated, 0), &r).as_secs(),
            86_400
        );
        assert_eq!(ttl_for(&finished(Outcome::Lost, 0), &r).as_secs(), 86_400);
        let mut j = finished(Outcome::Failed, 0);
        j.ttl = Some(Duration::from_secs(60));
        assert_eq!(ttl_for(&j, &r).as_secs(), 60);
    }

    // The Kubernetes TTL-after-finished controller's edge cases, as a table.
    #[test]
    fn kubernetes_ttl_edge_cases() {
        let r = RetentionConfig::default();
        struct Case {
            name: &'static str,
            finished_at: Option<i64>,
            ttl: u64,
            now: i64,
            expect_at: Option<i64>,
            future: bool,
        }
        let cases = [
            Case {
                name: "normal",
                finished_at: Some(100),
                ttl: 60,
                now: 120,
                expect_at: Some(160),
                future: false,
            },
            Case {
                name: "ttl 0 expires at finish",
                finished_at: Some(100),
                ttl: 0,
                now: 100,
                expect_at: Some(100),
                future: false,
            },
            Case {
                name: "finish in the future (skew)",
                finished_at: Some(500),
                ttl: 60,
                now: 100,
                expect_at: Some(560),
                future: true,
            },
            Case {
                name: "missing finish time never expires",
                finished_at: None,
                ttl: 0,
                now: 1_000_000,
                expect_at: None,
                future: false,
            },
        ];
        for c in cases {
            let mut j = finished(Outcome::Succeeded, 0);
            j.finished_at = c.finished_at.map(t);
            j.ttl = Some(Duration::from_secs(c.ttl));
            let e = job_expiry(&j, &r, t(c.now));
            assert_eq!(at(e), c.expect_at.map(t), "{}", c.name);
            if let Expiry::At {
                finish_in_future, ..
            } = e
            {
                assert_eq!(finish_in_future, c.future, "{}", c.name);
            }
        }
    }

    #[test]
    fn ttl_changed_after_finish_moves_expiry_both_ways() {
        let r = RetentionConfig::default();
        let mut j = finished(Outcome::Succeeded, 100);
        j.ttl = Some(Duration::from_secs(60));
        assert_eq!(at(job_expiry(&j, &r, t(120))), Some(t(160)));
        j.ttl = Some(Duration::from_secs(600));
        assert_eq!(at(job_expiry(&j, &r, t(170))), Some(t(700)));
        j.ttl = Some(Duration::from_secs(10));
        assert_eq!(at(job_expiry(&j, &r, t(170))), Some(t(110)));
    }

    #[test]
    fn a_retried_run_is_not_cleaned_by_the_earlier_runs_ttl() {
        let mut j = finished(Outcome::Failed, 100);
        assert!(cleanup_applies("run-1", &j));
        // Recovery restarted it: new run, running again.
        j.run_id = "run-2".into();
        j.attempt = 1;
        j.finished_at = None;
        j.outcome = None;
        j.stage = Stage::Running;
        assert!(!cleanup_applies("run-1", &j));
        // Even once the new run finishes, the old run's task does not apply.
        j.finished_at = Some(t(300));
        j.outcome = Some(Outcome::Succeeded);
        j.stage = Stage::Completed;
        assert!(!cleanup_applies("run-1", &j));
        assert!(cleanup_applies("run-2", &j));
    }

    #[test]
    fn active_jobs_never_expire() {
        let j = running();
        assert_eq!(
            job_expiry(&j, &RetentionConfig::default(), t(1_000_000)),
            Expiry::Never
        );
    }

    #[test]
    fn artifact_retention_per_class() {
        let r = RetentionConfig::default();
        let mut j = finished(Outcome::Succeeded, 0);
        assert_eq!(
            artifact_ttl(ArtifactClass::Logs, &j, &r).as_secs(),
            7 * 86_400
        );
        assert_eq!(
            artifact_ttl(ArtifactClass::Partial, &j, &r).as_secs(),
            3 * 86_400
        );
        assert_eq!(
            artifact_ttl(ArtifactClass::Artifacts, &j, &r).as_secs(),
            3600
        );
        j.ttl = Some(Duration::from_secs(5));
        assert_eq!(artifact_ttl(ArtifactClass::Artifacts, &j, &r).as_secs(), 5);
    }
}
