//! Cleanup workers: drain the durable queue.
//!
//! Each worker claims a small batch of due tasks with a lease, carries each out, and
//! completes it together with its audit row in one transaction (so an action is never
//! unaudited: a crash after the action re-runs the task, which finds the resource gone and
//! audits that). A failure is retried with exponential backoff and jitter, then
//! dead-lettered. Every deletion takes a token from the shared rate limiter first.
//!
//! Paths are never taken from the task: they are rebuilt from the validated job id under
//! the data directory, so a corrupt row cannot point a worker at `/`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock;
use crate::engine::retention::cleanup_applies;
use crate::model::{AuditAction, AuditEntry, JobId, Stage, Timestamp};
use crate::runtime::local::{LocalKind, remove_file, remove_tree};

use super::Context;
use crate::store::{Backoff, FailOutcome, Jitter, Task};

/// How many tasks a worker claims at once.
const BATCH: u32 = 16;
/// Longest sleep between queue checks: due work starts within this.
const MAX_IDLE: Duration = Duration::from_millis(500);

/// What carrying out a task produced.
struct Done {
    audit: Vec<AuditEntry>,
}

/// How often a worker refreshes the queue-depth gauges.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Starts `[queue] workers` workers named `<name>-w<i>` (the name must differ between
/// processes sharing a store: a lease is held by name).
pub fn spawn(
    shared: &Arc<Context>,
    name: &str,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..shared.queue.workers)
        .map(|i| {
            tokio::spawn(run(
                shared.clone(),
                format!("{name}-w{i}"),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// Runs one worker until shutdown.
pub async fn run(shared: Arc<Context>, name: String, mut shutdown: watch::Receiver<bool>) {
    let q = &shared.queue;
    let backoff = Backoff {
        initial: q.backoff_initial.0,
        multiplier: 2.0,
        max: q.backoff_max.0,
        jitter: Jitter::Equal,
    };
    let lease = q.lease.0;
    let mut stats_at: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = clock::now();
        // A kick usually means "tasks were queued for later" (every finished job queues its
        // retention): one indexed read says so, where a claim would take the write lock.
        let due = match shared.store.next_due_at().await {
            Ok(next) => next.is_some_and(|at| at <= now),
            Err(_) => true, // the claim reports the store error
        };
        let tasks = if !due {
            Vec::new()
        } else {
            match shared.store.claim(&name, BATCH, lease, now).await {
                Ok(t) => t,
                Err(e) => {
                    shared.metrics.error("store");
                    shared.health.set_ok(false);
                    tracing::warn!(worker = %name, "claiming cleanup tasks: {e}");
                    Vec::new()
                }
            }
        };
        // The queue gauges count every task (a scan): refreshed at most every STATS_EVERY,
        // not on every kick.
        if stats_at.is_none_or(|at| at.elapsed() >= STATS_EVERY)
            && let Ok(stats) = shared.store.queue_stats().await
        {
            stats_at = Some(tokio::time::Instant::now());
            shared
                .metrics
                .set_queue(stats.pending + stats.running, stats.dead);
        }
        if tasks.is_empty() {
            let wait = match shared.store.next_due_at().await {
                Ok(Some(at)) => crate::model::since(at, clock::now()).min(MAX_IDLE),
                _ => MAX_IDLE,
            };
            tokio::select! {
                _ = crate::daemon::stopped(&mut shutdown) => return,
                _ = shared.kick.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        for task in tasks {
            if !still_held(&shared, &name, &task, lease).await {
                continue;
            }
            let result = execute(&shared, &task).await;
            let now = clock::now();
            match result {
                Ok(done) => {
                    let n = done.audit.len() as u64;
                    match shared
                        .store
                        .complete(task.id, &name, &done.audit, now)
                        .await
                    {
                        Ok(true) => {
                            shared.metrics.audit_written(n);
                            shared.metrics.cleanup_task(&task.kind, "ok");
                            announce(&shared, &task, "done", now);
                        }
                        Ok(false) => tracing::warn!(
                            task = task.id,
                            "lease lost before completion; the new holder re-runs it"
                        ),
                        Err(e) => {
                            shared.metrics.error("store");
                            tracing::error!(task = task.id, "completing task: {e}");
                        }
                    }
                }
                Err(err) => {
                    // The task's `last_error` and the audit row keep the error's words.
                    let err = err.to_string();
                    shared.metrics.error("cleanup");
                    let audit = vec![failure_audit(&shared, &task, &err, now)];
                    match shared
                        .store
                        .fail(task.id, &name, &err, &audit, now, &backoff)
                        .await
                    {
                        Ok(FailOutcome::Retry(at)) => {
                            shared.metrics.cleanup_task(&task.kind, "retry");
                            tracing::warn!(task = task.id, kind = %task.kind, "failed: {err}; retry at {}", crate::model::fmt_ts(at));
                        }
                        Ok(FailOutcome::DeadLetter) => {
                            shared.metrics.cleanup_task(&task.kind, "dead");
                            announce(&shared, &task, "dead", now);
                            tracing::error!(task = task.id, kind = %task.kind, "failed: {err}; dead-lettered after {} attempts", task.attempts);
                        }
                        Ok(FailOutcome::LeaseLost) => {}
                        Err(e) => tracing::error!(task = task.id, "recording failure: {e}"),
                    }
                }
            }
        }
    }
}

/// Publishes a task's end (`done` or `dead`) on the live event bus.
fn announce(shared: &Context, task: &Task, result: &'static str, at: Timestamp) {
    shared.events.publish(crate::events::Event::Task {
        task_id: task.id,
        kind: task.kind.clone(),
        job_id: task.job_id.clone(),
        result,
        at,
    });
}

/// Whether this worker may still carry out `task`, claimed earlier in a batch: a task whose
/// lease is more than half used is extended first (earlier tasks of the batch were slow), and
/// one whose lease has passed to another worker is skipped, since that worker runs it. Without
/// this, a slow batch outlives its leases and every task in it runs twice.
async fn still_held(shared: &Context, name: &str, task: &Task, lease: Duration) -> bool {
    let now = clock::now();
    let Some(expires) = task.lease_expires_at else {
        return true;
    };
    if crate::model::since(expires, now) > lease / 2 {
        return true;
    }
    match shared.store.extend_lease(task.id, name, lease, now).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                task = task.id,
                "lease passed to another worker before the task started; it runs it"
            );
            false
        }
        Err(e) => {
            shared.metrics.error("store");
            shared.health.set_ok(false);
            tracing::warn!(
                task = task.id,
                "extending the lease: {e}; the task waits for its lease to expire"
            );
            false
        }
    }
}

/// The audit row of a failed attempt, naming the resource as the row of a successful one does
/// (so that one resource's history is one query).
fn failure_audit(shared: &Context, task: &Task, err: &str, now: Timestamp) -> AuditEntry {
    let (resource_type, resource_name) = match task.kind.as_str() {
        "artifact_prefix" | "orphan_prefix" => (
            "object_prefix".to_owned(),
            format!(
                "{}/{}",
                shared.artifacts.location().trim_end_matches('/'),
                task.resource_name
            ),
        ),
        "orphan_workspace" => ("workspace".to_owned(), task.resource_name.clone()),
        "orphan_log" => ("log".to_owned(), task.resource_name.clone()),
        other => (other.to_owned(), task.resource_name.clone()),
    };
    AuditEntry {
        id: 0,
        timestamp: now,
        job_id: task.job_id.clone().unwrap_or_default(),
        resource_type,
        resource_name,
        action: if task.kind.starts_with("orphan_") {
            AuditAction::OrphanCleanup
        } else {
            AuditAction::TtlCleanup
        },
        reason: format!("cleanup attempt {} of {}", task.attempts, task.max_attempts),
        initiated_by: "jobwarden".into(),
        success: false,
        error_message: Some(err.to_owned()),
        dry_run: shared.dry_run,
        details: None,
    }
}

async fn execute(shared: &Context, task: &Task) -> crate::Result<Done> {
    let job_id = task
        .job_id
        .as_deref()
        .ok_or_else(|| crate::Error::invalid(format!("task {}", task.id), "it has no job id"))
        .and_then(|s| {
            JobId::parse(s)
                .map_err(|e| crate::Error::invalid(format!("task {}", task.id), e.to_string()))
        })?;
    let now = clock::now();
    let audit =
        |action: AuditAction, resource_type: &str, path: String, reason: String, bytes: u64| {
            AuditEntry {
                id: 0,
                timestamp: now,
                job_id: job_id.to_string(),
                resource_type: resource_type.to_owned(),
                resource_name: path,
                action,
                reason,
                initiated_by: "jobwarden".into(),
                success: true,
                error_message: None,
                dry_run: shared.dry_run,
                details: Some(serde_json::json!({ "bytes": bytes })),
            }
        };
    match task.kind.as_str() {
        "workspace" | "log" => {
            let run_id = task
                .payload
                .get("run_id")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let job = shared.store.get_job(&job_id).await?;
            let Some(mut job) = job else {
                return Err(crate::Error::invalid(
                    format!("job {job_id}"),
                    "it is not in the store",
                ));
            };
            let (path, rtype) = if task.kind == "workspace" {
                (shared.layout.workspace(&job_id), "workspace")
            } else {
                (shared.layout.log(&job_id), "log")
            };
            // A retried run is never cleaned by an earlier run's TTL; the log outlives runs.
            if task.kind == "workspace" && !cleanup_applies(run_id, &job) {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::TtlCleanup,
                        rtype,
                        path.display().to_string(),
                        format!("skipped: run {run_id} is no longer the job's finished run"),
                        0,
                    )],
                });
            }
            if task.kind == "log" && job.stage.is_active() {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::TtlCleanup,
                        rtype,
                        path.display().to_string(),
                        "skipped: the job is running again".into(),
                        0,
                    )],
                });
            }
            if shared.dry_run {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::TtlCleanup,
                        rtype,
                        path.display().to_string(),
                        "dry-run: would remove".into(),
                        0,
                    )],
                });
            }
            shared.deletions.take().await;
            let bytes = if task.kind == "workspace" {
                remove_tree(&path)
            } else {
                remove_file(&path)
            }
            .map_err(|e| crate::Error::file(&path, e))?;
            if task.kind == "workspace" && job.stage == Stage::Cleanup {
                // Before the completion: a crash in between re-runs an idempotent removal.
                job.stage = Stage::Cleaned;
                shared.store.update_job(&job).await?;
                shared.metrics.job_cleaned();
            }
            Ok(Done {
                audit: vec![audit(
                    AuditAction::TtlCleanup,
                    rtype,
                    path.display().to_string(),
                    format!("TTL expired; removed ({bytes} bytes)"),
                    bytes,
                )],
            })
        }
        "orphan_workspace" | "orphan_log" => {
            let (path, local) = if task.kind == "orphan_workspace" {
                (shared.layout.workspace(&job_id), LocalKind::Workspace)
            } else {
                (shared.layout.log(&job_id), LocalKind::Log)
            };
            let rtype = local.as_str();
            // Re-check at execution time what the scan checked: only a real directory (or
            // regular file) named by an id jobwarden generates, never a symlink or a name it
            // could not have made (a task queued by an older version, a swapped entry).
            let ours = match std::fs::symlink_metadata(&path) {
                Ok(meta) => path
                    .file_name()
                    .and_then(|name| local.job_id(name, meta.file_type()))
                    .is_some_and(|id| id == job_id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(crate::Error::file(&path, e)),
            };
            if !ours {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::OrphanCleanup,
                        rtype,
                        path.display().to_string(),
                        format!(
                            "skipped: not a job's {rtype} (jobwarden only removes what it could have created: a real directory or file named by an id it generates)"
                        ),
                        0,
                    )],
                });
            }
            // Re-check at execution time: the job may have appeared since the scan. A store
            // error fails the task (retried later), never deletes.
            let known = shared.store.known_job_ids(&[job_id.to_string()]).await?;
            if known.contains(job_id.as_str()) {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::OrphanCleanup,
                        rtype,
                        path.display().to_string(),
                        "skipped: the job is known now".into(),
                        0,
                    )],
                });
            }
            if shared.dry_run {
                return Ok(Done {
                    audit: vec![audit(
                        AuditAction::OrphanCleanup,
                        rtype,
                        path.display().to_string(),
                        "dry-run: would remove orphan".into(),
                        0,
                    )],
                });
            }
            shared.deletions.take().await;
            let bytes = if task.kind == "orphan_workspace" {
                remove_tree(&path)
            } else {
                remove_file(&path)
            }
            .map_err(|e| crate::Error::file(&path, e))?;
            Ok(Done {
                audit: vec![audit(
                    AuditAction::OrphanCleanup,
                    rtype,
                    path.display().to_string(),
                    format!("no job {job_id} in the store; removed ({bytes} bytes)"),
                    bytes,
                )],
            })
        }
        "artifact_prefix" => {
            let planned: crate::artifacts::retention::RetentionTask =
                serde_json::from_value(task.payload.clone()).map_err(|e| {
                    crate::Error::invalid(format!("task {} payload", task.id), e.to_string())
                })?;
            let job = shared.store.get_job(&job_id).await?.ok_or_else(|| {
                crate::Error::invalid(format!("job {job_id}"), "it is not in the store")
            })?;
            let mut a = audit(
                AuditAction::TtlCleanup,
                "object_prefix",
                format!(
                    "{}/{}",
                    shared.artifacts.location().trim_end_matches('/'),
                    planned.prefix
                ),
                String::new(),
                0,
            );
            if !planned.still_applies(&job) {
                a.reason = format!(
                    "skipped: run {} is no longer the job's finished run",
                    planned.run_id
                );
                return Ok(Done { audit: vec![a] });
            }
            if !shared.dry_run {
                shared.deletions.take().await;
            }
            let report = crate::artifacts::delete_prefix(
                &shared.artifacts,
                &object_store::path::Path::from(planned.prefix.as_str()),
                crate::artifacts::DEFAULT_PAGE_SIZE,
                shared.dry_run,
            )
            .await?;
            a.reason = format!(
                "{} retention expired; {} {} objects ({} bytes)",
                planned.kind.root(),
                if shared.dry_run {
                    "would delete"
                } else {
                    "deleted"
                },
                report.objects,
                report.bytes
            );
            a.details =
                Some(serde_json::json!({ "objects": report.objects, "bytes": report.bytes }));
            // A prefix the job never wrote: nothing was deleted, so there is nothing to audit.
            // Unless this is a retry: an earlier attempt may have deleted the objects and been
            // cut short (crash, lost lease) before its completion and audit row were written,
            // and then this row is the only trace of the deletion.
            let audit = if report.objects == 0 && !report.dry_run && task.attempts <= 1 {
                vec![]
            } else {
                if report.objects == 0 && task.attempts > 1 {
                    a.reason.push_str(&format!(
                        "; attempt {}: an earlier attempt may have deleted them",
                        task.attempts
                    ));
                }
                vec![a]
            };
            Ok(Done { audit })
        }
        "orphan_prefix" => {
            let orphan: crate::artifacts::orphans::OrphanPrefix =
                serde_json::from_value(task.payload.clone()).map_err(|e| {
                    crate::Error::invalid(format!("task {} payload", task.id), e.to_string())
                })?;
            if !shared.dry_run {
                shared.deletions.take().await;
            }
            let outcome = crate::artifacts::orphans::delete_orphan(
                &shared.artifacts,
                &orphan,
                &crate::artifacts::orphans::StoreKnown(&shared.store),
                shared.artifact_min_age,
                now,
                crate::artifacts::DEFAULT_PAGE_SIZE,
                shared.dry_run,
            )
            .await?;
            let mut a = audit(
                AuditAction::OrphanCleanup,
                "object_prefix",
                format!(
                    "{}/{}",
                    shared.artifacts.location().trim_end_matches('/'),
                    orphan.prefix
                ),
                String::new(),
                0,
            );
            match outcome {
                crate::artifacts::orphans::OrphanDeletion::Deleted(r) => {
                    a.reason = format!(
                        "no job {job_id} in the store; {} {} objects ({} bytes)",
                        if shared.dry_run {
                            "would delete"
                        } else {
                            "deleted"
                        },
                        r.objects,
                        r.bytes
                    );
                    a.details = Some(serde_json::json!({ "objects": r.objects, "bytes": r.bytes }));
                }
                crate::artifacts::orphans::OrphanDeletion::NowKnown => {
                    a.reason = "skipped: the job is known now".into();
                }
                crate::artifacts::orphans::OrphanDeletion::TooYoung { young_objects } => {
                    a.reason = format!(
                        "skipped: {young_objects} objects are younger than the minimum age now"
                    );
                }
            }
            Ok(Done { audit: vec![a] })
        }
        other => Err(crate::Error::invalid(
            format!("task {}", task.id),
            format!("unknown task kind {other:?}"),
        )),
    }
}
