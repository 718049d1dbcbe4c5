//! The enforcer: owns every live job and the deadline scheduler, decides with the engine
//! and carries decisions out on the local runtime.
//!
//! One task, fed by a command channel (submit, cancel, heartbeat) and the runtime's exit
//! channel, sleeping until the scheduler's next due time: no ticker scans all jobs.
//! pre_start hooks run in tasks of their own and report back, so a slow hook never delays
//! another job's ladder. For
//! each due job it calls [`crate::engine::decide`] with the current time and acts:
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api_types::SubmitRequest;
use crate::clock;
use crate::daemon::Shared;
use crate::engine::decide::{Decision, decide};
use crate::engine::lifecycle;
use crate::engine::recovery::Diagnosis;
use crate::engine::retention;
use crate::hooks::HookPayload;
use crate::model::{
    AuditAction, AuditEntry, JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, StepTaken,
    Timestamp, add, fmt_ts, since,
};
use crate::policy::{JobSettings, resolve};
use crate::runtime::local::{Adopted, ExitEvent, LocalRuntime};
use crate::runtime::proc::SignalResult;
use crate::scheduler::Scheduler;
use crate::store::{JobFilter, NewTask, StepWrite};

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
    runtime: LocalRuntime,
    jobs: HashMap<JobId, JobRecord>,
    sched: Scheduler<JobId>,
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

