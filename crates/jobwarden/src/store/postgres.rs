//! The PostgreSQL backend: the pool, and the SQL only PostgreSQL runs. The statements both
//! backends share are in `sql.rs` ([`shared_sql!`]).
//!
//! Claims are one statement: `SELECT … FOR UPDATE SKIP LOCKED` picks due rows no other
//! transaction holds, and the `UPDATE` around it leases them, so concurrent workers (in one
//! process or many) never claim the same task and never wait on each other. A read that a
//! later write of the same transaction depends on locks its row (`FOR UPDATE`). Batched writes
//! bind one array per column and `unnest` them, so a batch is one statement whatever its size.
//!
//! Timestamps are `TIMESTAMPTZ`; JSON is bound as text and cast to `jsonb`; a list parameter
//! is an array.

use std::collections::HashSet;
use std::convert::identity;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Postgres, Row as _};

use crate::model::{AuditEntry, Timestamp};

use super::audit::{self, audit_insert_columns};
use super::queue::{self, Claim, Completions, NewTask, Task, TaskIds};
use super::sql::shared_sql;
use super::{Error, Result, db, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per store.
const MAX_CONNECTIONS: u32 = 8;

/// A pooled connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// How often `insert_tasks` retries keys whose conflicting task finished between the insert
/// and the look-up of its id.
const ENQUEUE_ROUNDS: usize = 3;

/// A PostgreSQL store. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

shared_sql! {
    store: PgStore,
    db: Postgres,
    name: "postgres",
    reads: pool,
    writes: pool,
    ts: identity,
    list: identity,
    in_list: "= ANY($1)",
    jsonb: "::jsonb",
    // A concurrent `fail` or `update_job` of the same row waits for this transaction.
    lock: " FOR UPDATE",
    // Done tasks another pruner holds are left to it.
    skip_locked: " FOR UPDATE SKIP LOCKED",
    append_step: "UPDATE jobs SET steps = steps || jsonb_build_array($3::jsonb), \
         stage = COALESCE($6::text, stage), \
         reason = CASE WHEN $6::text IS NULL THEN reason ELSE $7::text END, \
         spec = COALESCE($8::jsonb, spec) \
         WHERE id = $1 AND run_id = $2 \
           AND NOT steps @> jsonb_build_array(CASE WHEN $4::text = 'warn' \
               THEN jsonb_build_object('step', $4::text, 'due_at', $5::text) \
               ELSE jsonb_build_object('step', $4::text) END)",
}

type Query = sqlx::query::Query<'static, Postgres, PgArguments>;

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

/// One field of each task, as an array parameter for `unnest`.
fn column<'a, T>(tasks: &[&'a NewTask], field: impl Fn(&'a NewTask) -> T) -> Vec<T> {
    tasks.iter().map(|&t| field(t)).collect()
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

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction (for the statements in `sql.rs` that write after a read).
    async fn write(&self, op: &str) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(db(format!("{op}: starting a transaction")))
    }

    // ----- cleanup queue -----

    /// Inserts tasks with distinct keys. No transaction: each insert is one atomic statement,
    /// and a retry after a partial failure is harmless because the keys de-duplicate it. Most
    /// batches take one round trip.
    pub(crate) async fn insert_tasks(&self, tasks: &[&NewTask], now: Timestamp) -> Result<TaskIds> {
        let op = format!("enqueueing {} cleanup tasks", tasks.len());
        let mut ids = TaskIds::default();
        let mut todo: Vec<&NewTask> = tasks.to_vec();
        // A key can conflict with a task that finishes before we look up its id; then the
        // key is free again and the next round inserts it.
        for _ in 0..ENQUEUE_ROUNDS {
            if todo.is_empty() {
                break;
            }
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "INSERT INTO cleanup_tasks (dedup_key, job_id, kind, resource_name, payload, \
                   priority, state, scheduled_at, attempts, max_attempts, created_at, updated_at) \
                 SELECT k, j, kd, rn, p::jsonb, pr, 'pending', s, 0, m, $9, $9 \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::bigint[], $7::timestamptz[], $8::bigint[]) \
                      WITH ORDINALITY AS u(k, j, kd, rn, p, pr, s, m, ord) \
                 ORDER BY ord \
                 ON CONFLICT DO NOTHING RETURNING dedup_key, id",
            )
            .bind(column(&todo, |t| t.dedup_key.as_str()))
            .bind(column(&todo, |t| t.job_id.as_deref()))
            .bind(column(&todo, |t| t.kind.as_str()))
            .bind(column(&todo, |t| t.resource_name.as_str()))
            .bind(column(&todo, |t| t.payload.to_string()))
            .bind(column(&todo, |t| i64::from(t.priority)))
            .bind(column(&todo, |t| t.scheduled_at))
            .bind(column(&todo, |t| i64::from(t.max_attempts)))
            .bind(now)
            .fetch_all(&self.pool)
            .await
            .map_err(db(op.clone()))?;
            ids.inserted.extend(rows);
            todo.retain(|t| !ids.inserted.contains_key(&t.dedup_key));
            if todo.is_empty() {
                break;
            }
            let keys = column(&todo, |t| t.dedup_key.as_str());
            ids.existing
                .extend(shared::unfinished_tasks(&self.pool, &keys, &op).await?);
            todo.retain(|t| !ids.existing.contains_key(&t.dedup_key));
        }
        Ok(ids)
    }

    pub(crate) async fn claim(&self, c: &Claim<'_>) -> Result<Vec<Task>> {
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
        .bind(c.now)
        .bind(c.worker)
        .bind(c.lease_until)
        .bind(i64::from(c.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db(format!(
            "claiming cleanup tasks for worker {}",
            c.worker
        )))?;
        queue::decode_claimed(&rows)
    }

    /// Marks the tasks `worker` holds done and writes the audit rows of those, in one
    /// statement; returns their ids.
    pub(crate) async fn complete_many(&self, c: &Completions<'_>) -> Result<HashSet<i64>> {
        let Completions { worker, done, now } = *c;
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
        Ok(completed.into_iter().collect())
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

    // ----- audit log -----

    pub(crate) async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("writing audit rows: acquiring a connection"))?;
        insert_audit(&mut conn, entries).await
    }
}
