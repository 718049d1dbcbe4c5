//! The SQLite backend (the embedded default): the SQL for jobs, the queue and the audit log.
//!
//! Connections: one writer connection (SQLite has one writer at a time; queueing writers in
//! the pool is cheaper and fairer than SQLite's sleeping busy handler) and a few readers that
//! WAL lets run beside it. Every write transaction starts with `BEGIN IMMEDIATE`, so it takes
//! the write lock up front and can never fail half-way on a lock upgrade when another process
//! (the CLI) writes too; the 5 s `busy_timeout` covers that process. A claim is one
//! `UPDATE … RETURNING` inside such a transaction (after the statement that dead-letters lost
//! last attempts), so two workers, in this process or another, never claim the same task.
//!
//! Timestamps are INTEGER microseconds since the epoch; JSON is TEXT.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};

use crate::model::{self, AuditEntry, JobId, JobRecord, Timestamp};

use super::audit::{self, AuditQuery, audit_insert_columns, decode_audit};
use super::convert::{RowExt, audit_row, job_row, micros, task_row, trunc_micros};
use super::jobs::{
    self, ACTIVE_STAGES_SQL, JobFilter, JobParams, decode_job, decode_steps, job_columns,
    merge_for_update, spec_after_json,
};
use super::queue::{
    self, Backoff, Completion, Enqueued, FailOutcome, NewTask, QueueStats, RequeueOutcome, Task,
    TaskFilter, task_columns,
};
use super::{Error, Result, StepWrite, db, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Reader connections for a file database.
const READERS: u32 = 4;

/// A SQLite store. Cloning shares the connections.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    /// The same pool as `writer` for an in-memory database (each connection would otherwise
    /// see its own copy).
    reader: SqlitePool,
    /// An in-memory database: its one connection holds the data and is never reopened.
    memory: bool,
}

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

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
        .bind(micros(p.created_at))
        .bind(p.started_at.map(micros))
        .bind(p.finished_at.map(micros))
        .bind(p.timeout_secs)
        .bind(p.grace_secs)
        .bind(p.ttl_secs)
        .bind(p.deadline.map(micros))
        .bind(p.steps.as_str())
        .bind(p.heartbeat_timeout_secs)
        .bind(p.last_heartbeat.map(micros))
        .bind(p.recovery_attempts)
        .bind(p.pid)
        .bind(p.pid_start_ticks)
        .bind(p.exit_code)
        .bind(p.signal)
        .bind(p.spec.as_str())
        .bind(p.dry_run)
}

/// Inserts audit rows on `conn` (inside the caller's transaction).
async fn insert_audit(conn: &mut SqliteConnection, entries: &[AuditEntry]) -> Result<()> {
    for chunk in entries.chunks(audit::SQLITE_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "INSERT INTO cleanup_audit_log (",
            audit_insert_columns!(),
            ") "
        ));
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(micros(e.timestamp))
                .push_bind(e.job_id.as_str())
                .push_bind(e.resource_type.as_str())
                .push_bind(e.resource_name.as_str())
                .push_bind(e.action.as_str())
                .push_bind(e.reason.as_str())
                .push_bind(e.initiated_by.as_str())
                .push_bind(e.success)
                .push_bind(e.error_message.as_deref())
                .push_bind(e.dry_run)
                .push_bind(audit::details_text(e));
        });
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(db(format!("writing {} audit rows", chunk.len())))?;
    }
    Ok(())
}

/// A JSON array of `items`, for `json_each(?)` membership tests with one parameter.
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    // Serialising strings and integers cannot fail.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