/// An escalation step decided for a job, ready to be recorded and carried out.
struct PlannedStep {
    /// What the store records.
    write: StepWrite,
    /// The job as it was decided on.
    before: JobRecord,
    /// The job once the step is taken.
    after: JobRecord,
    /// A soft kill moving a running job to `terminating`.
    terminating: bool,
    /// Why: `timeout` or `cancelled`.
    why: String,
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

/// A step whose record took longer than this to write is re-timed to when its signal went out.
const LATE_WRITE: Duration = Duration::from_millis(200);

impl Enforcer {
    /// A new enforcer.
    pub fn new(
        shared: Arc<Shared>,
        runtime: LocalRuntime,
        commands: mpsc::Receiver<Command>,
        exits: mpsc::UnboundedReceiver<ExitEvent>,
    ) -> Self {
        let (pre_started_tx, pre_started) = mpsc::unbounded_channel();
        Enforcer {
            shared,
            runtime,
            jobs: HashMap::new(),
            sched: Scheduler::new(),
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
            let mut sleep = match self.sched.next_due() {
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
        let running = self.jobs.values().filter(|j| j.stage.is_active()).count();
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
        for (id, _) in self.sched.pop_due(now, 10_000) {
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
        for j in self
            .jobs
            .values()
            .filter(|j| !matches!(j.stage, Stage::Cleanup | Stage::Cleaned))
        {
            *counts.entry(j.stage).or_default() += 1;
        }
        self.shared.metrics.set_jobs_by_stage(counts);
    }

    /// Loads active and finished-but-not-cleaned jobs; re-adopts running processes.
    async fn load(&mut self) {
        let jobs = loop {
            match self
                .shared
                .store
                .list_jobs(&JobFilter {
                    runtime: Some(RuntimeKind::Local),
                    ..JobFilter::default()
                })
                .await
            {
                Ok(j) => break j,
                Err(e) => {
                    self.shared.set_store_ok(false);
                    tracing::error!("loading jobs: {e}; retrying");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        };
        self.shared.set_store_ok(true);
        let now = clock::now();
        let mut requeue = Vec::new();
        let settled = |stage| jobs.iter().filter(|j| j.stage == stage).count() as u64;
        self.shared
            .metrics
            .set_settled_jobs(settled(Stage::Cleanup), settled(Stage::Cleaned));
        for job in jobs {
            if job.stage == Stage::Cleanup && !job.dry_run {
                // A crash may have fallen between the stage change and the enqueue; the
                // queue de-duplicates tasks that are still pending.
                requeue.extend(self.cleanup_tasks(&job, now));
                requeue.extend(self.retention_tasks(&job, now));
            }
            if matches!(job.stage, Stage::Cleanup | Stage::Cleaned) {
                continue;
            }
            let id = job.id.clone();
            let active = job.stage.is_active();
            self.jobs.insert(id.clone(), job);
            if active {
                self.readopt(&id, now).await;
            }
            self.sched.arm(id, now);
        }
        if !requeue.is_empty() {
            match self.shared.store.enqueue_many(&requeue, now).await {
                Ok(_) => self.shared.queue_kick.notify_waiters(),
                Err(e) => self.store_error("re-queueing interrupted cleanups", &e),
            }
        }
        tracing::info!(jobs = self.jobs.len(), "loaded jobs from the store");
    }

    async fn readopt(&mut self, id: &JobId, now: Timestamp) {
        let Some(job) = self.jobs.get(id).cloned() else {
            return;
        };
        if job.pid.is_some() && self.runtime.adopt(&job) == Adopted::Running {
            tracing::info!(job = %id, pid = ?job.pid, "re-adopted running job");
            // A crash may have fallen between recording a kill step and sending it: send the
            // strongest step taken once more (harmless for a process that already got it).
            let last_kill = [Step::ForceDelete, Step::HardKill, Step::SoftKill]
                .into_iter()
                .find(|s| job.has_step(*s));
            if let Some(step) = last_kill
                && !job.dry_run
            {
                let sig = if step == Step::SoftKill {
                    Signal::TERM
                } else {
                    Signal::KILL
                };
                // Audit first, then signal: a crash in between leaves a row for a signal
                // that was not sent (harmless), never a signal without its row.
                let audit = self.audit(
                    &job,
                    step.into(),
                    format!(
                        "re-sent {} after a daemon restart (idempotent)",
                        sig_name(sig)
                    ),
                    None,
                    now,
                );
                // Not recorded, not sent: the ladder's next step still comes on time.
                if self.append_audit(vec![audit]).await
                    && let Err(e) = self.runtime.signal(&job, sig)
                {
                    self.shared.metrics.error("signal");
                    let failed = self.audit(
                        &job,
                        step.into(),
                        format!("re-sending {} failed", sig_name(sig)),
                        Some(e.to_string()),
                        now,
                    );
                    self.append_audit(vec![failed]).await;
                }
            }
            return;
        }
        // Vanished while the daemon was down.
        let mut job = job;
        if job.heartbeat_timeout.is_some() && job.stage == Stage::Running {
            // The recovery policy decides (restart with backoff or mark failed).
            job.reason = Some("process vanished while jobwarden was down".into());
            self.jobs.insert(id.clone(), job);
            return;
        }
        let killed = job.has_step(Step::SoftKill);
        let outcome = if killed {
            Outcome::Terminated
        } else {
            Outcome::Lost
        };
        self.finish(
            &mut job,
            outcome,
            None,
            None,
            "process vanished while jobwarden was down; exit status unknown".into(),
            now,
        );
        let audit = self.audit(
            &job,
            AuditAction::MarkFailed,
            format!("marked {outcome}: process vanished while jobwarden was down"),
            None,
            now,
        );
        if let Err(e) = self
            .shared
            .store
            .update_job_with_audit(&job, &[audit])
            .await
        {
            self.store_error("marking vanished job", &e);
        }
        self.jobs.insert(id.clone(), job);
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req, reply) => self.submit(req, reply).await,
            Command::Cancel(id, reply) => {
                let r = self.cancel(&id).await;
                let _ = reply.send(r);
            }
            Command::Heartbeat(id, reply) => {
                let r = self.heartbeat(&id).await;
                let _ = reply.send(r);
            }
        }
    }

    /// Records a new job, then runs its pre_start hooks (in the background) or starts it.
    /// `reply` gets the job once it started or was vetoed.
    async fn submit(
        &mut self,
        req: SubmitRequest,
        reply: oneshot::Sender<Result<JobRecord, CommandError>>,
    ) {
        let job = match self.record_new_job(req).await {
            Ok(j) => j,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if !self.shared.hooks.has("pre_start") {
            let _ = reply.send(self.start_new_job(job).await);
            return;
        }
        let shared = self.shared.clone();
        let done = self.pre_started_tx.clone();
        self.starting.insert(job.id.clone(), false);
        tokio::spawn(async move {
            let payload = HookPayload::new("pre_start", &job, None, clock::now());
            let outcomes = shared.hooks.fire(&payload).await;
            let _ = done.send(PreStarted {
                job,
                outcomes,
                reply,
            });
        });
    }

    /// pre_start hooks have run: audit them, then start the job or fail it (veto).
    async fn after_pre_start(&mut self, p: PreStarted) {
        let PreStarted {
            mut job,
            outcomes,
            reply,
        } = p;
        let audits: Vec<AuditEntry> = outcomes
            .iter()
            .map(|o| o.audit_row(&job, "pre_start", clock::now()))
            .collect();
        self.append_audit(audits).await;
        let cancelled = self.starting.remove(&job.id).unwrap_or(false);
        let veto = outcomes.iter().find(|o| !o.ok).map(|veto| {
            format!(
                "pre_start hook vetoed the start: {}",
                veto.error.clone().unwrap_or_default()
            )
        });
        let end = match (cancelled, veto) {
            (true, _) => Some((
                Outcome::Terminated,
                "cancelled before it started".to_owned(),
            )),
            (false, Some(reason)) => Some((Outcome::Failed, reason)),
            (false, None) => None,
        };
        let answer = if let Some((outcome, reason)) = end {
            let now = clock::now();
            let id = job.id.clone();
            self.finish(&mut job, outcome, None, None, reason, now);
            self.persist(&job).await;
            self.jobs.insert(id.clone(), job.clone());
            self.sched.arm(id, now);
            Ok(job)
        } else {
            self.start_new_job(job).await
        };
        let _ = reply.send(answer);
    }

    /// Validates the store is up, resolves the policy and inserts the job (stage pre_start).
    async fn record_new_job(&mut self, req: SubmitRequest) -> Result<JobRecord, CommandError> {
        if !self
            .shared
            .store_ok
            .load(std::sync::atomic::Ordering::SeqCst)
            && self.shared.store.ping().await.is_err()
        {
            return Err(CommandError::new(
                503,
                "store unavailable; not accepting jobs",
            ));
        }
        let now = clock::now();
        let settings = JobSettings {
            org: req.org.clone(),
            job_type: req.job_type.clone(),
            timeout: req.timeout.map(|d| d.0),
            active_deadline: None,
            grace: req.grace.map(|d| d.0),
            ttl: req.ttl.map(|d| d.0),
            heartbeat_timeout: req.heartbeat_timeout.map(|d| d.0),
        };
        let resolved = resolve(&settings, &self.shared.config.policy);
        let id = JobId::generate(now);
        let name = req.name.clone().unwrap_or_else(|| {
            req.command
                .first()
                .and_then(|p| std::path::Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "job".into())
        });
        let job = JobRecord {
            id: id.clone(),
            run_id: ulid::Ulid::from_parts(
                u64::try_from(now.timestamp_millis()).unwrap_or(0),
                rand::random::<u128>(),
            )
            .to_string()
            .to_ascii_lowercase(),
            attempt: 0,
            runtime: RuntimeKind::Local,
            namespace: None,
            name,
            org: req.org.clone(),
            job_type: req.job_type.clone(),
            stage: Stage::PreStart,
            outcome: None,
            reason: resolved.capped_by.map(|c| {
                format!(
                    "timeout capped by {}",
                    match c {
                        crate::policy::Cap::OrganizationMax => "the organisation maximum",
                        crate::policy::Cap::HardMax => "the platform hard maximum",
                    }
                )
            }),
            created_at: now,
            started_at: None,
            finished_at: None,
            timeout: resolved.timeout,
            grace: resolved.grace,
            ttl: resolved.ttl,
            deadline: None,
            steps: vec![],
            heartbeat_timeout: resolved.heartbeat_timeout,
            last_heartbeat: None,
            recovery_attempts: 0,
            pid: None,
            pid_start_ticks: None,
            exit_code: None,
            signal: None,
            spec: serde_json::json!({ "command": req.command }),
            dry_run: self.shared.dry_run,
        };
        self.shared.store.insert_job(&job).await.map_err(|e| {
            self.store_error("recording a new job", &e);
            CommandError::new(503, format!("store: {e}"))
        })?;
        Ok(job)
    }

    /// Spawns a recorded job's first run and starts watching it.
    ///
    /// The start (pid, deadline) must be recorded before the submit is acknowledged: a job
    /// whose process runs while the store still says "not started" would, after a daemon
    /// restart, be a process nobody watches. So when that write fails the process is killed
    /// at once (it has run for milliseconds), the job is failed, and the submit is refused.
    async fn start_new_job(&mut self, mut job: JobRecord) -> Result<JobRecord, CommandError> {
        let id = job.id.clone();
        self.start_run(&mut job, clock::now());
        if let Err(e) = self.shared.store.update_job(&job).await {
            self.store_error("recording a job's start", &e);
            let now = clock::now();
            if job.pid.is_some() {
                match self.runtime.signal(&job, Signal::KILL) {
                    Ok(_) => tracing::warn!(job = %id, "killed: its start could not be recorded"),
                    Err(err) => {
                        tracing::error!(job = %id, "killing a job whose start could not be recorded: {err}")
                    }
                }
            }
            let reason = format!("its start could not be recorded, so it was killed: {e}");
            self.finish(&mut job, Outcome::Failed, None, None, reason, now);
            // Best effort; if this fails too, the next start finds the job without a pid and
            // marks it lost.
            self.persist(&job).await;
            self.jobs.insert(id.clone(), job);
            self.sched.arm(id.clone(), now);
            return Err(CommandError::new(
                503,
                format!("store: {e}; job {id} was not started (its start could not be recorded)"),
            ));
        }
        self.shared.set_store_ok(true);
        self.jobs.insert(id.clone(), job.clone());
        self.sched.arm(id.clone(), clock::now());
        self.flush_early_exits().await;
        Ok(self.jobs.get(&id).cloned().unwrap_or(job))
    }

    /// Starts (or restarts) the job's command: sets run times and spawns.
    fn start_run(&self, job: &mut JobRecord, now: Timestamp) {
        let command: Vec<String> = job
            .spec
            .get("command")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        job.started_at = Some(now);
        job.deadline = Some(add(now, job.timeout));
        match self.runtime.spawn(job, &command) {
            Ok(started) => {
                job.pid = Some(started.pid);
                job.pid_start_ticks = Some(started.start_ticks);
                job.stage = Stage::Running;
                tracing::info!(job = %job.id, pid = started.pid, deadline = %fmt_ts(add(now, job.timeout)), "started");
                self.fire_hooks("running", job, None, now);
            }
            Err(e) => {
                tracing::warn!(job = %job.id, "start failed: {e}");
                self.finish(
                    job,
                    Outcome::Failed,
                    None,
                    None,
                    format!("could not start: {e}"),
                    now,
                );
            }
        }
    }

    async fn flush_early_exits(&mut self) {
        let pending = std::mem::take(&mut self.early_exits);
        self.on_exits(pending).await;
    }

    async fn cancel(&mut self, id: &JobId) -> Result<JobRecord, CommandError> {
        if let Some(cancelled) = self.starting.get_mut(id) {
            // Its pre_start hooks are still running: it will not be started.
            *cancelled = true;
            let job = match self.shared.store.get_job(id).await {
                Ok(Some(j)) => j,
                Ok(None) => return Err(CommandError::new(404, format!("no job with id {id}"))),
                Err(e) => return Err(CommandError::new(503, format!("store: {e}"))),
            };
            let audit = AuditEntry {
                initiated_by: "user".into(),
                ..self.audit(
                    &job,
                    AuditAction::Cancel,
                    "cancelled through the API before it started (pre_start hooks running)".into(),
                    None,
                    clock::now(),
                )
            };
            self.append_audit(vec![audit]).await;
            return Ok(job);
        }
        let Some(job) = self.jobs.get(id).cloned() else {
            return match self.shared.store.get_job(id).await {
                Ok(Some(j)) => Err(CommandError::new(
                    409,
                    format!("job {id} is not running (stage {})", j.stage),
                )),
                Ok(None) => Err(CommandError::new(404, format!("no job with id {id}"))),
                Err(e) => Err(CommandError::new(503, format!("store: {e}"))),
            };
        };
        if !job.stage.is_active() {
            return Err(CommandError::new(
                409,
                format!("job {id} is not running (stage {})", job.stage),
            ));
        }
        let now = clock::now();
        let audit = AuditEntry {
            initiated_by: "user".into(),
            ..self.audit(
                &job,
                AuditAction::Cancel,
                "cancelled through the API".into(),
                None,
                now,
            )
        };
        self.append_audit(vec![audit]).await;
        if !job.has_step(Step::SoftKill) {
            self.take_step(id, Step::SoftKill, now, now, "cancelled")
                .await;
        }
        self.reschedule(id, clock::now());
        self.jobs
            .get(id)
            .cloned()
            .ok_or_else(|| CommandError::new(404, format!("no job with id {id}")))
    }

    async fn heartbeat(&mut self, id: &JobId) -> Result<(), CommandError> {
        let now = clock::now();
        match self.shared.store.record_heartbeat(id, now).await {
            Ok(true) => {}
            Ok(false) => return Err(CommandError::new(404, format!("no job with id {id}"))),
            Err(e) => {
                self.store_error("recording a heartbeat", &e);
                return Err(CommandError::new(503, format!("store: {e}")));
            }
        }
        if let Some(job) = self.jobs.get_mut(id) {
            // Only the heartbeat moves; the deadline never does.
            job.last_heartbeat = Some(now);
            self.reschedule(id, now);
        }
        Ok(())
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
        self.queue_retention_of(&ids, now).await;
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
        self.finish(&mut job, outcome, ev.exit_code, ev.signal, reason, now);
        self.jobs.insert(job.id.clone(), job.clone());
        Some(job)
    }

    /// Settles a run: outcome, stage, times; fires the stage hooks.
    fn finish(
        &self,
        job: &mut JobRecord,
        outcome: Outcome,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: String,
        now: Timestamp,
    ) {
        job.outcome = Some(outcome);
        job.stage = lifecycle::stage_after_exit(outcome, exit_code, signal);
        job.finished_at = Some(now);
        job.exit_code = exit_code;
        job.signal = signal;
        job.reason = Some(reason.clone());
        tracing::info!(job = %job.id, %outcome, reason, "finished");
        self.fire_hooks(job.stage.as_str(), job, Some(reason), now);
    }

    /// Decides and acts for one job; re-arms it.
    async fn process(&mut self, id: &JobId) {
        self.queue_retention(id, clock::now()).await;
        // Several steps may be overdue (daemon was down); each iteration takes one.
        for _ in 0..8 {
            let Some(job) = self.jobs.get(id) else {
                return;
            };
            let now = clock::now();
            let diagnosis = self.diagnose(job);
            let (decision, wake) = decide(job, &diagnosis, &self.shared.policy, now);
            match decision {
                Decision::Nothing => {
                    self.sched.set(id.clone(), wake);
                    if wake.is_none() && !self.jobs.get(id).is_some_and(|j| j.stage.is_active()) {
                        // Finished without TTL (missing finish time) or handed to cleanup.
                        if self
                            .jobs
                            .get(id)
                            .is_some_and(|j| matches!(j.stage, Stage::Cleanup | Stage::Cleaned))
                        {
                            self.jobs.remove(id);
                        }
                    }
                    return;
                }
                Decision::Step { step, due_at } => {
                    if !self.take_step(id, step, due_at, now, "timeout").await {
                        self.sched.arm(id.clone(), add(now, STORE_RETRY));
                        return;
                    }
                }
                Decision::Cleanup {
                    due_at,
                    finish_in_future,
                } => {
                    if !self
                        .schedule_cleanup(id, due_at, finish_in_future, now)
                        .await
                    {
                        self.sched.arm(id.clone(), add(now, STORE_RETRY));
                        return;
                    }
                }
                Decision::Recover { attempt, reason } => {
                    if !self.recover(id, attempt, reason, now).await {
                        self.sched.arm(id.clone(), add(now, STORE_RETRY));
                        return;
                    }
                }
                Decision::MarkFailed { reason } => {
                    if !self.mark_failed(id, reason, now).await {
                        self.sched.arm(id.clone(), add(now, STORE_RETRY));
                        return;
                    }
                }
            }
        }
        self.sched.arm(id.clone(), clock::now());
    }

    fn diagnose(&self, job: &JobRecord) -> Diagnosis {
        if job.stage == Stage::Running
            && job.heartbeat_timeout.is_some()
            && !self.runtime.is_alive(job)
        {
            // Only reached for jobs whose process vanished while the daemon was down: a
            // process exiting under our watch is reported through its exit instead.
            return Diagnosis::Gone;
        }
        Diagnosis::Healthy
    }

    fn reschedule(&mut self, id: &JobId, now: Timestamp) {
        self.sched.arm(id.clone(), now);
    }

    /// Records and carries out one escalation step. False if the store could not record it
    /// (nothing was done).
    async fn take_step(
        &mut self,
        id: &JobId,
        step: Step,
        due_at: Timestamp,
        now: Timestamp,
        why: &str,
    ) -> bool {
        let Some(job) = self.jobs.get(id) else {
            return true;
        };
        let planned = self.plan_step(job, step, due_at, now, why);
        self.take_steps(vec![planned], now).await
    }

    /// The steps due now for a job when they are steps that [`Self::take_steps`] can record
    /// in a batch (every step but force_delete, which settles the job). Several when more
    /// than one is overdue at once (a warn and the soft_kill at the same instant, or after an
    /// outage): each is decided on the job as the previous one leaves it, and all go into the
    /// same write. Empty when the job needs anything else.
    fn batchable_steps(&self, id: &JobId, now: Timestamp) -> Vec<PlannedStep> {
        let mut planned: Vec<PlannedStep> = Vec::new();
        let Some(first) = self.jobs.get(id) else {
            return planned;
        };
        // warn (each), soft_kill, hard_kill: a handful at most; the bound is a safeguard.
        while planned.len() < 8 {
            let job = planned.last().map_or(first, |p| &p.after);
            let (decision, _) = decide(job, &self.diagnose(job), &self.shared.policy, now);
            let next = match decision {
                Decision::Step { step, due_at } if step != Step::ForceDelete => {
                    self.plan_step(job, step, due_at, now, "timeout")
                }
                _ => break,
            };
            planned.push(next);
        }
        planned
    }

    /// The record of a step and the job as it will be once the step is carried out.
    fn plan_step(
        &self,
        job: &JobRecord,
        step: Step,
        due_at: Timestamp,
        now: Timestamp,
        why: &str,
    ) -> PlannedStep {
        let dry = self.shared.dry_run || job.dry_run;
        let reason = match step {
            Step::Warn => {
                crate::duration::deadline_note(job.deadline.unwrap_or(now), now, job.timeout)
            }
            Step::SoftKill => format!(
                "{why}: deadline {} reached; SIGTERM to the process group, grace {}",
                job.deadline.map(fmt_ts).unwrap_or_default(),
                crate::duration::format_duration(job.grace)
            ),
            Step::HardKill => format!(
                "still running {} after SIGTERM; SIGKILL to the process group",
                crate::duration::format_duration(job.grace)
            ),
            Step::ForceDelete => {
                "still present after SIGKILL; removing the workspace and marking the job".into()
            }
        };
        let mut audit = self.audit(job, step.into(), reason, None, now);
        audit.dry_run = dry;
        let taken = StepTaken {
            step,
            due_at,
            at: now,
        };
        let mut after = job.clone();
        after.steps.push(taken.clone());
        // Only a soft kill changes more than the steps (which the record itself stores): it
        // is saved with the record, in the same transaction.
        let terminating = step == Step::SoftKill && !dry && job.stage == Stage::Running;
        if terminating {
            after.stage = Stage::Terminating;
            after.reason = Some(why.to_owned());
        }
        PlannedStep {
            write: StepWrite {
                job_id: job.id.clone(),
                run_id: job.run_id.clone(),
                step: taken,
                audit,
                stage_after: terminating.then(|| (Stage::Terminating, why.to_owned())),
            },
            before: job.clone(),
            after,
            terminating,
            why: why.to_owned(),
        }
    }

    /// Records every planned step in one write transaction, then carries out those recorded
    /// now. Each job is re-armed: at `now` when its step is settled (its next step, or
    /// several overdue ones, are decided by [`Self::process`]), a moment later when the store
    /// could not record it (nothing was done). False if any step was not recorded.
    async fn take_steps(&mut self, planned: Vec<PlannedStep>, now: Timestamp) -> bool {
        if planned.is_empty() {
            return true;
        }
        let writes: Vec<StepWrite> = planned.iter().map(|p| p.write.clone()).collect();
        let results = match self.shared.store.record_steps(&writes).await {
            Ok(results) => results,
            Err(e) => {
                self.store_error("recording escalation steps", &e);
                for p in &planned {
                    self.sched.arm(p.before.id.clone(), add(now, STORE_RETRY));
                }
                return false;
            }
        };
        self.shared.set_store_ok(true);
        // Signals go out only now, after the write. When the store was slow, the next step's
        // grace counts from now, not from the decision: a slow store must not eat the job's
        // grace period (a step is due a grace period after the previous one happened).
        let sent = clock::now();
        let late = since(sent, now) > LATE_WRITE;
        let mut retimed = Vec::new();
        let mut all_ok = true;
        for (mut p, result) in planned.into_iter().zip(results) {
            let id = p.before.id.clone();
            match result {
                Ok(true) => {
                    self.shared.metrics.audit_written(1);
                    if late && matches!(p.write.step.step, Step::SoftKill | Step::HardKill) {
                        let taken = p.write.step.clone();
                        if let Some(s) = p
                            .after
                            .steps
                            .iter_mut()
                            .find(|s| s.step == taken.step && s.due_at == taken.due_at)
                        {
                            s.at = sent;
                        }
                        p.write.step.at = sent;
                        retimed.push(id.clone());
                    }
                    self.carry_out(p, sent).await;
                    self.sched.arm(id, sent);
                }
                Ok(false) => {
                    self.sync_recorded(p).await;
                    self.sched.arm(id, now);
                }
                Err(e) => {
                    self.store_error("recording an escalation step", &e);
                    self.sched.arm(id, add(now, STORE_RETRY));
                    all_ok = false;
                }
            }
        }
        if !retimed.is_empty() {
            tracing::warn!(
                jobs = retimed.len(),
                write_ms = since(sent, now).as_millis() as u64,
                "the store was slow to record kill steps: their grace periods count from when the signals went out"
            );
            let jobs: Vec<JobRecord> = retimed
                .iter()
                .filter_map(|id| self.jobs.get(id).cloned())
                .collect();
            // Best effort: until a restart the in-memory times rule; after one, the recorded
            // decision times (a shorter grace) would.
            if let Err(e) = self.shared.store.update_jobs(&jobs).await {
                self.store_error("recording when late kill signals went out", &e);
            }
        }
        all_ok
    }

    /// A step the store already holds (e.g. recorded by a previous daemon): keep our copy in
    /// sync and never decide that step again.
    async fn sync_recorded(&mut self, p: PlannedStep) {
        let id = p.before.id.clone();
        let mut synced = match self.shared.store.get_job(&id).await {
            Ok(Some(stored)) if stored.run_id == p.before.run_id => stored,
            _ => p.before,
        };
        let taken = p.write.step;
        if !synced
            .steps
            .iter()
            .any(|s| s.step == taken.step && s.due_at == taken.due_at)
        {
            synced.steps.push(taken);
        }
        self.jobs.insert(id, synced);
    }

    /// Carries out a recorded step: the signal, the workspace removal of a force delete,
    /// hooks, and an audit row if it failed.
    async fn carry_out(&mut self, p: PlannedStep, now: Timestamp) {
        let PlannedStep {
            write,
            after: mut job,
            terminating,
            why,
            ..
        } = p;
        let step = write.step.step;
        let delay = (now - write.step.due_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.shared.metrics.step_taken(step, delay);
        let dry = write.audit.dry_run;
        let mut failure = None;
        if !dry {
            let signal = match step {
                Step::Warn => None,
                Step::SoftKill => Some(Signal::TERM),
                Step::HardKill | Step::ForceDelete => Some(Signal::KILL),
            };
            if let Some(sig) = signal {
                match self.runtime.signal(&job, sig) {
                    Ok(SignalResult::Sent) => {
                        let delay_ms = (delay * 1e3).round() as i64;
                        tracing::info!(job = %job.id, step = %step, delay_ms, "sent {}", sig_name(sig));
                    }
                    Ok(SignalResult::Gone) => {
                        tracing::info!(job = %job.id, step = %step, "process already gone");
                    }
                    Err(e) => {
                        self.shared.metrics.error("signal");
                        failure = Some(format!("{} failed: {e}", sig_name(sig)));
                    }
                }
            }
            if step == Step::ForceDelete {
                let ws = self.runtime.workspace(&job.id);
                if let Err(e) = crate::runtime::local::remove_tree(&ws) {
                    failure = Some(format!("removing {}: {e}", ws.display()));
                }
                self.finish(
                    &mut job,
                    Outcome::Terminated,
                    None,
                    None,
                    "force deleted: the process did not exit after SIGKILL".into(),
                    now,
                );
            }
        } else {
            tracing::info!(job = %job.id, step = %step, "dry-run: decided, not carried out");
        }
        if terminating {
            self.fire_hooks("terminating", &job, Some(why), now);
        }
        // The step's hooks get the reason its audit row has (`JOBWARDEN_REASON`, `reason`).
        self.fire_hooks(step.as_str(), &job, Some(write.audit.reason.clone()), now);
        if let Some(err) = failure {
            let a = self.audit(&job, step.into(), "step failed".into(), Some(err), now);
            self.append_audit(vec![a]).await;
        }
        if step == Step::ForceDelete && !dry {
            // The only step that settles the job: its outcome is saved on its own.
            self.persist(&job).await;
        }
        self.jobs.insert(job.id.clone(), job);
    }

    /// TTL expired: queue removal of the workspace (now) and of the log (by its own
    /// retention); the job moves to `cleanup`.
    async fn schedule_cleanup(
        &mut self,
        id: &JobId,
        due_at: Timestamp,
        finish_in_future: bool,
        now: Timestamp,
    ) -> bool {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return true;
        };
        if finish_in_future {
            tracing::warn!(job = %id, "finish time is in the future (clock skew); cleanup deferred to finish + TTL");
        }
        let dry = self.shared.dry_run || job.dry_run;
        let ttl = retention::ttl_for(&job, &self.shared.config.retention);
        if dry {
            let mut a = self.audit(
                &job,
                AuditAction::TtlCleanup,
                format!(
                    "TTL {} expired at {}; would remove workspace and logs",
                    crate::duration::format_duration(ttl),
                    fmt_ts(due_at)
                ),
                None,
                now,
            );
            a.dry_run = true;
            a.resource_type = "workspace".into();
            a.resource_name = self.runtime.workspace(id).display().to_string();
            job.stage = Stage::Cleanup;
            job.reason = Some("dry-run: cleanup decided, not carried out".into());
            if let Err(e) = self.shared.store.update_job_with_audit(&job, &[a]).await {
                self.store_error("recording a dry-run cleanup", &e);
                return false;
            }
            self.shared.metrics.job_to_cleanup();
            self.jobs.remove(id);
            self.sched.cancel(id);
            return true;
        }
        let mut tasks = self.cleanup_tasks(&job, now);
        // A job settled and cleaned within one pass (a mark_failed or force_delete with a
        // TTL already expired) never had its log and artifact retention queued: queue it
        // with the cleanup. (Pending duplicates are merged by the queue.)
        let key = (job.id.clone(), job.run_id.clone());
        let mut refused = None;
        if !self.retention_queued.contains(&key) {
            let (more, r) = self.retention_plan(&job, now);
            tasks.extend(more);
            refused = r.map(|e| super::worker::refused_prefix_audit(&job, &e, false, now));
        }
        job.stage = Stage::Cleanup;
        // Stage first, then tasks: a crash in between leaves a `cleanup` job whose tasks
        // are re-queued on the next start (see `load`), never tasks for a job we forgot.
        if let Err(e) = self.shared.store.update_job(&job).await {
            self.store_error("moving a job to cleanup", &e);
            return false;
        }
        if let Err(e) = self.shared.store.enqueue_many(&tasks, now).await {
            self.store_error("queueing cleanup", &e);
            job.stage = self.jobs.get(id).map(|j| j.stage).unwrap_or(Stage::Failed);
            let _ = self.shared.store.update_job(&job).await;
            return false;
        }
        if let Some(a) = refused {
            self.shared.metrics.error("artifact_key");
            self.append_audit(vec![a]).await;
        }
        self.shared.metrics.job_to_cleanup();
        self.fire_hooks("cleanup", &job, None, now);
        self.shared.queue_kick.notify_waiters();
        self.jobs.remove(id);
        self.sched.cancel(id);
        // The job leaves memory: so does the note that its retention is queued.
        self.retention_queued.remove(&key);
        true
    }

    /// The queue task that removes a finished job's workspace, queued when its TTL expired.
    fn cleanup_tasks(&self, job: &JobRecord, now: Timestamp) -> Vec<NewTask> {
        let id = &job.id;
        let ttl = retention::ttl_for(job, &self.shared.config.retention);
        vec![NewTask {
            dedup_key: format!("workspace:{}:{}", id, job.run_id),
            job_id: Some(id.to_string()),
            kind: "workspace".into(),
            resource_name: self.runtime.workspace(id).display().to_string(),
            payload: serde_json::json!({ "run_id": job.run_id, "ttl_seconds": ttl.as_secs() }),
            priority: 10,
            scheduled_at: now,
            max_attempts: self.shared.config.queue.max_attempts,
        }]
    }

    /// The tasks queued as soon as a run finished, each due by its own retention: the local
    /// log file (`[retention.artifacts] logs`) and the object-storage prefixes. They do not
    /// wait for the workspace TTL, which may be longer or shorter.
    fn retention_tasks(&self, job: &JobRecord, now: Timestamp) -> Vec<NewTask> {
        self.retention_plan(job, now).0
    }

    /// [`Self::retention_tasks`], with the refusal of a `jobs/<org>/` prefix that cannot be
    /// built ([`super::worker::ArtifactPlan`]).
    fn retention_plan(
        &self,
        job: &JobRecord,
        now: Timestamp,
    ) -> (Vec<NewTask>, Option<crate::artifacts::Error>) {
        let id = &job.id;
        let finished = job.finished_at.unwrap_or(now);
        let log_at = add(finished, self.shared.config.retention.artifacts.logs.0);
        let plan = super::worker::artifact_plan(job, &self.shared.config, now);
        let mut tasks = plan.tasks;
        tasks.push(NewTask {
            dedup_key: format!("log:{id}"),
            job_id: Some(id.to_string()),
            kind: "log".into(),
            resource_name: self.runtime.log_path(id).display().to_string(),
            payload: serde_json::json!({ "run_id": job.run_id }),
            priority: 0,
            scheduled_at: log_at.max(now),
            max_attempts: self.shared.config.queue.max_attempts,
        });
        (tasks, plan.refused)
    }

    /// Queues a finished run's retention tasks once per daemon lifetime (the queue
    /// de-duplicates pending tasks across restarts; a re-run of a finished one deletes nothing
    /// and says so in the audit log).
    async fn queue_retention(&mut self, id: &JobId, now: Timestamp) {
        self.queue_retention_of(std::slice::from_ref(id), now).await;
    }

    /// [`Self::queue_retention`] for many jobs with one write transaction.
    async fn queue_retention_of(&mut self, ids: &[JobId], now: Timestamp) {
        let mut keys = Vec::new();
        let mut tasks = Vec::new();
        let mut refusals = Vec::new();
        for id in ids {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            let key = (job.id.clone(), job.run_id.clone());
            if job.stage.is_active()
                || job.finished_at.is_none()
                || job.dry_run
                || self.shared.dry_run
                || self.retention_queued.contains(&key)
            {
                continue;
            }
            let (job_tasks, refused) = self.retention_plan(job, now);
            tasks.extend(job_tasks);
            if let Some(e) = refused {
                refusals.push(super::worker::refused_prefix_audit(job, &e, false, now));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return;
        }
        match self.shared.store.enqueue_many(&tasks, now).await {
            Ok(_) => {
                self.retention_queued.extend(keys);
                self.shared.queue_kick.notify_waiters();
            }
            Err(e) => {
                self.store_error("queueing log and artifact retention", &e);
                return;
            }
        }
        // Never silence: a job whose artifacts can never be cleaned says so in the audit
        // log (once per run and daemon start) and in `jobwarden_errors_total{kind="artifact_key"}`.
        for a in &refusals {
            self.shared.metrics.error("artifact_key");
            tracing::error!(job = %a.job_id, "{}: {}", a.reason, a.error_message.as_deref().unwrap_or_default());
        }
        if !refusals.is_empty() {
            self.append_audit(refusals).await;
        }
    }

    async fn recover(&mut self, id: &JobId, attempt: u32, reason: String, now: Timestamp) -> bool {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return true;
        };
        let dry = self.shared.dry_run || job.dry_run;
        let mut a = self.audit(
            &job,
            AuditAction::Recover,
            format!("recovery attempt {attempt}: {reason}"),
            None,
            now,
        );
        a.dry_run = dry;
        if dry {
            // Record the decision and stop re-deciding it: count the attempt.
            job.recovery_attempts = attempt;
            if let Err(e) = self.shared.store.update_job_with_audit(&job, &[a]).await {
                self.store_error("recording a recovery", &e);
                return false;
            }
            self.jobs.insert(id.clone(), job);
            return true;
        }
        if let Err(e) = self.shared.store.append_audit(&[a]).await {
            self.store_error("auditing a recovery", &e);
            return false;
        }
        // Stop whatever is left of the old run.
        let _ = self.runtime.signal(&job, Signal::KILL);
        job.run_id = ulid::Ulid::from_parts(
            u64::try_from(now.timestamp_millis()).unwrap_or(0),
            rand::random::<u128>(),
        )
        .to_string()
        .to_ascii_lowercase();
        job.attempt += 1;
        job.recovery_attempts = attempt;
        job.steps.clear();
        job.last_heartbeat = None;
        job.finished_at = None;
        job.outcome = None;
        job.exit_code = None;
        job.signal = None;
        job.reason = Some(format!("recovered (attempt {attempt}): {reason}"));
        self.start_run(&mut job, now);
        self.persist(&job).await;
        self.jobs.insert(id.clone(), job);
        true
    }

    async fn mark_failed(&mut self, id: &JobId, reason: String, now: Timestamp) -> bool {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return true;
        };
        let dry = self.shared.dry_run || job.dry_run;
        let mut a = self.audit(&job, AuditAction::MarkFailed, reason.clone(), None, now);
        a.dry_run = dry;
        if dry {
            if let Err(e) = self.shared.store.append_audit(&[a]).await {
                self.store_error("auditing mark_failed", &e);
                return false;
            }
            // Decided once; do not decide it again every wake-up.
            job.heartbeat_timeout = None;
            self.jobs.insert(id.clone(), job);
            return true;
        }
        let _ = self.runtime.signal(&job, Signal::KILL);
        self.finish(&mut job, Outcome::Failed, None, None, reason, now);
        if let Err(e) = self.shared.store.update_job_with_audit(&job, &[a]).await {
            self.store_error("marking a job failed", &e);
            return false;
        }
        self.jobs.insert(id.clone(), job);
        true
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
        if rows.is_empty() {
            return true;
        }
        let n = rows.len() as u64;
        match self.shared.store.append_audit(&rows).await {
            Ok(()) => {
                self.shared.metrics.audit_written(n);
                true
            }
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

    fn audit(
        &self,
        job: &JobRecord,
        action: AuditAction,
        reason: String,
        error: Option<String>,
        now: Timestamp,
    ) -> AuditEntry {
        AuditEntry {
            id: 0,
            timestamp: now,
            job_id: job.id.to_string(),
            resource_type: "process_group".into(),
            resource_name: job.pid.map(|p| p.to_string()).unwrap_or_default(),
            action,
            reason,
            initiated_by: "jobwarden".into(),
            success: error.is_none(),
            error_message: error,
            dry_run: self.shared.dry_run || job.dry_run,
            details: None,
        }
    }

    /// Fires hooks for `event` in the background: hooks never block the ladder.
    fn fire_hooks(&self, event: &str, job: &JobRecord, reason: Option<String>, now: Timestamp) {
        if !self.shared.hooks.has(event) {
            return;
        }
        let payload = HookPayload::new(event, job, reason, now);
        let shared = self.shared.clone();
        let job = job.clone();
        tokio::spawn(async move {
            shared
                .hooks
                .fire_and_audit(&payload, &job, &shared.store, &shared.metrics)
                .await;
        });
    }
}

fn sig_name(s: Signal) -> &'static str {
    if s == Signal::TERM {
        "SIGTERM"
    } else if s == Signal::KILL {
        "SIGKILL"
    } else {
        "signal"
    }
}
