//! `decide(job, policy, now) -> (Decision, next_wakeup)`: the single entry point.
//!
//! Order of concern for an active job: the timeout ladder first (deadlines are absolute),
//! then the startup timeout, then dead-job recovery. For a finished job: its TTL. The
//! returned wake-up is the earliest time at which the answer could change without any new
//! observation; the scheduler re-arms the job there (earlier or later than before).

use std::time::Duration;

use super::policy::{RecoveryConfig, RetentionConfig};
use crate::engine::ladder;
use crate::engine::recovery::{self, Diagnosis, RecoveryLimits, Verdict};
use crate::engine::retention::{self, Expiry};
use crate::model::{JobRecord, Stage, Step, Timestamp};

/// The parts of the configuration the engine needs, in decision-ready form.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Warning offsets before the deadline.
    pub warn_before: Vec<Duration>,
    /// `[retention]`.
    pub retention: RetentionConfig,
    /// `[recovery]`.
    pub recovery: RecoveryConfig,
    /// Startup timeout and crash-loop limit.
    pub limits: RecoveryLimits,
    /// Where local jobs' files are (the local daemon's; None elsewhere).
    pub layout: Option<super::plan::Layout>,
}

/// What to do with a job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Nothing,
    /// Carry out an escalation step.
    Step {
        /// Which step.
        step: Step,
        /// When it was due (for the enforcement-delay metric and the audit row).
        due_at: Timestamp,
    },
    /// The run's TTL expired: queue the removal of its resources (once; stage → cleanup).
    Cleanup {
        /// When it expired.
        due_at: Timestamp,
        /// The finish time was in the future when decided (clock skew).
        finish_in_future: bool,
    },
    /// Restart / recreate the job.
    Recover {
        /// 1-based attempt number.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Fail the job.
    MarkFailed {
        /// Why.
        reason: String,
    },
}

/// Decides what to do with `job` at `now`, given what the runtime diagnosed.
pub fn decide(
    job: &JobRecord,
    diagnosis: &Diagnosis,
    policy: &Policy,
    now: Timestamp,
) -> (Decision, Option<Timestamp>) {
    match job.stage {
        Stage::Cleanup | Stage::Cleaned => (Decision::Nothing, None),
        Stage::Completed | Stage::Failed => {
            match retention::job_expiry(job, &policy.retention, now) {
                Expiry::Never => (Decision::Nothing, None),
                Expiry::At {
                    at,
                    finish_in_future,
                } => {
                    if at <= now {
                        (
                            Decision::Cleanup {
                                due_at: at,
                                finish_in_future,
                            },
                            None,
                        )
                    } else {
                        (Decision::Nothing, Some(at))
                    }
                }
            }
        }
        Stage::PreStart | Stage::Running | Stage::Terminating | Stage::Completing => {
            let next = ladder::next_step(job, &policy.warn_before);
            if let Some(s) = next.filter(|s| s.due_at <= now) {
                return (
                    Decision::Step {
                        step: s.step,
                        due_at: s.due_at,
                    },
                    None,
                );
            }
            let mut wake = next.map(|s| s.due_at);
            let verdict = if job.stage == Stage::PreStart {
                recovery::startup_verdict(job, diagnosis, policy.limits, now)
            } else if job.stage == Stage::Running {
                recovery::dead_job_verdict(job, diagnosis, &policy.recovery, policy.limits, now)
            } else {
                Verdict::Alive { check_at: None }
            };
            let decision = match verdict {
                Verdict::Alive { check_at } => {
                    wake = earliest(wake, check_at);
                    Decision::Nothing
                }
                Verdict::WaitForBackoff { at } => {
                    wake = earliest(wake, Some(at));
                    Decision::Nothing
                }
                Verdict::Recover { attempt, reason } => Decision::Recover { attempt, reason },
                Verdict::MarkFailed { reason } => Decision::MarkFailed { reason },
            };
            (decision, wake)
        }
    }
}

/// The earlier of two optional times (None: no time).
pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ladder::tests::{running, t, take};
    use crate::model::Outcome;

    fn policy() -> Policy {
        Policy::from_config(&crate::config::Config::default())
    }

    #[test]
    fn running_job_wakes_at_first_warning_then_steps() {
        let mut j = running();
        j.timeout = Duration::from_secs(3600);
        j.deadline = Some(t(3600));
        let p = policy();
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(0)),
            (Decision::Nothing, Some(t(3000)))
        );
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(3000)).0,
            Decision::Step {
                step: Step::Warn,
                due_at: t(3000)
            }
        );
        take(&mut j, Step::Warn, 3000, 3000);
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(3001)),
            (Decision::Nothing, Some(t(3600)))
        );
    }

    #[test]
    fn finished_job_waits_for_ttl_then_cleans_once() {
        let mut j = running();
        j.finished_at = Some(t(100));
        j.outcome = Some(Outcome::Succeeded);
        j.stage = Stage::Completed;
        let p = policy();
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(200)),
            (Decision::Nothing, Some(t(3700)))
        );
        assert!(matches!(
            decide(&j, &Diagnosis::Healthy, &p, t(3700)).0,
            Decision::Cleanup { .. }
        ));
        j.stage = Stage::Cleanup;
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(9999)),
            (Decision::Nothing, None)
        );
    }

    #[test]
    fn heartbeat_wakeup_is_combined_with_ladder() {
        let mut j = running();
        j.heartbeat_timeout = Some(Duration::from_secs(30));
        j.last_heartbeat = Some(t(10));
        let p = policy();
        // Ladder's warn (deadline 100, warn 10 m before → at start t0) is due first.
        let (d, _) = decide(&j, &Diagnosis::Healthy, &p, t(0));
        assert!(matches!(
            d,
            Decision::Step {
                step: Step::Warn,
                ..
            }
        ));
        take(&mut j, Step::Warn, 0, 0);
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(20)),
            (Decision::Nothing, Some(t(40)))
        );
    }

    /// A Kubernetes Job whose outcome is decided while its pods still terminate: the ladder
    /// goes on (the pods hold resources), but it is never recovered (its end was decided)
    /// and has no TTL yet.
    #[test]
    fn a_completing_job_gets_the_ladder_but_no_recovery_and_no_ttl() {
        let mut j = running();
        j.stage = Stage::Completing;
        j.outcome = Some(Outcome::Failed);
        j.heartbeat_timeout = Some(Duration::from_secs(30));
        j.last_heartbeat = Some(t(0));
        let p = policy();
        take(&mut j, Step::Warn, 0, 0);
        // Heartbeats long gone, yet nothing until the deadline.
        assert_eq!(
            decide(&j, &Diagnosis::NoPods, &p, t(99)),
            (Decision::Nothing, Some(t(100)))
        );
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(100)).0,
            Decision::Step {
                step: Step::SoftKill,
                due_at: t(100)
            }
        );
    }

    #[test]
    fn pending_job_hits_startup_timeout() {
        let mut j = running();
        j.stage = Stage::PreStart;
        j.started_at = None;
        j.deadline = None;
        let p = policy();
        assert_eq!(
            decide(&j, &Diagnosis::Healthy, &p, t(10)),
            (Decision::Nothing, Some(t(600)))
        );
        assert!(matches!(
            decide(&j, &Diagnosis::Healthy, &p, t(600)).0,
            Decision::MarkFailed { .. }
        ));
    }
}
