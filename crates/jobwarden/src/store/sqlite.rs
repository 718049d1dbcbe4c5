//! The SQLite backend (the embedded default): connections, write transactions, and the SQL
//! only SQLite runs. The statements both backends share are in `sql.rs` ([`shared_sql!`]).
//!
//! Connections: one writer connection (SQLite has one writer at a time; queueing writers in
//! the pool is cheaper and fairer than SQLite's sleeping busy handler) and a few readers that
//! WAL lets run beside it. Every write transaction starts with `BEGIN IMMEDIATE`, so it takes
//! the write lock up front and can never fail half-way on a lock upgrade when another process
//! (the CLI) writes too; the 5 s `busy_timeout` covers that process. A claim is one
//! `UPDATE … RETURNING` inside such a transaction (after the statement that dead-letters lost
//! last attempts), so two workers, in this process or another, never claim the same task.
//! For the same reason no statement here needs a row lock (`FOR UPDATE`).
//!
//! Timestamps are INTEGER microseconds since the epoch; JSON is TEXT; a list parameter is a
//! JSON array read with `json_each`.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::model::{AuditEntry, Timestamp};

use super::audit::{self, audit_insert_columns};
use super::convert::micros;
use super::queue::{self, Claim, Completions, NewTask, Task, TaskIds, task_columns};
use super::sql::shared_sql;
use super::{Error, Result, db, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Reader connections for a file database.
const READERS: u32 = 4;

/// Rows per multi-row `INSERT` (at most 12 parameters each; SQLite allows 32 766 per
/// statement).
const CHUNK: usize = 1000;

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

shared_sql! {
    store: SqliteStore,
    db: Sqlite,
    name: "sqlite",
    reads: reader,
    writes: writer,
    ts: micros,
    list: json_list,
    in_list: "IN (SELECT value FROM json_each($1))",
    jsonb: "",
    // The transaction's write lock, taken at BEGIN IMMEDIATE, covers every row.
    lock: "",
    skip_locked: "",
    append_step: "UPDATE jobs SET steps = json_insert(steps, '$[#]', json($3)), \
         stage = COALESCE($6, stage), reason = CASE WHEN $6 IS NULL THEN reason ELSE $7 END, \
         spec = COALESCE(json($8), spec) \
         WHERE id = $1 AND run_id = $2 AND NOT EXISTS \
         (SELECT 1 FROM json_each(jobs.steps) WHERE json_extract(value, '$.step') = $4 \
           AND ($4 <> 'warn' OR json_extract(value, '$.due_at') = $5))",
}

/// Inserts audit rows on `conn` (inside the caller's transaction).
async fn insert_audit(conn: &mut SqliteConnection, entries: &[AuditEntry]) -> Result<()> {
    for chunk in entries.chunks(CHUNK) {
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

/// A JSON array of `items`, for `json_each($n)` membership tests with one parameter.
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

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    // ----- cleanup queue -----

    /// Inserts tasks with distinct keys, in one transaction so that the look-up of the keys
    /// that conflicted sees the tasks they conflicted with.
    pub(crate) async fn insert_tasks(&self, tasks: &[&NewTask], now: Timestamp) -> Result<TaskIds> {
        let op = format!("enqueueing {} cleanup tasks", tasks.len());
        let mut tx = self.write(&op).await?;
        let mut ids = TaskIds::default();
        for chunk in tasks.chunks(CHUNK) {
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
            qb.push(" ON CONFLICT DO NOTHING RETURNING dedup_key, id");
            let rows: Vec<(String, i64)> = qb
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(db(op.clone()))?;
            ids.inserted.extend(rows);
        }
        let missing: Vec<&str> = tasks
            .iter()
            .map(|t| t.dedup_key.as_str())
            .filter(|k| !ids.inserted.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            ids.existing = shared::unfinished_tasks(&mut *tx, &missing, &op).await?;
        }
        tx.commit().await.map_err(db(op))?;
        Ok(ids)
    }

    pub(crate) async fn claim(&self, c: &Claim<'_>) -> Result<Vec<Task>> {
        let op = format!("claiming cleanup tasks for worker {}", c.worker);
        let mut tx = self.write(&op).await?;
        // A worker that died holding the task's last attempt: give up rather than loop.
        sqlx::query(
            "UPDATE cleanup_tasks SET state = 'dead', lease_expires_at = NULL, updated_at = $1, \
             last_error = 'lease of ' || lease_owner || ' expired on the last attempt (' || \
             attempts || ' of ' || max_attempts || '); the worker was lost' \
             WHERE state = 'running' AND lease_expires_at <= $1 AND attempts >= max_attempts",
        )
        .bind(micros(c.now))
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
        .bind(micros(c.now))
        .bind(c.worker)
        .bind(micros(c.lease_until))
        .bind(i64::from(c.limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op.clone()))?;
        tx.commit().await.map_err(db(op))?;
        queue::decode_claimed(&rows)
    }

    /// Marks the tasks `worker` holds done and writes the audit rows of those, in one
    /// transaction; returns their ids.
    pub(crate) async fn complete_many(&self, c: &Completions<'_>) -> Result<HashSet<i64>> {
        let Completions { worker, done, now } = *c;
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
        let accepted: HashSet<i64> = completed.into_iter().collect();
        let audit: Vec<AuditEntry> = done
            .iter()
            .filter(|c| accepted.contains(&c.task_id))
            .flat_map(|c| c.audit.iter().cloned())
            .collect();
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await.map_err(db(op))?;
        Ok(accepted)
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

    // ----- audit log -----

    pub(crate) async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let op = format!("writing {} audit rows", entries.len());
        let mut tx = self.write(&op).await?;
        insert_audit(&mut tx, entries).await?;
        tx.commit().await.map_err(db(op))
    }
}
