//! The durable cleanup queue (`cleanup_tasks`): types, the retry backoff, and the rules both
//! backends implement.
//!
//! Life of a task: `pending` (due at `scheduled_at`) → `running` (claimed: `attempts + 1`,
//! leased to a worker until `lease_expires_at`) → `done` (completed, with its audit rows in the
//! same transaction) or back to `pending` at `now + backoff` on failure, or `dead` after
//! `max_attempts`. A running task whose lease expired is claimable again, so a crashed worker
//! loses nothing; its late `complete`/`fail` is refused once another worker holds the task.
//! The audit row is written after the action and before (with) the ack: a crash in between
//! re-runs the task, which then finds the resource gone and audits that.
//!
//! A task whose lease expires on its *last* attempt is dead-lettered by the next claim
//! (`last_error` says so) instead of being claimed again: that is what stops a task that
//! crashes its worker from looping forever. Its action may then have happened without an audit
//! row; it shows in `dead_letters()`, and `requeue_dead` re-runs it, which audits what it finds.
//!
//! De-duplication: at most one unfinished (`pending`/`running`) task per `dedup_key`, enforced
//! by a partial unique index on both backends; once a task is done or dead the key is free.
//!
//! # Why not apalis
//!
//! Issue 2 asked to try apalis 1.0 (`apalis-sqlite` / `apalis-postgres` 1.0.0, on sqlx 0.9)
//! first. Checked by reading the published crates' migrations, SQL and sources (apalis-sqlite
//! 1.0.0, apalis-postgres 1.0.0, apalis 1.0.0 from the cargo registry), requirement by
//! requirement:
//!
//! - **De-duplication per resource: fails.** Both backends create a plain (not partial)
//!   `UNIQUE INDEX … ON jobs(job_type, idempotency_key)` and insert with
//!   `ON CONFLICT DO NOTHING`, so a key stays taken by a *finished* task until `vacuum` deletes
//!   that row; we need the key free as soon as the task is done or dead.
//! - **Priority ordering: fits** (`ORDER BY priority DESC, run_at ASC` in `fetch_next.sql` /
//!   `apalis.get_jobs`).
//! - **Lease expiry re-claim: fails.** There is no per-task lease. Recovery is per worker:
//!   `reenqueue_orphaned.sql` re-queues the tasks of workers whose `workers.last_seen`
//!   heartbeat is old, so a worker that is alive but stuck on one task keeps it forever. Time is
//!   the database's or the process's own clock (`strftime('%s','now')`, `now()` in SQL,
//!   `SystemTime::now()` in `fetch_next.rs`; whole seconds on SQLite), so `now` cannot be passed
//!   in and the lease tests could not be deterministic.
//! - **Exponential backoff with jitter: fails.** Retries are a tower `BackoffRetryPolicy`
//!   layer: the worker sleeps in memory and calls the handler again. The delay is not stored as
//!   the task's next `run_at`, so a restart forgets it and a sleeping retry holds a worker slot.
//! - **Dead-letter state: partial.** A task ends `Failed` with `attempts >= max_attempts` or
//!   `Killed`; there is no requeue of such tasks, and the orphan sweep re-enqueues a task whose
//!   worker died with `attempts + 1` without comparing it to `max_attempts`, so a task that
//!   kills its worker loops forever.
//! - **Audit insert in the ack's transaction: fails through the worker.** The worker acks
//!   through the backend's own pool (`ack.sql` / `handle_result.sql`); there is no hook to run
//!   our insert in that transaction. The free function `queries::ack_tasks` takes any executor,
//!   but calling it ourselves means bypassing apalis' worker loop and using only its schema.
//!
//! Four of the six requirements fail and one fits only partly, so the queue is written here
//! (`sql.rs`, `sqlite.rs`, `postgres.rs`), with `now` an argument everywhere. apalis is not a
//! dependency.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{AuditEntry, Timestamp};

use super::convert::{Row, RowExt, task_row, trunc_micros};
use super::{Error, Result};

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// At most one unfinished task per key, e.g. `ttl_cleanup:<job-id>:<run-id>` or
    /// `orphan:pod:<namespace>/<name>`.
    pub dedup_key: String,
    /// The job concerned, when there is one (orphans have only the label's value).
    pub job_id: Option<String>,
    /// What the worker does, e.g. `ttl_cleanup`, `orphan_cleanup`.
    pub kind: String,
    /// The resource's name, for listings.
    pub resource_name: String,
    /// Whatever else the worker needs.
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i32,
    /// Not claimed before this time.
    pub scheduled_at: Timestamp,
    /// Claims before the task is dead-lettered (at least 1).
    pub max_attempts: u32,
}

