//! The SQL both backends run alike, written once: [`shared_sql!`] expands it inside each
//! backend module for that backend's types.
//!
//! What this module owns: every statement that is the same on SQLite and PostgreSQL (the same
//! text and `$n` placeholders, or the same text but for a cast or a row lock the backend names
//! in its invocation) and the Rust around it: binding, running, reading the rows back, the
//! transactions of `update_job`, `write_jobs`, `fail` and `requeue_dead`.
//!
//! What it must not do: hold a statement that only one backend can run. Those stay in the
//! backend files with what else really differs: connections, how a write transaction starts
//! (`BEGIN IMMEDIATE` on SQLite), claiming (`FOR UPDATE SKIP LOCKED` on PostgreSQL, one
//! `UPDATE … RETURNING` under SQLite's write lock), batched inserts (multi-row `VALUES`,
//! `unnest`), appending a step to the JSON `steps`, and the next due time.
//!
//! # Why a macro
//!
//! The alternative, functions generic over `sqlx::Database`, needs on each function (Rust
//! does not carry a trait's `where` clauses to its users) a higher-ranked bound per bound
//! type (`&str`, `i64`, `bool`, the timestamp type: `Encode` and `Type` for the database),
//! one each for the pool and the connection as executors, one for the arguments, and a trait
//! of our own for `rows_affected` (each backend's result type has it as an inherent method).
//! Those bounds would be most of what a reader sees, every new bound type adds one to each
//! function, and sqlx's higher-ranked executor bounds are a known source of futures the
//! compiler cannot prove `Send`. The macro expands to the concrete code each backend had
//! before, so the compiler does the same work as before and its errors name concrete types:
//! `cargo build -p jobwarden --lib` after `cargo clean -p jobwarden`, three runs each on the
//! shared 2-core machine, took 32–36 s of CPU (26–42 s wall) before and 32–33 s of CPU
//! (29–35 s wall) after.
//!
//! The price: rustfmt does not format this macro's body (it does not parse as plain Rust with
//! the `$` fragments in it; keep it as rustfmt would format it at `max_width = 92`, for the
//! 8 columns of indentation the macro adds), and the body is type-checked only where it is
//! expanded. Both backends expand it, and `tests/store_behaviour.rs` runs every method on
//! both.

