//! One Job's reconcile: observe it, merge with the store, decide with the engine, carry the
//! due step out through [`Actions`], write the step and the audit rows, and say when to look
//! again. The watch loop (not in this build yet) calls it for every changed Job and every
//! scheduler wake-up; it is safe to call any number of times.
//!
//! Order of writes: a warning is recorded before the Event is posted (at most one per run,
//! even across a crash). The kill steps act first and are recorded only once the API calls
//! achieved their purpose, so a 429/5xx is retried after its `Retry-After` instead of being
//! lost; a crash between acting and recording repeats an idempotent call (the same patch, a
//! delete answered NotFound), never a harmful one.
//!
//! TTL deletes take a token from `[kubernetes] destructive_calls_per_minute`; the ladder's
//! steps do not (as in the local runtime), so a runaway Job is never late because of cleanup.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use crate::config::Config;
use crate::daemon::ratelimit::RateLimiter;
use crate::engine::{Decision, Policy, decide};
use crate::model::{
    AuditAction, AuditEntry, JobRecord, Stage, Step, StepTaken, Timestamp, add, fmt_ts,
};
use crate::store::Store;

use super::actions::{Actions, Outcome, Report};
use super::observe::{Scope, observe_job, to_record};

/// How long to wait before retrying an action that failed for good (RBAC, validation): the
/// operator may fix it, and the audit log says what failed meanwhile. Doubled after each
/// consecutive failure of the same action on the same run, up to [`FAILED_ACTION_RETRY_MAX`],
/// so a permanent 403 costs a few audit rows an hour, not one a minute.
pub const FAILED_ACTION_RETRY: Duration = Duration::from_secs(60);

/// The longest wait between retries of an action that keeps failing.
pub const FAILED_ACTION_RETRY_MAX: Duration = Duration::from_secs(3600);

/// The wait before the retry that follows `failures` consecutive failures (1 = the first).
pub fn failed_action_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FAILED_ACTION_RETRY
        .saturating_mul(1 << doublings)
        .min(FAILED_ACTION_RETRY_MAX)
}

/// While a TTL-deleted Job is still there, look for pods stuck terminating this often.
pub const DELETION_CHECK: Duration = Duration::from_secs(30);

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// Not ours (no job-id label, protected namespace): nothing read or written.
    Ignored,
    /// Policed; look again at this time (None: nothing pending).
    Wake(Option<Timestamp>),
}

/// Reconciles Jobs against the store and the engine.
pub struct Reconciler {
    store: Store,
    actions: Actions,
    scope: Scope,
    config: Config,
    policy: Policy,
    limiter: RateLimiter,
    /// Consecutive `Failed` outcomes per (job id, run id, action), for the retry backoff.
    failures: std::sync::Mutex<std::collections::HashMap<(String, String, &'static str), u32>>,
}

impl Reconciler {
    /// From the config, a store and the actions.
    pub fn new(config: Config, store: Store, actions: Actions) -> Self {
        let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
        let policy = Policy::from_config(&config);
        let limiter = RateLimiter::per_minute(config.kubernetes.destructive_calls_per_minute);
        Reconciler {
            failures: std::sync::Mutex::default(),
            limiter,
            store,
            actions,
            scope,
            config,
            policy,
        }
    }

