//! The PostgreSQL backend: the SQL for jobs, the queue and the audit log.
//!
//! Claims are one statement: `SELECT … FOR UPDATE SKIP LOCKED` picks due rows no other
//! transaction holds, and the `UPDATE` around it leases them, so concurrent workers (in one
//! process or many) never claim the same task and never wait on each other. Batched writes
//! bind one array per column and `unnest` them, so a batch is one statement whatever its size.
//!
//! Timestamps are `TIMESTAMPTZ`; JSON is bound as text and cast to `jsonb`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Postgres, QueryBuilder, Row as _};

use crate::model::{self, AuditEntry, JobId, JobRecord, Timestamp};

use super::audit::{self, AuditQuery, audit_insert_columns, decode_audit};
use super::convert::{RowExt, audit_row, job_row, task_row, trunc_micros};
use super::jobs::{
    self, ACTIVE_STAGES_SQL, JobFilter, JobParams, decode_job, decode_steps, job_columns,
    merge_for_update, spec_after_json,
};
use super::queue::{
    self, Backoff, Completion, Enqueued, FailOutcome, NewTask, QueueStats, RequeueOutcome, Task,
    TaskFilter, task_columns,
};
use super::{Error, Result, StepWrite, db, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per store.
const MAX_CONNECTIONS: u32 = 8;

/// A pooled connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// How often `enqueue_many` retries keys whose conflicting task finished between the insert and
/// the look-up of its id.
const ENQUEUE_ROUNDS: usize = 3;

/// A PostgreSQL store. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

type Query = sqlx::query::Query<'static, Postgres, PgArguments>;

fn bind_job(q: Query, p: &JobParams<'_>) -> Query {
    q.bind(p.id)
        .bind(p.run_id)
        .bind(p.attempt)
        .bind(p.runtime)
        .bind(p.namespace)
        .bind(p.name)
        .bind(p.org)
        .bind(p.job_type)
        .bind(p.stage)
        .bind(p.outcome)
        .bind(p.reason)
        .bind(p.created_at)
        .bind(p.started_at)
        .bind(p.finished_at)
        .bind(p.timeout_secs)
        .bind(p.grace_secs)
        .bind(p.ttl_secs)
        .bind(p.deadline)
        .bind(p.steps.as_str())
        .bind(p.heartbeat_timeout_secs)
        .bind(p.last_heartbeat)
        .bind(p.recovery_attempts)
        .bind(p.pid)
        .bind(p.pid_start_ticks)
        .bind(p.exit_code)
        .bind(p.signal)
        .bind(p.spec.as_str())
        .bind(p.dry_run)
}

/// Audit entries as one array per column, for `unnest`. `task` holds the task each row
/// belongs to (used by `complete_many` to keep only the rows of accepted completions).
#[derive(Default)]
struct AuditArrays<'a> {
    task: Vec<i64>,
    ts: Vec<Timestamp>,
    job: Vec<&'a str>,
    rtype: Vec<&'a str>,
    rname: Vec<&'a str>,
    action: Vec<&'static str>,
    reason: Vec<&'a str>,
    by: Vec<&'a str>,
    success: Vec<bool>,
    error: Vec<Option<&'a str>>,
    dry: Vec<bool>,
    details: Vec<Option<String>>,
}

impl<'a> AuditArrays<'a> {
    fn push(&mut self, task: i64, e: &'a AuditEntry) {
        self.task.push(task);
        self.ts.push(e.timestamp);
        self.job.push(&e.job_id);
        self.rtype.push(&e.resource_type);
        self.rname.push(&e.resource_name);
        self.action.push(e.action.as_str());
        self.reason.push(&e.reason);
        self.by.push(&e.initiated_by);
        self.success.push(e.success);
        self.error.push(e.error_message.as_deref());
        self.dry.push(e.dry_run);
        self.details.push(audit::details_text(e));
    }

    /// Binds the eleven column arrays, in [`audit_insert_columns!`] order.
    fn bind(self, q: Query) -> Query {
        q.bind(self.ts)
            .bind(self.job)
            .bind(self.rtype)
            .bind(self.rname)
            .bind(self.action)
            .bind(self.reason)
            .bind(self.by)
            .bind(self.success)
            .bind(self.error)
            .bind(self.dry)
            .bind(self.details)
    }
}

