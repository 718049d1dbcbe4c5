//! Persistence: jobs, the durable cleanup queue and the append-only audit log
//! (the design's `store`: SQLite and PostgreSQL, same migrations, same tests).
//!
//! [`Store`] is an enum over the two backends, [`SqliteStore`] (the embedded default) and
//! [`PgStore`]; each method dispatches to the backend. The SQL both backends run alike is
//! written once, in `sql.rs`; each backend file keeps its connections, its write transactions
//! and the SQL only it runs. Both backends run their own migrations at [`Store::open`]
//! (`crates/jobwarden/migrations/{sqlite,postgres}`) and pass the same behaviour tests
//! (`tests/store_behaviour.rs`).
//!
//! What this module owns:
//! - the `jobs` table: one row per job id with every [`JobRecord`] field; the escalation steps of
//!   the current run are recorded at most once per run ([`Store::record_step`]);
//! - the `cleanup_tasks` queue ([`queue`]): de-duplicated enqueue, leased claims, completion
//!   and failure with backoff and dead-lettering;
//! - the `cleanup_audit_log` ([`audit`]): insert and query only; the database itself refuses
//!   `UPDATE`/`DELETE` on it.
//!
//! What it must not do: decide anything (the engine does), or read the clock. Every method that
//! needs "now" takes it as an argument, so tests run a day of leases and backoffs in
//! microseconds.
//!
//! Timestamps are kept with microsecond precision (PostgreSQL `TIMESTAMPTZ`, SQLite `INTEGER`
//! microseconds since the Unix epoch; both index and compare correctly), durations as whole
//! seconds (a sub-second part is dropped), JSON as `jsonb` / `TEXT`.

pub mod audit;
mod convert;
pub mod jobs;
mod postgres;
pub mod queue;
mod sql;
mod sqlite;

use std::collections::HashSet;
use std::time::Duration;

pub use audit::AuditQuery;
pub use jobs::JobFilter;
pub use postgres::PgStore;
pub use queue::{
    Backoff, Completion, Enqueued, FailOutcome, Jitter, NewTask, QueueStats, RequeueOutcome, Task,
    TaskFilter, TaskState,
};
pub use sqlite::SqliteStore;

use crate::model::{AuditEntry, JobId, JobRecord, Stage, StepTaken, Timestamp};

/// What went wrong in the store. Every message names the operation and, where there is one, the
/// job id or the store URL (with any password replaced by `***`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no backend we know.
    #[error(
        "store URL {url:?} is not supported: use sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// Connecting (or creating the SQLite file) failed.
    #[error("opening store {url}: {cause}")]
    Open {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        cause: sqlx::Error,
    },
    /// The SQLite file's directory could not be created.
    #[error("opening store {url}: creating directory {dir}: {cause}")]
    CreateDir {
        /// The URL.
        url: String,
        /// The directory.
        dir: std::path::PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Running the migrations failed (or the database is newer than this binary).
    #[error("migrating store {url}: {cause}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// The migrator's error.
        cause: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("{op}: {cause}")]
    Db {
        /// What we were doing, e.g. `claiming cleanup tasks for worker w1`.
        op: String,
        /// The driver's error.
        cause: sqlx::Error,
    },
    /// [`Store::insert_job`] found the id taken.
    #[error("job {0} already exists")]
    JobExists(String),
    /// The job to update does not exist.
    #[error("job {0} not found")]
    JobNotFound(String),
    /// [`Store::record_step`] was asked to record a step for a run that is not the job's
    /// current run (a stale decision, or a new run that was not saved first).
    #[error(
        "job {job_id}: refusing to record a step for run {given:?}; the job's current run is {current:?} (save the new run with update_job first)"
    )]
    StaleRun {
        /// The job.
        job_id: String,
        /// The run the caller named.
        given: String,
        /// The run the store holds.
        current: String,
    },
    /// A stored value could not be read back (hand-edited row, or written by a newer binary).
    #[error("stored {what} is invalid: {problem}")]
    Corrupt {
        /// Which value, e.g. `jobs.stage of job j1`.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A value does not fit the store's 64-bit integer columns.
    #[error("{what} = {value} is too large to store")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds the `map_err` closure for a failed query.
pub(crate) fn db(op: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let op = op.into();
    move |cause| Error::Db { op, cause }
}

/// The URL with any password replaced by `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The persistence layer: one of the two backends.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded default.
    Sqlite(SqliteStore),
    /// For the Kubernetes runtime and for several replicas.
    Postgres(PgStore),
}