/// The result of enqueueing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The new task's id, or the unfinished task's with the same key.
    pub id: i64,
    /// True when an unfinished task with the same key existed (nothing was inserted).
    pub duplicate: bool,
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for `scheduled_at`.
    Pending,
    /// Leased to a worker.
    Running,
    /// Completed.
    Done,
    /// Gave up after `max_attempts`; see `last_error`.
    Dead,
}

impl TaskState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Dead => "dead",
        }
    }
}

/// A name that is not one of the four [`TaskState`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?} (expected pending, running, done or dead)")]
pub struct UnknownTaskState(pub String);

impl std::str::FromStr for TaskState {
    type Err = UnknownTaskState;
    fn from_str(s: &str) -> Result<Self, UnknownTaskState> {
        Ok(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "dead" => TaskState::Dead,
            _ => return Err(UnknownTaskState(s.to_owned())),
        })
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `cleanup_tasks`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    /// Row id (never reused).
    pub id: i64,
    /// De-duplication key.
    pub dedup_key: String,
    /// The job concerned.
    pub job_id: Option<String>,
    /// What to do.
    pub kind: String,
    /// The resource.
    pub resource_name: String,
    /// Worker input.
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i32,
    /// State.
    pub state: TaskState,
    /// Due time (of the next attempt, when pending).
    pub scheduled_at: Timestamp,
    /// Claims so far, including the current one.
    pub attempts: u32,
    /// Claims allowed.
    pub max_attempts: u32,
    /// The worker holding (or that last held) the lease.
    pub lease_owner: Option<String>,
    /// When the lease ends (running tasks only).
    pub lease_expires_at: Option<Timestamp>,
    /// The last failure, or why a lease was taken over.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Last state change.
    pub updated_at: Timestamp,
}

/// A completed task and the audit rows that record what its worker did.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The task.
    pub task_id: i64,
    /// Written in the same transaction as the completion, and only if it is accepted.
    pub audit: Vec<AuditEntry>,
}

/// What [`super::Store::fail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Pending again, due at this time.
    Retry(Timestamp),
    /// `max_attempts` reached; the task is dead.
    DeadLetter,
    /// The worker no longer holds the task; nothing was written.
    LeaseLost,
}

/// What [`super::Store::requeue_dead`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// Pending again with zero attempts.
    Requeued,
    /// No dead task with that id.
    NotDead,
    /// An unfinished task with the same key exists (its id); the dead one stays dead.
    ActiveDuplicate(i64),
}

/// Task counts per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Waiting (due or not).
    pub pending: u64,
    /// Leased.
    pub running: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Completed and not yet pruned.
    pub done: u64,
}

/// Which tasks [`super::Store::list_tasks`] returns; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this job's tasks.
    pub job_id: Option<String>,
    /// At most this many (lowest ids first).
    pub limit: Option<u32>,
}

/// How the random part of a retry delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// Uniform in `[0, delay]` (spreads retries most; a retry may come at once).
    Full,
    /// Uniform in `[delay/2, delay]` (never sooner than half the delay).
    #[default]
    Equal,
}

/// Retry delay after a failed attempt: `initial × multiplier^(attempt−1)`, capped at `max`,
/// then jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt (before jitter).
    pub initial: Duration,
    /// Growth per attempt (≥ 1).
    pub multiplier: f64,
    /// Upper bound on the delay (before jitter).
    pub max: Duration,
    /// The random part.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 10 s, doubling, at most 1 h, equal jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            multiplier: 2.0,
            max: Duration::from_secs(3600),
            jitter: Jitter::Equal,
        }
    }
}

impl Backoff {
    /// The un-jittered delay after failed attempt number `attempt` (1 for the first).
    pub fn cap(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exp);
        let secs = self.initial.as_secs_f64() * factor;
        let max = self.max.as_secs_f64();
        // NaN and infinity end up at `max` too.
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The smallest and largest delay after failed attempt `attempt`.
    pub fn bounds(&self, attempt: u32) -> (Duration, Duration) {
        let cap = self.cap(attempt);
        match self.jitter {
            Jitter::None => (cap, cap),
            Jitter::Full => (Duration::ZERO, cap),
            Jitter::Equal => (cap / 2, cap),
        }
    }

    /// The delay after failed attempt `attempt` for a random `sample` in `[0, 1)`; always
    /// within [`Backoff::bounds`]. The store draws `sample`; tests pass it.
    pub fn delay(&self, attempt: u32, sample: f64) -> Duration {
        let (lo, hi) = self.bounds(attempt);
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        lo + (hi - lo).mul_f64(sample)
    }
}