/// Inserts audit rows on `conn` (inside the caller's transaction, if any) with one statement.
async fn insert_audit(conn: &mut PgConnection, entries: &[AuditEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut cols = AuditArrays::default();
    for e in entries {
        cols.push(0, e);
    }
    let q = sqlx::query(concat!(
        "INSERT INTO cleanup_audit_log (",
        audit_insert_columns!(),
        ") SELECT ts, j, rt, rn, a, r, ib, s, em, dr, d::jsonb \
         FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::text[], $8::bool[], $9::text[], $10::bool[], $11::text[]) \
              WITH ORDINALITY AS u(ts, j, rt, rn, a, r, ib, s, em, dr, d, ord) \
         ORDER BY ord"
    ));
    cols.bind(q)
        .execute(conn)
        .await
        .map_err(db(format!("writing {} audit rows", entries.len())))?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out by default: one extra round trip per
            // query. Ping only connections idle long enough to have been cut (server restart,
            // NAT or proxy timeout); a busy connection proves itself with every query.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await
            .map_err(|cause| Error::Open {
                url: shown.clone(),
                cause,
            })?;
        // The migrator takes an advisory lock, so replicas starting together migrate once.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|cause| Error::Migrate { url: shown, cause })?;
        Ok(PgStore { pool })
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("pinging the postgres store"))?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self, op: &str) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(db(format!("{op}: starting a transaction")))
    }

    // ----- jobs -----

    pub(crate) async fn insert_job(&self, job: &JobRecord) -> Result<()> {
        let p = JobParams::new(job, &job.steps, job.last_heartbeat)?;
        let q = sqlx::query(concat!(
            "INSERT INTO jobs (",
            job_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19::jsonb, $20, $21, $22, $23, $24, $25, $26, $27::jsonb, $28)"
        ));
        match bind_job(q, &p).execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                Err(Error::JobExists(job.id.to_string()))
            }
            Err(e) => Err(db(format!("inserting job {}", job.id))(e)),
        }
    }

    pub(crate) async fn update_job(&self, job: &JobRecord, audit: &[AuditEntry]) -> Result<()> {
        let op = format!("updating job {}", job.id);
        let mut tx = self.begin(&op).await?;
        update_job_in(&mut tx, job, audit, &op).await?;
        tx.commit().await.map_err(db(op))
    }

    pub(crate) async fn update_jobs(&self, jobs: &[JobRecord]) -> Result<Vec<Result<()>>> {
        let op = format!("updating {} jobs", jobs.len());
        let mut tx = self.begin(&op).await?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            let op = format!("updating job {}", job.id);
            match update_job_in(&mut tx, job, &[], &op).await {
                Err(e @ Error::Db { .. }) => return Err(e),
                other => results.push(other),
            }
        }
        tx.commit().await.map_err(db(op))?;
        Ok(results)
    }

    pub(crate) async fn get_job(&self, id: &JobId) -> Result<Option<JobRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db(format!("reading job {id}")))?;
        row.map(|r| decode_job(&job_row(&r))).transpose()
    }

    pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE TRUE"
        ));
        if filter.active_only {
            qb.push(" AND stage IN ").push(ACTIVE_STAGES_SQL);
        }
        if let Some(rt) = filter.runtime {
            qb.push(" AND runtime = ").push_bind(rt.as_str());
        }
        if let Some(after) = &filter.after {
            qb.push(" AND id > ").push_bind(after.as_str());
        }
        qb.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing jobs"))?;
        rows.iter().map(|r| decode_job(&job_row(r))).collect()
    }

    pub(crate) async fn known_job_ids(&self, ids: &[String]) -> Result<HashSet<String>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let found: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db(format!("looking up {} job ids", ids.len())))?;
        Ok(found.into_iter().collect())
    }

    pub(crate) async fn job_ids_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM jobs WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing job ids"))
    }

    pub(crate) async fn record_heartbeat(&self, id: &JobId, at: Timestamp) -> Result<bool> {
        // GREATEST ignores NULL, so the first heartbeat is stored as is.
        let r = sqlx::query(
            "UPDATE jobs SET last_heartbeat = GREATEST(last_heartbeat, $2) WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db(format!("recording a heartbeat of job {id}")))?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn record_steps(&self, batch: &[StepWrite]) -> Result<Vec<Result<bool>>> {
        let op = format!("recording {} escalation steps", batch.len());
        let mut tx = self.begin(&op).await?;
        let mut results = Vec::with_capacity(batch.len());
        let mut audit = Vec::new();
        for w in batch {
            let op = format!(
                "recording step {} of job {} run {}",
                w.step.step, w.job_id, w.run_id
            );
            // A query error aborts the whole transaction; "not found" and "stale run" are
            // answers about one step and leave the others to commit.
            match record_step_in(&mut tx, w, &op).await {
                Err(e @ Error::Db { .. }) => return Err(e),
                Ok(true) => {
                    audit.push(w.audit.clone());
                    results.push(Ok(true));
                }
                other => results.push(other),
            }
        }
        // The audit rows of the steps recorded now, in one statement per chunk.
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await.map_err(db(op))?;
        Ok(results)
    }

    // ----- cleanup queue -----

    pub(crate) async fn enqueue_many(
        &self,
        tasks: &[NewTask],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>> {
        tasks.iter().try_for_each(queue::check_new)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let (kept, map) = queue::dedup_batch(tasks);
        let op = format!("enqueueing {} cleanup tasks", tasks.len());
        // No transaction: each insert is one atomic statement, and a retry after a partial
        // failure is harmless because the keys de-duplicate it. Most batches take one round
        // trip.
        let mut inserted: HashMap<String, i64> = HashMap::new();
        let mut existing: HashMap<String, i64> = HashMap::new();
        let mut todo: Vec<&NewTask> = kept.clone();
        // A key can conflict with a task that finishes before we look up its id; then the
        // key is free again and the next round inserts it.
        for _ in 0..ENQUEUE_ROUNDS {
            if todo.is_empty() {
                break;
            }
            let rows = sqlx::query(
                "INSERT INTO cleanup_tasks (dedup_key, job_id, kind, resource_name, payload, \
                   priority, state, scheduled_at, attempts, max_attempts, created_at, updated_at) \
                 SELECT k, j, kd, rn, p::jsonb, pr, 'pending', s, 0, m, $9, $9 \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::bigint[], $7::timestamptz[], $8::bigint[]) \
                      WITH ORDINALITY AS u(k, j, kd, rn, p, pr, s, m, ord) \
                 ORDER BY ord \
                 ON CONFLICT DO NOTHING RETURNING id, dedup_key",
            )
            .bind(
                todo.iter()
                    .map(|t| t.dedup_key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(todo.iter().map(|t| t.job_id.as_deref()).collect::<Vec<_>>())
            .bind(todo.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
            .bind(
                todo.iter()
                    .map(|t| t.resource_name.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                todo.iter()
                    .map(|t| t.payload.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(
                todo.iter()
                    .map(|t| i64::from(t.priority))
                    .collect::<Vec<_>>(),
            )
            .bind(todo.iter().map(|t| t.scheduled_at).collect::<Vec<_>>())
            .bind(
                todo.iter()
                    .map(|t| i64::from(t.max_attempts))
                    .collect::<Vec<_>>(),
            )
            .bind(now)
            .fetch_all(&self.pool)
            .await
            .map_err(db(op.clone()))?;
            for r in rows {
                inserted.insert(
                    r.try_get(1).map_err(db(op.clone()))?,
                    r.try_get(0).map_err(db(op.clone()))?,
                );
            }
            todo.retain(|t| !inserted.contains_key(&t.dedup_key));
            if todo.is_empty() {
                break;
            }
            let rows = sqlx::query(
                "SELECT id, dedup_key FROM cleanup_tasks \
                 WHERE state IN ('pending', 'running') AND dedup_key = ANY($1)",
            )
            .bind(
                todo.iter()
                    .map(|t| t.dedup_key.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db(op.clone()))?;
            for r in rows {
                existing.insert(
                    r.try_get(1).map_err(db(op.clone()))?,
                    r.try_get(0).map_err(db(op.clone()))?,
                );
            }
            todo.retain(|t| !existing.contains_key(&t.dedup_key));
        }
        map.iter()
            .map(|&(k, first)| {
                let key = &kept[k].dedup_key;
                if let Some(&id) = inserted.get(key) {
                    Ok(Enqueued {
                        id,
                        duplicate: !first,
                    })
                } else {
                    existing
                        .get(key)
                        .map(|&id| Enqueued {
                            id,
                            duplicate: true,
                        })
                        .ok_or_else(|| Error::Corrupt {
                            what: format!("cleanup task with dedup_key {key:?}"),
                            problem: "insert kept conflicting but no unfinished task has the key"
                                .into(),
                        })
                }
            })
            .collect()
    }

    pub(crate) async fn claim(
        &self,
        worker: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // `lost`: a worker that died holding the task's last attempt; give up rather than
        // loop. A data-modifying CTE runs even though the main query does not read it, and
        // `picked` excludes those rows itself (all parts see the same snapshot).
        let rows = sqlx::query(
            "WITH lost AS ( \
               UPDATE cleanup_tasks SET state = 'dead', lease_expires_at = NULL, updated_at = $1, \
                 last_error = format('lease of %s expired on the last attempt (%s of %s); \
                                      the worker was lost', lease_owner, attempts, max_attempts) \
               WHERE id IN (SELECT id FROM cleanup_tasks \
                 WHERE state = 'running' AND lease_expires_at <= $1 \
                   AND attempts >= max_attempts \
                 FOR UPDATE SKIP LOCKED) \
               RETURNING id), \
             picked AS ( \
               SELECT id FROM cleanup_tasks \
               WHERE (state = 'pending' AND scheduled_at <= $1) \
                  OR (state = 'running' AND lease_expires_at <= $1 AND attempts < max_attempts) \
               ORDER BY priority DESC, scheduled_at, id \
               LIMIT $4 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE cleanup_tasks t SET attempts = t.attempts + 1, lease_owner = $2, \
               lease_expires_at = $3, updated_at = $1, \
               last_error = CASE WHEN t.state = 'running' \
                 THEN format('lease of %s expired', t.lease_owner) ELSE t.last_error END, \
               state = 'running' \
             FROM picked WHERE t.id = picked.id \
             RETURNING t.*",
        )
        .bind(now)
        .bind(worker)
        .bind(model::add(now, lease))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db(format!("claiming cleanup tasks for worker {worker}")))?;
        let mut tasks = rows
            .iter()
            .map(|r| queue::decode_task(&task_row(r)))
            .collect::<Result<Vec<_>>>()?;
        queue::sort_claimed(&mut tasks);
        Ok(tasks)
    }

    pub(crate) async fn extend_lease(
        &self,
        task_id: i64,
        worker: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE cleanup_tasks SET lease_expires_at = $3, updated_at = $4 \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
        )
        .bind(task_id)
        .bind(worker)
        .bind(model::add(now, lease))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db(format!("extending the lease of task {task_id}")))?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn complete_many(
        &self,
        worker: &str,
        done: &[Completion],
        now: Timestamp,
    ) -> Result<Vec<i64>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = done.iter().map(|c| c.task_id).collect();
        let mut cols = AuditArrays::default();
        for c in done {
            for e in &c.audit {
                cols.push(c.task_id, e);
            }
        }
        let task_of_row = std::mem::take(&mut cols.task);
        // One statement, so one transaction and one round trip: `acked` marks the tasks this
        // worker still holds done, and `audited` inserts the audit rows of those tasks only.
        // A data-modifying CTE runs to completion whether or not the main query reads it.
        let q = sqlx::query(concat!(
            "WITH acked AS ( \
               UPDATE cleanup_tasks SET state = 'done', lease_expires_at = NULL, updated_at = $3 \
               WHERE id = ANY($1) AND state = 'running' AND lease_owner = $2 RETURNING id), \
             audited AS ( \
               INSERT INTO cleanup_audit_log (",
            audit_insert_columns!(),
            ") SELECT ts, j, rt, rn, a, r, ib, s, em, dr, d::jsonb \
               FROM unnest($4::bigint[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], \
                           $9::text[], $10::text[], $11::text[], $12::bool[], $13::text[], \
                           $14::bool[], $15::text[]) \
                    WITH ORDINALITY AS u(task, ts, j, rt, rn, a, r, ib, s, em, dr, d, ord) \
               WHERE u.task IN (SELECT id FROM acked) \
               ORDER BY ord \
               RETURNING 1) \
             SELECT id FROM acked"
        ))
        .bind(&ids)
        .bind(worker)
        .bind(now)
        .bind(task_of_row);
        let completed: Vec<i64> = cols
            .bind(q)
            .try_map(|r: PgRow| r.try_get::<i64, _>(0))
            .fetch_all(&self.pool)
            .await
            .map_err(db(format!(
                "completing {} cleanup tasks of worker {worker}",
                done.len()
            )))?;
        let accepted: HashSet<i64> = completed.into_iter().collect();
        Ok(ids.into_iter().filter(|id| accepted.contains(id)).collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fail(
        &self,
        task_id: i64,
        worker: &str,
        error: &str,
        audit: &[AuditEntry],
        now: Timestamp,
        backoff: &Backoff,
        sample: f64,
    ) -> Result<FailOutcome> {
        let op = format!("recording a failure of task {task_id}");
        let mut tx = self.begin(&op).await?;
        let held = sqlx::query(
            "SELECT attempts, max_attempts FROM cleanup_tasks \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2 FOR UPDATE",
        )
        .bind(task_id)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        let Some(held) = held else {
            return Ok(FailOutcome::LeaseLost);
        };
        let r = task_row(&held);
        let attempts = r.count("attempts")?;
        let max_attempts = r.count("max_attempts")?;
        let outcome = if attempts >= max_attempts {
            FailOutcome::DeadLetter
        } else {
            FailOutcome::Retry(trunc_micros(model::add(
                now,
                backoff.delay(attempts, sample),
            )))
        };
        let (state, at) = match outcome {
            FailOutcome::Retry(at) => ("pending", Some(at)),
            _ => ("dead", None),
        };
        sqlx::query(
            "UPDATE cleanup_tasks SET state = $2, scheduled_at = COALESCE($3, scheduled_at), \
             lease_expires_at = NULL, last_error = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(task_id)
        .bind(state)
        .bind(at)
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db(op))?;
        Ok(outcome)
    }

    pub(crate) async fn next_due_at(&self) -> Result<Option<Timestamp>> {
        // LEAST ignores NULL.
        sqlx::query_scalar(
            "SELECT LEAST( \
               (SELECT MIN(scheduled_at) FROM cleanup_tasks WHERE state = 'pending'), \
               (SELECT MIN(lease_expires_at) FROM cleanup_tasks WHERE state = 'running'))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("finding the next due cleanup task"))
    }

    pub(crate) async fn queue_stats(&self) -> Result<QueueStats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM cleanup_tasks GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(db("counting cleanup tasks"))?;
        Ok(queue::stats_from(rows))
    }

    pub(crate) async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            task_columns!(),
            " FROM cleanup_tasks WHERE TRUE"
        ));
        if let Some(state) = filter.state {
            qb.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(job) = &filter.job_id {
            qb.push(" AND job_id = ").push_bind(job.as_str());
        }
        qb.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing cleanup tasks"))?;
        rows.iter()
            .map(|r| queue::decode_task(&task_row(r)))
            .collect()
    }

    pub(crate) async fn requeue_dead(
        &self,
        task_id: i64,
        now: Timestamp,
    ) -> Result<RequeueOutcome> {
        let op = format!("requeueing dead task {task_id}");
        let mut tx = self.begin(&op).await?;
        let key: Option<String> = sqlx::query_scalar(
            "SELECT dedup_key FROM cleanup_tasks WHERE id = $1 AND state = 'dead' FOR UPDATE",
        )
        .bind(task_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        let Some(key) = key else {
            return Ok(RequeueOutcome::NotDead);
        };
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM cleanup_tasks WHERE dedup_key = $1 AND state IN ('pending', 'running')",
        )
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        if let Some(active) = active {
            return Ok(RequeueOutcome::ActiveDuplicate(active));
        }
        // A concurrent enqueue of the same key between the check and here makes this fail
        // on the unique index, with the error naming it; nothing is changed then.
        sqlx::query(
            "UPDATE cleanup_tasks SET state = 'pending', attempts = 0, scheduled_at = $2, \
             lease_expires_at = NULL, updated_at = $2 WHERE id = $1",
        )
        .bind(task_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        tx.commit().await.map_err(db(op))?;
        Ok(RequeueOutcome::Requeued)
    }

    pub(crate) async fn prune_done(&self, older_than: Timestamp, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM cleanup_tasks WHERE id IN (SELECT id FROM cleanup_tasks \
             WHERE state = 'done' AND updated_at < $1 ORDER BY updated_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED)",
        )
        .bind(older_than)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db("pruning done cleanup tasks"))?;
        Ok(r.rows_affected())
    }

    // ----- audit log -----

    pub(crate) async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("writing audit rows: acquiring a connection"))?;
        insert_audit(&mut conn, entries).await
    }

    pub(crate) async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT id, ",
            audit_insert_columns!(),
            " FROM cleanup_audit_log WHERE TRUE"
        ));
        if let Some(job) = &query.job_id {
            qb.push(" AND job_id = ").push_bind(job.as_str());
        }
        if let Some(action) = query.action {
            qb.push(" AND action = ").push_bind(action.as_str());
        }
        if let Some(since) = query.since {
            qb.push(" AND timestamp >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            qb.push(" AND timestamp < ").push_bind(until);
        }
        qb.push(" ORDER BY timestamp, id");
        if let Some(limit) = query.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("querying the audit log"))?;
        rows.iter().map(|r| decode_audit(&audit_row(r))).collect()
    }
}

