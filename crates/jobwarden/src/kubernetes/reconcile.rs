//! One Job's reconcile: observe it, merge with the store, decide with the engine, carry the
//! due step out through [`Actions`], write the step and the audit rows, and say when to look
//! again. The watch loop (`controller.rs`) calls it for every changed Job and every
//! scheduler wake-up; it is safe to call any number of times.
//!
//! Dead-job recovery and stuck Jobs (the engine's `Recover` / `MarkFailed`): mark_failed ends
//! the Job through the Job controller and records the reason once per run (a `marked_failed`
//! marker in `JobRecord.spec`); a recovery attempt is counted and audited first, with a
//! `recovering` marker, then carried out (delete the dead run's Job, create the stored one),
//! and finished after a crash from the marker, so one attempt never becomes two. "No pods"
//! counts only once it lasted the backoff ([`Reconciler::debounce_no_pods`]). A Job that is
//! gone ([`Reconciler::reconcile_gone`]) is re-created, or its record settled (outcome, stage
//! `cleanup`, its storage cleanup queued).
//!
//! Order of writes: every step is recorded before it is carried out, as in the local runtime.
//! A warning is recorded, then its Event posted (at most one per run, even across a crash). A
//! kill step (soft kill, hard kill, force delete) and mark_failed are recorded with a marker
//! that says they are still to be carried out ([`Acting`], `marked_failed` with `done: false`);
//! the calls follow, and the marker goes once they achieved their purpose. A 429/5xx leaves
//! the marker, and the calls are retried after the `Retry-After`; a crash anywhere in between
//! leaves it too, and the next reconcile (after a restart, or on the next leader) carries the
//! step out before deciding anything else: the step keeps its one row, and the calls it
//! repeats are idempotent (the same patch, deletes with UID preconditions answered NotFound).
//! A step carried out later than recorded is re-timed, so the next step's grace counts from
//! when it happened.
//!
//! A Job is finished at `Failed` / `Complete`, not at `FailureTarget` / `SuccessCriteriaMet`
//! (`observe.rs`): while its pods terminate (for ever, on a node whose kubelet is gone) the
//! ladder goes on, and the hard kill and force delete remove them.
//!
//! TTL deletes take a token from `[kubernetes] destructive_calls_per_minute`; the ladder's
//! steps do not (as in the local runtime), so a runaway Job is never late because of cleanup.
//! `jobwarden run` shares that limiter with the orphan pass ([`Reconciler::with_limiter`]), so
//! TTL and orphan deletes together stay within it.
//!
//! Once a TTL delete succeeded (the Job deleted or already being deleted), the run's
//! object-storage cleanup is queued as the local runtime queues it: one `artifact_prefix` task
//! per kind (`jobs/<org>/<id>/`, `partial/<id>/`, `logs/<id>/`), due at the finish plus that
//! kind's `[retention.artifacts]` (artifacts: the TTL for the outcome), deduplicated by
//! `artifacts:<root>:<job id>:<run id>` ([`crate::daemon::worker::artifact_tasks`];
//! [`super::cleanup`] runs the workers). The tasks are queued before the move to `cleanup` is
//! written, so a crash in between repeats the delete (NotFound counts as done) and the
//! queueing, which the dedupe keys merge: never a `cleanup` Job with nothing queued. (A crash
//! between the DELETE and the queueing queues nothing if the Job is gone by the restart: its
//! record is finished, not active, so the sweep for gone Jobs does not look at it.) A failed
//! delete, or one that
//! found a re-created Job (409: a new run's objects), queues nothing; dry-run queues nothing.
//! The Job's labelled PVCs, Secrets and ConfigMaps are deleted in the same reconcile, right
//! after the TTL delete ([`Actions::delete_labelled`]), before the stage moves; a failure
//! retries the TTL cleanup as a whole.
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
use crate::engine::decide::earliest;
use crate::engine::recovery::Diagnosis;
use crate::engine::{Decision, Policy, decide};
use crate::hooks::{HookPayload, Hooks};
use crate::metrics::Metrics;
use crate::model::{
    AuditAction, AuditEntry, JobRecord, Outcome as JobOutcome, Stage, Step, StepTaken, Timestamp,
    add, fmt_ts,
};
use crate::store::{StepWrite, Store};

