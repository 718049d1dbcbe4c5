//! One Job's reconcile: observe it, merge with the store, plan with the engine
//! ([`crate::engine::plan`]), have the executor ([`crate::executor`]) carry the plan out on
//! the Kubernetes runtime ([`crate::runtime::kubernetes`]), and say when to look again. The
//! watch loop (`controller.rs`) calls it for every changed Job and every scheduler wake-up;
//! it is safe to call any number of times.
//!
//! Dead-job recovery and stuck Jobs (the engine's `Recover` / `MarkFailed`): mark_failed ends
//! the Job through the Job controller and records the reason once per run (a `marked_failed`
//! marker in `JobRecord.spec`); a recovery attempt is counted and audited first, with a
//! `recovering` marker, then carried out (delete the dead run's Job, create the stored one),
//! and finished after a crash from the marker, so one attempt never becomes two. "No pods"
//! counts only once it lasted the backoff (`Reconciler::debounce_no_pods`). A Job that is
//! gone ([`Reconciler::reconcile_gone`]) is re-created, or its record settled (outcome, stage
//! `cleanup`, its storage cleanup queued).
//!
//! Order of writes: every step is recorded before it is carried out, as in the local runtime.
//! A warning is recorded, then its Event posted (at most one per run, even across a crash). A
//! kill step (soft kill, hard kill, force delete) and mark_failed are recorded with a marker
//! that says they are still to be carried out (`acting`, [`crate::executor::ACTING`]; `marked_failed` with `done: false`);
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
//! `artifacts:<root>:<job id>:<run id>` ([`crate::engine::plan::artifact_tasks`];
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
use crate::engine::Policy;
use crate::engine::decide::earliest;
use crate::engine::lifecycle;
use crate::engine::plan::{self, Work, job_row};
use crate::engine::recovery::Diagnosis;
use crate::executor::{Carried, Executor, MARKED_FAILED, Marker, RECOVERING};
use crate::hooks::{HookRunner, Hooks};
use crate::metrics::Metrics;
use crate::model::{
    AuditAction, AuditEntry, JobRecord, Outcome as JobOutcome, Stage, Timestamp, add, fmt_ts,
};
use crate::ratelimit::RateLimiter;
use crate::store::{JobWrite, Store};

use super::observe::{
    JOB_TEMPLATE, NO_PODS_SINCE, SUBMITTED, SUPERSEDED, Scope, observe_job, to_record,
};
use crate::runtime::kubernetes::Actions;
use crate::runtime::kubernetes::KubeTarget;

pub use crate::executor::failed_act_backoff as failed_action_backoff;

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
    executor: Executor<Actions>,
    scope: Scope,
    config: Config,
    policy: Policy,
    limiter: Arc<RateLimiter>,
}

impl Reconciler {
    /// From the config, a store and the actions.
    pub fn new(config: Config, store: Store, actions: Actions) -> Self {
        let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
        let policy = Policy::from_config(&config);
        let limiter = Arc::new(RateLimiter::per_minute(
            config.kubernetes.destructive_calls_per_minute,
        ));
        let metrics = Arc::new(Metrics::default());
        let hooks = HookRunner::new(
            Hooks::new(config.hooks.clone()),
            store.clone(),
            metrics.clone(),
        );
        Reconciler {
            executor: Executor::new(actions, store, hooks, metrics, config.queue.max_attempts),
            limiter,
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

    /// The live event bus its steps and stage changes are published on (`GET /v1/events`).
    pub fn events(&self) -> crate::events::EventBus {
        self.executor.hooks().events().clone()
    }

    /// Posts the Events that accompany the kill steps' calls in the background
    /// ([`crate::runtime::kubernetes::poster`]): a burst of due steps waits for their real
    /// calls only. Spawns the poster: call it inside a tokio runtime.
    pub fn with_background_events(mut self) -> Self {
        let poster = crate::runtime::kubernetes::poster::EventPoster::spawn(
            self.store().clone(),
            self.metrics(),
        );
        let actions = self.executor.runtime_mut();
        *actions = actions.clone().with_event_poster(poster);
        self
    }

    /// Completes once the background Event poster (if any) has posted what was queued, which
    /// it does after this reconciler is dropped (so it may be created before the reconciler
    /// moves into the controller); at once without a poster.
    pub fn events_posted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let drained = self
            .executor
            .runtime()
            .event_poster()
            .map(crate::runtime::kubernetes::poster::EventPoster::drained);
        async move {
            if let Some(d) = drained {
                d.await;
            }
        }
    }

    /// The metrics this reconciler counts into (for `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.executor.metrics().clone()
    }