/// [`PostgresStore::update_job`] inside the caller's transaction.
async fn update_job_in(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    job: &JobRecord,
    audit: &[AuditEntry],
    op: &str,
) -> Result<()> {
    let stored =
        sqlx::query("SELECT run_id, steps, last_heartbeat FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job.id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db(op.to_owned()))?
            .ok_or_else(|| Error::JobNotFound(job.id.to_string()))?;
    let r = job_row(&stored);
    let (steps, heartbeat) = merge_for_update(
        job,
        &r.text("run_id")?,
        decode_steps(&r)?,
        r.opt_ts("last_heartbeat")?,
    );
    let p = JobParams::new(job, &steps, heartbeat)?;
    let q = sqlx::query(
        "UPDATE jobs SET run_id = $2, attempt = $3, runtime = $4, namespace = $5, name = $6, \
             org = $7, job_type = $8, stage = $9, outcome = $10, reason = $11, created_at = $12, \
             started_at = $13, finished_at = $14, timeout_secs = $15, grace_secs = $16, \
             ttl_secs = $17, deadline = $18, steps = $19::jsonb, heartbeat_timeout_secs = $20, \
             last_heartbeat = $21, recovery_attempts = $22, pid = $23, pid_start_ticks = $24, \
             exit_code = $25, signal = $26, spec = $27::jsonb, dry_run = $28 WHERE id = $1",
    );
    bind_job(q, &p)
        .execute(&mut **tx)
        .await
        .map_err(db(op.to_owned()))?;
    insert_audit(tx, audit).await
}

/// Appends one step unless it is already recorded for the run (see
/// [`super::Store::record_steps`]), inside the caller's transaction.
async fn record_step_in(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    w: &StepWrite,
    op: &str,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs SET steps = steps || jsonb_build_array($3::jsonb), \
             stage = COALESCE($6::text, stage), \
             reason = CASE WHEN $6::text IS NULL THEN reason ELSE $7::text END, \
             spec = COALESCE($8::jsonb, spec) \
             WHERE id = $1 AND run_id = $2 \
               AND NOT steps @> jsonb_build_array(CASE WHEN $4::text = 'warn' \
                   THEN jsonb_build_object('step', $4::text, 'due_at', $5::text) \
                   ELSE jsonb_build_object('step', $4::text) END)",
    )
    .bind(w.job_id.as_str())
    .bind(w.run_id.as_str())
    .bind(jobs::step_json(&w.step)?)
    .bind(w.step.step.as_str())
    .bind(jobs::due_at_json(&w.step))
    .bind(w.stage_after.as_ref().map(|(stage, _)| stage.as_str()))
    .bind(w.stage_after.as_ref().map(|(_, reason)| reason.as_str()))
    .bind(spec_after_json(w)?)
    .execute(&mut **tx)
    .await
    .map_err(db(op.to_owned()))?
    .rows_affected();
    if updated == 0 {
        let current: Option<String> = sqlx::query_scalar("SELECT run_id FROM jobs WHERE id = $1")
            .bind(w.job_id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db(op.to_owned()))?;
        return match current {
            None => Err(Error::JobNotFound(w.job_id.to_string())),
            Some(current) if current != w.run_id => Err(Error::StaleRun {
                job_id: w.job_id.to_string(),
                given: w.run_id.clone(),
                current,
            }),
            Some(_) => Ok(false),
        };
    }
    Ok(true)
}