use super::actions::{Actions, Outcome, Report};
use super::observe::{
    ACTING, JOB_TEMPLATE, MARKED_FAILED, NO_PODS_SINCE, RECOVERING, SUPERSEDED, Scope, observe_job,
    to_record,
};

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
    limiter: Arc<RateLimiter>,
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
        let limiter = Arc::new(RateLimiter::per_minute(
            config.kubernetes.destructive_calls_per_minute,
        ));
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

    /// Takes the TTL deletes' tokens from `limiter` instead of a limiter of its own (`jobwarden
    /// run` shares one with the orphan pass: `[kubernetes] destructive_calls_per_minute` bounds
    /// both together).
    pub fn with_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = limiter;
        self
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
        if let Some(p) = &previous
            && p.run_id != obs.uid
            && superseded(p).any(|uid| uid == obs.uid)
        {
            // A late copy of a Job that dead-job recovery replaced: not a new run. Look at
            // whatever holds the name a moment later.
            return Ok(Reconciled::Wake(Some(add(now, Duration::from_secs(1)))));
        }
        let mut record = to_record(&obs, previous.as_ref(), &self.config.policy, now);
        let (diagnosis, no_pods_wake) = self.debounce_no_pods(&mut record, &obs.diagnosis, now);
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
        if record.stage.is_active()
            && let Some(marker) = Marker::of(&record, RECOVERING)
        {
            // A re-creation is under way for this run: finish it, decide nothing new.
            if marker.done {
                return Ok(Reconciled::Wake(None));
            }
            return self
                .continue_recovery(Some(job), &mut record, &marker, now)
                .await;
        }
        if record.stage.is_active()
            && let Some(pending) = Acting::of(&record)
        {
            // A kill step recorded but not yet carried out (its call failed, or jobwarden
            // stopped in between): carry it out before deciding anything new.
            if let Some(retry_at) = self.act(job, pods, &mut record, &pending, now).await? {
                return Ok(Reconciled::Wake(Some(retry_at)));
            }
        }
        let marked = Marker::of(&record, MARKED_FAILED);
        if record.stage.is_active()
            && let Some(m) = marked.as_ref().filter(|m| !m.done)
        {
            // mark_failed recorded but not yet carried out: finish it.
            return self.mark_failed(job, &mut record, &m.reason, now).await;
        }
        // Ended by our mark_failed patch already: the Job controller is on it (or dry-run).
        let failed_already = marked.is_some();
        // Each pass takes at most one step; a later step is due at least a grace period
        // after it, so more passes only matter after downtime. Bounded either way.
        for _ in 0..8 {
            let (decision, wake) = decide(&record, &diagnosis, &self.policy, now);
            match decision {
                Decision::Nothing => return Ok(Reconciled::Wake(earliest(wake, no_pods_wake))),
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
                    // A kill step is recorded first: the step, its row, the stage and the
                    // `acting` marker in one write; then carried out ([`Reconciler::act`]).
                    let pending = Acting {
                        step,
                        due_at,
                        at: now,
                        reason: reason.clone(),
                        terminating: step == Step::SoftKill
                            && matches!(record.stage, Stage::Running | Stage::Completing)
                            && !record.dry_run,
                    };
                    let mut after = record.clone();
                    after.steps.push(taken.clone());
                    let moves = step == Step::SoftKill && record.stage != Stage::Terminating;
                    if moves {
                        after.stage = Stage::Terminating;
                    }
                    pending.set(&mut after);
                    let write = StepWrite {
                        job_id: record.id.clone(),
                        run_id: record.run_id.clone(),
                        step: taken,
                        audit: row,
                        stage_after: moves.then(|| (Stage::Terminating, reason.clone())),
                        spec_after: Some(after.spec.clone()),
                    };
                    let recorded = self
                        .store
                        .record_steps(std::slice::from_ref(&write))
                        .await?
                        .pop()
                        .unwrap_or(Ok(false))?;
                    if !recorded {
                        // Recorded meanwhile by another writer (a replica that led a moment
                        // ago): look again at what the store holds.
                        return Ok(Reconciled::Wake(Some(add(now, Duration::from_secs(1)))));
                    }
                    self.metrics.audit_written(1);
                    if moves {
                        after.reason = Some(reason);
                    }
                    record = after;
                    if let Some(retry_at) = self.act(job, pods, &mut record, &pending, now).await? {
                        return Ok(Reconciled::Wake(Some(retry_at)));
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
                    if report.outcome == Outcome::Done && !record.dry_run {
                        // The job's labelled PVCs, Secrets and ConfigMaps, before the stage
                        // moves (a failure retries the whole TTL cleanup, idempotently).
                        let labelled = self
                            .actions
                            .delete_labelled(job, &reason, now)
                            .await
                            .map_err(|_| ignored_late())?;
                        self.append_audit(&labelled.audit).await?;
                        if let Some(retry_at) = self.retry_at(&record, "ttl_delete", &labelled, now)
                        {
                            return Ok(Reconciled::Wake(Some(retry_at)));
                        }
                        // Before the stage (see the module docs); pending duplicates merge.
                        let tasks =
                            crate::daemon::worker::artifact_tasks(&record, &self.config, now);
                        self.store.enqueue_many(&tasks, now).await?;
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
                Decision::MarkFailed { reason } => {
                    if failed_already {
                        return Ok(Reconciled::Wake(wake));
                    }
                    if obs.suspended {
                        // Suspended on purpose: nothing runs, nothing is stuck; a resume is a
                        // Job event and decides again.
                        return Ok(Reconciled::Wake(None));
                    }
                    return self.mark_failed(job, &mut record, &reason, now).await;
                }
                Decision::Recover { attempt, reason } => {
                    if failed_already {
                        return Ok(Reconciled::Wake(wake));
                    }
                    if obs.suspended {
                        return Ok(Reconciled::Wake(None));
                    }
                    return self
                        .start_recovery(Some(job), &mut record, attempt, &reason, now)
                        .await;
                }
            }
        }
        Ok(Reconciled::Wake(Some(now)))
    }
}

