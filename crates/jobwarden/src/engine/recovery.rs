//! Startup timeout and dead jobs: is a job stuck or dead, why, and what to do about it.
//!
//! - **Startup timeout**: a job still pending (not started) after `policy.startup_timeout`
//!   fails, with the cause the runtime observed (image pull error, unschedulable…).
//! - **Dead job**: opt-in per job with a heartbeat timeout. A running job whose last heartbeat
//!   (or its start, before the first heartbeat) is older than that is dead. The diagnosis
//!   decides: image errors fail fast, a crash loop over the limit fails, otherwise the job is
//!   restarted/recreated up to `recovery.max_attempts` with exponential backoff, then marked
//!   failed. Jobs without a heartbeat timeout are never judged dead by heartbeat.

use std::time::Duration;

use super::policy::RecoveryConfig;
use crate::model::{JobRecord, Stage, Timestamp, add};

/// What the runtime observed about a job that looks stuck or dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    /// Nothing wrong seen (or not looked).
    Healthy,
    /// ImagePullBackOff / ErrImagePull.
    ImagePull {
        /// The image that cannot be pulled.
        image: String,
        /// The kubelet's message.
        message: String,
    },
    /// CrashLoopBackOff.
    CrashLoop {
        /// Container restarts so far.
        restarts: u32,
    },
    /// Pending and unschedulable.
    Unschedulable {
        /// The scheduler's message.
        message: String,
    },
    /// The Job exists but has no pods.
    NoPods,
    /// The runtime object (Job, process) is gone while the store says it is active.
    Gone,
}

impl Diagnosis {
    /// Short cause name for reasons and metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            Diagnosis::Healthy => "healthy",
            Diagnosis::ImagePull { .. } => "image_pull",
            Diagnosis::CrashLoop { .. } => "crash_loop",
            Diagnosis::Unschedulable { .. } => "unschedulable",
            Diagnosis::NoPods => "no_pods",
            Diagnosis::Gone => "gone",
        }
    }
}

/// Limits for the diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryLimits {
    /// Longest time a job may stay pending.
    pub startup_timeout: Duration,
    /// Restarts after which a crash loop is final.
    pub crash_loop_restarts: u32,
}

/// What to do about a possibly stuck or dead job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine; look again at `check_at` (None: nothing to watch).
    Alive {
        /// When the job would next become stuck or dead.
        check_at: Option<Timestamp>,
    },
    /// Dead, but the next recovery attempt waits for its backoff until `at`.
    WaitForBackoff {
        /// When the attempt is due.
        at: Timestamp,
    },
    /// Restart / recreate it now; `attempt` is 1-based.
    Recover {
        /// The attempt number this will be.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Give up: fail the job with this reason.
    MarkFailed {
        /// Why, for the audit log and the job record.
        reason: String,
    },
}