    /// Reconciles one Job (with the pods the caller knows; other Jobs' pods are ignored).
    #[tracing::instrument(skip_all, fields(job = job.metadata.name.as_deref().unwrap_or_default()))]
    pub async fn reconcile(
        &self,
        job: &Job,
        pods: &[Pod],
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        let Ok(obs) = observe_job(job, pods, &self.scope) else {
            return Ok(Reconciled::Ignored);
        };
        let previous = self.store.get_job(&obs.id).await?;
        let mut record = to_record(&obs, previous.as_ref(), &self.config.policy, now);
        record.dry_run = self.actions.dry_run();
        let new_run = previous.as_ref().is_none_or(|p| p.run_id != record.run_id);
        let warnings: Vec<AuditEntry> = if new_run {
            obs.warnings
                .iter()
                .map(|w| {
                    audit(
                        &record,
                        now,
                        AuditAction::ConfigWarning,
                        &w.to_string(),
                        None,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        match &previous {
            None => {
                self.store.insert_job(&record).await?;
                self.store.append_audit(&warnings).await?;
            }
            Some(p) if *p != record => {
                self.store.update_job_with_audit(&record, &warnings).await?;
            }
            Some(_) => {}
        }
        if new_run && record.stage.is_active() && obs.pod_grace < record.grace {
            let report = self
                .actions
                .grace_too_short(job, obs.pod_grace, record.grace, now)
                .await
                .map_err(|_| ignored_late())?;
            self.store.append_audit(&report.audit).await?;
        }
        if record.stage == Stage::Cleanup && obs.deleting {
            // Our Foreground delete waits for the Job's pods; one stuck terminating (no kubelet)
            // would block it forever (KUBERNETES.md §4). Look for such pods until it is gone.
            let report = self
                .actions
                .ttl_delete(job, "TTL delete still waiting for the Job's pods", now)
                .await
                .map_err(|_| ignored_late())?;
            self.store.append_audit(&report.audit).await?;
            let at = self
                .retry_at(&record, "ttl_delete", &report, now)
                .unwrap_or(add(now, DELETION_CHECK));
            return Ok(Reconciled::Wake(Some(at)));
        }
        // Each pass takes at most one step; a later step is due at least a grace period
        // after it, so more passes only matter after downtime. Bounded either way.
        for _ in 0..8 {
            let (decision, wake) = decide(&record, &obs.diagnosis, &self.policy, now);
            match decision {
                Decision::Nothing => return Ok(Reconciled::Wake(wake)),
                Decision::Step { step, due_at } => {
                    let taken = StepTaken {
                        step,
                        due_at,
                        at: now,
                    };
                    let reason = step_reason(&record, step, now);
                    let row = audit(&record, now, step.into(), &reason, Some(due_at));
                    if step == Step::Warn {
                        if self
                            .store
                            .record_step(&record.id, &record.run_id, &taken, &row)
                            .await?
                        {
                            let report = self
                                .actions
                                .warn(job, &reason, now)
                                .await
                                .map_err(|_| ignored_late())?;
                            self.store.append_audit(&report.audit).await?;
                        }
                        record.steps.push(taken);
                        continue;
                    }
                    let report = match step {
                        Step::SoftKill => {
                            self.actions
                                .soft_kill(job, pods, record.grace, &reason, now)
                                .await
                        }
                        Step::HardKill => self.actions.hard_kill(job, pods, &reason, now).await,
                        _ => self.actions.force_delete(job, pods, &reason, now).await,
                    }
                    .map_err(|_| ignored_late())?;
                    self.store.append_audit(&report.audit).await?;
                    if let Some(retry_at) = self.retry_at(&record, step.as_str(), &report, now) {
                        return Ok(Reconciled::Wake(Some(retry_at)));
                    }
                    self.store
                        .record_step(&record.id, &record.run_id, &taken, &row)
                        .await?;
                    record.steps.push(taken);
                    if step == Step::SoftKill && record.stage != Stage::Terminating {
                        record.stage = Stage::Terminating;
                        self.store.update_job(&record).await?;
                    }
                }
                Decision::Cleanup { due_at, .. } => {
                    // TTL deletes are cleanup: limited per minute. The ladder is not, so a
                    // runaway Job is stopped on time however many deletes are waiting.
                    if let Err(wait) = self.limiter.try_take_at(std::time::Instant::now()) {
                        return Ok(Reconciled::Wake(Some(add(now, wait))));
                    }
                    let reason = format!(
                        "TTL after {} expired at {}",
                        record.outcome.map(|o| o.as_str()).unwrap_or("finish"),
                        fmt_ts(due_at)
                    );
                    let report = self
                        .actions
                        .ttl_delete(job, &reason, now)
                        .await
                        .map_err(|_| ignored_late())?;
                    self.store.append_audit(&report.audit).await?;
                    if let Some(retry_at) = self.retry_at(&record, "ttl_delete", &report, now) {
                        return Ok(Reconciled::Wake(Some(retry_at)));
                    }
                    record.stage = Stage::Cleanup;
                    self.store.update_job(&record).await?;
                    return Ok(Reconciled::Wake(None));
                }
                Decision::Recover { .. } | Decision::MarkFailed { .. } => {
                    // Dead-job recovery for Kubernetes Jobs is not in this build: the decision
                    // is logged, nothing is done, and the job is looked at again later.
                    tracing::warn!(job = %record.id, ?decision, "recovery for Kubernetes Jobs is not implemented; no action taken");
                    return Ok(Reconciled::Wake(Some(add(now, FAILED_ACTION_RETRY))));
                }
            }
        }
        Ok(Reconciled::Wake(Some(now)))
    }
}

/// `observe_job` admitted the Job, so the actions (which check the same scope) cannot refuse
/// it; this error is unreachable but reported rather than panicking.
fn ignored_late() -> ReconcileError {
    ReconcileError::OutOfScope
}

/// Why a reconcile could not finish (the caller retries it later).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The actions refused a Job the observation admitted (a bug).
    #[error("the Job was admitted by observation but refused by the actions")]
    OutOfScope,
}

impl Reconciler {
    /// When to try `action` on this run again, if its report says so; counts consecutive
    /// failures for the backoff and forgets them once the action succeeds.
    fn retry_at(
        &self,
        record: &JobRecord,
        action: &'static str,
        report: &Report,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let key = (record.id.to_string(), record.run_id.clone(), action);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match &report.outcome {
            Outcome::Done | Outcome::Recreated => {
                failures.remove(&key);
                None
            }
            Outcome::Retry { after, .. } => Some(add(now, *after)),
            Outcome::Failed { .. } => {
                let n = failures.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                Some(add(now, failed_action_backoff(*n)))
            }
        }
    }
}

fn step_reason(job: &JobRecord, step: Step, now: Timestamp) -> String {
    let deadline = job.deadline.map(fmt_ts).unwrap_or_default();
    let timeout = crate::duration::format_duration(job.timeout);
    match step {
        Step::Warn => format!(
            "{} left before the deadline {deadline} (timeout {timeout})",
            crate::duration::format_duration(crate::model::since(job.deadline.unwrap_or(now), now))
        ),
        Step::SoftKill => format!(
            "timeout {timeout} reached at {deadline}: the Job's activeDeadlineSeconds ends it, grace {}",
            crate::duration::format_duration(job.grace)
        ),
        Step::HardKill => "grace period over: remaining pods deleted with grace 0".to_owned(),
        Step::ForceDelete => {
            "pods outlived the hard kill: Job deleted, stuck pods removed".to_owned()
        }
    }
}

fn audit(
    job: &JobRecord,
    now: Timestamp,
    action: AuditAction,
    reason: &str,
    due_at: Option<Timestamp>,
) -> AuditEntry {
    AuditEntry {
        id: 0,
        timestamp: now,
        job_id: job.id.to_string(),
        resource_type: "job".to_owned(),
        resource_name: format!(
            "{}/{}",
            job.namespace.as_deref().unwrap_or_default(),
            job.name
        ),
        action,
        reason: reason.to_owned(),
        initiated_by: "jobwarden".to_owned(),
        success: true,
        error_message: None,
        dry_run: job.dry_run,
        details: due_at.map(|d| serde_json::json!({"due_at": fmt_ts(d), "run_id": job.run_id})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_actions_back_off_from_a_minute_to_an_hour() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| failed_action_backoff(n).as_secs())
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(failed_action_backoff(0).as_secs(), 60);
        assert_eq!(failed_action_backoff(u32::MAX).as_secs(), 3600);
    }
}
