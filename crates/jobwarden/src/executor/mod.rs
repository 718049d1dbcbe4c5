//! The executor: carries out the engine's plans ([`crate::engine::plan`]) on any
//! [`Runtime`] and the store, in one documented order. Both runtimes' loops call it: the local
//! enforcer (`daemon::enforcer`, which keeps its actor: commands, process exits) and the
//! Kubernetes reconciler (`kubernetes::reconcile`: observe → plan → executor).
//!
//! The order, for each kind of plan (the runtime module says why each is safe across a crash):
//!
//! 1. **Step**: measure (a soft kill only: what the run uses, read-only, for its row's
//!    `details.reclaimed`: [`Runtime::usage`]) → record (the step, its row, the stage it
//!    moves to and, for a runtime that [marks pending acts](Runtime::MARKS_PENDING), the
//!    `acting` marker: one write, refused when the step is recorded already) → act → finish: the act's rows, the marker gone, the
//!    step re-timed when it was carried out more than [`LATE`] after it was recorded (its
//!    grace counts from then), a run the act ended settled (one write, only when there is
//!    something to write) → the step's metrics → its hooks. An act that must be retried
//!    (429, 5xx, 403) keeps the marker: its rows are written and the retry time returned.
//!    The finish write, and for a runtime that marks pending acts the record too, go through
//!    the group commit ([`Executor::write`]: the writes of concurrent callers in one
//!    transaction, each caller going on only once its own write committed): the order per
//!    step is unchanged.
//! 2. **TTL cleanup**: act (the runtime's part: a Kubernetes Job's delete) → move the job to
//!    `cleanup` with the act's rows (one write) → queue the tasks (a failure moves the stage
//!    back) → hooks.
//! 3. **mark_failed**, **recover**: record (the marker, the stage or the attempt, the
//!    decision's row) → act → finish (marker done, the act's rows, a settled or new run) →
//!    hooks. A marker not done is finished by the next call, never decided anew: one
//!    decision is never carried out twice.
//!
//! The executor never decides (the engine did), never reads the clock (`now` is passed in:
//! the time the act happens), and returns store errors to the caller, which retries.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::plan::{
    self, CleanupPlan, FailPlan, HookEvent, RecoverPlan, StepPlan, TaskPlan,
};
use crate::hooks::HookRunner;
use crate::metrics::Metrics;
use crate::model::{AuditEntry, JobRecord, Stage, Step, StepTaken, Timestamp, add, fmt_ts, since};
use crate::runtime::{ActOutcome, Acted, Runtime};
use crate::store::{JobWrite, NewTask, StepWrite, Store};

#[cfg(test)]
mod tests;

/// A step carried out this much later than recorded is re-timed to when it was carried out.
pub const LATE: Duration = Duration::from_millis(200);

/// `JobRecord.spec` key of a step recorded but not yet carried out.
pub const ACTING: &str = "acting";
pub use crate::engine::plan::MARKED_FAILED;
/// `JobRecord.spec` key of a recovery under way for the run.
pub const RECOVERING: &str = "recovering";

/// How carrying a plan out ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// Done (or, in dry-run, decided and audited).
    Done,
    /// The act must be tried again at this time; the record says what is still to be done.
    Retry(Timestamp),
    /// Another writer recorded this step for the run already: nothing was done here.
    AlreadyRecorded,
}

/// What the executor needs to know about failures, beyond the store's own errors.
pub type Result<T> = std::result::Result<T, crate::store::Error>;