impl SqliteStore {
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let open_err = |cause| Error::Open {
            url: shown.clone(),
            cause,
        };
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if !memory
            && let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|cause| Error::CreateDir {
                    url: shown.clone(),
                    dir: dir.to_owned(),
                    cause,
                })?;
        }
        // The writer connection is kept open: it holds an in-memory database alive, and it
        // spares every write a reconnect.
        // No ping before each use (sqlx's default): a local file connection does not go stale,
        // and the ping is a round trip to the connection's worker thread.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        let reader = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(READERS)
                .connect_with(options)
                .await
                .map_err(open_err)?
        };
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|cause| Error::Migrate {
                url: shown.clone(),
                cause,
            })?;
        Ok(SqliteStore {
            writer,
            reader,
            memory,
        })
    }

    /// Begins a write transaction holding the write lock.
    ///
    /// A COMMIT that failed (disk full: SQLite rolls the transaction back itself) leaves the
    /// driver counting an open transaction on the writer connection, and every later BEGIN
    /// on it fails. Such a connection is closed (the pool opens a fresh one) and the BEGIN is
    /// tried once more, so writes resume as soon as the disk has room again.
    async fn write(&self, op: &str) -> Result<sqlx::Transaction<'static, Sqlite>> {
        let begin = || self.writer.begin_with("BEGIN IMMEDIATE");
        let first = begin().await;
        let tx = match first {
            Err(sqlx::Error::InvalidSavePointStatement) if !self.memory => {
                tracing::warn!(
                    "{op}: the store's writer connection was left inside a failed transaction; reopening it"
                );
                let conn = self
                    .writer
                    .acquire()
                    .await
                    .map_err(db(format!("{op}: reopening the writer connection")))?;
                // Closing fails only if the connection is already broken; it is gone either way.
                let _ = conn.close().await;
                begin().await
            }
            other => other,
        };
        tx.map_err(db(format!("{op}: starting a write transaction")))
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db("pinging the sqlite store"))?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    // ----- jobs -----

    pub(crate) async fn insert_job(&self, job: &JobRecord) -> Result<()> {
        let p = JobParams::new(job, &job.steps, job.last_heartbeat)?;
        let q = sqlx::query(concat!(
            "INSERT INTO jobs (",
            job_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)"
        ));
        match bind_job(q, &p).execute(&self.writer).await {
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
        let mut tx = self.write(&op).await?;
        update_job_in(&mut tx, job, audit, &op).await?;
        tx.commit().await.map_err(db(op))
    }

    pub(crate) async fn update_jobs(&self, jobs: &[JobRecord]) -> Result<Vec<Result<()>>> {
        let op = format!("updating {} jobs", jobs.len());
        let mut tx = self.write(&op).await?;
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
        .fetch_optional(&self.reader)
        .await
        .map_err(db(format!("reading job {id}")))?;
        row.map(|r| decode_job(&job_row(&r))).transpose()
    }

    pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE 1 = 1"
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
            .fetch_all(&self.reader)
            .await
            .map_err(db("listing jobs"))?;
        rows.iter().map(|r| decode_job(&job_row(r))).collect()
    }

    pub(crate) async fn known_job_ids(&self, ids: &[String]) -> Result<HashSet<String>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = sqlx::query("SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each($1))")
            .bind(json_list(ids))
            .fetch_all(&self.reader)
            .await
            .map_err(db(format!("looking up {} job ids", ids.len())))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(db("reading jobs.id")))
            .collect()
    }

    pub(crate) async fn job_ids_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT id FROM jobs WHERE $1 IS NULL OR id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(db("listing job ids"))
    }

    pub(crate) async fn record_heartbeat(&self, id: &JobId, at: Timestamp) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET last_heartbeat = MAX(COALESCE(last_heartbeat, $2), $2) WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(db(format!("recording a heartbeat of job {id}")))?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn record_steps(&self, batch: &[StepWrite]) -> Result<Vec<Result<bool>>> {
        let op = format!("recording {} escalation steps", batch.len());
        let mut tx = self.write(&op).await?;
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
        let mut tx = self.write(&op).await?;
        // 12 parameters per row; SQLite allows 32 766 per statement.
        let mut inserted: HashMap<String, i64> = HashMap::new();
        for chunk in kept.chunks(1000) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO cleanup_tasks (dedup_key, job_id, kind, resource_name, payload, \
                 priority, state, scheduled_at, attempts, max_attempts, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, t| {
                b.push_bind(t.dedup_key.as_str())
                    .push_bind(t.job_id.as_deref())
                    .push_bind(t.kind.as_str())
                    .push_bind(t.resource_name.as_str())
                    .push_bind(t.payload.to_string())
                    .push_bind(t.priority)
                    .push_bind("pending")
                    .push_bind(micros(t.scheduled_at))
                    .push_bind(0_i64)
                    .push_bind(i64::from(t.max_attempts))
                    .push_bind(micros(now))
                    .push_bind(micros(now));
            });
            qb.push(" ON CONFLICT DO NOTHING RETURNING id, dedup_key");
            for r in qb
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(db(op.clone()))?
            {
                let id: i64 = r.try_get(0).map_err(db(op.clone()))?;
                let key: String = r.try_get(1).map_err(db(op.clone()))?;
                inserted.insert(key, id);
            }
        }
        let missing: Vec<&str> = kept
            .iter()
            .map(|t| t.dedup_key.as_str())
            .filter(|k| !inserted.contains_key(*k))
            .collect();
        let mut existing: HashMap<String, i64> = HashMap::new();
        if !missing.is_empty() {
            let rows = sqlx::query(
                "SELECT id, dedup_key FROM cleanup_tasks WHERE state IN ('pending', 'running') \
                 AND dedup_key IN (SELECT value FROM json_each($1))",
            )
            .bind(json_list(&missing))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(op.clone()))?;
            for r in rows {
                existing.insert(
                    r.try_get(1).map_err(db(op.clone()))?,
                    r.try_get(0).map_err(db(op.clone()))?,
                );
            }
        }
        tx.commit().await.map_err(db(op))?;
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
                            problem: "insert conflicted but no unfinished task has the key".into(),
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
        let op = format!("claiming cleanup tasks for worker {worker}");
        let mut tx = self.write(&op).await?;
        // A worker that died holding the task's last attempt: give up rather than loop.
        sqlx::query(
            "UPDATE cleanup_tasks SET state = 'dead', lease_expires_at = NULL, updated_at = $1, \
             last_error = 'lease of ' || lease_owner || ' expired on the last attempt (' || \
             attempts || ' of ' || max_attempts || '); the worker was lost' \
             WHERE state = 'running' AND lease_expires_at <= $1 AND attempts >= max_attempts",
        )
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        let rows = sqlx::query(concat!(
            "UPDATE cleanup_tasks SET attempts = attempts + 1, lease_owner = $2, \
             lease_expires_at = $3, updated_at = $1, \
             last_error = CASE WHEN state = 'running' \
               THEN 'lease of ' || lease_owner || ' expired' ELSE last_error END, \
             state = 'running' \
             WHERE id IN (SELECT id FROM cleanup_tasks \
               WHERE (state = 'pending' AND scheduled_at <= $1) \
                  OR (state = 'running' AND lease_expires_at <= $1) \
               ORDER BY priority DESC, scheduled_at, id LIMIT $4) \
             RETURNING ",
            task_columns!()
        ))
        .bind(micros(now))
        .bind(worker)
        .bind(micros(model::add(now, lease)))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        tx.commit().await.map_err(db(op))?;
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
        .bind(micros(model::add(now, lease)))
        .bind(micros(now))
        .execute(&self.writer)
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
        let op = format!("completing {} cleanup tasks of worker {worker}", done.len());
        let ids: Vec<i64> = done.iter().map(|c| c.task_id).collect();
        let mut tx = self.write(&op).await?;
        let completed: Vec<i64> = sqlx::query_scalar(
            "UPDATE cleanup_tasks SET state = 'done', lease_expires_at = NULL, updated_at = $3 \
             WHERE state = 'running' AND lease_owner = $2 \
               AND id IN (SELECT value FROM json_each($1)) RETURNING id",
        )
        .bind(json_list(&ids))
        .bind(worker)
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        let accepted: HashSet<i64> = completed.iter().copied().collect();
        let audit: Vec<AuditEntry> = done
            .iter()
            .filter(|c| accepted.contains(&c.task_id))
            .flat_map(|c| c.audit.iter().cloned())
            .collect();
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await.map_err(db(op))?;
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
        let mut tx = self.write(&op).await?;
        let held = sqlx::query(
            "SELECT attempts, max_attempts FROM cleanup_tasks \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
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
            FailOutcome::Retry(at) => ("pending", Some(micros(at))),
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
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db(op))?;
        Ok(outcome)
    }

    pub(crate) async fn next_due_at(&self) -> Result<Option<Timestamp>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(scheduled_at) AS t FROM cleanup_tasks WHERE state = 'pending' \
               UNION ALL \
               SELECT MIN(lease_expires_at) FROM cleanup_tasks WHERE state = 'running')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db("finding the next due cleanup task"))?;
        v.map(|v| {
            chrono::DateTime::from_timestamp_micros(v).ok_or_else(|| Error::Corrupt {
                what: "cleanup_tasks.scheduled_at".into(),
                problem: format!("{v} µs is not a representable time"),
            })
        })
        .transpose()
    }

    pub(crate) async fn queue_stats(&self) -> Result<QueueStats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM cleanup_tasks GROUP BY state")
                .fetch_all(&self.reader)
                .await
                .map_err(db("counting cleanup tasks"))?;
        Ok(queue::stats_from(rows))
    }

    pub(crate) async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            task_columns!(),
            " FROM cleanup_tasks WHERE 1 = 1"
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
            .fetch_all(&self.reader)
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
        let mut tx = self.write(&op).await?;
        let key: Option<String> = sqlx::query_scalar(
            "SELECT dedup_key FROM cleanup_tasks WHERE id = $1 AND state = 'dead'",
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
        sqlx::query(
            "UPDATE cleanup_tasks SET state = 'pending', attempts = 0, scheduled_at = $2, \
             lease_expires_at = NULL, updated_at = $2 WHERE id = $1",
        )
        .bind(task_id)
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        tx.commit().await.map_err(db(op))?;
        Ok(RequeueOutcome::Requeued)
    }

    pub(crate) async fn prune_done(&self, older_than: Timestamp, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM cleanup_tasks WHERE id IN (SELECT id FROM cleanup_tasks \
             WHERE state = 'done' AND updated_at < $1 ORDER BY updated_at LIMIT $2)",
        )
        .bind(micros(older_than))
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .map_err(db("pruning done cleanup tasks"))?;
        Ok(r.rows_affected())
    }

    // ----- audit log -----

    pub(crate) async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let op = format!("writing {} audit rows", entries.len());
        let mut tx = self.write(&op).await?;
        insert_audit(&mut tx, entries).await?;
        tx.commit().await.map_err(db(op))
    }

    pub(crate) async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT id, ",
            audit_insert_columns!(),
            " FROM cleanup_audit_log WHERE 1 = 1"
        ));
        if let Some(job) = &query.job_id {
            qb.push(" AND job_id = ").push_bind(job.as_str());
        }
        if let Some(action) = query.action {
            qb.push(" AND action = ").push_bind(action.as_str());
        }
        if let Some(since) = query.since {
            qb.push(" AND timestamp >= ").push_bind(micros(since));
        }
        if let Some(until) = query.until {
            qb.push(" AND timestamp < ").push_bind(micros(until));
        }
        qb.push(" ORDER BY timestamp, id");
        if let Some(limit) = query.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = qb
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(db("querying the audit log"))?;
        rows.iter().map(|r| decode_audit(&audit_row(r))).collect()
    }
}

/// [`SqliteStore::update_job`] inside the caller's transaction.
async fn update_job_in(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    job: &JobRecord,
    audit: &[AuditEntry],
    op: &str,
) -> Result<()> {
    let stored = sqlx::query("SELECT run_id, steps, last_heartbeat FROM jobs WHERE id = $1")
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
             ttl_secs = $17, deadline = $18, steps = $19, heartbeat_timeout_secs = $20, \
             last_heartbeat = $21, recovery_attempts = $22, pid = $23, pid_start_ticks = $24, \
             exit_code = $25, signal = $26, spec = $27, dry_run = $28 WHERE id = $1",
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
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    w: &StepWrite,
    op: &str,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs SET steps = json_insert(steps, '$[#]', json($3)), \
             stage = COALESCE($6, stage), reason = CASE WHEN $6 IS NULL THEN reason ELSE $7 END, \
             spec = COALESCE(json($8), spec) \
             WHERE id = $1 AND run_id = $2 AND NOT EXISTS \
             (SELECT 1 FROM json_each(jobs.steps) WHERE json_extract(value, '$.step') = $4 \
               AND ($4 <> 'warn' OR json_extract(value, '$.due_at') = $5))",
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
