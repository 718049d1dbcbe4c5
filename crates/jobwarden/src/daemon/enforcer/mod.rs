//! The enforcer: owns every live job and the deadline scheduler, decides with the engine
//! and carries decisions out on the local runtime.
//!
//! One task, fed by a command channel (submit, cancel, heartbeat) and the runtime's exit
//! channel, sleeping until the scheduler's next due time: no ticker scans all jobs.
//! pre_start hooks run in tasks of their own and report back, so a slow hook never delays
//! another job's ladder. For each due job it asks the engine for a plan
//! ([`crate::engine::plan`]) at the current time and hands it to the executor
//! ([`crate::executor`]) on the local runtime ([`crate::runtime::local`]):
//!
//! - a step is first recorded in the store (with its audit row, once per run); only a
//!   recorded step is carried out, so a store outage means "do nothing and retry", never
//!   "act without a record";
//! - signals go to the job's process group, guarded by the process start time;
//! - a finished job's TTL queues its cleanup on the durable queue.
//!
//! On start it re-adopts the jobs the store says are active: a process still running is
//! watched again (and a kill step already taken is re-sent once, audited, since a crash may
//! have fallen between the record and the signal); a process that vanished while the daemon
//! was down is marked `lost` (or `terminated` if jobwarden had already ended it), or handed
//! to the recovery policy when the job opted into heartbeats.

mod commands;
mod restart;
pub mod tracked;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use self::tracked::Tracked;
use crate::api_types::SubmitRequest;
use crate::clock;
use crate::daemon::Shared;
use crate::engine::lifecycle;
use crate::engine::plan::{self, StepPlan, TaskPlan, Work};
use crate::engine::recovery::Diagnosis;
use crate::executor::{Carried, Executor};
use crate::model::{
    AuditAction, AuditEntry, JobId, JobRecord, Outcome, Stage, Step, Timestamp, add, since,
};
use crate::runtime::local::{ExitEvent, LocalRuntime};

/// An error for the API: HTTP status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// HTTP status.
    pub status: u16,
    /// Message.
    pub message: String,
}

impl CommandError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        CommandError {
            status,
            message: message.into(),
        }
    }
}

/// Requests to the enforcer.
#[derive(Debug)]
pub enum Command {
    /// Start a job.
    Submit(
        SubmitRequest,
        oneshot::Sender<Result<JobRecord, CommandError>>,
    ),
    /// Cancel: soft_kill now, then the normal ladder.
    Cancel(JobId, oneshot::Sender<Result<JobRecord, CommandError>>),
    /// A heartbeat (never extends a deadline).
    Heartbeat(JobId, oneshot::Sender<Result<(), CommandError>>),
}

/// The enforcer task's state.
pub struct Enforcer {
    shared: Arc<Shared>,
    /// Carries the engine's plans out on the local runtime.
    executor: Executor<LocalRuntime>,
    /// Every tracked job, compact, and its next wake-up ([`tracked`]).
    jobs: Tracked,
    commands: mpsc::Receiver<Command>,
    exits: mpsc::UnboundedReceiver<ExitEvent>,
    /// Exit events that arrived before the job was registered (spawn races).
    early_exits: Vec<ExitEvent>,
    /// pre_start hooks run in their own tasks (a slow hook must not stall every other job's
    /// ladder) and report back here.
    pre_started_tx: mpsc::UnboundedSender<PreStarted>,
    pre_started: mpsc::UnboundedReceiver<PreStarted>,
    /// Jobs whose pre_start hooks are running → whether they were cancelled meanwhile.
    starting: HashMap<JobId, bool>,
    /// Runs whose log and artifact retention tasks were queued by this daemon.
    retention_queued: std::collections::HashSet<(JobId, String)>,
    /// When the jobs-by-stage gauges were last refreshed.
    stage_metrics_at: Option<tokio::time::Instant>,
    /// A refresh was skipped: the gauges lag until the next one.
    stage_metrics_stale: bool,
}

/// A submitted job whose pre_start hooks have run.
struct PreStarted {
    job: JobRecord,
    outcomes: Vec<crate::hooks::HookOutcome>,
    reply: oneshot::Sender<Result<JobRecord, CommandError>>,
}

/// How often the jobs-by-stage gauges are refreshed.
const STAGE_METRICS_EVERY: Duration = Duration::from_millis(500);

/// Most exits settled in one write transaction.
const EXIT_BATCH: usize = 1024;