/// Carries plans out on `R` and the store.
pub struct Executor<R: Runtime> {
    runtime: R,
    store: Store,
    hooks: HookRunner,
    metrics: Arc<Metrics>,
    /// `[queue] max_attempts` of the tasks it queues.
    max_attempts: u32,
    /// Consecutive failed attempts per (job, run, act), for the retry backoff of acts that
    /// failed in a way retrying soon will not fix.
    failures: std::sync::Mutex<std::collections::HashMap<(String, String, &'static str), u32>>,
    /// Steps of concurrent callers waiting to be recorded in one transaction.
    group: Group,
}

/// The group commit of the job writes of concurrent callers ([`Executor::write`]: a step's
/// record, a step's finish, a reconcile's first sight of a job): each caller sends its write
/// to one writer ([`spawn_writer`]) and waits for its own answer; the writer takes everything sent
/// meanwhile (up to [`GROUP_MAX`]), writes it in one transaction ([`Store::write_jobs`]) and
/// answers each. A caller goes on (acts) only once its own write committed, as without
/// grouping. A transaction that fails as a whole is retried write by write, so each caller
/// gets its own answer. A write sent by a caller that is dropped before its answer still
/// commits (a step marked `acting`: the next pass carries it out, as after a crash).
///
/// The writer is started at the first write, on the runtime of that call, and again if that
/// runtime is gone. A writer of its own, not a turn taken by one of the callers: a turn
/// handed from caller to caller wakes every waiting caller in order, each only to find its
/// answer, before the next transaction can start.
#[derive(Default)]
struct Group {
    writer: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<(JobWrite, Answer)>>>,
}

/// The most writes in one group transaction.
const GROUP_MAX: usize = 256;

type Answer = tokio::sync::oneshot::Sender<Result<Result<bool>>>;

/// A step recorded but not yet carried out (`JobRecord.spec.acting`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Pending {
    step: Step,
    due_at: Timestamp,
    /// When it was recorded.
    at: Timestamp,
    /// The reason its calls carry.
    reason: String,
    /// The hook events to fire once carried out.
    hooks: Vec<String>,
}

/// A decision of the run kept in `JobRecord.spec` (mark_failed, recover), so that it is
/// carried out once however often the job is seen, and finished after a crash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// The recovery attempt (0 for mark_failed).
    pub attempt: u32,
    /// Why.
    pub reason: String,
    /// When it was decided.
    pub at: String,
    /// Carried out (or, in dry-run, audited).
    pub done: bool,
}

impl Marker {
    /// The marker under `key`, if the record has one.
    pub fn of(record: &JobRecord, key: &str) -> Option<Marker> {
        serde_json::from_value(record.spec.get(key)?.clone()).ok()
    }

    /// Sets it under `key`.
    pub fn set(&self, record: &mut JobRecord, key: &str) {
        set_spec(record, key, serde_json::to_value(self).ok());
    }
}

/// Sets (or with None removes) `key` of the record's spec object.
fn set_spec(record: &mut JobRecord, key: &str, value: Option<serde_json::Value>) {
    if record.spec.is_null() {
        record.spec = serde_json::json!({});
    }
    if let Some(spec) = record.spec.as_object_mut() {
        match value {
            Some(v) => {
                spec.insert(key.to_owned(), v);
            }
            None => {
                spec.remove(key);
            }
        }
    }
}

/// The wait before retrying an act that failed for good (RBAC, validation) after `failures`
/// consecutive failures: a minute, doubling up to an hour, so a permanent 403 costs a few
/// audit rows an hour, not one a minute.
pub fn failed_act_backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(3600);
    FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX)
}