/// One escalation step for [`Store::record_steps`] (and [`JobWrite::Step`]).
#[derive(Debug, Clone)]
pub struct StepWrite {
    /// The job.
    pub job_id: JobId,
    /// The run the step belongs to; a step for any other run is refused.
    pub run_id: String,
    /// The step and its times.
    pub step: StepTaken,
    /// The audit row written with it.
    pub audit: AuditEntry,
    /// The stage and reason the job moves to with this step (a soft kill: `terminating`),
    /// saved with the step in the same statement, only if the step is recorded now.
    pub stage_after: Option<(Stage, String)>,
    /// The job's `spec` as it is to be with this step (the Kubernetes runtime's marker of a
    /// step recorded but not yet carried out), saved in the same statement, only if the step
    /// is recorded now.
    pub spec_after: Option<serde_json::Value>,
}

/// One write of [`Store::write_jobs`].
#[derive(Debug, Clone)]
pub enum JobWrite {
    /// [`Store::insert_job`], with audit rows written only if the job was inserted.
    Insert {
        /// The new job.
        job: JobRecord,
        /// Its rows.
        audit: Vec<AuditEntry>,
    },
    /// [`Store::update_job_with_audit`].
    Update {
        /// The job as it is to be.
        job: JobRecord,
        /// The rows written with it.
        audit: Vec<AuditEntry>,
    },
    /// One step of [`Store::record_steps`].
    Step(StepWrite),
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* $(,)? )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (and migrates) the store at `url`:
    /// - `sqlite://PATH` (relative) or `sqlite:///ABS/PATH`: the file and its directory are
    ///   created if missing; WAL, `synchronous=NORMAL`, foreign keys on, 5 s busy timeout;
    /// - `sqlite::memory:`: a private in-memory database (tests);
    /// - `postgres://…` / `postgresql://…`.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            SqliteStore::open(url).await.map(Store::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgStore::open(url).await.map(Store::Postgres)
        } else {
            Err(Error::UnsupportedUrl {
                url: redact_url(url),
            })
        }
    }

    /// The backend's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Readiness: one round trip to the database.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self.ping())
    }

    /// Closes every connection; waits for connections in use to be returned.
    pub async fn close(&self) {
        dispatch!(self.close())
    }

    // ----- jobs -----

    /// Inserts a new job; [`Error::JobExists`] if its id is taken.
    pub async fn insert_job(&self, job: &JobRecord) -> Result<()> {
        dispatch!(self.insert_job(job))
    }

    /// Overwrites a job's row with `job`; [`Error::JobNotFound`] if there is none.
    ///
    /// Two fields are merged rather than overwritten, because other writers update them
    /// concurrently: `last_heartbeat` never moves backwards, and when `job.run_id` is the stored
    /// run, steps already recorded for it (by [`Store::record_step`]) are kept even if `job`
    /// was read before they were recorded. A new `run_id` replaces the steps.
    pub async fn update_job(&self, job: &JobRecord) -> Result<()> {
        dispatch!(self.update_job(job, &[]))
    }

    /// [`Store::update_job`] for many jobs in one write transaction (the enforcer saves every
    /// run that exited since its last wake-up this way). Each job gets its own answer
    /// ([`Error::JobNotFound`] for a missing one); a query error rolls back the whole batch
    /// and is returned alone.
    pub async fn update_jobs(&self, jobs: &[JobRecord]) -> Result<Vec<Result<()>>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self.update_jobs(jobs))
    }

    /// [`Store::update_job`] and [`Store::append_audit`] in one transaction.
    pub async fn update_job_with_audit(&self, job: &JobRecord, audit: &[AuditEntry]) -> Result<()> {
        dispatch!(self.update_job(job, audit))
    }

    /// The job with this id, if any.
    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobRecord>> {
        dispatch!(self.get_job(id))
    }

    /// Jobs matching `filter`, ordered by id (ids are ULIDs, so roughly by creation time) or,
    /// with `newest_first`, by finish (else creation) time, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        dispatch!(self.list_jobs(filter))
    }

    /// How many jobs match `filter` (its `limit` and `offset` aside).
    pub async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        let filter = JobFilter {
            limit: None,
            offset: None,
            ..filter.clone()
        };
        dispatch!(self.count_jobs(&filter))
    }

    /// Which of `ids` the store has a row for, in any stage (including `cleaned`).
    /// One query whatever the length of `ids`; for orphan detection.
    pub async fn known_job_ids(&self, ids: &[String]) -> Result<HashSet<String>> {
        dispatch!(self.known_job_ids(ids))
    }

    /// One page of all job ids in ascending order, starting after `after`; an empty page means
    /// the end. For listings too large to hold as records.
    pub async fn job_ids_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>> {
        dispatch!(self.job_ids_page(after, limit))
    }

    /// Records a heartbeat. Touches only `last_heartbeat` (never the deadline), and never moves
    /// it backwards. Returns false if the job does not exist.
    pub async fn record_heartbeat(&self, id: &JobId, at: Timestamp) -> Result<bool> {
        dispatch!(self.record_heartbeat(id, at))
    }

    /// Appends `step` to the job's steps and writes `audit`, in one transaction, unless that
    /// step is already recorded for `run_id`; returns whether it was recorded now. A caller acts
    /// only on `true`, so each step happens once per run even across restarts.
    ///
    /// [`Error::StaleRun`] if `run_id` is not the job's current run; [`Error::JobNotFound`] if
    /// there is no such job.
    pub async fn record_step(
        &self,
        job_id: &JobId,
        run_id: &str,
        step: &StepTaken,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let batch = [JobWrite::Step(StepWrite {
            job_id: job_id.clone(),
            run_id: run_id.to_owned(),
            step: step.clone(),
            audit: audit.clone(),
            stage_after: None,
            spec_after: None,
        })];
        let mut results = self.write_jobs(&batch).await?;
        results.pop().unwrap_or(Ok(false))
    }

    /// [`Store::record_step`] for many steps in one write transaction (the enforcer records
    /// every step that falls due in one wake-up this way). Each step gets its own answer:
    /// `Ok(true)` recorded now, `Ok(false)` already recorded, or [`Error::JobNotFound`] /
    /// [`Error::StaleRun`]. A query error rolls back the whole batch and is returned alone.
    ///
    /// A step recorded now also saves its [`StepWrite::stage_after`]. Each step is one
    /// statement (two when it is not recorded), and the audit rows of the batch one more.
    pub async fn record_steps(&self, batch: &[StepWrite]) -> Result<Vec<Result<bool>>> {
        let writes: Vec<JobWrite> = batch.iter().cloned().map(JobWrite::Step).collect();
        self.write_jobs(&writes).await
    }

    /// Job writes of any kind in one write transaction (the executor's group commit: the
    /// writes of concurrent reconciles share one). Each gets its own answer: `Ok(true)` done
    /// now, `Ok(false)` a step recorded already, or [`Error::JobExists`] (an insert),
    /// [`Error::JobNotFound`], [`Error::StaleRun`] (a step). A query error rolls back the
    /// whole batch and is returned alone. The audit rows of the writes done now are one
    /// statement more.
    pub async fn write_jobs(&self, batch: &[JobWrite]) -> Result<Vec<Result<bool>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self.write_jobs(batch))
    }

    // ----- cleanup queue -----

    /// Enqueues a task unless an unfinished (pending or running) task has the same
    /// `dedup_key`; then that task's id is returned with `duplicate: true` and it is left as
    /// it is.
    pub async fn enqueue(&self, task: &NewTask, now: Timestamp) -> Result<Enqueued> {
        let mut out = self.enqueue_many(std::slice::from_ref(task), now).await?;
        out.pop().ok_or_else(|| Error::Corrupt {
            what: "cleanup_tasks insert result".into(),
            problem: "no row returned".into(),
        })
    }

    /// [`Store::enqueue`] for many tasks in one transaction; results in input order. A key
    /// repeated within `tasks` is enqueued once (later copies are duplicates).
    pub async fn enqueue_many(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<Enqueued>> {
        tasks.iter().try_for_each(queue::check_new)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let (kept, map) = queue::dedup_batch(tasks);
        let ids = dispatch!(self.insert_tasks(&kept, now))?;
        queue::enqueued(&kept, &map, &ids)
    }

    /// Claims up to `limit` due tasks for `worker`: pending tasks with `scheduled_at <= now`
    /// and running tasks whose lease expired (their worker is presumed dead), highest priority
    /// first, then oldest `scheduled_at`, then id. Each claim increments `attempts` and sets
    /// the lease to `now + lease`. Two workers never hold the same task.
    ///
    /// A task whose lease expired on its last attempt is dead-lettered instead of claimed, so a
    /// task that kills its worker cannot loop forever.
    pub async fn claim(
        &self,
        worker: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let claim = queue::Claim {
            worker,
            limit,
            now,
            lease_until: crate::model::add(now, lease),
        };
        dispatch!(self.claim(&claim))
    }

    /// Moves the lease of a task `worker` holds to `now + lease`; false if it does not hold it.
    pub async fn extend_lease(
        &self,
        task_id: i64,
        worker: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        dispatch!(self.extend_lease(task_id, worker, lease, now))
    }

    /// Marks the task done and inserts `audit`, in one transaction, if `worker` still holds
    /// it (it is running with `worker` as lease owner; a lease that expired but was not yet
    /// claimed by anyone else still counts). Otherwise writes nothing and returns false: the
    /// task belongs to another worker now, which will audit what it finds.
    pub async fn complete(
        &self,
        task_id: i64,
        worker: &str,
        audit: &[AuditEntry],
        now: Timestamp,
    ) -> Result<bool> {
        let done = [Completion {
            task_id,
            audit: audit.to_vec(),
        }];
        let completed = self.complete_many(worker, &done, now).await?;
        Ok(completed.contains(&task_id))
    }

    /// [`Store::complete`] for many tasks in one transaction; returns the ids that were
    /// completed (audit rows are written for those only).
    pub async fn complete_many(
        &self,
        worker: &str,
        done: &[Completion],
        now: Timestamp,
    ) -> Result<Vec<i64>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let completions = queue::Completions { worker, done, now };
        let accepted = dispatch!(self.complete_many(&completions))?;
        Ok(done
            .iter()
            .map(|c| c.task_id)
            .filter(|id| accepted.contains(id))
            .collect())
    }

    /// Records a failed attempt and inserts `audit`, in one transaction, if `worker` still
    /// holds the task: it is retried at `now + backoff` or, after `max_attempts` attempts,
    /// dead-lettered. [`FailOutcome::LeaseLost`] (nothing written) if `worker` does not hold it.
    pub async fn fail(
        &self,
        task_id: i64,
        worker: &str,
        error: &str,
        audit: &[AuditEntry],
        now: Timestamp,
        backoff: &Backoff,
    ) -> Result<FailOutcome> {
        let failure = queue::Failure {
            task_id,
            worker,
            error,
            audit,
            now,
            backoff,
            sample: rand::random(),
        };
        dispatch!(self.fail(failure))
    }

    /// When the scheduler should next call [`Store::claim`]: the earliest `scheduled_at` of a
    /// pending task or lease expiry of a running one. None when the queue is idle.
    pub async fn next_due_at(&self) -> Result<Option<Timestamp>> {
        dispatch!(self.next_due_at())
    }

    /// Number of tasks in each state.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        dispatch!(self.queue_stats())
    }

    /// Tasks matching `filter`, ordered by id.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        dispatch!(self.list_tasks(filter))
    }

    /// Every dead-lettered task, ordered by id.
    pub async fn dead_letters(&self) -> Result<Vec<Task>> {
        self.list_tasks(&TaskFilter {
            state: Some(TaskState::Dead),
            ..TaskFilter::default()
        })
        .await
    }

    /// Puts a dead task back in the queue, due at `now`, with its attempts reset.
    pub async fn requeue_dead(&self, task_id: i64, now: Timestamp) -> Result<RequeueOutcome> {
        dispatch!(self.requeue_dead(task_id, now))
    }

    /// Deletes up to `limit` done tasks last updated before `older_than`; returns how many.
    /// Bounded so that one call never holds the write lock for long.
    pub async fn prune_done(&self, older_than: Timestamp, limit: u32) -> Result<u64> {
        dispatch!(self.prune_done(older_than, limit))
    }

    // ----- audit log -----

    /// Appends audit rows (one batched insert). The stored ids are assigned by the database;
    /// `id` in the entries is ignored.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        dispatch!(self.append_audit(entries))
    }

    /// Audit rows matching `query`, ordered by timestamp then id (newest first with
    /// `newest_first`).
    pub async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        dispatch!(self.query_audit(query))
    }

    /// The audit rows the reclaimed report reads ([`crate::reclaimed`]): kills and deletions
    /// carried out (not dry-run), with their job's organisation, current run and finish time,
    /// oldest first.
    pub async fn reclaimed_rows(
        &self,
        query: &crate::reclaimed::ReportQuery,
    ) -> Result<Vec<crate::reclaimed::ReclaimedRow>> {
        dispatch!(self.reclaimed_rows(query))
    }

    /// Unfinished and dead tasks by (kind, state), with their counts.
    pub async fn queue_by_kind(&self) -> Result<Vec<(String, String, u64)>> {
        dispatch!(self.queue_by_kind())
    }
}