/// Retry delay when the store did not answer.
const STORE_RETRY: Duration = Duration::from_secs(1);

impl Enforcer {
    /// A new enforcer.
    pub fn new(
        shared: Arc<Shared>,
        runtime: LocalRuntime,
        commands: mpsc::Receiver<Command>,
        exits: mpsc::UnboundedReceiver<ExitEvent>,
    ) -> Self {
        let (pre_started_tx, pre_started) = mpsc::unbounded_channel();
        let executor = Executor::new(
            runtime,
            shared.store.clone(),
            shared.hooks.clone(),
            shared.metrics.clone(),
            shared.config.queue.max_attempts,
        );
        Enforcer {
            shared,
            executor,
            jobs: Tracked::new(),
            commands,
            exits,
            early_exits: Vec::new(),
            pre_started_tx,
            pre_started,
            starting: HashMap::new(),
            retention_queued: std::collections::HashSet::new(),
            stage_metrics_at: None,
            stage_metrics_stale: false,
        }
    }

    /// Runs until `shutdown` becomes true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.load().await;
        self.shared
            .loaded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            let mut sleep = match self.jobs.next_due() {
                Some(at) => since(at, clock::now()),
                None => Duration::from_secs(3600),
            };
            if self.stage_metrics_stale {
                sleep = sleep.min(STAGE_METRICS_EVERY);
            }
            tokio::select! {
                biased;
                _ = super::stopped(&mut shutdown) => break,
                Some(ev) = self.exits.recv() => {
                    // Every exit already reported is settled with one write transaction.
                    let mut evs = vec![ev];
                    while evs.len() < EXIT_BATCH {
                        let Ok(ev) = self.exits.try_recv() else { break };
                        evs.push(ev);
                    }
                    self.on_exits(evs).await;
                }
                Some(cmd) = self.commands.recv() => self.on_command(cmd).await,
                Some(p) = self.pre_started.recv() => self.after_pre_start(p).await,
                _ = tokio::time::sleep(sleep) => {}
            }
            self.run_due().await;
        }
        let running = self.jobs.stages().filter(|s| s.is_active()).count();
        match running {
            0 => tracing::info!(running, "enforcer stopped; no job is running"),
            1 => tracing::info!(
                running,
                "enforcer stopped; 1 job is still running and is re-adopted on the next start"
            ),
            n => tracing::info!(
                running,
                "enforcer stopped; {n} jobs are still running and are re-adopted on the next start"
            ),
        }
    }

    /// Acts on every due job. The escalation steps of all of them are recorded in one write
    /// transaction and then carried out (one commit per wake-up, not per job: at thousands
    /// of deadlines a second, per-step commits were what made signals late); anything else
    /// goes through [`Self::process`] one job at a time.
    async fn run_due(&mut self) {
        let now = clock::now();
        let mut batch = Vec::new();
        for (id, _) in self.jobs.pop_due(now, 10_000) {
            let planned = self.batchable_steps(&id, now);
            if planned.is_empty() {
                self.process(&id).await;
            } else {
                batch.extend(planned);
            }
        }
        self.take_steps(batch, now).await;
        self.update_stage_metrics();
    }

    /// Refreshes the jobs-by-stage gauges, at most every [`STAGE_METRICS_EVERY`]: counting
    /// walks every job, and at thousands of deadlines a second the loop wakes far more often.
    fn update_stage_metrics(&mut self) {
        if self
            .stage_metrics_at
            .is_some_and(|at| at.elapsed() < STAGE_METRICS_EVERY)
        {
            self.stage_metrics_stale = true; // the loop wakes again to refresh them
            return;
        }
        self.stage_metrics_at = Some(tokio::time::Instant::now());
        self.stage_metrics_stale = false;
        let mut counts: HashMap<Stage, u64> = HashMap::new();
        // Jobs past their TTL leave memory; their counts are kept by the metrics themselves.
        for stage in self
            .jobs
            .stages()
            .filter(|s| !matches!(s, Stage::Cleanup | Stage::Cleaned))
        {
            *counts.entry(stage).or_default() += 1;
        }
        self.shared.metrics.set_jobs_by_stage(counts);
    }

    /// Settles the runs that exited and saves them in one write transaction.
    async fn on_exits(&mut self, evs: Vec<ExitEvent>) {
        if evs.is_empty() {
            return;
        }
        let now = clock::now();
        let settled: Vec<JobRecord> = evs
            .into_iter()
            .filter_map(|ev| self.on_exit(ev, now))
            .collect();
        if settled.is_empty() {
            return;
        }
        match self.shared.store.update_jobs(&settled).await {
            Ok(results) => {
                self.shared.set_store_ok(true);
                for e in results.iter().filter_map(|r| r.as_ref().err()) {
                    self.store_error("saving a finished job", e);
                }
            }
            Err(e) => self.store_error("saving finished jobs", &e),
        }
        let ids: Vec<JobId> = settled.into_iter().map(|j| j.id).collect();
        self.queue_retention(&ids, now).await;
        for id in ids {
            self.reschedule(&id, now);
        }
    }

    /// Settles one exited run in memory; the job to save, if it changed.
    fn on_exit(&mut self, ev: ExitEvent, now: Timestamp) -> Option<JobRecord> {
        let Some(job) = self.jobs.get(&ev.job_id) else {
            self.early_exits.push(ev);
            return None;
        };
        if job.run_id != ev.run_id || !job.stage.is_active() {
            return None; // an earlier run, or already settled
        }
        let mut job = job.clone();
        let by_us = !job.dry_run && (job.has_step(Step::SoftKill) || job.has_step(Step::HardKill));
        let outcome = if ev.status_known {
            lifecycle::outcome_of_exit(ev.exit_code, ev.signal, by_us)
        } else if by_us {
            Outcome::Terminated
        } else {
            Outcome::Lost
        };
        let reason = match (ev.status_known, ev.exit_code, ev.signal) {
            (false, _, _) => "exited; status unknown (re-adopted after a restart)".to_owned(),
            (true, Some(c), _) => format!("exited with status {c}"),
            (true, None, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_owned(),
        };
        let reason = if outcome == Outcome::Terminated {
            format!(
                "terminated by jobwarden ({}); {reason}",
                job.reason.clone().unwrap_or_else(|| "timeout".into())
            )
        } else {
            reason
        };
        self.finish(&mut job, outcome, (ev.exit_code, ev.signal), reason, now);
        self.jobs.insert(job.clone());
        Some(job)
    }

    /// Decides and acts for one job; re-arms it.
    async fn process(&mut self, id: &JobId) {
        self.queue_retention(std::slice::from_ref(id), clock::now())
            .await;
        // Several steps may be overdue (daemon was down); each iteration takes one.
        for _ in 0..8 {
            let Some(job) = self.jobs.get(id) else {
                return;
            };
            let now = clock::now();
            let planned = plan::plan(
                &job,
                &self.diagnose(&job),
                &self.shared.policy,
                now,
                self.dry(&job),
            );
            let done = match planned.work {
                Work::Nothing => {
                    self.jobs.set(id, planned.wake);
                    if planned.wake.is_none()
                        && matches!(job.stage, Stage::Cleanup | Stage::Cleaned)
                    {
                        // Handed to cleanup: it leaves memory.
                        self.jobs.remove(id);
                    }
                    return;
                }
                Work::Step(step) => self.take_steps(vec![(job, step)], now).await,
                Work::Cleanup(cleanup) => self.cleanup(job, cleanup, now).await,
                Work::Recover(recover) => {
                    let mut job = job;
                    let r = self.executor.recover(&(), &mut job, &recover, now).await;
                    self.settled(job, r, "recovering a job")
                }
                Work::MarkFailed(fail) => {
                    let mut job = job;
                    let r = self.executor.mark_failed(&(), &mut job, &fail, now).await;
                    self.settled(job, r, "marking a job failed")
                }
            };
            if !done {
                self.jobs.arm(id, add(now, STORE_RETRY));
                return;
            }
        }
        self.jobs.arm(id, clock::now());
    }

    /// Keeps the job the executor left, or counts the store error (the decision is retried).
    fn settled(&mut self, job: JobRecord, r: crate::executor::Result<Carried>, what: &str) -> bool {
        match r {
            Ok(_) => {
                self.shared.set_store_ok(true);
                self.jobs.insert(job);
                true
            }
            Err(e) => {
                self.store_error(what, &e);
                false
            }
        }
    }

    fn diagnose(&self, job: &JobRecord) -> Diagnosis {
        if job.stage == Stage::Running
            && job.heartbeat_timeout.is_some()
            && !self.executor.runtime().is_alive(job)
        {
            // Only reached for jobs whose process vanished while the daemon was down: a
            // process exiting under our watch is reported through its exit instead.
            return Diagnosis::Gone;
        }
        Diagnosis::Healthy
    }

    fn reschedule(&mut self, id: &JobId, now: Timestamp) {
        self.jobs.arm(id, now);
    }

    /// Decided, not carried out: the daemon's `--dry-run`, or a job submitted in it.
    fn dry(&self, job: &JobRecord) -> bool {
        self.shared.dry_run || job.dry_run
    }

    /// The steps due now for a job when they are steps that [`Self::take_steps`] can record
    /// in a batch (every step but force_delete, which settles the job). Several when more
    /// than one is overdue at once (a warn and the soft_kill at the same instant, or after an
    /// outage): each is planned on the job as the previous one leaves it, and all go into the
    /// same write. Empty when the job needs anything else.
    fn batchable_steps(&self, id: &JobId, now: Timestamp) -> Vec<(JobRecord, StepPlan)> {
        let mut planned: Vec<(JobRecord, StepPlan)> = Vec::new();
        let Some(first) = self.jobs.get(id) else {
            return planned;
        };
        // warn (each), soft_kill, hard_kill: a handful at most; the bound is a safeguard.
        while planned.len() < 8 {
            let job = planned
                .last()
                .map_or_else(|| first.clone(), |(j, p)| p.apply(j));
            let work = plan::plan(
                &job,
                &self.diagnose(&job),
                &self.shared.policy,
                now,
                self.dry(&job),
            )
            .work;
            match work {
                Work::Step(step) if step.step() != Step::ForceDelete => {
                    planned.push((job, step));
                }
                _ => break,
            }
        }
        planned
    }

    /// Records every planned step in one write transaction, then carries out those recorded
    /// now (at the time the write returned: a slow store never eats a job's grace period, the
    /// executor re-times a step carried out late). Each job is re-armed: at once when its step
    /// is settled (its next step, or several overdue ones, are decided by [`Self::process`]),
    /// a moment later when the store could not record it (nothing was done). False if any
    /// step was not recorded.
    async fn take_steps(
        &mut self,
        mut planned: Vec<(JobRecord, StepPlan)>,
        now: Timestamp,
    ) -> bool {
        if planned.is_empty() {
            return true;
        }
        let results = {
            let mut batch: Vec<(&mut JobRecord, &StepPlan)> =
                planned.iter_mut().map(|(j, p)| (j, &*p)).collect();
            self.executor.record_steps(&(), &mut batch).await
        };
        let results = match results {
            Ok(results) => results,
            Err(e) => {
                self.store_error("recording escalation steps", &e);
                for (job, _) in &planned {
                    self.jobs.arm(&job.id, add(now, STORE_RETRY));
                }
                return false;
            }
        };
        self.shared.set_store_ok(true);
        let sent = clock::now();
        let mut all_ok = true;
        for ((mut job, step), result) in planned.into_iter().zip(results) {
            let id = job.id.clone();
            match result {
                Ok(true) => {
                    if let Err(e) = self.executor.act_step(&(), &mut job, &step, sent).await {
                        self.store_error("finishing an escalation step", &e);
                    }
                    self.jobs.insert(job);
                    self.jobs.arm(&id, sent);
                }
                Ok(false) => {
                    self.sync_recorded(job, &step).await;
                    self.jobs.arm(&id, now);
                }
                Err(e) => {
                    self.store_error("recording an escalation step", &e);
                    self.jobs.arm(&id, add(now, STORE_RETRY));
                    all_ok = false;
                }
            }
        }
        all_ok
    }

    /// A step the store already holds (e.g. recorded by a previous daemon): keep our copy in
    /// sync and never decide that step again.
    async fn sync_recorded(&mut self, before: JobRecord, step: &StepPlan) {
        let id = before.id.clone();
        let mut synced = match self.shared.store.get_job(&id).await {
            Ok(Some(stored)) if stored.run_id == before.run_id => stored,
            _ => before,
        };
        let taken = &step.taken;
        if !synced
            .steps
            .iter()
            .any(|s| s.step == taken.step && s.due_at == taken.due_at)
        {
            synced.steps.push(taken.clone());
        }
        self.jobs.insert(synced);
    }

    /// TTL expired: the executor queues the workspace's removal (now) and the log's and the
    /// artifacts' (by their own retention, unless this daemon queued them already), and moves
    /// the job to `cleanup`; it then leaves memory.
    async fn cleanup(
        &mut self,
        mut job: JobRecord,
        mut cleanup: plan::CleanupPlan,
        now: Timestamp,
    ) -> bool {
        let id = job.id.clone();
        if cleanup.finish_in_future {
            tracing::warn!(job = %id, "finish time is in the future (clock skew); cleanup deferred to finish + TTL");
        }
        let key = (job.id.clone(), job.run_id.clone());
        if self.retention_queued.contains(&key) {
            // Queued when the run finished: only the workspace is new.
            cleanup.tasks.retain(|t| t.kind == "workspace");
        }
        if let Err(e) = self.executor.cleanup(&(), &mut job, &cleanup, now).await {
            self.store_error("moving a job to cleanup", &e);
            return false;
        }
        self.shared.set_store_ok(true);
        self.shared.metrics.job_to_cleanup();
        self.shared.cleanup.kick.notify_waiters();
        self.jobs.remove(&id);
        // The job leaves memory: so does the note that its retention is queued.
        self.retention_queued.remove(&key);
        true
    }

    /// Queues finished runs' log and artifact retention tasks once per daemon lifetime, in
    /// one write transaction (the queue de-duplicates pending tasks across restarts; a re-run
    /// of a finished one deletes nothing and says so in the audit log).
    async fn queue_retention(&mut self, ids: &[JobId], now: Timestamp) {
        let mut keys = Vec::new();
        let mut tasks: Vec<TaskPlan> = Vec::new();
        let mut refusals = Vec::new();
        for id in ids {
            // Running jobs (most wake-ups) are skipped without rebuilding their record.
            if self.jobs.stage(id).is_none_or(Stage::is_active) {
                continue;
            }
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            let job = &job;
            let key = (job.id.clone(), job.run_id.clone());
            if job.stage.is_active()
                || job.finished_at.is_none()
                || self.dry(job)
                || self.retention_queued.contains(&key)
            {
                continue;
            }
            let (job_tasks, refused) = plan::retention_tasks(job, &self.shared.policy, now);
            tasks.extend(job_tasks);
            refusals.extend(refused);
            keys.push(key);
        }
        if keys.is_empty() {
            return;
        }
        match self.executor.enqueue(&tasks, now).await {
            Ok(()) => {
                self.retention_queued.extend(keys);
                self.shared.cleanup.kick.notify_waiters();
            }
            Err(e) => {
                self.store_error("queueing log and artifact retention", &e);
                return;
            }
        }
        // Never silence: a job whose artifacts can never be cleaned says so in the audit log
        // (once per run and daemon start) and in `jobwarden_errors_total{kind="artifact_key"}`.
        for a in &refusals {
            self.shared.metrics.error("artifact_key");
            tracing::error!(job = %a.job_id, "{}: {}", a.reason, a.error_message.as_deref().unwrap_or_default());
        }
        if !refusals.is_empty() {
            self.append_audit(refusals).await;
        }
    }

    /// Settles a run in memory: outcome, stage, times; fires the stage's hooks.
    fn finish(
        &self,
        job: &mut JobRecord,
        outcome: Outcome,
        exit: (Option<i32>, Option<i32>),
        reason: String,
        now: Timestamp,
    ) {
        tracing::info!(job = %job.id, %outcome, reason, "finished");
        match plan::settle(job, outcome, exit, reason, now) {
            Ok(hook) => self.executor.fire(job, &[hook], now),
            Err(e) => tracing::warn!("{e}"),
        }
    }

    async fn persist(&self, job: &JobRecord) {
        if let Err(e) = self.shared.store.update_job(job).await {
            self.store_error("saving a job", &e);
        } else {
            self.shared.set_store_ok(true);
        }
    }

    /// Writes audit rows; whether they are recorded (an error is logged and counted).
    async fn append_audit(&self, rows: Vec<AuditEntry>) -> bool {
        match self.executor.append_audit(&rows).await {
            Ok(()) => true,
            Err(e) => {
                self.store_error("writing audit rows", &e);
                false
            }
        }
    }

    fn store_error(&self, what: &str, e: &crate::store::Error) {
        self.shared.metrics.error("store");
        self.shared.set_store_ok(false);
        tracing::error!("{what}: {e}");
    }

    /// An audit row about the job's process group.
    fn audit(
        &self,
        job: &JobRecord,
        action: AuditAction,
        reason: String,
        error: Option<String>,
        now: Timestamp,
    ) -> AuditEntry {
        let mut row = plan::job_row(job, now, action, &reason);
        row.success = error.is_none();
        row.error_message = error;
        row.dry_run = self.dry(job);
        row
    }
}