/// The backoff before recovery attempt `k` (0-based): initial × multiplier^k, capped.
pub fn recovery_backoff(cfg: &RecoveryConfig, k: u32) -> Duration {
    let factor = cfg
        .backoff_multiplier
        .max(1.0)
        .powi(i32::try_from(k).unwrap_or(i32::MAX));
    let secs = cfg.backoff_initial.0.as_secs_f64() * factor;
    let max = cfg.backoff_max.0;
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// Startup timeout: a job that has not started `startup_timeout` after it was created fails,
/// naming the cause.
pub fn startup_verdict(
    job: &JobRecord,
    diagnosis: &Diagnosis,
    limits: RecoveryLimits,
    now: Timestamp,
) -> Verdict {
    if job.stage != Stage::PreStart || job.started_at.is_some() {
        return Verdict::Alive { check_at: None };
    }
    if let Diagnosis::ImagePull { image, message } = diagnosis {
        return Verdict::MarkFailed {
            reason: format!("image {image} cannot be pulled: {message}"),
        };
    }
    let limit = add(job.created_at, limits.startup_timeout);
    if now < limit {
        return Verdict::Alive {
            check_at: Some(limit),
        };
    }
    let cause = match diagnosis {
        Diagnosis::Unschedulable { message } => format!("unschedulable: {message}"),
        Diagnosis::CrashLoop { restarts } => format!("crash loop ({restarts} restarts)"),
        other => other.cause().to_owned(),
    };
    Verdict::MarkFailed {
        reason: format!(
            "still pending after the startup timeout ({}): {cause}",
            crate::duration::format_duration(limits.startup_timeout)
        ),
    }
}

/// Dead-job decision for a running job.
pub fn dead_job_verdict(
    job: &JobRecord,
    diagnosis: &Diagnosis,
    cfg: &RecoveryConfig,
    limits: RecoveryLimits,
    now: Timestamp,
) -> Verdict {
    if !matches!(job.stage, Stage::Running) || job.finished_at.is_some() {
        return Verdict::Alive { check_at: None };
    }
    // Fail-fast diagnoses apply whether or not heartbeats are configured.
    match diagnosis {
        Diagnosis::ImagePull { image, message } => {
            return Verdict::MarkFailed {
                reason: format!("image {image} cannot be pulled: {message}"),
            };
        }
        Diagnosis::CrashLoop { restarts } if *restarts > limits.crash_loop_restarts => {
            return Verdict::MarkFailed {
                reason: format!(
                    "crash loop: {restarts} restarts (limit {})",
                    limits.crash_loop_restarts
                ),
            };
        }
        Diagnosis::Unschedulable { message } => {
            // Started for the runtime (a Kubernetes Job's startTime) but its pod was never
            // scheduled: the startup timeout applies, and no heartbeat can be expected yet.
            let limit = add(
                job.started_at.unwrap_or(job.created_at),
                limits.startup_timeout,
            );
            if now < limit {
                return Verdict::Alive {
                    check_at: Some(limit),
                };
            }
            return Verdict::MarkFailed {
                reason: format!(
                    "still pending after the startup timeout ({}): unschedulable: {message}",
                    crate::duration::format_duration(limits.startup_timeout)
                ),
            };
        }
        _ => {}
    }
    let gone = matches!(diagnosis, Diagnosis::Gone | Diagnosis::NoPods);
    let Some(hb_timeout) = job.heartbeat_timeout else {
        return Verdict::Alive { check_at: None };
    };
    let Some(started) = job.started_at else {
        return Verdict::Alive { check_at: None };
    };
    let last = job.last_heartbeat.map_or(started, |h| h.max(started));
    let dead_since = add(last, hb_timeout);
    if now < dead_since && !gone {
        return Verdict::Alive {
            check_at: Some(dead_since),
        };
    }
    // Gone (no process, no pods): dead since its last sign of life, so the backoff counts from
    // there, not from each look (which would put the attempt off forever).
    let dead_since = if gone { last } else { dead_since };
    if job.recovery_attempts >= cfg.max_attempts {
        return Verdict::MarkFailed {
            reason: format!(
                "unresponsive ({}) after {} recovery attempts",
                if gone {
                    diagnosis.cause()
                } else {
                    "heartbeat missed"
                },
                job.recovery_attempts
            ),
        };
    }
    let due = add(dead_since, recovery_backoff(cfg, job.recovery_attempts));
    if now < due {
        return Verdict::WaitForBackoff { at: due };
    }
    Verdict::Recover {
        attempt: job.recovery_attempts + 1,
        reason: if gone {
            format!("{} while it should be running", diagnosis.cause())
        } else {
            format!(
                "no heartbeat for {}",
                crate::duration::format_duration(crate::model::since(now, last))
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Dur;
    use crate::engine::ladder::tests::{running, t};

    const LIMITS: RecoveryLimits = RecoveryLimits {
        startup_timeout: Duration::from_secs(60),
        crash_loop_restarts: 5,
    };

    fn cfg() -> RecoveryConfig {
        RecoveryConfig {
            max_attempts: 3,
            backoff_initial: Dur::secs(10),
            backoff_multiplier: 2.0,
            backoff_max: Dur::secs(100),
        }
    }

    fn hb_job(last: Option<i64>) -> JobRecord {
        let mut j = running();
        j.heartbeat_timeout = Some(Duration::from_secs(30));
        j.last_heartbeat = last.map(t);
        j
    }

    #[test]
    fn an_unschedulable_started_job_waits_for_the_startup_timeout_then_fails() {
        // No heartbeat yet (its pod never ran): not dead before the startup timeout…
        let j = hb_job(None);
        let started = j.started_at.expect("running() has started");
        let pending = Diagnosis::Unschedulable {
            message: "0/3 nodes are available: 3 Insufficient cpu.".into(),
        };
        let limit = add(started, LIMITS.startup_timeout);
        let before = add(started, Duration::from_secs(59));
        assert_eq!(
            dead_job_verdict(&j, &pending, &cfg(), LIMITS, before),
            Verdict::Alive {
                check_at: Some(limit)
            }
        );
        // …then failed with the scheduler's message, whether or not heartbeats are configured.
        for job in [j.clone(), running()] {
            let v = dead_job_verdict(&job, &pending, &cfg(), LIMITS, limit);
            assert!(
                matches!(&v, Verdict::MarkFailed { reason } if reason.contains("Insufficient cpu") && reason.contains("startup timeout")),
                "{v:?}"
            );
        }
        // Scheduled (healthy) instead: the heartbeat rules apply as before.
        assert!(matches!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, limit),
            Verdict::Recover { .. } | Verdict::WaitForBackoff { .. }
        ));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = cfg();
        let v: Vec<u64> = (0..6).map(|k| recovery_backoff(&c, k).as_secs()).collect();
        assert_eq!(v, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(recovery_backoff(&c, u32::MAX).as_secs(), 100);
    }

    #[test]
    fn without_heartbeat_timeout_never_dead() {
        let j = running();
        assert_eq!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(1_000_000)),
            Verdict::Alive { check_at: None }
        );
    }

    #[test]
    fn heartbeat_age_decides_then_backoff_then_recover() {
        let j = hb_job(Some(50));
        assert_eq!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(70)),
            Verdict::Alive {
                check_at: Some(t(80))
            }
        );
        // Dead at t(80); first attempt after 10 s of backoff.
        assert_eq!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(85)),
            Verdict::WaitForBackoff { at: t(90) }
        );
        assert!(matches!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(90)),
            Verdict::Recover { attempt: 1, .. }
        ));
        let mut j2 = hb_job(Some(50));
        j2.recovery_attempts = 2;
        assert_eq!(
            dead_job_verdict(&j2, &Diagnosis::Healthy, &cfg(), LIMITS, t(100)),
            Verdict::WaitForBackoff { at: t(120) }
        );
    }

    #[test]
    fn no_heartbeat_yet_counts_from_start() {
        let j = hb_job(None);
        assert_eq!(
            dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(10)),
            Verdict::Alive {
                check_at: Some(t(30))
            }
        );
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut j = hb_job(Some(0));
        j.recovery_attempts = 3;
        let v = dead_job_verdict(&j, &Diagnosis::Healthy, &cfg(), LIMITS, t(1000));
        assert!(
            matches!(v, Verdict::MarkFailed { ref reason } if reason.contains("3 recovery attempts")),
            "{v:?}"
        );
    }

    #[test]
    fn image_pull_fails_fast_with_the_image() {
        let j = hb_job(Some(0));
        let d = Diagnosis::ImagePull {
            image: "flowforge/worker:nope".into(),
            message: "not found".into(),
        };
        let v = dead_job_verdict(&j, &d, &cfg(), LIMITS, t(1));
        assert!(
            matches!(v, Verdict::MarkFailed { ref reason } if reason.contains("flowforge/worker:nope")),
            "{v:?}"
        );
    }

    #[test]
    fn crash_loop_over_limit_fails_under_limit_waits() {
        let j = hb_job(Some(0));
        let v = dead_job_verdict(
            &j,
            &Diagnosis::CrashLoop { restarts: 6 },
            &cfg(),
            LIMITS,
            t(1),
        );
        assert!(matches!(v, Verdict::MarkFailed { .. }));
        let v = dead_job_verdict(
            &j,
            &Diagnosis::CrashLoop { restarts: 2 },
            &cfg(),
            LIMITS,
            t(1),
        );
        assert!(matches!(v, Verdict::Alive { .. }));
    }

    #[test]
    fn gone_job_is_recovered_without_waiting_for_the_heartbeat() {
        let j = hb_job(Some(0));
        let v = dead_job_verdict(&j, &Diagnosis::Gone, &cfg(), LIMITS, t(5));
        // Dead since its last heartbeat (t0), not since each look; backoff 10 s.
        assert_eq!(v, Verdict::WaitForBackoff { at: t(10) });
        // Looking again does not put the attempt off.
        let v = dead_job_verdict(&j, &Diagnosis::Gone, &cfg(), LIMITS, t(9));
        assert_eq!(v, Verdict::WaitForBackoff { at: t(10) });
        let v = dead_job_verdict(&j, &Diagnosis::Gone, &cfg(), LIMITS, t(10));
        assert!(matches!(v, Verdict::Recover { attempt: 1, .. }), "{v:?}");
    }

    #[test]
    fn startup_timeout_names_the_cause() {
        let mut j = running();
        j.stage = Stage::PreStart;
        j.started_at = None;
        let d = Diagnosis::Unschedulable {
            message: "0/3 nodes are available: insufficient cpu".into(),
        };
        assert_eq!(
            startup_verdict(&j, &d, LIMITS, t(30)),
            Verdict::Alive {
                check_at: Some(t(60))
            }
        );
        let v = startup_verdict(&j, &d, LIMITS, t(60));
        assert!(
            matches!(v, Verdict::MarkFailed { ref reason } if reason.contains("insufficient cpu") && reason.contains("1m")),
            "{v:?}"
        );
        let v = startup_verdict(
            &j,
            &Diagnosis::ImagePull {
                image: "img:1".into(),
                message: "ErrImagePull".into(),
            },
            LIMITS,
            t(1),
        );
        assert!(matches!(v, Verdict::MarkFailed { ref reason } if reason.contains("img:1")));
    }
}