/// The UIDs of runs dead-job recovery replaced (`JobRecord.spec.superseded`).
fn superseded(record: &JobRecord) -> impl Iterator<Item = &str> {
    record
        .spec
        .get(SUPERSEDED)
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
}

impl Reconciler {
    /// "No pods" counts only once it has lasted the recovery backoff of the next attempt,
    /// measured from when this run was first seen without pods (kept in the record): the Job
    /// controller may be between a pod and its replacement. Until then the engine is told
    /// the Job is healthy, and the reconcile wakes when it would count.
    fn debounce_no_pods(
        &self,
        record: &mut JobRecord,
        diagnosis: &Diagnosis,
        now: Timestamp,
    ) -> (Diagnosis, Option<Timestamp>) {
        let Some(spec) = record.spec.as_object_mut() else {
            return (diagnosis.clone(), None);
        };
        if *diagnosis != Diagnosis::NoPods {
            spec.remove(NO_PODS_SINCE);
            return (diagnosis.clone(), None);
        }
        let since = spec
            .get(NO_PODS_SINCE)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse::<Timestamp>().ok())
            .unwrap_or(now);
        spec.insert(NO_PODS_SINCE.to_owned(), fmt_ts(since).into());
        let counts_at = add(
            since,
            crate::engine::recovery::recovery_backoff(
                &self.policy.recovery,
                record.recovery_attempts,
            ),
        );
        if now < counts_at {
            (Diagnosis::Healthy, Some(counts_at))
        } else {
            (Diagnosis::NoPods, None)
        }
    }
}

/// A decision taken for a run and kept in `JobRecord.spec` (only within the run:
/// `observe::to_record`), so that it is carried out once however often the Job is seen, and
/// finished after a crash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// The recovery attempt (0 for mark_failed).
    attempt: u32,
    /// Why.
    reason: String,
    /// When it was decided.
    at: String,
    /// Carried out (the new Job was created; the Job was patched; in dry-run: audited).
    done: bool,
}

