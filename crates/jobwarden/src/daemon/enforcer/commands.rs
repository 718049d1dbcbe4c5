//! The enforcer's commands: submit (record, pre_start hooks, start), cancel (the soft kill
//! now), heartbeats; and the first start of a job's process.

use rustix::process::Signal;
use tokio::sync::oneshot;

use super::{Command, CommandError, Enforcer, PreStarted};
use crate::api_types::SubmitRequest;
use crate::clock;
use crate::engine::plan;
use crate::hooks::HookPayload;
use crate::model::{AuditAction, AuditEntry, JobId, JobRecord, Outcome, RuntimeKind, Timestamp};
use crate::policy::{JobSettings, resolve};

impl Enforcer {
    pub(super) async fn on_command(&mut self, cmd: Command) {
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
    pub(super) async fn submit(
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
        if !self.shared.hooks.hooks().has("pre_start") {
            let _ = reply.send(self.start_new_job(job).await);
            return;
        }
        let shared = self.shared.clone();
        let done = self.pre_started_tx.clone();
        self.starting.insert(job.id.clone(), false);
        tokio::spawn(async move {
            let payload = HookPayload::new("pre_start", &job, None, clock::now());
            let outcomes = shared.hooks.hooks().fire(&payload).await;
            let _ = done.send(PreStarted {
                job,
                outcomes,
                reply,
            });
        });
    }

    /// pre_start hooks have run: audit them, then start the job or fail it (veto).
    pub(super) async fn after_pre_start(&mut self, p: PreStarted) {
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
            self.finish(&mut job, outcome, (None, None), reason, now);
            self.persist(&job).await;
            self.jobs.insert(job.clone());
            self.jobs.arm(&id, now);
            Ok(job)
        } else {
            self.start_new_job(job).await
        };
        let _ = reply.send(answer);
    }

    /// Validates the store is up, resolves the policy and inserts the job (stage pre_start).
    pub(super) async fn record_new_job(
        &mut self,
        req: SubmitRequest,
    ) -> Result<JobRecord, CommandError> {
        if !self.shared.health.is_ok() && self.shared.store.ping().await.is_err() {
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
        let run_id = crate::runtime::local::new_run_id(now);
        let job = JobRecord {
            org: req.org.clone(),
            job_type: req.job_type.clone(),
            reason: resolved
                .capped_by
                .map(|c| format!("timeout capped by {}", c.words())),
            timeout: resolved.timeout,
            grace: resolved.grace,
            ttl: resolved.ttl,
            heartbeat_timeout: resolved.heartbeat_timeout,
            spec: serde_json::json!({
                "command": req.command,
                crate::policy::Resolution::KEY: crate::policy::Resolution::of(&resolved).to_json(),
            }),
            dry_run: self.shared.dry_run,
            ..JobRecord::new(id.clone(), run_id, RuntimeKind::Local, name, now)
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
    pub(super) async fn start_new_job(
        &mut self,
        mut job: JobRecord,
    ) -> Result<JobRecord, CommandError> {
        let id = job.id.clone();
        self.start_run(&mut job, clock::now());
        if let Err(e) = self.shared.store.update_job(&job).await {
            self.store_error("recording a job's start", &e);
            let now = clock::now();
            if job.pid.is_some() {
                match self.executor.runtime().signal(&job, Signal::KILL) {
                    Ok(_) => tracing::warn!(job = %id, "killed: its start could not be recorded"),
                    Err(err) => {
                        tracing::error!(job = %id, "killing a job whose start could not be recorded: {err}")
                    }
                }
            }
            let reason = format!("its start could not be recorded, so it was killed: {e}");
            self.finish(&mut job, Outcome::Failed, (None, None), reason, now);
            // Best effort; if this fails too, the next start finds the job without a pid and
            // marks it lost.
            self.persist(&job).await;
            self.jobs.insert(job);
            self.jobs.arm(&id, now);
            return Err(CommandError::new(
                503,
                format!("store: {e}; job {id} was not started (its start could not be recorded)"),
            ));
        }
        self.shared.set_store_ok(true);
        self.jobs.insert(job.clone());
        self.jobs.arm(&id, clock::now());
        self.flush_early_exits().await;
        Ok(self.jobs.get(&id).unwrap_or(job))
    }

    /// Starts the job's first run; its `running` hooks, or a failed start settled.
    pub(super) fn start_run(&self, job: &mut JobRecord, now: Timestamp) {
        match self.executor.runtime().start(job, now) {
            Ok(()) => self.executor.fire(
                job,
                &[plan::HookEvent {
                    event: "running",
                    reason: None,
                }],
                now,
            ),
            Err(e) => {
                tracing::warn!(job = %job.id, "start failed: {e}");
                let reason = format!("could not start: {e}");
                self.finish(job, Outcome::Failed, (None, None), reason, now);
            }
        }
    }

    pub(super) async fn flush_early_exits(&mut self) {
        let pending = std::mem::take(&mut self.early_exits);
        self.on_exits(pending).await;
    }

    pub(super) async fn cancel(&mut self, id: &JobId) -> Result<JobRecord, CommandError> {
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
        let Some(job) = self.jobs.get(id) else {
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
        if let Some(step) = plan::cancel_plan(&job, now, now, self.dry(&job)) {
            self.take_steps(vec![(job.clone(), step)], now).await;
        }
        self.reschedule(id, clock::now());
        self.jobs
            .get(id)
            .ok_or_else(|| CommandError::new(404, format!("no job with id {id}")))
    }

    pub(super) async fn heartbeat(&mut self, id: &JobId) -> Result<(), CommandError> {
        let now = clock::now();
        match self.shared.store.record_heartbeat(id, now).await {
            Ok(true) => {}
            Ok(false) => return Err(CommandError::new(404, format!("no job with id {id}"))),
            Err(e) => {
                self.store_error("recording a heartbeat", &e);
                return Err(CommandError::new(503, format!("store: {e}")));
            }
        }
        // Only the heartbeat moves; the deadline never does.
        if self.jobs.set_heartbeat(id, now) {
            self.reschedule(id, now);
        }
        Ok(())
    }
}