/// Expands, inside a backend module, a child module `shared` that implements the common
/// store methods on the backend's store type.
///
/// The backend module provides:
/// - the store type (`store`) with the pool fields named by `reads` and `writes` (the same
///   field when reads and writes share a pool);
/// - `async fn write(&self, op: &str) -> Result<sqlx::Transaction<'static, Db>>`: begins a
///   write transaction;
/// - `async fn insert_audit(conn: &mut Db::Connection, entries: &[AuditEntry]) -> Result<()>`;
/// - `ts`: a function binding a [`crate::model::Timestamp`] as the backend stores it;
/// - `list`: a function binding a slice for `in_list`, the SQL that tests membership in it
///   (with `$1`).
///
/// And the SQL fragments that differ: `jsonb`, the cast after a JSON text parameter; `lock`,
/// the row lock of a read that a write in the same transaction depends on; `skip_locked`,
/// the lock of rows to delete that another transaction may hold; `append_step`, the
/// statement that appends a step unless it is recorded (see `record_step_in`).
macro_rules! shared_sql {
    (
        store: $Store:ident,
        db: $Db:ident,
        name: $name:literal,
        reads: $reads:ident,
        writes: $writes:ident,
        ts: $ts:ident,
        list: $list:ident,
        in_list: $in_list:literal,
        jsonb: $jsonb:literal,
        lock: $lock:literal,
        skip_locked: $skip_locked:literal,
        append_step: $append_step:literal $(,)?
    ) => {
        /// The statements this backend runs like the other one (`store/sql.rs`).
        mod shared {
            use std::collections::{HashMap, HashSet};
            use std::time::Duration;

            use sqlx::{$Db, Database, Executor, QueryBuilder};

            use $crate::model::{self, AuditEntry, JobId, JobRecord, Timestamp};
            use $crate::store::audit::{AuditQuery, audit_insert_columns, decode_audit};
            use $crate::store::convert::{RowExt, audit_row, job_row, task_row};
            use $crate::store::jobs::{
                self, ACTIVE_STAGES_SQL, JobFilter, JobParams, decode_job, decode_steps,
                job_columns, merge_for_update,
            };
            use $crate::store::queue::{
                self, FailOutcome, Failure, QueueStats, RequeueOutcome, Task, TaskFilter,
                task_columns,
            };
            use $crate::reclaimed::{ReclaimedRow, ReportQuery};
            use $crate::store::{Error, JobWrite, Result, StepWrite, db};

            use super::{$Store, $list as bind_list, $ts as bind_ts, insert_audit};

            type Query = sqlx::query::Query<'static, $Db, <$Db as Database>::Arguments>;
            type Transaction = sqlx::Transaction<'static, $Db>;

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
                    .bind(bind_ts(p.created_at))
                    .bind(p.started_at.map(bind_ts))
                    .bind(p.finished_at.map(bind_ts))
                    .bind(p.timeout_secs)
                    .bind(p.grace_secs)
                    .bind(p.ttl_secs)
                    .bind(p.deadline.map(bind_ts))
                    .bind(p.steps.as_str())
                    .bind(p.heartbeat_timeout_secs)
                    .bind(p.last_heartbeat.map(bind_ts))
                    .bind(p.recovery_attempts)
                    .bind(p.pid)
                    .bind(p.pid_start_ticks)
                    .bind(p.exit_code)
                    .bind(p.signal)
                    .bind(p.spec.as_str())
                    .bind(p.dry_run)
            }

            /// Ends a listing: its order, the limit if any, and every row.
            /// The `WHERE` conditions of a [`JobFilter`] (after `WHERE TRUE`).
            fn push_job_filter(qb: &mut QueryBuilder<$Db>, filter: &JobFilter) {
                if filter.active_only {
                    qb.push(" AND stage IN ").push(ACTIVE_STAGES_SQL);
                }
                if filter.finished_only {
                    qb.push(" AND stage NOT IN ").push(ACTIVE_STAGES_SQL);
                }
                if let Some(rt) = filter.runtime {
                    qb.push(" AND runtime = ").push_bind(rt.as_str());
                }
                if let Some(after) = &filter.after {
                    qb.push(" AND id > ").push_bind(after.clone());
                }
                if let Some(org) = &filter.org {
                    qb.push(" AND org = ").push_bind(org.clone());
                }
                if let Some(job_type) = &filter.job_type {
                    qb.push(" AND job_type = ").push_bind(job_type.clone());
                }
                if let Some(stage) = filter.stage {
                    qb.push(" AND stage = ").push_bind(stage.as_str());
                }
            }

            async fn list_rows(
                pool: &sqlx::Pool<$Db>,
                mut qb: QueryBuilder<$Db>,
                order_by: &str,
                limit: Option<u32>,
                op: &'static str,
            ) -> Result<Vec<<$Db as Database>::Row>> {
                qb.push(" ORDER BY ").push(order_by);
                if let Some(limit) = limit {
                    qb.push(" LIMIT ").push_bind(i64::from(limit));
                }
                qb.build().fetch_all(pool).await.map_err(db(op))
            }

            /// The ids of the unfinished tasks with these keys, by key.
            pub(super) async fn unfinished_tasks<'c, E>(
                exec: E,
                keys: &[&str],
                op: &str,
            ) -> Result<HashMap<String, i64>>
            where
                E: Executor<'c, Database = $Db>,
            {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT dedup_key, id FROM cleanup_tasks \
                     WHERE state IN ('pending', 'running') AND dedup_key ",
                    $in_list
                ))
                .bind(bind_list(keys))
                .fetch_all(exec)
                .await
                .map_err(db(op.to_owned()))?;
                Ok(rows.into_iter().collect())
            }

            impl $Store {
                pub(crate) async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1")
                        .execute(&self.$reads)
                        .await
                        .map_err(db(concat!("pinging the ", $name, " store")))?;
                    Ok(())
                }

                // ----- jobs -----

                pub(crate) async fn insert_job(&self, job: &JobRecord) -> Result<()> {
                    let op = format!("inserting job {}", job.id);
                    insert_job_in(&self.$writes, job, &op).await
                }

                pub(crate) async fn update_job(
                    &self,
                    job: &JobRecord,
                    audit: &[AuditEntry],
                ) -> Result<()> {
                    let op = format!("updating job {}", job.id);
                    let mut tx = self.write(&op).await?;
                    update_job_in(&mut tx, job, audit, &op).await?;
                    tx.commit().await.map_err(db(op))
                }

                pub(crate) async fn update_jobs(
                    &self,
                    jobs: &[JobRecord],
                ) -> Result<Vec<Result<()>>> {
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
                    .fetch_optional(&self.$reads)
                    .await
                    .map_err(db(format!("reading job {id}")))?;
                    row.map(|r| decode_job(&job_row(&r))).transpose()
                }

                pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
                    let mut qb = QueryBuilder::new(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE TRUE"
                    ));
                    push_job_filter(&mut qb, filter);
                    let order = if filter.newest_first {
                        "COALESCE(finished_at, created_at) DESC, id DESC"
                    } else {
                        "id"
                    };
                    qb.push(" ORDER BY ").push(order);
                    if let Some(limit) = filter.limit {
                        qb.push(" LIMIT ").push_bind(i64::from(limit));
                    }
                    if let Some(offset) = filter.offset {
                        if filter.limit.is_none() {
                            qb.push(" LIMIT ").push_bind(i64::MAX);
                        }
                        qb.push(" OFFSET ").push_bind(i64::from(offset));
                    }
                    let rows = qb
                        .build()
                        .fetch_all(&self.$reads)
                        .await
                        .map_err(db("listing jobs"))?;
                    rows.iter().map(|r| decode_job(&job_row(r))).collect()
                }

                pub(crate) async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
                    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM jobs WHERE TRUE");
                    push_job_filter(&mut qb, filter);
                    let n: i64 = qb
                        .build_query_scalar()
                        .fetch_one(&self.$reads)
                        .await
                        .map_err(db("counting jobs"))?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                pub(crate) async fn known_job_ids(
                    &self,
                    ids: &[String],
                ) -> Result<HashSet<String>> {
                    if ids.is_empty() {
                        return Ok(HashSet::new());
                    }
                    let found: Vec<String> =
                        sqlx::query_scalar(concat!("SELECT id FROM jobs WHERE id ", $in_list))
                            .bind(bind_list(ids))
                            .fetch_all(&self.$reads)
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
                        "SELECT id FROM jobs WHERE CAST($1 AS TEXT) IS NULL OR id > $1 \
                         ORDER BY id LIMIT $2",
                    )
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(db("listing job ids"))
                }

                pub(crate) async fn record_heartbeat(
                    &self,
                    id: &JobId,
                    at: Timestamp,
                ) -> Result<bool> {
                    // `>` is NULL for the first heartbeat, which is then stored as is.
                    let r = sqlx::query(
                        "UPDATE jobs SET last_heartbeat = CASE WHEN last_heartbeat > $2 \
                         THEN last_heartbeat ELSE $2 END WHERE id = $1",
                    )
                    .bind(id.as_str())
                    .bind(bind_ts(at))
                    .execute(&self.$writes)
                    .await
                    .map_err(db(format!("recording a heartbeat of job {id}")))?;
                    Ok(r.rows_affected() > 0)
                }

                pub(crate) async fn write_jobs(
                    &self,
                    batch: &[JobWrite],
                ) -> Result<Vec<Result<bool>>> {
                    let op = format!("writing {} job changes", batch.len());
                    let mut tx = self.write(&op).await?;
                    let mut results = Vec::with_capacity(batch.len());
                    let mut audit: Vec<AuditEntry> = Vec::new();
                    for w in batch {
                        // A query error aborts the whole transaction; "exists", "not found"
                        // and "stale run" are answers about one write and leave the others
                        // to commit.
                        let (result, rows) = match w {
                            JobWrite::Insert { job, audit } => {
                                let op = format!("inserting job {}", job.id);
                                let done = insert_job_in(&mut *tx, job, &op).await;
                                (done.map(|()| true), audit.as_slice())
                            }
                            JobWrite::Update { job, audit } => {
                                let op = format!("updating job {}", job.id);
                                let done = update_job_in(&mut tx, job, &[], &op).await;
                                (done.map(|()| true), audit.as_slice())
                            }
                            JobWrite::Step(s) => {
                                let op = format!(
                                    "recording step {} of job {} run {}",
                                    s.step.step, s.job_id, s.run_id
                                );
                                let rows = std::slice::from_ref(&s.audit);
                                (record_step_in(&mut tx, s, &op).await, rows)
                            }
                        };
                        match result {
                            Err(e @ Error::Db { .. }) => return Err(e),
                            Ok(true) => {
                                audit.extend_from_slice(rows);
                                results.push(Ok(true));
                            }
                            other => results.push(other),
                        }
                    }
                    // The audit rows of the writes made now, in one batched insert.
                    insert_audit(&mut tx, &audit).await?;
                    tx.commit().await.map_err(db(op))?;
                    Ok(results)
                }

                // ----- cleanup queue -----

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
                    .bind(bind_ts(model::add(now, lease)))
                    .bind(bind_ts(now))
                    .execute(&self.$writes)
                    .await
                    .map_err(db(format!("extending the lease of task {task_id}")))?;
                    Ok(r.rows_affected() > 0)
                }

                pub(crate) async fn fail(&self, f: Failure<'_>) -> Result<FailOutcome> {
                    let op = format!("recording a failure of task {}", f.task_id);
                    let mut tx = self.write(&op).await?;
                    let held = sqlx::query(concat!(
                        "SELECT attempts, max_attempts FROM cleanup_tasks \
                         WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                        $lock
                    ))
                    .bind(f.task_id)
                    .bind(f.worker)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(op.clone()))?;
                    let Some(held) = held else {
                        return Ok(FailOutcome::LeaseLost);
                    };
                    let r = task_row(&held);
                    let outcome = f.outcome(r.count("attempts")?, r.count("max_attempts")?);
                    let (state, at) = match outcome {
                        FailOutcome::Retry(at) => ("pending", Some(bind_ts(at))),
                        _ => ("dead", None),
                    };
                    sqlx::query(
                        "UPDATE cleanup_tasks SET state = $2, \
                         scheduled_at = COALESCE($3, scheduled_at), lease_expires_at = NULL, \
                         last_error = $4, updated_at = $5 WHERE id = $1",
                    )
                    .bind(f.task_id)
                    .bind(state)
                    .bind(at)
                    .bind(f.error)
                    .bind(bind_ts(f.now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(op.clone()))?;
                    insert_audit(&mut tx, f.audit).await?;
                    tx.commit().await.map_err(db(op))?;
                    Ok(outcome)
                }

                pub(crate) async fn queue_stats(&self) -> Result<QueueStats> {
                    let rows: Vec<(String, i64)> =
                        sqlx::query_as("SELECT state, COUNT(*) FROM cleanup_tasks GROUP BY state")
                            .fetch_all(&self.$reads)
                            .await
                            .map_err(db("counting cleanup tasks"))?;
                    Ok(queue::stats_from(rows))
                }

                pub(crate) async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
                    let mut qb = QueryBuilder::new(concat!(
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
                    let op = "listing cleanup tasks";
                    let rows = list_rows(&self.$reads, qb, "id", filter.limit, op).await?;
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
                    let key: Option<String> = sqlx::query_scalar(concat!(
                        "SELECT dedup_key FROM cleanup_tasks WHERE id = $1 AND state = 'dead'",
                        $lock
                    ))
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(op.clone()))?;
                    let Some(key) = key else {
                        return Ok(RequeueOutcome::NotDead);
                    };
                    let active = unfinished_tasks(&mut *tx, &[key.as_str()], &op).await?;
                    if let Some(&active) = active.get(&key) {
                        return Ok(RequeueOutcome::ActiveDuplicate(active));
                    }
                    // On PostgreSQL, an enqueue of the same key between the check and here
                    // makes this fail on the unique index, with the error naming it; nothing
                    // is changed then. (SQLite's write lock keeps such an enqueue out.)
                    sqlx::query(
                        "UPDATE cleanup_tasks SET state = 'pending', attempts = 0, \
                         scheduled_at = $2, lease_expires_at = NULL, updated_at = $2 \
                         WHERE id = $1",
                    )
                    .bind(task_id)
                    .bind(bind_ts(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(op.clone()))?;
                    tx.commit().await.map_err(db(op))?;
                    Ok(RequeueOutcome::Requeued)
                }

                pub(crate) async fn prune_done(
                    &self,
                    older_than: Timestamp,
                    limit: u32,
                ) -> Result<u64> {
                    let r = sqlx::query(concat!(
                        "DELETE FROM cleanup_tasks WHERE id IN (SELECT id FROM cleanup_tasks \
                         WHERE state = 'done' AND updated_at < $1 ORDER BY updated_at LIMIT $2",
                        $skip_locked,
                        ")"
                    ))
                    .bind(bind_ts(older_than))
                    .bind(i64::from(limit))
                    .execute(&self.$writes)
                    .await
                    .map_err(db("pruning done cleanup tasks"))?;
                    Ok(r.rows_affected())
                }

                // ----- audit log -----

                pub(crate) async fn query_audit(
                    &self,
                    query: &AuditQuery,
                ) -> Result<Vec<AuditEntry>> {
                    let mut qb = QueryBuilder::new(concat!(
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
                        qb.push(" AND timestamp >= ").push_bind(bind_ts(since));
                    }
                    if let Some(until) = query.until {
                        qb.push(" AND timestamp < ").push_bind(bind_ts(until));
                    }
                    if let Some(org) = &query.org {
                        qb.push(" AND job_id IN (SELECT id FROM jobs WHERE org = ")
                            .push_bind(org.as_str())
                            .push(")");
                    }
                    let order = if query.newest_first {
                        "timestamp DESC, id DESC"
                    } else {
                        "timestamp, id"
                    };
                    let op = "querying the audit log";
                    let rows = list_rows(&self.$reads, qb, order, query.limit, op).await?;
                    rows.iter().map(|r| decode_audit(&audit_row(r))).collect()
                }

                pub(crate) async fn reclaimed_rows(
                    &self,
                    query: &ReportQuery,
                ) -> Result<Vec<ReclaimedRow>> {
                    // The rows the reclaimed report reads: kills (their measurement) and
                    // deletions (their bytes) that were carried out, with their job's
                    // organisation, run and finish (none for an orphan's unknown job).
                    let mut qb = QueryBuilder::new(
                        "SELECT a.id, a.timestamp, a.job_id, a.resource_type, a.resource_name, \
                         a.action, a.reason, a.initiated_by, a.success, a.error_message, \
                         a.dry_run, a.details, j.org AS job_org, j.run_id AS job_run_id, \
                         j.finished_at AS job_finished_at \
                         FROM cleanup_audit_log a LEFT JOIN jobs j ON j.id = a.job_id \
                         WHERE a.action IN ('soft_kill', 'ttl_cleanup', 'orphan_cleanup') \
                         AND a.success AND NOT a.dry_run",
                    );
                    if let Some(since) = query.since {
                        qb.push(" AND a.timestamp >= ").push_bind(bind_ts(since));
                    }
                    if let Some(until) = query.until {
                        qb.push(" AND a.timestamp < ").push_bind(bind_ts(until));
                    }
                    if let Some(org) = &query.org {
                        qb.push(" AND j.org = ").push_bind(org.as_str());
                    }
                    let op = "reading the audit log for the reclaimed report";
                    let rows = list_rows(&self.$reads, qb, "a.timestamp, a.id", None, op).await?;
                    rows.iter()
                        .map(|r| {
                            let row = audit_row(r);
                            Ok(ReclaimedRow {
                                entry: decode_audit(&row)?,
                                org: row.opt_text("job_org")?,
                                run_id: row.opt_text("job_run_id")?,
                                finished_at: row.opt_ts("job_finished_at")?,
                            })
                        })
                        .collect()
                }

                pub(crate) async fn queue_by_kind(&self) -> Result<Vec<(String, String, u64)>> {
                    let rows: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT kind, state, COUNT(*) FROM cleanup_tasks \
                         WHERE state <> 'done' GROUP BY kind, state ORDER BY kind, state",
                    )
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(db("counting cleanup tasks by kind"))?;
                    Ok(rows
                        .into_iter()
                        .map(|(k, s, n)| (k, s, u64::try_from(n).unwrap_or(0)))
                        .collect())
                }
            }

            /// Inserts a job unless its id is taken ([`Error::JobExists`]), on the pool or
            /// inside the caller's transaction: `ON CONFLICT DO NOTHING`, so that a taken id
            /// does not abort the transaction around it (PostgreSQL aborts on any error).
            async fn insert_job_in<'e, E>(exec: E, job: &JobRecord, op: &str) -> Result<()>
            where
                E: Executor<'e, Database = $Db>,
            {
                let p = JobParams::new(job, &job.steps, job.last_heartbeat)?;
                let q = sqlx::query(concat!(
                    "INSERT INTO jobs (",
                    job_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15, $16, $17, $18, $19",
                    $jsonb,
                    ", $20, $21, $22, $23, $24, $25, $26, $27",
                    $jsonb,
                    ", $28) ON CONFLICT (id) DO NOTHING"
                ));
                let inserted = bind_job(q, &p)
                    .execute(exec)
                    .await
                    .map_err(db(op.to_owned()))?
                    .rows_affected();
                if inserted == 0 {
                    return Err(Error::JobExists(job.id.to_string()));
                }
                Ok(())
            }

            /// `update_job` inside the caller's transaction.
            async fn update_job_in(
                tx: &mut Transaction,
                job: &JobRecord,
                audit: &[AuditEntry],
                op: &str,
            ) -> Result<()> {
                let stored = sqlx::query(concat!(
                    "SELECT run_id, steps, last_heartbeat FROM jobs WHERE id = $1",
                    $lock
                ))
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
                let q = sqlx::query(concat!(
                    "UPDATE jobs SET run_id = $2, attempt = $3, runtime = $4, namespace = $5, \
                     name = $6, org = $7, job_type = $8, stage = $9, outcome = $10, \
                     reason = $11, created_at = $12, started_at = $13, finished_at = $14, \
                     timeout_secs = $15, grace_secs = $16, ttl_secs = $17, deadline = $18, \
                     steps = $19",
                    $jsonb,
                    ", heartbeat_timeout_secs = $20, last_heartbeat = $21, \
                     recovery_attempts = $22, pid = $23, pid_start_ticks = $24, \
                     exit_code = $25, signal = $26, spec = $27",
                    $jsonb,
                    ", dry_run = $28 WHERE id = $1"
                ));
                bind_job(q, &p)
                    .execute(&mut **tx)
                    .await
                    .map_err(db(op.to_owned()))?;
                insert_audit(tx, audit).await
            }

            /// Appends one step unless it is already recorded for the run (see
            /// [`crate::store::Store::record_steps`]), inside the caller's transaction.
            ///
            /// `append_step` binds: `$1` job id, `$2` run id, `$3` the step's JSON, `$4` its
            /// name, `$5` its due time as in the JSON ([`jobs::due_at_json`]), `$6` and `$7`
            /// the stage and reason after it (or NULL), `$8` the spec after it (or NULL).
            async fn record_step_in(tx: &mut Transaction, w: &StepWrite, op: &str) -> Result<bool> {
                let updated = sqlx::query($append_step)
                    .bind(w.job_id.as_str())
                    .bind(w.run_id.as_str())
                    .bind(jobs::step_json(&w.step)?)
                    .bind(w.step.step.as_str())
                    .bind(jobs::due_at_json(&w.step))
                    .bind(w.stage_after.as_ref().map(|(stage, _)| stage.as_str()))
                    .bind(w.stage_after.as_ref().map(|(_, reason)| reason.as_str()))
                    .bind(jobs::spec_after_json(w)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(db(op.to_owned()))?
                    .rows_affected();
                if updated > 0 {
                    return Ok(true);
                }
                let current: Option<String> =
                    sqlx::query_scalar("SELECT run_id FROM jobs WHERE id = $1")
                        .bind(w.job_id.as_str())
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db(op.to_owned()))?;
                match current {
                    None => Err(Error::JobNotFound(w.job_id.to_string())),
                    Some(current) if current != w.run_id => Err(Error::StaleRun {
                        job_id: w.job_id.to_string(),
                        given: w.run_id.clone(),
                        current,
                    }),
                    Some(_) => Ok(false),
                }
            }
        }
    };
}
pub(crate) use shared_sql;