impl Marker {
    fn of(record: &JobRecord, key: &str) -> Option<Marker> {
        serde_json::from_value(record.spec.get(key)?.clone()).ok()
    }

    fn set(&self, record: &mut JobRecord, key: &str) {
        if let (Some(spec), Ok(v)) = (record.spec.as_object_mut(), serde_json::to_value(self)) {
            spec.insert(key.to_owned(), v);
        }
    }
}

/// A kill step recorded for the run but not yet carried out (`JobRecord.spec.acting`, kept
/// within the run by `observe::to_record`): written with the step, removed once its calls
/// achieved their purpose. While it is there, every reconcile carries the step out before
/// deciding anything else.
///
/// Why record first: a step carried out and then lost to a crash before its row was written
/// would never be recorded (on restart the Job is already ending, so the ladder never decides
/// that step again), and the README promises each step is in the store before it is carried
/// out. Recorded first, a crash between the write and the calls only repeats calls that are
/// idempotent (the same merge patch; deletes with UID preconditions, answered 404 once done);
/// at worst an Event is posted twice.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Acting {
    /// Which step.
    step: Step,
    /// When it was due.
    due_at: Timestamp,
    /// When it was recorded (the step's `at` until it is carried out later).
    at: Timestamp,
    /// The reason its calls carry (annotation, Event note, audit rows).
    reason: String,
    /// The soft kill ended a running Job: the `terminating` hook fires with the step's.
    terminating: bool,
}

impl Acting {
    fn of(record: &JobRecord) -> Option<Acting> {
        serde_json::from_value(record.spec.get(ACTING)?.clone()).ok()
    }

    fn set(&self, record: &mut JobRecord) {
        if let (Some(spec), Ok(v)) = (record.spec.as_object_mut(), serde_json::to_value(self)) {
            spec.insert(ACTING.to_owned(), v);
        }
    }
}

impl Reconciler {
    /// Carries out a recorded kill step. When its calls achieved their purpose (or found a
    /// re-created Job, for a force delete) the marker goes, the step's time moves to now if
    /// it was recorded earlier and had not taken effect (its grace counts from when it
    /// happened), and that write
    /// carries the calls' audit rows; then the metrics and hooks. Otherwise the rows are
    /// written, the marker stays, and the retry time is returned.
    async fn act(
        &self,
        job: &Job,
        pods: &[Pod],
        record: &mut JobRecord,
        pending: &Acting,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, ReconcileError> {
        // The enforcement delay runs to when the step's API calls succeeded: `now` plus their
        // own duration (monotonic; `now` is the only wall time).
        let started = std::time::Instant::now();
        let reason = pending.reason.as_str();
        let report = match pending.step {
            Step::SoftKill => {
                self.actions
                    .soft_kill(job, pods, record.grace, reason, now)
                    .await
            }
            Step::HardKill => self.actions.hard_kill(job, pods, reason, now).await,
            Step::ForceDelete => self.actions.force_delete(job, pods, reason, now).await,
            // Warnings are never pending: recorded, then their Event posted (once per run).
            Step::Warn => Ok(super::actions::Report::empty(record.id.clone())),
        }
        .map_err(|_| ignored_late())?;
        if let Some(retry_at) = self.retry_at(record, pending.step.as_str(), &report, now) {
            self.append_audit(&report.audit).await?;
            return Ok(Some(retry_at));
        }
        if let Some(spec) = record.spec.as_object_mut() {
            spec.remove(ACTING);
        }
        // A soft kill the Job already shows (its patch went out before a crash) happened at
        // its recorded time; any other step carried out late is re-timed.
        let shown = pending.step == Step::SoftKill
            && job
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&self.scope.terminated_by))
                .is_some_and(|v| v == super::TERMINATED_BY_VALUE);
        if now > pending.at
            && !shown
            && let Some(s) = record
                .steps
                .iter_mut()
                .find(|s| s.step == pending.step && s.due_at == pending.due_at)
        {
            s.at = s.at.max(now);
        }
        self.store
            .update_job_with_audit(record, &report.audit)
            .await?;
        self.metrics.audit_written(report.audit.len() as u64);
        self.step_taken(pending.step, pending.due_at, now, started);
        if pending.terminating {
            self.fire_hooks("terminating", record, Some(pending.reason.clone()), now);
        }
        self.fire_hooks(
            pending.step.as_str(),
            record,
            Some(pending.reason.clone()),
            now,
        );
        Ok(None)
    }
}