impl<R: Runtime> Executor<R> {
    /// Carries plans out on `runtime`, recording in `store`, firing `hooks`.
    pub fn new(
        runtime: R,
        store: Store,
        hooks: HookRunner,
        metrics: Arc<Metrics>,
        max_attempts: u32,
    ) -> Self {
        Executor {
            runtime,
            store,
            hooks,
            metrics,
            max_attempts,
            failures: std::sync::Mutex::default(),
            group: Group::default(),
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// The runtime, to configure it.
    pub fn runtime_mut(&mut self) -> &mut R {
        &mut self.runtime
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The hook runner.
    pub fn hooks(&self) -> &HookRunner {
        &self.hooks
    }

    // ----- steps -----

    /// Records every step of `batch` in one write; each job is then as recorded (the step,
    /// its stage and, for a runtime that marks pending acts, the marker). A soft kill's row
    /// carries what the run uses, measured now on `target` (one for the whole batch: the
    /// local runtime's is `()`; the Kubernetes runtime records one job at a time through
    /// [`Executor::step`]). Each answer:
    /// `Ok(true)` recorded now, `Ok(false)` recorded already (by another writer), or the
    /// store's refusal (a stale run, an unknown job); a query error fails the whole batch.
    pub async fn record_steps(
        &self,
        target: &R::Target<'_>,
        batch: &mut [(&mut JobRecord, &StepPlan)],
    ) -> Result<Vec<Result<bool>>> {
        let (writes, afters): (Vec<JobWrite>, Vec<JobRecord>) = batch
            .iter()
            .map(|(job, plan)| {
                let (write, after) = self.step_write(target, job, plan);
                (JobWrite::Step(write), after)
            })
            .unzip();
        let results = self.store.write_jobs(&writes).await?;
        for (((job, _), after), result) in batch.iter_mut().zip(afters).zip(&results) {
            if matches!(result, Ok(true)) {
                self.metrics.audit_written(1);
                **job = after;
            }
        }
        Ok(results)
    }

    /// Records `plan` (for a runtime that marks pending acts, in one transaction with the
    /// steps of concurrent callers: the group commit), then carries it out
    /// ([`Executor::act_step`]).
    pub async fn step(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Result<Carried> {
        let recorded = if R::MARKS_PENDING {
            // A write sent by a caller dropped before its answer still commits, marked
            // `acting`: the next pass carries it out, as after a crash.
            let (write, after) = self.step_write(target, job, plan);
            let recorded = self.write(JobWrite::Step(write)).await??;
            if recorded {
                self.metrics.audit_written(1);
                *job = after;
            }
            recorded
        } else {
            self.record_steps(target, &mut [(&mut *job, plan)])
                .await?
                .pop()
                .unwrap_or(Ok(false))?
        };
        if !recorded {
            return Ok(Carried::AlreadyRecorded);
        }
        self.act_step(target, job, plan, now).await
    }

    /// The store write that records `plan` for `job` (the step, its audit row with what the
    /// kill reclaims, the stage, and for a runtime that marks pending acts the `acting`
    /// marker), and the record as it will be once written.
    fn step_write(
        &self,
        target: &R::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
    ) -> (StepWrite, JobRecord) {
        let mut after = plan.apply(job);
        if R::MARKS_PENDING {
            set_spec(&mut after, ACTING, serde_json::to_value(pending(plan)).ok());
        }
        let mut audit = plan.row.clone();
        if let Some(usage) = self.runtime.usage(target, job, plan) {
            usage.add_to(&mut audit.details);
        }
        let write = StepWrite {
            job_id: job.id.clone(),
            run_id: job.run_id.clone(),
            step: plan.taken.clone(),
            audit,
            stage_after: plan.stage_after.clone(),
            spec_after: R::MARKS_PENDING.then(|| after.spec.clone()),
        };
        (write, after)
    }

    /// One job write through the group commit: its own answer (as [`Store::write_jobs`]
    /// gives it), once the transaction holding it committed. The writes of concurrent
    /// callers go to one writer (a thread of its own, driving the store on the caller's
    /// runtime), which writes everything sent meanwhile, up to 256, in one transaction and
    /// answers each caller; a write whose caller is dropped before its answer still commits.
    pub async fn write(&self, write: JobWrite) -> Result<Result<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut writer = lock(&self.group.writer);
            let sender = match writer.as_ref() {
                Some(s) if !s.is_closed() => s,
                _ => writer.insert(spawn_writer(self.store.clone())),
            };
            // The receiver lives as long as the writer thread, which was alive a moment ago;
            // a failed send drops `tx`, answered below as an abandoned write.
            let _ = sender.send((write, tx));
        }
        rx.await.unwrap_or_else(|_| {
            // The writer stopped before it answered (its runtime shut down, or it could not
            // start): whether the write committed is unknown, so it is not acted on here; the
            // next reconcile reads the store and finishes it (its `acting` marker) or decides
            // it again.
            Err(crate::store::Error::Db {
                op: "writing a job (the store writer stopped)".into(),
                cause: sqlx::Error::PoolClosed,
            })
        })
    }

    /// The step recorded for this run but not carried out yet, if any: carried out now.
    pub async fn resume(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        now: Timestamp,
    ) -> Result<Option<Carried>> {
        let Some(p) = job
            .spec
            .get(ACTING)
            .and_then(|v| serde_json::from_value::<Pending>(v.clone()).ok())
        else {
            return Ok(None);
        };
        if !job.stage.is_active() {
            // It ended meanwhile: nothing is left to end.
            return Ok(None);
        }
        let plan = resumed(job, &p);
        self.act_step(target, job, &plan, now).await.map(Some)
    }

    /// Carries out a recorded step at `now` and finishes it (see the module docs).
    pub async fn act_step(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Result<Carried> {
        let started = std::time::Instant::now();
        let acted = self.runtime.step(target, job, plan, now).await;
        let step = plan.step();
        if let Some(retry) = self.retried(job, step.as_str(), &acted, now).await? {
            return Ok(retry);
        }
        let mut write = !acted.audit.is_empty();
        if job.spec.get(ACTING).is_some() {
            set_spec(job, ACTING, None);
            write = true;
        }
        if since(now, plan.taken.at) > LATE
            && step != Step::Warn
            && !self.runtime.shows(target, plan)
            && let Some(s) = job
                .steps
                .iter_mut()
                .find(|s| s.step == step && s.due_at == plan.taken.due_at)
        {
            s.at = s.at.max(now);
            write = true;
        }
        let late = (now - plan.taken.due_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.metrics
            .step_taken(step, late.max(0.0) + started.elapsed().as_secs_f64());
        self.finish(job, &acted, plan.hooks.clone(), write, now)
            .await
    }

    // ----- TTL cleanup -----

    /// Carries out a TTL cleanup: the runtime's act, the tasks queued, the job moved to
    /// `cleanup` with the act's rows, the hooks.
    pub async fn cleanup(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        plan: &CleanupPlan,
        now: Timestamp,
    ) -> Result<Carried> {
        let acted = self.runtime.cleanup(target, job, plan, now).await;
        if let Some(retry) = self.retried(job, "ttl_delete", &acted, now).await? {
            return Ok(retry);
        }
        let before = job.stage;
        let moved = job.stage != Stage::Cleanup;
        if let Err(e) = plan::move_stage(job, Stage::Cleanup) {
            tracing::warn!("{e}");
        }
        if plan.dry_run {
            job.reason = Some("dry-run: cleanup decided, not carried out".into());
        }
        let mut rows = acted.audit.clone();
        if let Some(row) = &plan.refused {
            // Never silence: artifacts that can never be cleaned say so.
            self.metrics.error("artifact_key");
            rows.push(row.clone());
        }
        self.store.update_job_with_audit(job, &rows).await?;
        self.metrics.audit_written(rows.len() as u64);
        // The stage before the tasks: a worker that runs the workspace task at once must find
        // the job in `cleanup` (it then marks it `cleaned`). When the queueing fails the stage
        // goes back, and the cleanup is decided again.
        if acted.outcome == ActOutcome::Done
            && let Err(e) = self.enqueue(&plan.tasks, now).await
        {
            job.stage = before;
            self.store.update_job(job).await?;
            return Err(e);
        }
        if moved {
            self.fire(job, &plan.hooks, now);
        }
        Ok(Carried::Done)
    }

    /// Queues `tasks` (pending duplicates merge by their dedupe keys).
    pub async fn enqueue(&self, tasks: &[TaskPlan], now: Timestamp) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let tasks: Vec<NewTask> = tasks
            .iter()
            .map(|t| NewTask {
                dedup_key: t.dedup_key.clone(),
                job_id: Some(t.job_id.clone()),
                kind: t.kind.to_owned(),
                resource_name: t.resource_name.clone(),
                payload: t.payload.clone(),
                priority: t.priority,
                scheduled_at: t.due_at,
                max_attempts: self.max_attempts,
            })
            .collect();
        self.store.enqueue_many(&tasks, now).await?;
        Ok(())
    }

    // ----- mark_failed and recover -----

    /// Fails a job: recorded first (the `marked_failed` marker, the reason, the stage
    /// `terminating`), then the runtime's act, then finished (marker done, the act's rows, a
    /// run the act ended settled), then the hooks. Once done for a run, never again.
    pub async fn mark_failed(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        plan: &FailPlan,
        now: Timestamp,
    ) -> Result<Carried> {
        let marker = Marker::of(job, MARKED_FAILED);
        if marker.as_ref().is_some_and(|m| m.done) {
            return Ok(Carried::Done);
        }
        let reason = marker.map_or_else(|| plan.reason.clone(), |m| m.reason);
        job.reason = Some(reason.clone());
        let ending = !plan.dry_run && job.stage != Stage::Terminating;
        if !plan.dry_run && plan::move_stage(job, Stage::Terminating).is_err() {
            tracing::warn!(job = %job.id, stage = %job.stage, "mark_failed of a job that is not active");
        }
        if Marker::of(job, MARKED_FAILED).is_none() {
            Marker {
                attempt: 0,
                reason: reason.clone(),
                at: fmt_ts(now),
                done: false,
            }
            .set(job, MARKED_FAILED);
            self.store.update_job(job).await?;
        }
        let acted = self.runtime.mark_failed(target, job, plan, now).await;
        if let Some(retry) = self.retried(job, "mark_failed", &acted, now).await? {
            return Ok(retry);
        }
        Marker {
            attempt: 0,
            reason: reason.clone(),
            at: fmt_ts(now),
            done: true,
        }
        .set(job, MARKED_FAILED);
        let mut hooks = Vec::new();
        // A run the act settled fires its outcome's hook instead.
        if ending && acted.settled.is_none() {
            hooks.push(HookEvent {
                event: "terminating",
                reason: Some(reason),
            });
        }
        self.finish(job, &acted, hooks, true, now).await
    }

    /// Recovers a dead job: recorded first (the attempt counted, the `recovering` marker, the
    /// decision's row: a crash never makes it a second attempt), then the runtime's act, then
    /// finished (marker done; the record is the new run, or says the re-creation is done).
    /// A marker not done is an attempt under way: carried out, not counted again.
    pub async fn recover(
        &self,
        target: &R::Target<'_>,
        job: &mut JobRecord,
        plan: &RecoverPlan,
        now: Timestamp,
    ) -> Result<Carried> {
        let under_way = Marker::of(job, RECOVERING).filter(|m| !m.done);
        let plan = match &under_way {
            Some(m) => RecoverPlan {
                attempt: m.attempt,
                reason: m.reason.clone(),
                ..plan.clone()
            },
            None => {
                Marker {
                    attempt: plan.attempt,
                    reason: plan.reason.clone(),
                    at: fmt_ts(now),
                    done: false,
                }
                .set(job, RECOVERING);
                job.recovery_attempts = plan.attempt;
                if !plan.dry_run {
                    job.attempt = job.attempt.saturating_add(1);
                    job.reason = Some(format!(
                        "recovering (attempt {}): {}",
                        plan.attempt, plan.reason
                    ));
                }
                self.store
                    .update_job_with_audit(job, std::slice::from_ref(&plan.row))
                    .await?;
                self.metrics.audit_written(1);
                plan.clone()
            }
        };
        let run = job.run_id.clone();
        let acted = self.runtime.recover(target, job, &plan, now).await;
        if let Some(retry) = self.retried(job, "recover", &acted, now).await? {
            return Ok(retry);
        }
        if job.run_id == run {
            Marker {
                attempt: plan.attempt,
                reason: plan.reason.clone(),
                at: fmt_ts(now),
                done: true,
            }
            .set(job, RECOVERING);
        } else {
            // A new run: the old run's markers are history.
            for key in [RECOVERING, MARKED_FAILED, ACTING] {
                set_spec(job, key, None);
            }
        }
        self.finish(job, &acted, Vec::new(), true, now).await
    }

    // ----- shared -----

    /// Finishes an act that went through: the run settled if the act ended it, the record
    /// and the act's rows written (when `write`, or the run settled), then `hooks`, the act's
    /// own and the settled outcome's fired.
    async fn finish(
        &self,
        job: &mut JobRecord,
        acted: &Acted,
        mut hooks: Vec<HookEvent>,
        mut write: bool,
        now: Timestamp,
    ) -> Result<Carried> {
        hooks.extend(acted.hooks.iter().cloned());
        if let Some((outcome, why)) = acted.settled.clone() {
            match plan::settle(job, outcome, (None, None), why, now) {
                Ok(h) => hooks.push(h),
                Err(e) => tracing::warn!("{e}"),
            }
            write = true;
        }
        if write {
            self.write(JobWrite::Update {
                job: job.clone(),
                audit: acted.audit.clone(),
            })
            .await??;
            self.metrics.audit_written(acted.audit.len() as u64);
        }
        self.fire(job, &hooks, now);
        Ok(Carried::Done)
    }

    /// Fires `hooks` for `job` (each in a task of its own).
    pub fn fire(&self, job: &JobRecord, hooks: &[HookEvent], now: Timestamp) {
        for h in hooks {
            self.hooks.fire(h.event, job, h.reason.clone(), now);
        }
    }

    /// Writes audit rows and counts them.
    pub async fn append_audit(&self, rows: &[AuditEntry]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.store.append_audit(rows).await?;
        self.metrics.audit_written(rows.len() as u64);
        Ok(())
    }

    /// When to try an act on this run again, if it must be tried again; counts consecutive
    /// failures for the backoff, forgotten once the act succeeds. A runtime whose acts are
    /// not retried (local signals) never waits: its failures are audited and the ladder goes
    /// on.
    /// When the act is to be tried again: its rows written, and when.
    async fn retried(
        &self,
        job: &JobRecord,
        act: &'static str,
        acted: &Acted,
        now: Timestamp,
    ) -> Result<Option<Carried>> {
        let Some(at) = self.retry_at(job, act, &acted.outcome, now) else {
            return Ok(None);
        };
        self.append_audit(&acted.audit).await?;
        Ok(Some(Carried::Retry(at)))
    }

    fn retry_at(
        &self,
        job: &JobRecord,
        act: &'static str,
        outcome: &ActOutcome,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let key = (job.id.to_string(), job.run_id.clone(), act);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            ActOutcome::Done | ActOutcome::Recreated => {
                failures.remove(&key);
                None
            }
            _ if !R::MARKS_PENDING => {
                self.metrics.error("signal");
                None
            }
            ActOutcome::Retry { after, .. } => {
                self.metrics.error("kubernetes");
                Some(add(now, *after))
            }
            ActOutcome::Failed { .. } => {
                self.metrics.error("kubernetes");
                let n = failures.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                Some(add(now, failed_act_backoff(*n)))
            }
        }
    }
}

/// The writer of the group commit (see [`Group`]): a thread of its own that drives its store
/// calls on the caller's runtime ([`tokio::runtime::Handle::block_on`]), so that each of a
/// transaction's statements goes on as soon as the database answers, instead of waiting in
/// the runtime's queue behind every reconcile that is ready to run. It ends once every sender
/// is gone (or the runtime is: the next write spawns another).
fn spawn_writer(store: Store) -> tokio::sync::mpsc::UnboundedSender<(JobWrite, Answer)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(JobWrite, Answer)>();
    let handle = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("jobwarden-writer".into())
        .spawn(move || {
            let mut queued = Vec::new();
            while handle.block_on(rx.recv_many(&mut queued, GROUP_MAX)) > 0 {
                let (writes, answers): (Vec<JobWrite>, Vec<Answer>) = queued.drain(..).unzip();
                let answered = handle.block_on(write_group(&store, &writes));
                for (answer, r) in answers.into_iter().zip(answered) {
                    let _ = answer.send(r);
                }
            }
        });
    if let Err(e) = spawned {
        // No thread: the writes are answered as abandoned (the receiver is dropped with the
        // closure), and the next write tries again.
        tracing::error!("starting the store writer thread: {e}");
    }
    tx
}

/// One group's transaction, and each write's answer; when the transaction fails as a whole,
/// each write alone, for its own answer.
async fn write_group(store: &Store, writes: &[JobWrite]) -> Vec<Result<Result<bool>>> {
    match store.write_jobs(writes).await {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(_) => {
            let mut answers = Vec::with_capacity(writes.len());
            for w in writes {
                answers.push(
                    store
                        .write_jobs(std::slice::from_ref(w))
                        .await
                        .map(|mut v| v.pop().unwrap_or(Ok(false))),
                );
            }
            answers
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The marker of a step recorded but not carried out.
fn pending(plan: &StepPlan) -> Pending {
    Pending {
        step: plan.step(),
        due_at: plan.taken.due_at,
        at: plan.taken.at,
        reason: plan.reason.clone(),
        hooks: plan.hooks.iter().map(|h| h.event.to_owned()).collect(),
    }
}

/// The plan of a step recorded earlier, to carry it out now.
fn resumed(job: &JobRecord, p: &Pending) -> StepPlan {
    let mut plan = plan::step_plan(job, p.step, p.due_at, p.at, "timeout", job.dry_run);
    plan.taken = StepTaken {
        step: p.step,
        due_at: p.due_at,
        at: p.at,
    };
    plan.reason = p.reason.clone();
    plan.stage_after = None;
    plan.hooks = p
        .hooks
        .iter()
        .filter_map(|e| {
            let event = match e.parse::<Stage>() {
                Ok(stage) => stage.as_str(),
                Err(_) => e.parse::<Step>().ok()?.as_str(),
            };
            Some(HookEvent {
                event,
                reason: Some(p.reason.clone()),
            })
        })
        .collect();
    plan
}