    /// Completes once no hook task of this reconciler is running, checked when awaited (so
    /// it may be created early, e.g. before the reconciler moves into the controller).
    pub fn hooks_idle(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.executor.hooks().idle()
    }

    fn store(&self) -> &Store {
        self.executor.store()
    }

    /// Whether a watched Job is exactly as one of our PATCHes left it (the watch's echo of
    /// our own change: nothing to reconcile). See [`Actions::is_own_echo`].
    pub fn is_own_echo(&self, job: &Job) -> bool {
        self.executor.runtime().is_own_echo(job)
    }

    /// Which Jobs are ours.
    pub fn scope(&self) -> &Scope {
        &self.scope
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
            self.metrics().error("store");
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
        let previous = self.store().get_job(&obs.id).await?;
        if let Some(p) = &previous
            && p.run_id != obs.uid
            && superseded(p).any(|uid| uid == obs.uid)
        {
            // A late copy of a Job that dead-job recovery replaced: not a new run. Look at
            // whatever holds the name a moment later.
            return Ok(Reconciled::Wake(Some(add(now, Duration::from_secs(1)))));
        }
        let actions = self.executor.runtime();
        let mut record = to_record(&obs, previous.as_ref(), &self.config.policy, now);
        let (diagnosis, no_pods_wake) = self.debounce_no_pods(&mut record, &obs.diagnosis, now);
        record.dry_run = actions.dry_run();
        // New: unseen, or stored only by the API that created it (`POST /v1/jobs`).
        let new_run = previous
            .as_ref()
            .is_none_or(|p| p.run_id != record.run_id || p.spec.get(SUBMITTED).is_some());
        let warnings: Vec<AuditEntry> = if new_run {
            obs.warnings
                .iter()
                .map(|w| job_row(&record, now, AuditAction::ConfigWarning, &w.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        // Through the executor's group commit: a burst of new or changed Jobs shares
        // transactions with the steps of the Jobs reconciled beside them.
        let rows = warnings.len() as u64;
        let write = match &previous {
            None => Some(JobWrite::Insert {
                job: record.clone(),
                audit: warnings,
            }),
            Some(p) if *p != record => Some(JobWrite::Update {
                job: record.clone(),
                audit: warnings,
            }),
            Some(_) => None,
        };
        if let Some(write) = write {
            match self.executor.write(write).await? {
                Ok(_) => self.metrics().audit_written(rows),
                // Stored meanwhile (by the API that created the Job): look again at once.
                Err(crate::store::Error::JobExists(_)) => return Ok(Reconciled::Wake(Some(now))),
                Err(e) => return Err(e.into()),
            }
        }
        if new_run && record.stage.is_active() && obs.pod_grace < record.grace {
            let report = actions
                .grace_too_short(job, obs.pod_grace, record.grace, now)
                .await
                .map_err(|_| ReconcileError::OutOfScope)?;
            self.executor.append_audit(&report.audit).await?;
        }
        let target = KubeTarget {
            job: Some(job),
            pods,
        };
        if record.stage == Stage::Cleanup && obs.deleting {
            // Our Foreground delete waits for the Job's pods; one stuck terminating (no kubelet)
            // would block it forever (KUBERNETES.md §4). Look for such pods until it is gone.
            let report = actions
                .ttl_delete(job, "TTL delete still waiting for the Job's pods", now)
                .await
                .map_err(|_| ReconcileError::OutOfScope)?;
            self.executor.append_audit(&report.audit).await?;
            let wait = match &report.outcome {
                crate::runtime::ActOutcome::Retry { after, .. } => *after,
                _ => DELETION_CHECK,
            };
            return Ok(Reconciled::Wake(Some(add(now, wait))));
        }
        if record.stage.is_active()
            && let Some(marker) = Marker::of(&record, RECOVERING)
        {
            // A re-creation is under way for this run: finish it, decide nothing new.
            if marker.done {
                return Ok(Reconciled::Wake(None));
            }
            let plan = recover_plan(&record, &marker, now);
            return self.carried(
                self.executor
                    .recover(&target, &mut record, &plan, now)
                    .await?,
            );
        }
        // A step recorded but not yet carried out (its call failed, or jobwarden stopped in
        // between): carried out before deciding anything new.
        if let Some(Carried::Retry(at)) = self.executor.resume(&target, &mut record, now).await? {
            return Ok(Reconciled::Wake(Some(at)));
        }
        let marked = Marker::of(&record, MARKED_FAILED);
        if record.stage.is_active()
            && let Some(m) = marked.as_ref().filter(|m| !m.done)
        {
            // mark_failed recorded but not yet carried out: finish it.
            let plan = plan::fail_plan(&record, m.reason.clone(), now, record.dry_run);
            return self.carried(
                self.executor
                    .mark_failed(&target, &mut record, &plan, now)
                    .await?,
            );
        }
        // Each pass takes at most one step; a later step is due at least a grace period
        // after it, so more passes only matter after downtime. Bounded either way.
        for _ in 0..8 {
            let planned = plan::plan(&record, &diagnosis, &self.policy, now, record.dry_run);
            match planned.work {
                Work::Nothing => {
                    return Ok(Reconciled::Wake(earliest(planned.wake, no_pods_wake)));
                }
                Work::Step(step) => {
                    match self.executor.step(&target, &mut record, &step, now).await? {
                        Carried::Done => {}
                        Carried::Retry(at) => return Ok(Reconciled::Wake(Some(at))),
                        // Recorded meanwhile by another writer (a replica that led a moment
                        // ago): look again at what the store holds.
                        Carried::AlreadyRecorded => {
                            return Ok(Reconciled::Wake(Some(add(now, Duration::from_secs(1)))));
                        }
                    }
                }
                Work::Cleanup(cleanup) => {
                    // TTL deletes are cleanup: limited per minute. The ladder is not, so a
                    // runaway Job is stopped on time however many deletes are waiting.
                    if let Err(wait) = self.limiter.try_take_at(std::time::Instant::now()) {
                        return Ok(Reconciled::Wake(Some(add(now, wait))));
                    }
                    let carried = self
                        .executor
                        .cleanup(&target, &mut record, &cleanup, now)
                        .await?;
                    return self.carried(carried);
                }
                Work::MarkFailed(fail) => {
                    if obs.suspended {
                        // Suspended on purpose: nothing runs, nothing is stuck; a resume is a
                        // Job event and decides again.
                        return Ok(Reconciled::Wake(None));
                    }
                    let carried = self
                        .executor
                        .mark_failed(&target, &mut record, &fail, now)
                        .await?;
                    return self.carried(carried);
                }
                Work::Recover(recover) => {
                    if marked.is_some() {
                        // Ended by our mark_failed patch already (or audited, in dry-run).
                        return Ok(Reconciled::Wake(planned.wake));
                    }
                    if obs.suspended {
                        return Ok(Reconciled::Wake(None));
                    }
                    return self
                        .start_recovery(&target, &mut record, recover, now)
                        .await;
                }
            }
        }
        Ok(Reconciled::Wake(Some(now)))
    }

    /// What a reconcile returns once the executor carried a plan out: nothing pending, or
    /// the retry time.
    fn carried(&self, carried: Carried) -> Result<Reconciled, ReconcileError> {
        Ok(Reconciled::Wake(match carried {
            Carried::Retry(at) => Some(at),
            Carried::Done | Carried::AlreadyRecorded => None,
        }))
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

/// The plan of a recovery attempt under way (its marker), to finish it.
fn recover_plan(record: &JobRecord, marker: &Marker, now: Timestamp) -> plan::RecoverPlan {
    plan::RecoverPlan {
        attempt: marker.attempt,
        reason: marker.reason.clone(),
        row: job_row(record, now, AuditAction::Recover, &marker.reason),
        dry_run: record.dry_run,
    }
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

impl Reconciler {
    /// Dead-job recovery: an attempt recorded (counted and audited first, so a crash never
    /// makes it a second attempt) and carried out by the executor on the Kubernetes runtime:
    /// the dead run's Job deleted (when still there), the stored one created anew.
    async fn start_recovery(
        &self,
        target: &KubeTarget<'_>,
        record: &mut JobRecord,
        recover: plan::RecoverPlan,
        now: Timestamp,
    ) -> Result<Reconciled, ReconcileError> {
        if record
            .spec
            .get(JOB_TEMPLATE)
            .is_none_or(serde_json::Value::is_null)
        {
            // A record from before specs were stored: nothing to re-create from.
            let why = format!(
                "{}; cannot re-create it: no stored Job spec",
                recover.reason
            );
            return match target.job {
                Some(_) => {
                    let fail = plan::fail_plan(record, why, now, record.dry_run);
                    let carried = self
                        .executor
                        .mark_failed(target, record, &fail, now)
                        .await?;
                    self.carried(carried)
                }
                None => {
                    self.settle_gone(record, JobOutcome::Failed, &why, now)
                        .await
                }
            };
        }
        let carried = self.executor.recover(target, record, &recover, now).await?;
        self.carried(carried)
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
        let gone = KubeTarget {
            job: None,
            pods: &[],
        };
        if let Some(marker) = Marker::of(&record, RECOVERING) {
            if marker.done {
                return Ok(Reconciled::Wake(None));
            }
            let plan = recover_plan(&record, &marker, now);
            return self.carried(
                self.executor
                    .recover(&gone, &mut record, &plan, now)
                    .await?,
            );
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
        let planned = plan::plan(&record, &Diagnosis::Gone, &self.policy, now, record.dry_run);
        match planned.work {
            Work::Recover(recover) => self.start_recovery(&gone, &mut record, recover, now).await,
            Work::MarkFailed(fail) => {
                self.settle_gone(&mut record, JobOutcome::Failed, &fail.reason, now)
                    .await
            }
            // Within the recovery backoff: each attempt here needs the Job deleted again, so
            // the attempts (bounded by `max_attempts`) cannot loop on their own; there is no
            // Job left to wake for, so recover now.
            _ if planned.wake.is_some() && record.heartbeat_timeout.is_some() => {
                let attempt = record.recovery_attempts.saturating_add(1);
                let reason = "the Job was deleted while it should be running";
                let recover = plan::RecoverPlan {
                    attempt,
                    reason: reason.to_owned(),
                    row: job_row(
                        &record,
                        now,
                        AuditAction::Recover,
                        &format!("recovery attempt {attempt}: {reason}"),
                    ),
                    dry_run: record.dry_run,
                };
                self.start_recovery(&gone, &mut record, recover, now).await
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
        match self.store().get_job(&id).await? {
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
        let mut row = job_row(record, now, action, reason);
        if record.dry_run {
            // Dry-run records decisions, never state it did not bring about.
            row.dry_run = true;
            self.executor
                .append_audit(std::slice::from_ref(&row))
                .await?;
            return Ok(Reconciled::Wake(None));
        }
        record.outcome = Some(outcome);
        record.finished_at = Some(record.finished_at.unwrap_or(now));
        record.reason = Some(reason.to_owned());
        // Nothing left in the cluster; its objects in storage go as after a TTL delete (the
        // tasks first: a crash before the stage write queues them again, merged by key).
        record.stage = lifecycle::stage_after(outcome);
        let (tasks, refused) = plan::retention_tasks(record, &self.policy, now);
        self.executor.enqueue(&tasks, now).await?;
        record.stage = Stage::Cleanup;
        let mut rows = vec![row];
        if let Some(r) = refused {
            self.metrics().error("artifact_key");
            rows.push(r);
        }
        self.store().update_job_with_audit(record, &rows).await?;
        self.metrics().audit_written(rows.len() as u64);
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
        self.sweep_gone_in(present, None, now).await
    }

    /// [`Reconciler::sweep_gone`] for the records of one namespace (None: all): after one
    /// namespace's watch re-listed, only its records can be judged against the listing.
    pub async fn sweep_gone_in(
        &self,
        present: &std::collections::HashSet<(String, String)>,
        namespace: Option<&str>,
        now: Timestamp,
    ) -> Result<usize, ReconcileError> {
        let filter = crate::store::JobFilter {
            active_only: true,
            runtime: Some(crate::model::RuntimeKind::Kubernetes),
            ..crate::store::JobFilter::default()
        };
        let mut found = 0;
        for record in self.store().list_jobs(&filter).await? {
            let Some(ns) = record.namespace.clone() else {
                continue;
            };
            if !self.scope.namespace_allowed(&ns)
                || namespace.is_some_and(|only| only != ns)
                || present.contains(&(ns, record.run_id.clone()))
            {
                continue;
            }
            found += 1;
            self.reconcile_gone(None, record, now).await?;
        }
        Ok(found)
    }
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