impl Reconciler {
    /// Ends a Job that cannot be recovered (image pull, crash loop, pending past the startup
    /// timeout, out of recovery attempts): the Job controller fails it (`Actions::mark_failed`),
    /// the record keeps the reason, once per run.
    async fn mark_failed(
        &self,
        job: &Job,
        record: &mut JobRecord,
        reason: &str,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        record.reason = Some(reason.to_owned());
        if !record.dry_run {
            record.stage = Stage::Terminating;
        }
        if Marker::of(record, MARKED_FAILED).is_none() {
            // Recorded before the patch, so a crash in between finishes it on restart
            // rather than forgetting it.
            Marker {
                attempt: 0,
                reason: reason.to_owned(),
                at: fmt_ts(now),
                done: false,
            }
            .set(record, MARKED_FAILED);
            self.store.update_job(record).await?;
        }
        let report = self
            .actions
            .mark_failed(job, reason, now)
            .await
            .map_err(|_| ignored_late())?;
        if let Some(retry_at) = self.retry_at(record, "mark_failed", &report, now) {
            self.append_audit(&report.audit).await?;
            return Ok(Reconciled::Wake(Some(retry_at)));
        }
        if let Some(mut m) = Marker::of(record, MARKED_FAILED) {
            m.done = true;
            m.set(record, MARKED_FAILED);
        }
        self.store
            .update_job_with_audit(record, &report.audit)
            .await?;
        self.metrics.audit_written(report.audit.len() as u64);
        if !record.dry_run {
            self.fire_hooks("terminating", record, Some(reason.to_owned()), now);
        }
        Ok(Reconciled::Wake(None))
    }