/// Every `cleanup_tasks` column (a macro so that `concat!` can build queries from it).
macro_rules! task_columns {
    () => {
        "id, dedup_key, job_id, kind, resource_name, payload, priority, state, scheduled_at, \
         attempts, max_attempts, lease_owner, lease_expires_at, last_error, created_at, \
         updated_at"
    };
}
pub(crate) use task_columns;

/// Reads a `cleanup_tasks` row.
pub(crate) fn decode_task(row: &impl RowExt) -> Result<Task> {
    let priority = row.int("priority")?;
    Ok(Task {
        id: row.int("id")?,
        dedup_key: row.text("dedup_key")?,
        job_id: row.opt_text("job_id")?,
        kind: row.text("kind")?,
        resource_name: row.text("resource_name")?,
        payload: row.json("payload")?,
        priority: i32::try_from(priority)
            .map_err(|_| row.corrupt("priority", format!("{priority} is out of range")))?,
        state: row.parsed("state")?,
        scheduled_at: row.ts("scheduled_at")?,
        attempts: row.count("attempts")?,
        max_attempts: row.count("max_attempts")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at: row.opt_ts("lease_expires_at")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
    })
}

/// Reads claimed rows. They come back from `UPDATE … RETURNING` in no particular order;
/// workers get them in claim order.
pub(crate) fn decode_claimed<R>(rows: &[R]) -> Result<Vec<Task>>
where
    for<'r> Row<'r, R>: RowExt,
{
    let mut tasks = rows
        .iter()
        .map(|r| decode_task(&task_row(r)))
        .collect::<Result<Vec<_>>>()?;
    tasks.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.scheduled_at.cmp(&b.scheduled_at))
            .then(a.id.cmp(&b.id))
    });
    Ok(tasks)
}

/// Keeps the first task per `dedup_key`; returns the kept tasks and, for each input, the index
/// of the kept task with its key and whether it is that task (not a later copy).
pub(crate) fn dedup_batch(tasks: &[NewTask]) -> (Vec<&NewTask>, Vec<(usize, bool)>) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut kept = Vec::new();
    let mut map = Vec::with_capacity(tasks.len());
    for t in tasks {
        match first.get(t.dedup_key.as_str()) {
            Some(&k) => map.push((k, false)),
            None => {
                first.insert(&t.dedup_key, kept.len());
                map.push((kept.len(), true));
                kept.push(t);
            }
        }
    }
    (kept, map)
}

/// The ids a backend's insert of de-duplicated tasks found, by `dedup_key`.
#[derive(Debug, Default)]
pub(crate) struct TaskIds {
    /// Keys inserted now.
    pub inserted: HashMap<String, i64>,
    /// Keys of an unfinished task that was there before.
    pub existing: HashMap<String, i64>,
}

/// Each task's answer, in input order: `kept` and `map` as [`dedup_batch`] made them, `ids` as
/// the backend found them.
pub(crate) fn enqueued(
    kept: &[&NewTask],
    map: &[(usize, bool)],
    ids: &TaskIds,
) -> Result<Vec<Enqueued>> {
    map.iter()
        .map(|&(k, first)| {
            let key = &kept[k].dedup_key;
            if let Some(&id) = ids.inserted.get(key) {
                return Ok(Enqueued {
                    id,
                    duplicate: !first,
                });
            }
            let id = ids.existing.get(key).ok_or_else(|| Error::Corrupt {
                what: format!("cleanup task with dedup_key {key:?}"),
                problem: "insert conflicted but no unfinished task has the key".into(),
            })?;
            Ok(Enqueued {
                id: *id,
                duplicate: true,
            })
        })
        .collect()
}

/// A claim, as [`super::Store::claim`] hands it to the backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    /// The worker claiming.
    pub worker: &'a str,
    /// At most this many tasks (at least 1).
    pub limit: u32,
    /// The time of the claim: what is due by then is claimed.
    pub now: Timestamp,
    /// The end of the claimed tasks' lease.
    pub lease_until: Timestamp,
}

/// Completions of one worker, as [`super::Store::complete_many`] hands them to the backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completions<'a> {
    /// The worker that must still hold the tasks.
    pub worker: &'a str,
    /// The tasks, with their audit rows (at least one task).
    pub done: &'a [Completion],
    /// The time of completion.
    pub now: Timestamp,
}

