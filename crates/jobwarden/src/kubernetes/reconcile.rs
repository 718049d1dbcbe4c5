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
//!
//! `[[hooks]]` fire as in the local runtime, for the same events with the same payload: a
//! step's event (plus `terminating` for a soft kill of a running Job) once the step is
//! recorded by this reconcile, and `cleanup` once the TTL delete moved the Job to cleanup.
//! A step found already recorded fires nothing, so each fires at most once per run. In
//! dry-run the step events fire and `terminating` and `cleanup` do not, as locally.
//! `pre_start` never fires: Kubernetes starts the Job. Hooks run in spawned tasks (never
//! delaying the ladder) and each outcome is an audit row. The steps, their delay, audit rows
//! and errors are counted in [`Metrics`] under the local runtime's names.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use crate::config::Config;
use crate::daemon::ratelimit::RateLimiter;
use crate::engine::{Decision, Policy, decide};
use crate::hooks::{HookPayload, Hooks};
use crate::metrics::Metrics;
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
    hooks: Arc<Hooks>,
    metrics: Arc<Metrics>,
    /// Hook tasks still running (see [`Reconciler::hooks_idle`]).
    hooks_running: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Reconciler {
    /// From the config, a store and the actions.
    pub fn new(config: Config, store: Store, actions: Actions) -> Self {
        let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
        let policy = Policy::from_config(&config);
        let limiter = RateLimiter::per_minute(config.kubernetes.destructive_calls_per_minute);
        Reconciler {
            failures: std::sync::Mutex::default(),
            hooks: Arc::new(Hooks::new(config.hooks.clone())),
            metrics: Arc::new(Metrics::default()),
            hooks_running: Arc::new(tokio::sync::watch::Sender::new(0)),
            limiter,
            store,
            actions,
            scope,
            config,
            policy,
        }
    }

    /// The metrics this reconciler counts into (for `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Completes once no hook task of this reconciler is running, checked when awaited (so
    /// it may be created early, e.g. before the reconciler moves into the controller).
    pub fn hooks_idle(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut running = self.hooks_running.subscribe();
        async move {
            let _ = running.wait_for(|n| *n == 0).await;
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
        let out = self.reconcile_job(job, pods, now).await;
        if let Err(ReconcileError::Store(e)) = &out {
            self.metrics.error("store");
            tracing::error!("store: {e}");
        }
        out
    }

    async fn reconcile_job(
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
                self.append_audit(&warnings).await?;
            }
            Some(p) if *p != record => {
                self.store.update_job_with_audit(&record, &warnings).await?;
                self.metrics.audit_written(warnings.len() as u64);
            }
            Some(_) => {}
        }
        if new_run && record.stage.is_active() && obs.pod_grace < record.grace {
            let report = self
                .actions
                .grace_too_short(job, obs.pod_grace, record.grace, now)
                .await
                .map_err(|_| ignored_late())?;
            self.append_audit(&report.audit).await?;
        }
        if record.stage == Stage::Cleanup && obs.deleting {
            // Our Foreground delete waits for the Job's pods; one stuck terminating (no kubelet)
            // would block it forever (KUBERNETES.md §4). Look for such pods until it is gone.
            let report = self
                .actions
                .ttl_delete(job, "TTL delete still waiting for the Job's pods", now)
                .await
                .map_err(|_| ignored_late())?;
            self.append_audit(&report.audit).await?;
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
                    // The enforcement delay runs to when the step's API call succeeded: `now`
                    // plus the call's own duration (monotonic; `now` is the only wall time).
                    let started = std::time::Instant::now();
                    if step == Step::Warn {
                        let recorded = self
                            .store
                            .record_step(&record.id, &record.run_id, &taken, &row)
                            .await?;
                        record.steps.push(taken);
                        if recorded {
                            self.metrics.audit_written(1);
                            let report = self
                                .actions
                                .warn(job, &reason, now)
                                .await
                                .map_err(|_| ignored_late())?;
                            self.step_taken(step, due_at, now, started);
                            self.append_audit(&report.audit).await?;
                            self.fire_hooks(step.as_str(), &record, Some(reason), now);
                        }
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
                    self.append_audit(&report.audit).await?;
                    if let Some(retry_at) = self.retry_at(&record, step.as_str(), &report, now) {
                        return Ok(Reconciled::Wake(Some(retry_at)));
                    }
                    let recorded = self
                        .store
                        .record_step(&record.id, &record.run_id, &taken, &row)
                        .await?;
                    record.steps.push(taken);
                    let was_running = record.stage == Stage::Running;
                    if step == Step::SoftKill && record.stage != Stage::Terminating {
                        record.stage = Stage::Terminating;
                        self.store.update_job(&record).await?;
                    }
                    if recorded {
                        // Recorded now, by us: counted and announced once per run.
                        self.metrics.audit_written(1);
                        self.step_taken(step, due_at, now, started);
                        if step == Step::SoftKill && was_running && !record.dry_run {
                            self.fire_hooks("terminating", &record, Some(reason.clone()), now);
                        }
                        self.fire_hooks(step.as_str(), &record, Some(reason), now);
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
                    self.append_audit(&report.audit).await?;
                    if let Some(retry_at) = self.retry_at(&record, "ttl_delete", &report, now) {
                        return Ok(Reconciled::Wake(Some(retry_at)));
                    }
                    let moved = record.stage != Stage::Cleanup;
                    record.stage = Stage::Cleanup;
                    self.store.update_job(&record).await?;
                    // As locally: a dry-run cleanup is decided, not done, and fires nothing.
                    if moved && !record.dry_run {
                        self.fire_hooks("cleanup", &record, None, now);
                    }
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
            Outcome::Retry { after, .. } => {
                self.metrics.error("kubernetes");
                Some(add(now, *after))
            }
            Outcome::Failed { .. } => {
                self.metrics.error("kubernetes");
                let n = failures.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                Some(add(now, failed_action_backoff(*n)))
            }
        }
    }
}

impl Reconciler {
    async fn append_audit(&self, rows: &[AuditEntry]) -> Result<(), crate::store::Error> {
        self.store.append_audit(rows).await?;
        self.metrics.audit_written(rows.len() as u64);
        Ok(())
    }

    /// Counts a step carried out: its delay is from `due_at` to `now` plus the time since
    /// `started` (the call's duration).
    fn step_taken(
        &self,
        step: Step,
        due_at: Timestamp,
        now: Timestamp,
        started: std::time::Instant,
    ) {
        let late = (now - due_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.metrics
            .step_taken(step, late + started.elapsed().as_secs_f64());
    }

    /// Fires the hooks for `event` in a task of their own (a slow hook never delays the
    /// ladder) and audits each outcome, as the local runtime does.
    fn fire_hooks(&self, event: &str, job: &JobRecord, reason: Option<String>, now: Timestamp) {
        if !self.hooks.has(event) {
            return;
        }
        let payload = HookPayload::new(event, job, reason, now);
        let hooks = self.hooks.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let job = job.clone();
        let running = HookRunning::start(self.hooks_running.clone());
        tokio::spawn(async move {
            let _running = running;
            hooks.fire_and_audit(&payload, &job, &store, &metrics).await;
        });
    }
}

/// Counts one running hook task while it lives (dropped at its end, panics included).
struct HookRunning(Arc<tokio::sync::watch::Sender<usize>>);

impl HookRunning {
    fn start(running: Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        running.send_modify(|n| *n += 1);
        HookRunning(running)
    }
}

impl Drop for HookRunning {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
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