    /// Dead-job recovery, attempt `attempt`: counted and audited first (so a crash never makes
    /// it a second attempt), then carried out by [`Reconciler::continue_recovery`].
    async fn start_recovery(
        &self,
        job: Option<&Job>,
        record: &mut JobRecord,
        attempt: u32,
        reason: &str,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        if record
            .spec
            .get(JOB_TEMPLATE)
            .is_none_or(serde_json::Value::is_null)
        {
            // A record from before specs were stored: nothing to re-create from.
            let why = format!("{reason}; cannot re-create it: no stored Job spec");
            return match job {
                Some(job) => self.mark_failed(job, record, &why, now).await,
                None => {
                    self.settle_gone(record, JobOutcome::Failed, &why, now)
                        .await
                }
            };
        }
        let marker = Marker {
            attempt,
            reason: reason.to_owned(),
            at: fmt_ts(now),
            done: false,
        };
        marker.set(record, RECOVERING);
        let old_uid = record.run_id.clone();
        if let Some(spec) = record.spec.as_object_mut() {
            let list = spec
                .entry(SUPERSEDED)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(old_uid.into());
            }
        }
        record.recovery_attempts = attempt;
        record.attempt = record.attempt.saturating_add(1);
        record.reason = Some(format!("recovering (attempt {attempt}): {reason}"));
        let row = audit(
            record,
            now,
            AuditAction::Recover,
            &format!("recovery attempt {attempt}: {reason}"),
            None,
        );
        self.store
            .update_job_with_audit(record, std::slice::from_ref(&row))
            .await?;
        self.metrics.audit_written(1);
        self.continue_recovery(job, record, &marker, now).await
    }

    /// Deletes the dead run's Job (when still there) and creates the stored one anew; marks
    /// the re-creation done once the new Job exists (it then arrives through the watch as a
    /// new run of the same job id).
    async fn continue_recovery(
        &self,
        job: Option<&Job>,
        record: &mut JobRecord,
        marker: &Marker,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        let template = record.spec.get(JOB_TEMPLATE).cloned().unwrap_or_default();
        let (report, uid) = self
            .actions
            .recreate(job, &template, marker.attempt, &marker.reason, now)
            .await
            .map_err(|_| ignored_late())?;
        self.append_audit(&report.audit).await?;
        if let Some(retry_at) = self.retry_at(record, "recover", &report, now) {
            return Ok(Reconciled::Wake(Some(retry_at)));
        }
        Marker {
            done: true,
            ..marker.clone()
        }
        .set(record, RECOVERING);
        if let Some(uid) = uid {
            tracing::info!(job = %record.id, attempt = marker.attempt, %uid, "re-created the Job");
        }
        self.store.update_job(record).await?;
        Ok(Reconciled::Wake(None))
    }

    /// A Job that is gone from the cluster while its record is active: `last` is its last
    /// state when jobwarden saw it deleted (a watch DELETED event), None when it was missing
    /// from a listing (deleted while jobwarden was not watching, or its DELETED event was lost
    /// to a re-list).
    ///
    /// - A re-creation of ours under way: the new Job is created.
    /// - It had finished, or jobwarden had ended it: the record is settled with that outcome.
    /// - Deleted while running, seen by us: dead-job recovery decides (Job gone → re-create
    ///   from the stored spec, for Jobs that opted in with a heartbeat timeout, up to the
    ///   attempts); otherwise it is settled as lost.
    /// - Missing from a listing: settled as lost, never re-created (it may have completed and
    ///   been deleted by its own `ttlSecondsAfterFinished` while nobody watched).
    pub async fn reconcile_gone(
        &self,
        last: Option<&Job>,
        mut record: JobRecord,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        if record.runtime != crate::model::RuntimeKind::Kubernetes || !record.stage.is_active() {
            return Ok(Reconciled::Ignored);
        }
        let obs = match last {
            Some(job) => match observe_job(job, &[], &self.scope) {
                Ok(obs) if obs.uid == record.run_id => Some(obs),
                // Another run's Job (stale event), or not ours: nothing to say about this run.
                _ => return Ok(Reconciled::Ignored),
            },
            None => None,
        };
        if let Some(marker) = Marker::of(&record, RECOVERING) {
            if marker.done {
                return Ok(Reconciled::Wake(None));
            }
            return self
                .continue_recovery(None, &mut record, &marker, now)
                .await;
        }
        // Its outcome was decided: by its last state, or while its pods still terminated.
        let decided = match obs.as_ref().and_then(|o| o.outcome.map(|oc| (o, oc))) {
            Some((o, outcome)) => {
                record.finished_at = o.finished_at;
                Some((outcome, o.reason.clone()))
            }
            None if record.stage == Stage::Completing => {
                record.outcome.map(|oc| (oc, record.reason.clone()))
            }
            None => None,
        };
        if let Some((outcome, reason)) = decided {
            let reason = format!(
                "Job deleted after it finished: {}",
                reason.unwrap_or_default()
            );
            return self.settle_gone(&mut record, outcome, &reason, now).await;
        }
        let marked_failed = Marker::of(&record, MARKED_FAILED).is_some();
        if record.stage == Stage::Terminating
            || obs.as_ref().is_some_and(|o| o.terminated_by_us)
            || marked_failed
        {
            let outcome = if marked_failed {
                JobOutcome::Failed
            } else {
                JobOutcome::Terminated
            };
            let reason = record
                .reason
                .clone()
                .unwrap_or_else(|| "ended by jobwarden".into());
            return self
                .settle_gone(&mut record, outcome, &format!("Job deleted: {reason}"), now)
                .await;
        }
        let Some(obs) = obs else {
            return self
                .settle_gone(
                    &mut record,
                    JobOutcome::Lost,
                    "the Job was missing when jobwarden listed Jobs (deleted while jobwarden was not watching): not re-created, its outcome is unknown",
                    now,
                )
                .await;
        };
        if obs.suspended || record.stage != Stage::Running {
            return self
                .settle_gone(
                    &mut record,
                    JobOutcome::Lost,
                    "the Job was deleted before it ran",
                    now,
                )
                .await;
        }
        match decide(&record, &Diagnosis::Gone, &self.policy, now) {
            (Decision::Recover { attempt, reason }, _) => {
                self.start_recovery(None, &mut record, attempt, &reason, now)
                    .await
            }
            (Decision::MarkFailed { reason }, _) => {
                self.settle_gone(&mut record, JobOutcome::Failed, &reason, now).await
            }
            // Within the recovery backoff: each attempt here needs the Job deleted again, so
            // the attempts (bounded by `max_attempts`) cannot loop on their own; there is no
            // Job left to wake for, so recover now.
            (_, Some(_)) if record.heartbeat_timeout.is_some() => {
                let attempt = record.recovery_attempts.saturating_add(1);
                self.start_recovery(
                    None,
                    &mut record,
                    attempt,
                    "the Job was deleted while it should be running",
                    now,
                )
                .await
            }
            _ => {
                self.settle_gone(
                    &mut record,
                    JobOutcome::Lost,
                    "the Job was deleted while it ran (not by jobwarden); no heartbeat timeout, so not re-created",
                    now,
                )
                .await
            }
        }
    }

    /// A Job the watch saw deleted (`last`: its last state): [`Reconciler::reconcile_gone`]
    /// for its job id's record, if the Job is ours.
    pub async fn reconcile_deleted(
        &self,
        last: &Job,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        let Ok(id) = self.scope.admit(&last.metadata) else {
            return Ok(Reconciled::Ignored);
        };
        match self.store.get_job(&id).await? {
            Some(record) => self.reconcile_gone(Some(last), record, now).await,
            None => Ok(Reconciled::Ignored),
        }
    }

    /// The record of a Job that is gone: finished with `outcome`, and past cleanup (there is
    /// nothing left in the cluster to delete); audited.
    async fn settle_gone(
        &self,
        record: &mut JobRecord,
        outcome: JobOutcome,
        reason: &str,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        let action = if outcome == JobOutcome::Failed {
            AuditAction::MarkFailed
        } else {
            AuditAction::TtlCleanup
        };
        let row = audit(record, now, action, reason, None);
        if record.dry_run {
            // Dry-run records decisions, never state it did not bring about.
            self.append_audit(std::slice::from_ref(&row)).await?;
            return Ok(Reconciled::Wake(None));
        }
        record.outcome = Some(outcome);
        record.finished_at = Some(record.finished_at.unwrap_or(now));
        record.reason = Some(reason.to_owned());
        // Nothing left in the cluster; its objects in storage go as after a TTL delete (the
        // tasks first: a crash before the stage write queues them again, merged by key).
        record.stage = Stage::Cleanup;
        let tasks = crate::daemon::worker::artifact_tasks(record, &self.config, now);
        self.store.enqueue_many(&tasks, now).await?;
        self.store
            .update_job_with_audit(record, std::slice::from_ref(&row))
            .await?;
        self.metrics.audit_written(1);
        Ok(Reconciled::Wake(None))
    }

    /// Active Kubernetes records whose Job is not among `present` (the namespace/UID pairs of
    /// a complete listing), in the namespaces this replica polices: each goes through
    /// [`Reconciler::reconcile_gone`] without a last state. Returns how many were found.
    pub async fn sweep_gone(
        &self,
        present: &std::collections::HashSet<(String, String)>,
        now: Timestamp,
    ) -> Result<usize, ReconcileError> {
        let filter = crate::store::JobFilter {
            active_only: true,
            runtime: Some(crate::model::RuntimeKind::Kubernetes),
            after: None,
            limit: None,
        };
        let mut found = 0;
        for record in self.store.list_jobs(&filter).await? {
            let Some(ns) = record.namespace.clone() else {
                continue;
            };
            if !self.scope.namespace_allowed(&ns) || present.contains(&(ns, record.run_id.clone()))
            {
                continue;
            }
            found += 1;
            self.reconcile_gone(None, record, now).await?;
        }
        Ok(found)
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