/// A failed attempt, as [`super::Store::fail`] hands it to the backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    /// The task.
    pub task_id: i64,
    /// The worker that must still hold it.
    pub worker: &'a str,
    /// Saved as `last_error`.
    pub error: &'a str,
    /// Written with the failure.
    pub audit: &'a [AuditEntry],
    /// The time of the failure.
    pub now: Timestamp,
    /// The retry delay's rule.
    pub backoff: &'a Backoff,
    /// The random draw for the delay's jitter, in `[0, 1)`.
    pub sample: f64,
}

impl Failure<'_> {
    /// What happens to a task that had `attempts` of `max_attempts`: retried after the
    /// backoff (at a time truncated as the store keeps it), or dead-lettered.
    pub(crate) fn outcome(&self, attempts: u32, max_attempts: u32) -> FailOutcome {
        if attempts >= max_attempts {
            FailOutcome::DeadLetter
        } else {
            let delay = self.backoff.delay(attempts, self.sample);
            FailOutcome::Retry(trunc_micros(crate::model::add(self.now, delay)))
        }
    }
}

/// Checks that a new task is storable.
pub(crate) fn check_new(t: &NewTask) -> Result<()> {
    if t.max_attempts == 0 {
        return Err(Error::OutOfRange {
            what: "cleanup_tasks.max_attempts (must be at least 1)",
            value: "0".into(),
        });
    }
    Ok(())
}

/// Folds `(state, count)` rows into [`QueueStats`].
pub(crate) fn stats_from(rows: Vec<(String, i64)>) -> QueueStats {
    let mut s = QueueStats::default();
    for (state, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        match state.as_str() {
            "pending" => s.pending = n,
            "running" => s.running = n,
            "done" => s.done = n,
            "dead" => s.dead = n,
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_parse_by_name_and_unknown_names_are_an_error() {
        for state in [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Done,
            TaskState::Dead,
        ] {
            assert_eq!(state.as_str().parse(), Ok(state));
        }
        let err = "paused".parse::<TaskState>().expect_err("not a state");
        assert_eq!(err, UnknownTaskState("paused".into()));
        assert_eq!(
            err.to_string(),
            r#"unknown task state "paused" (expected pending, running, done or dead)"#
        );
    }

    #[test]
    fn backoff_grows_then_caps() {
        let b = Backoff {
            initial: Duration::from_secs(10),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: Jitter::None,
        };
        let caps: Vec<u64> = (1..=6).map(|a| b.cap(a).as_secs()).collect();
        assert_eq!(caps, [10, 20, 40, 60, 60, 60]);
        assert_eq!(b.cap(0).as_secs(), 10, "attempt 0 is treated as the first");
        assert_eq!(b.cap(u32::MAX), b.max);
        assert_eq!(b.delay(3, 0.7), Duration::from_secs(40));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for jitter in [Jitter::Full, Jitter::Equal] {
            let b = Backoff {
                jitter,
                ..Backoff::default()
            };
            for attempt in 1..12 {
                let (lo, hi) = b.bounds(attempt);
                for sample in [0.0, 0.25, 0.5, 0.999_999, 1.0, -1.0, f64::NAN, 7.0] {
                    let d = b.delay(attempt, sample);
                    assert!(lo <= d && d <= hi, "{jitter:?} {attempt} {sample}: {d:?}");
                }
                assert_eq!(b.delay(attempt, 0.0), lo);
            }
        }
        let b = Backoff::default();
        assert_eq!(
            b.bounds(1),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        let full = Backoff {
            jitter: Jitter::Full,
            ..b
        };
        assert_eq!(full.bounds(2), (Duration::ZERO, Duration::from_secs(20)));
    }

    #[test]
    fn odd_multipliers_do_not_shrink_or_overflow() {
        for m in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY, 1e300] {
            let b = Backoff {
                multiplier: m,
                jitter: Jitter::None,
                ..Backoff::default()
            };
            for a in 1..100 {
                let d = b.cap(a);
                assert!(d >= b.initial.min(b.max) && d <= b.max, "{m} {a}: {d:?}");
            }
        }
    }

    #[test]
    fn batch_dedup_keeps_first_copy() {
        let t = |k: &str, p| NewTask {
            dedup_key: k.into(),
            job_id: None,
            kind: "k".into(),
            resource_name: "r".into(),
            payload: serde_json::Value::Null,
            priority: p,
            scheduled_at: chrono::DateTime::UNIX_EPOCH,
            max_attempts: 1,
        };
        let tasks = [t("a", 1), t("b", 2), t("a", 3)];
        let (kept, map) = dedup_batch(&tasks);
        assert_eq!(kept.iter().map(|t| t.priority).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(map, [(0, true), (1, true), (0, false)]);
    }
}
