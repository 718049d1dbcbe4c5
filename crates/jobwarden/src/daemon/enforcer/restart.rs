//! The enforcer's start: the jobs the store holds are loaded, the processes still running
//! re-adopted (the strongest kill step taken re-sent once, audited, since a crash may have
//! fallen between its record and its signal), those that vanished settled or handed to
//! recovery, and the tasks of jobs in `cleanup` queued again.

use rustix::process::Signal;

use super::{Enforcer, STORE_RETRY};
use crate::clock;
use crate::engine::lifecycle;
use crate::engine::plan;
use crate::model::{AuditAction, JobId, Outcome, RuntimeKind, Stage, Step, Timestamp};
use crate::runtime::local::{Adopted, sig_name};
use crate::store::JobFilter;

impl Enforcer {
    /// Loads active and finished-but-not-cleaned jobs; re-adopts running processes.
    pub(super) async fn load(&mut self) {
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
                // Jobs moved to cleanup by a daemon that queued the tasks after the stage:
                // queue them again; the queue de-duplicates tasks that are still pending.
                let mut finished = job.clone();
                finished.stage = lifecycle::stage_after(job.outcome.unwrap_or(Outcome::Lost));
                let ttl_due = job.finished_at.unwrap_or(now);
                requeue.extend(
                    plan::cleanup_plan(&finished, ttl_due, false, &self.shared.policy, now, false)
                        .tasks,
                );
            }
            if matches!(job.stage, Stage::Cleanup | Stage::Cleaned) {
                continue;
            }
            let id = job.id.clone();
            let active = job.stage.is_active();
            self.jobs.insert(job);
            if active {
                self.readopt(&id, now).await;
            }
            self.jobs.arm(&id, now);
        }
        if !requeue.is_empty() {
            match self.executor.enqueue(&requeue, now).await {
                Ok(()) => self.shared.cleanup.kick.notify_waiters(),
                Err(e) => self.store_error("re-queueing interrupted cleanups", &e),
            }
        }
        // The gauges are filled before the daemon says it is loaded (`/readyz`).
        self.update_stage_metrics();
        tracing::info!(jobs = self.jobs.len(), "loaded jobs from the store");
    }

    pub(super) async fn readopt(&mut self, id: &JobId, now: Timestamp) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if job.pid.is_some() && self.executor.runtime().adopt(&job) == Adopted::Running {
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
                    && let Err(e) = self.executor.runtime().signal(&job, sig)
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
            self.jobs.insert(job);
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
            (None, None),
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
        self.jobs.insert(job);
    }
}
