//! The store's behaviour, written once and run against both backends.
//!
//! Each `async fn` below takes a [`Db`] (a fresh database) and is run by the `both!` macro as
//! two tests, `<name>::sqlite` (a temporary file) and `<name>::postgres` (a fresh database
//! created on the server named by `DATABASE_URL`, dropped afterwards). Without `DATABASE_URL`
//! the PostgreSQL half fails when `JOBWARDEN_REQUIRE_SERVERS=1` or `CI` is set and is skipped
//! with a notice otherwise. Every timestamp is passed in: nothing here sleeps or reads the clock.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;
use jobwarden::model::{
    AuditAction, AuditEntry, JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, StepTaken,
    Timestamp,
};
use jobwarden::store::{
    AuditQuery, Backoff, Completion, Error, FailOutcome, Jitter, JobFilter, JobWrite, NewTask,
    QueueStats, RequeueOutcome, StepWrite, Store, TaskFilter, TaskState,
};
use sqlx::Connection as _;

// ----- harness -----

/// A fresh, empty database for one test.
struct Db {
    url: String,
    /// PostgreSQL: the server URL and the database to drop afterwards.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Db {
    async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `sql` on a connection of its own, outside the store's API.
    async fn raw_exec(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        if self.pg.is_some() {
            let mut c = sqlx::PgConnection::connect(&self.url).await?;
            Ok(sqlx::query(sql).execute(&mut c).await?.rows_affected())
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await?;
            Ok(sqlx::query(sql).execute(&mut c).await?.rows_affected())
        }
    }
}

fn require_servers() -> bool {
    std::env::var("JOBWARDEN_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

async fn fresh(backend: Backend) -> Option<Db> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            // A nested path: opening must create the missing directories.
            let url = format!(
                "sqlite://{}/state/nested/jobwarden.db",
                dir.path().display()
            );
            Some(Db {
                url,
                pg: None,
                _dir: Some(dir),
            })
        }
        Backend::Postgres => {
            let Ok(server) = std::env::var("DATABASE_URL") else {
                assert!(
                    !require_servers(),
                    "DATABASE_URL is not set but JOBWARDEN_REQUIRE_SERVERS=1 or CI is: start \
                     PostgreSQL with `eval \"$(scripts/start-postgres.sh)\"`"
                );
                eprintln!(
                    "\n!!! SKIPPED the PostgreSQL half of this test: DATABASE_URL is not set. \
                     Run `eval \"$(scripts/start-postgres.sh)\"` first. !!!\n"
                );
                return None;
            };
            let name = format!("jw_test_{:016x}", rand::random::<u64>());
            let mut admin = sqlx::PgConnection::connect(&server)
                .await
                .unwrap_or_else(|e| panic!("connecting to DATABASE_URL: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create test database");
            let mut url = url::Url::parse(&server).expect("DATABASE_URL is a URL");
            url.set_path(&name);
            Some(Db {
                url: url.to_string(),
                pg: Some((server, name)),
                _dir: None,
            })
        }
    }
}

/// Runs `body` on a fresh database of `backend`, then drops it (also when `body` panics).
async fn run(backend: Backend, body: impl AsyncFnOnce(&Db)) {
    let Some(db) = fresh(backend).await else {
        return;
    };
    let result = AssertUnwindSafe(body(&db)).catch_unwind().await;
    if let Some((server, name)) = &db.pg {
        let mut admin = sqlx::PgConnection::connect(server)
            .await
            .expect("reconnect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Defines `<name>::sqlite` and `<name>::postgres` tests running the same body.
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::run(super::Backend::Sqlite, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::run(super::Backend::Postgres, super::$name).await
            }
        }
    )+};
}

both!(
    jobs_round_trip_and_filters,
    heartbeat_never_changes_deadline,
    record_step_is_once_per_run,
    record_steps_answers_each_step_in_one_transaction,
    write_jobs_answers_each_write_in_one_transaction,
    update_job_with_audit_is_atomic,
    enqueue_deduplicates_unfinished_tasks,
    claim_order_is_priority_then_schedule,
    concurrent_workers_never_claim_the_same_task,
    expired_lease_is_reclaimed_and_late_ack_refused,
    backoff_grows_within_jitter_bounds,
    dead_letter_after_max_attempts,
    worker_lost_on_last_attempt_dead_letters,
    complete_many_acks_only_held_tasks,
    audit_query_filters,
    reclaimed_rows_carry_their_jobs_org_run_and_finish,
    audit_rows_survive_reopen,
    audit_log_rejects_update_and_delete,
    prune_done_is_bounded_and_ids_are_not_reused,
);

// ----- fixtures -----

/// A fixed origin plus `secs` seconds and 123 456 µs, so microsecond precision is exercised.
fn t(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456 + secs * 1_000_000).expect("ts")
}

fn job(id: &str) -> JobRecord {
    JobRecord {
        id: JobId::parse(id).expect("id"),
        run_id: "run-1".into(),
        attempt: 0,
        runtime: RuntimeKind::Local,
        namespace: None,
        name: format!("name of {id}"),
        org: Some("acme".into()),
        job_type: Some("build".into()),
        stage: Stage::Running,
        outcome: None,
        reason: None,
        created_at: t(0),
        started_at: Some(t(1)),
        finished_at: None,
        timeout: Duration::from_secs(3600),
        grace: Duration::from_secs(30),
        ttl: Some(Duration::from_secs(86_400)),
        deadline: Some(t(3601)),
        steps: vec![],
        heartbeat_timeout: Some(Duration::from_secs(120)),
        last_heartbeat: None,
        recovery_attempts: 0,
        pid: Some(4242),
        pid_start_ticks: Some(987_654_321),
        exit_code: None,
        signal: None,
        spec: serde_json::json!({"command": ["sleep", "10"], "env": {"A": "1"}}),
        dry_run: false,
    }
}

fn entry(job_id: &str, action: AuditAction, at: Timestamp) -> AuditEntry {
    AuditEntry {
        id: 0,
        timestamp: at,
        job_id: job_id.into(),
        resource_type: "process".into(),
        resource_name: format!("pid:{job_id}"),
        action,
        reason: format!("{action} for {job_id}"),
        initiated_by: "jobwarden".into(),
        success: true,
        error_message: None,
        dry_run: false,
        details: None,
    }
}

fn task(key: &str) -> NewTask {
    NewTask {
        dedup_key: key.into(),
        job_id: Some(format!("job-{key}")),
        kind: "ttl_cleanup".into(),
        resource_name: format!("workspace/{key}"),
        payload: serde_json::json!({"key": key}),
        priority: 0,
        scheduled_at: t(0),
        max_attempts: 5,
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn audit_of(s: &Store, job_id: &str) -> Vec<AuditEntry> {
    s.query_audit(&AuditQuery {
        job_id: Some(job_id.into()),
        ..AuditQuery::default()
    })
    .await
    .expect("query audit")
}

async fn task_by_id(s: &Store, id: i64) -> jobwarden::store::Task {
    s.list_tasks(&TaskFilter::default())
        .await
        .expect("list tasks")
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("task {id} missing"))
}

// ----- jobs -----

async fn jobs_round_trip_and_filters(db: &Db) {
    let s = db.open().await;
    s.ping().await.expect("ping");

    let mut a = job("a");
    a.steps = vec![StepTaken {
        step: Step::Warn,
        due_at: t(3000),
        at: t(3001),
    }];
    a.last_heartbeat = Some(t(5));
    s.insert_job(&a).await.expect("insert a");
    assert_eq!(s.get_job(&a.id).await.expect("get"), Some(a.clone()));

    let again = s.insert_job(&a).await.expect_err("duplicate id");
    assert!(
        matches!(again, Error::JobExists(ref id) if id == "a"),
        "{again}"
    );
    assert!(again.to_string().contains("job a already exists"));

    let mut k = job("k");
    k.runtime = RuntimeKind::Kubernetes;
    k.namespace = Some("team-a".into());
    k.pid = None;
    k.pid_start_ticks = None;
    k.ttl = None;
    k.heartbeat_timeout = None;
    s.insert_job(&k).await.expect("insert k");
    let mut done = job("done");
    done.stage = Stage::Cleaned;
    done.outcome = Some(Outcome::Succeeded);
    done.finished_at = Some(t(100));
    done.exit_code = Some(0);
    done.reason = Some("exited 0".into());
    s.insert_job(&done).await.expect("insert done");

    a.stage = Stage::Completed;
    a.outcome = Some(Outcome::Failed);
    a.exit_code = Some(3);
    a.signal = None;
    a.finished_at = Some(t(50));
    a.dry_run = true;
    s.update_job(&a).await.expect("update a");
    assert_eq!(s.get_job(&a.id).await.expect("get"), Some(a.clone()));

    let ghost = s
        .update_job(&job("ghost"))
        .await
        .expect_err("update missing");
    assert!(matches!(ghost, Error::JobNotFound(_)), "{ghost}");
    assert_eq!(
        s.get_job(&JobId::parse("ghost").expect("id"))
            .await
            .expect("get"),
        None
    );

    let ids = |v: Vec<JobRecord>| v.into_iter().map(|j| j.id.to_string()).collect::<Vec<_>>();
    let all = s.list_jobs(&JobFilter::default()).await.expect("list");
    assert_eq!(ids(all), ["a", "done", "k"]);
    let active = s
        .list_jobs(&JobFilter {
            active_only: true,
            ..JobFilter::default()
        })
        .await
        .expect("list active");
    assert_eq!(ids(active), ["k"]);
    let local = s
        .list_jobs(&JobFilter {
            runtime: Some(RuntimeKind::Local),
            ..JobFilter::default()
        })
        .await
        .expect("list local");
    assert_eq!(ids(local), ["a", "done"]);
    let page = s
        .list_jobs(&JobFilter {
            after: Some("a".into()),
            limit: Some(1),
            ..JobFilter::default()
        })
        .await
        .expect("page");
    assert_eq!(ids(page), ["done"]);
    // The console's table: finished jobs newest first, a page at a time, and their count.
    let finished = JobFilter {
        finished_only: true,
        newest_first: true,
        ..JobFilter::default()
    };
    let newest = s.list_jobs(&finished).await.expect("finished");
    assert_eq!(ids(newest), ["done", "a"], "finished at t(100), then t(50)");
    let second = s
        .list_jobs(&JobFilter {
            offset: Some(1),
            limit: Some(5),
            ..finished.clone()
        })
        .await
        .expect("offset");
    assert_eq!(ids(second), ["a"]);
    let skipped = s
        .list_jobs(&JobFilter {
            offset: Some(1),
            ..finished.clone()
        })
        .await
        .expect("offset without a limit");
    assert_eq!(ids(skipped), ["a"]);
    assert_eq!(s.count_jobs(&finished).await.expect("count"), 2);
    assert_eq!(s.count_jobs(&JobFilter::default()).await.expect("count"), 3);
    let by_stage = JobFilter {
        stage: Some(Stage::Cleaned),
        ..JobFilter::default()
    };
    assert_eq!(ids(s.list_jobs(&by_stage).await.expect("stage")), ["done"]);

    let asked: Vec<String> = ["a", "done", "nope", "k", "zz"].map(String::from).to_vec();
    let known = s.known_job_ids(&asked).await.expect("known");
    assert_eq!(known, HashSet::from(["a", "done", "k"].map(String::from)));
    assert!(s.known_job_ids(&[]).await.expect("known empty").is_empty());

    for i in 0..22 {
        s.insert_job(&job(&format!("p{i:02}")))
            .await
            .expect("insert");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.job_ids_page(after.as_deref(), 10).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().cloned();
        seen.extend(page);
    }
    assert_eq!(seen.len(), 25);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ascending, no repeats"
    );
    s.close().await;
}

async fn heartbeat_never_changes_deadline(db: &Db) {
    let s = db.open().await;
    let j = job("hb");
    s.insert_job(&j).await.expect("insert");

    assert!(s.record_heartbeat(&j.id, t(60)).await.expect("hb"));
    let got = s.get_job(&j.id).await.expect("get").expect("job");
    assert_eq!(got.last_heartbeat, Some(t(60)));
    assert_eq!(got.deadline, j.deadline);
    assert_eq!(got.started_at, j.started_at);

    // An older heartbeat arriving late does not move it back.
    assert!(s.record_heartbeat(&j.id, t(30)).await.expect("hb"));
    let got = s.get_job(&j.id).await.expect("get").expect("job");
    assert_eq!(got.last_heartbeat, Some(t(60)));
    assert_eq!(got.deadline, j.deadline);

    // Nor does an update from a record read before the heartbeat.
    let mut stale = j.clone();
    stale.stage = Stage::Terminating;
    s.update_job(&stale).await.expect("update");
    let got = s.get_job(&j.id).await.expect("get").expect("job");
    assert_eq!(got.last_heartbeat, Some(t(60)));
    assert_eq!(got.stage, Stage::Terminating);

    let missing = JobId::parse("missing").expect("id");
    assert!(!s.record_heartbeat(&missing, t(1)).await.expect("hb"));
}

/// The enforcer's batch: each step gets its own answer, a job's `job_after` is saved only
/// with a step recorded now, and the rows of the other steps still commit.
async fn record_steps_answers_each_step_in_one_transaction(db: &Db) {
    let s = db.open().await;
    let (a, b) = (job("batch-a"), job("batch-b"));
    s.insert_job(&a).await.expect("insert a");
    s.insert_job(&b).await.expect("insert b");
    let soft = |at| StepTaken {
        step: Step::SoftKill,
        due_at: t(at),
        at: t(at),
    };
    let write = |j: &JobRecord, run: &str, after: Option<(Stage, String)>| StepWrite {
        job_id: j.id.clone(),
        run_id: run.into(),
        step: soft(3601),
        audit: entry(j.id.as_str(), AuditAction::SoftKill, t(3601)),
        spec_after: after
            .as_ref()
            .map(|_| serde_json::json!({"acting": {"step": "soft_kill"}})),
        stage_after: after,
    };
    // b's soft kill is already recorded: its stage_after and spec_after must not be saved.
    assert!(
        s.record_step(
            &b.id,
            "run-1",
            &soft(3601),
            &entry("batch-b", AuditAction::SoftKill, t(3601))
        )
        .await
        .expect("pre-record b")
    );
    let terminating = || Some((Stage::Terminating, "timeout".to_owned()));
    let batch = [
        write(&a, "run-1", terminating()),
        write(&b, "run-1", terminating()),
        write(&a, "run-0", None),
        write(&job("batch-missing"), "run-1", None),
    ];
    let got = s.record_steps(&batch).await.expect("record_steps");
    assert_eq!(got.len(), 4);
    assert!(matches!(got[0], Ok(true)), "{:?}", got[0]);
    assert!(matches!(got[1], Ok(false)), "{:?}", got[1]);
    assert!(
        matches!(got[2], Err(Error::StaleRun { .. })),
        "{:?}",
        got[2]
    );
    assert!(matches!(got[3], Err(Error::JobNotFound(_))), "{:?}", got[3]);

    let a_now = s.get_job(&a.id).await.expect("get a").expect("a");
    assert_eq!(a_now.stage, Stage::Terminating);
    assert_eq!(a_now.reason.as_deref(), Some("timeout"));
    assert_eq!(a_now.steps, [soft(3601)]);
    assert_eq!(
        a_now.spec["acting"]["step"], "soft_kill",
        "saved with the step"
    );
    let b_now = s.get_job(&b.id).await.expect("get b").expect("b");
    assert_eq!(
        b_now.stage,
        Stage::Running,
        "stage_after of an old step is not saved"
    );
    assert_eq!(b_now.spec, b.spec, "spec_after of an old step is not saved");
    assert_eq!(b_now.steps, [soft(3601)]);
    assert_eq!(audit_of(&s, "batch-a").await.len(), 1);
    assert_eq!(
        audit_of(&s, "batch-b").await.len(),
        1,
        "no second row for b"
    );
    assert!(audit_of(&s, "batch-missing").await.is_empty());
    assert!(s.record_steps(&[]).await.expect("empty batch").is_empty());

    // update_jobs: a missing job is answered alone; the others are saved, steps merged.
    let done = JobRecord {
        stage: Stage::Failed,
        outcome: Some(Outcome::Terminated),
        finished_at: Some(t(3602)),
        ..a.clone()
    };
    let got = s
        .update_jobs(&[done, job("batch-missing")])
        .await
        .expect("update_jobs");
    assert!(
        matches!(got[..], [Ok(()), Err(Error::JobNotFound(_))]),
        "{got:?}"
    );
    let a_now = s.get_job(&a.id).await.expect("get a").expect("a");
    assert_eq!(a_now.outcome, Some(Outcome::Terminated));
    assert_eq!(
        a_now.steps,
        [soft(3601)],
        "steps recorded meanwhile are kept"
    );
}

/// The executor's group commit: inserts, updates and steps in one transaction, each
/// answered alone, audit rows only for what was done.
async fn write_jobs_answers_each_write_in_one_transaction(db: &Db) {
    let s = db.open().await;
    let taken = job("group-taken");
    let stepped = job("group-stepped");
    for j in [&taken, &stepped] {
        s.insert_job(j).await.expect("insert");
    }
    let renamed = JobRecord {
        name: "renamed".into(),
        ..taken.clone()
    };
    let soft = StepTaken {
        step: Step::SoftKill,
        due_at: t(3601),
        at: t(3601),
    };
    let batch = [
        JobWrite::Insert {
            job: job("group-new"),
            audit: vec![entry("group-new", AuditAction::ConfigWarning, t(1))],
        },
        JobWrite::Insert {
            job: taken.clone(),
            audit: vec![entry("group-taken", AuditAction::ConfigWarning, t(1))],
        },
        JobWrite::Update {
            job: renamed,
            audit: vec![],
        },
        JobWrite::Update {
            job: job("group-missing"),
            audit: vec![entry("group-missing", AuditAction::Warn, t(1))],
        },
        JobWrite::Step(StepWrite {
            job_id: stepped.id.clone(),
            run_id: "run-1".into(),
            step: soft.clone(),
            audit: entry("group-stepped", AuditAction::SoftKill, t(3601)),
            stage_after: Some((Stage::Terminating, "timeout".into())),
            spec_after: None,
        }),
    ];
    let got = s.write_jobs(&batch).await.expect("write_jobs");
    assert!(
        matches!(
            got[..],
            [
                Ok(true),
                Err(Error::JobExists(_)),
                Ok(true),
                Err(Error::JobNotFound(_)),
                Ok(true)
            ]
        ),
        "{got:?}"
    );
    assert!(
        s.get_job(&job("group-new").id)
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(audit_of(&s, "group-new").await.len(), 1);
    assert!(
        audit_of(&s, "group-taken").await.is_empty(),
        "no row for an insert refused"
    );
    assert!(audit_of(&s, "group-missing").await.is_empty());
    let t_now = s.get_job(&taken.id).await.expect("get").expect("taken");
    assert_eq!(t_now.name, "renamed");
    assert_eq!(t_now.spec, taken.spec);
    let st = s.get_job(&stepped.id).await.expect("get").expect("stepped");
    assert_eq!((st.stage, st.steps), (Stage::Terminating, vec![soft]));
    assert_eq!(audit_of(&s, "group-stepped").await.len(), 1);
    assert!(s.write_jobs(&[]).await.expect("empty batch").is_empty());
}

async fn record_step_is_once_per_run(db: &Db) {
    let s = db.open().await;
    let j = job("steps");
    s.insert_job(&j).await.expect("insert");
    let warn = StepTaken {
        step: Step::Warn,
        due_at: t(3000),
        at: t(3000),
    };
    let audit = entry("steps", AuditAction::Warn, t(3000));

    assert!(
        s.record_step(&j.id, "run-1", &warn, &audit)
            .await
            .expect("first")
    );
    assert!(
        !s.record_step(&j.id, "run-1", &warn, &audit)
            .await
            .expect("second")
    );
    let rows = audit_of(&s, "steps").await;
    assert_eq!(rows.len(), 1, "exactly one audit row: {rows:?}");
    assert_eq!(rows[0].action, AuditAction::Warn);

    // Eight racing callers: one wins, one audit row.
    let soft = StepTaken {
        step: Step::SoftKill,
        due_at: t(3601),
        at: t(3601),
    };
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (s, id, soft) = (s.clone(), j.id.clone(), soft.clone());
            tokio::spawn(async move {
                let audit = entry("steps", AuditAction::SoftKill, t(3601));
                s.record_step(&id, "run-1", &soft, &audit).await
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        if r.await.expect("join").expect("record_step") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    let rows = audit_of(&s, "steps").await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.action == AuditAction::SoftKill)
            .count(),
        1
    );

    // An update from a record read before the steps were recorded keeps them.
    s.update_job(&j).await.expect("stale update");
    let got = s.get_job(&j.id).await.expect("get").expect("job");
    let names: Vec<Step> = got.steps.iter().map(|s| s.step).collect();
    assert_eq!(names, [Step::Warn, Step::SoftKill]);
    assert_eq!(got.steps[0], warn);

    // Several warn_before offsets: a warning due at another time is a new step; soft_kill is
    // once per run whatever its due time.
    let warn2 = StepTaken {
        step: Step::Warn,
        due_at: t(3300),
        at: t(3300),
    };
    let a2 = entry("steps", AuditAction::Warn, t(3300));
    assert!(
        s.record_step(&j.id, "run-1", &warn2, &a2)
            .await
            .expect("warn2")
    );
    assert!(
        !s.record_step(&j.id, "run-1", &warn2, &a2)
            .await
            .expect("warn2 again")
    );
    let soft2 = StepTaken {
        step: Step::SoftKill,
        due_at: t(9999),
        at: t(9999),
    };
    let a3 = entry("steps", AuditAction::SoftKill, t(9999));
    assert!(
        !s.record_step(&j.id, "run-1", &soft2, &a3)
            .await
            .expect("soft2")
    );

    // A new run starts with no steps and may take the same step again.
    let mut next = got.clone();
    next.run_id = "run-2".into();
    next.attempt = 1;
    next.steps.clear();
    s.update_job(&next).await.expect("new run");
    assert!(
        s.get_job(&j.id)
            .await
            .expect("get")
            .expect("job")
            .steps
            .is_empty()
    );
    assert!(
        s.record_step(&j.id, "run-2", &warn, &audit)
            .await
            .expect("new run warn")
    );
    assert!(
        !s.record_step(&j.id, "run-2", &warn, &audit)
            .await
            .expect("again")
    );

    // The old run can no longer record anything.
    let hard = StepTaken {
        step: Step::HardKill,
        due_at: t(3631),
        at: t(3631),
    };
    let stale = s
        .record_step(&j.id, "run-1", &hard, &audit)
        .await
        .expect_err("stale run");
    assert!(matches!(stale, Error::StaleRun { .. }), "{stale}");
    assert!(stale.to_string().contains("run-2"), "{stale}");
    let missing = JobId::parse("nobody").expect("id");
    let err = s
        .record_step(&missing, "run-1", &warn, &audit)
        .await
        .expect_err("missing job");
    assert!(matches!(err, Error::JobNotFound(_)), "{err}");
    // Refused calls wrote nothing: three warns (run 1 at two due times, run 2) and one soft
    // kill in total.
    assert_eq!(audit_of(&s, "steps").await.len(), 4);
}

async fn update_job_with_audit_is_atomic(db: &Db) {
    let s = db.open().await;
    let mut j = job("ua");
    s.insert_job(&j).await.expect("insert");
    j.stage = Stage::Failed;
    j.outcome = Some(Outcome::Lost);
    j.recovery_attempts = 3;
    let rows = [
        entry("ua", AuditAction::Recover, t(10)),
        entry("ua", AuditAction::MarkFailed, t(11)),
    ];
    s.update_job_with_audit(&j, &rows).await.expect("update");
    assert_eq!(s.get_job(&j.id).await.expect("get"), Some(j.clone()));
    assert_eq!(audit_of(&s, "ua").await.len(), 2);

    let ghost = job("ghost");
    let err = s
        .update_job_with_audit(&ghost, &[entry("ghost", AuditAction::MarkFailed, t(12))])
        .await
        .expect_err("missing job");
    assert!(matches!(err, Error::JobNotFound(_)), "{err}");
    assert!(
        audit_of(&s, "ghost").await.is_empty(),
        "no audit row without the update"
    );
}

// ----- queue -----

async fn enqueue_deduplicates_unfinished_tasks(db: &Db) {
    let s = db.open().await;
    let a = s.enqueue(&task("a"), t(0)).await.expect("a");
    assert!(!a.duplicate);
    let a2 = s.enqueue(&task("a"), t(1)).await.expect("a again");
    assert_eq!((a2.id, a2.duplicate), (a.id, true));
    let b = s.enqueue(&task("b"), t(1)).await.expect("b");
    assert!(!b.duplicate && b.id != a.id);

    let batch = s
        .enqueue_many(&[task("c"), task("a"), task("c"), task("d")], t(2))
        .await
        .expect("batch");
    assert!(!batch[0].duplicate);
    assert_eq!((batch[1].id, batch[1].duplicate), (a.id, true));
    assert_eq!((batch[2].id, batch[2].duplicate), (batch[0].id, true));
    assert!(!batch[3].duplicate);
    assert_eq!(
        s.queue_stats().await.expect("stats"),
        QueueStats {
            pending: 4,
            ..QueueStats::default()
        }
    );

    // Still a duplicate while running; free again once done.
    let claimed = s.claim("w", 10, LEASE, t(3)).await.expect("claim");
    assert_eq!(claimed.len(), 4);
    assert!(
        s.enqueue(&task("a"), t(4))
            .await
            .expect("running dup")
            .duplicate
    );
    assert!(s.complete(a.id, "w", &[], t(5)).await.expect("complete"));
    let a3 = s.enqueue(&task("a"), t(6)).await.expect("after done");
    assert!(!a3.duplicate);
    assert!(a3.id > a.id);

    // A dead task frees its key too.
    let mut one = task("e");
    one.max_attempts = 1;
    let e = s.enqueue(&one, t(0)).await.expect("e");
    let claimed = s.claim("w", 10, LEASE, t(7)).await.expect("claim");
    assert!(claimed.iter().any(|c| c.id == e.id));
    let out = s
        .fail(e.id, "w", "boom", &[], t(8), &Backoff::default())
        .await
        .expect("fail");
    assert_eq!(out, FailOutcome::DeadLetter);
    assert!(!s.enqueue(&one, t(9)).await.expect("after dead").duplicate);

    let zero = NewTask {
        max_attempts: 0,
        ..task("zero")
    };
    assert!(
        s.enqueue(&zero, t(0)).await.is_err(),
        "max_attempts 0 refused"
    );
}

async fn claim_order_is_priority_then_schedule(db: &Db) {
    let s = db.open().await;
    let mk = |key: &str, priority: i32, at: i64| NewTask {
        priority,
        scheduled_at: t(at),
        ..task(key)
    };
    s.enqueue_many(
        &[
            mk("low-early", 0, 1),
            mk("high-late", 10, 5),
            mk("high-early", 10, 2),
            mk("mid", 5, 3),
            mk("future-top", 100, 1000),
            mk("neg", -5, 0),
        ],
        t(0),
    )
    .await
    .expect("enqueue");
    assert_eq!(s.next_due_at().await.expect("due"), Some(t(0)));

    let first = s.claim("w", 2, LEASE, t(10)).await.expect("claim");
    let keys =
        |v: &[jobwarden::store::Task]| v.iter().map(|t| t.dedup_key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&first), ["high-early", "high-late"]);
    let rest = s.claim("w", 10, LEASE, t(10)).await.expect("claim");
    assert_eq!(
        keys(&rest),
        ["mid", "low-early", "neg"],
        "the future task is not due"
    );
    for c in first.iter().chain(&rest) {
        assert_eq!(c.state, TaskState::Running);
        assert_eq!(c.attempts, 1);
        assert_eq!(c.lease_owner.as_deref(), Some("w"));
        assert_eq!(c.lease_expires_at, Some(t(40)));
    }
    // Now the earliest thing due is the first lease expiry, then the future task.
    assert_eq!(s.next_due_at().await.expect("due"), Some(t(40)));
    for c in first.iter().chain(&rest) {
        assert!(s.complete(c.id, "w", &[], t(11)).await.expect("complete"));
    }
    assert_eq!(s.next_due_at().await.expect("due"), Some(t(1000)));
    assert!(
        s.claim("w", 10, LEASE, t(999))
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        keys(&s.claim("w", 10, LEASE, t(1000)).await.expect("claim")),
        ["future-top"]
    );
    assert!(
        s.claim("w", 0, LEASE, t(1000))
            .await
            .expect("limit 0")
            .is_empty()
    );
}

async fn concurrent_workers_never_claim_the_same_task(db: &Db) {
    const TASKS: usize = 500;
    // Two stores (two pools; on SQLite two writers on one file) with two workers each.
    let a = db.open().await;
    let b = db.open().await;
    let tasks: Vec<NewTask> = (0..TASKS).map(|i| task(&format!("t{i}"))).collect();
    a.enqueue_many(&tasks, t(0)).await.expect("enqueue");

    let workers: Vec<_> = (0..4)
        .map(|w| {
            let s = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let name = format!("worker-{w}");
                let mut mine = Vec::new();
                loop {
                    let got = s.claim(&name, 7, LEASE, t(1)).await.expect("claim");
                    if got.is_empty() {
                        break;
                    }
                    for task in got {
                        let audit = entry(
                            task.job_id.as_deref().unwrap_or("?"),
                            AuditAction::TtlCleanup,
                            t(2),
                        );
                        assert!(
                            s.complete(task.id, &name, &[audit], t(2))
                                .await
                                .expect("complete")
                        );
                        mine.push(task.id);
                    }
                }
                mine
            })
        })
        .collect();
    let mut count: HashMap<i64, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let mine = w.await.expect("worker");
        per_worker.push(mine.len());
        for id in mine {
            *count.entry(id).or_default() += 1;
        }
    }
    assert_eq!(count.len(), TASKS, "every task claimed");
    assert!(count.values().all(|&n| n == 1), "no task claimed twice");
    let stats = a.queue_stats().await.expect("stats");
    assert_eq!(stats.done, TASKS as u64);
    assert_eq!(stats.pending + stats.running + stats.dead, 0);
    let audited = a
        .query_audit(&AuditQuery {
            action: Some(AuditAction::TtlCleanup),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(audited.len(), TASKS);
    eprintln!("tasks per worker: {per_worker:?}");
}

async fn expired_lease_is_reclaimed_and_late_ack_refused(db: &Db) {
    let s = db.open().await;
    let id = s.enqueue(&task("l"), t(0)).await.expect("enqueue").id;
    let got = s.claim("dead-worker", 5, LEASE, t(0)).await.expect("claim");
    assert_eq!(got.len(), 1);

    // Before the lease ends nobody else gets it; the holder can extend it.
    assert!(
        s.claim("w2", 5, LEASE, t(29))
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        s.extend_lease(id, "dead-worker", LEASE, t(20))
            .await
            .expect("extend")
    );
    assert!(
        !s.extend_lease(id, "w2", LEASE, t(20))
            .await
            .expect("extend other")
    );
    assert!(
        s.claim("w2", 5, LEASE, t(49))
            .await
            .expect("claim")
            .is_empty()
    );

    // The holder dies; after its lease (t(50)) another worker takes over.
    let again = s.claim("w2", 5, LEASE, t(50)).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].lease_owner.as_deref(), Some("w2"));
    assert!(
        again[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("dead-worker")),
        "{:?}",
        again[0].last_error
    );

    // The old holder's late acks change nothing and audit nothing.
    let late = entry("job-l", AuditAction::TtlCleanup, t(51));
    assert!(
        !s.complete(id, "dead-worker", std::slice::from_ref(&late), t(51))
            .await
            .expect("late complete")
    );
    assert_eq!(
        s.fail(
            id,
            "dead-worker",
            "late",
            std::slice::from_ref(&late),
            t(51),
            &Backoff::default()
        )
        .await
        .expect("late fail"),
        FailOutcome::LeaseLost
    );
    assert!(
        !s.extend_lease(id, "dead-worker", LEASE, t(51))
            .await
            .expect("late extend")
    );
    assert!(audit_of(&s, "job-l").await.is_empty());
    let row = task_by_id(&s, id).await;
    assert_eq!(
        (row.state, row.lease_owner.as_deref()),
        (TaskState::Running, Some("w2"))
    );

    assert!(
        s.complete(id, "w2", &[late], t(52))
            .await
            .expect("complete")
    );
    assert_eq!(audit_of(&s, "job-l").await.len(), 1);
    assert_eq!(task_by_id(&s, id).await.state, TaskState::Done);
    assert!(
        !s.complete(id, "w2", &[], t(53))
            .await
            .expect("double complete")
    );
}

async fn backoff_grows_within_jitter_bounds(db: &Db) {
    let s = db.open().await;
    for jitter in [Jitter::None, Jitter::Equal, Jitter::Full] {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter,
        };
        let key = format!("bo-{jitter:?}");
        let id = s
            .enqueue(
                &NewTask {
                    max_attempts: 10,
                    ..task(&key)
                },
                t(0),
            )
            .await
            .expect("enqueue")
            .id;
        let mut now = t(0);
        let mut delays = Vec::new();
        for attempt in 1..=7u32 {
            let got = s.claim("w", 1, LEASE, now).await.expect("claim");
            assert_eq!(got.len(), 1, "{jitter:?} attempt {attempt}");
            assert_eq!((got[0].id, got[0].attempts), (id, attempt));
            let audit = entry(&key, AuditAction::TtlCleanup, now);
            let FailOutcome::Retry(at) = s
                .fail(
                    id,
                    "w",
                    &format!("error {attempt}"),
                    &[audit],
                    now,
                    &backoff,
                )
                .await
                .expect("fail")
            else {
                panic!("retry expected");
            };
            let delay = (at - now).to_std().expect("retry is in the future");
            let (lo, hi) = backoff.bounds(attempt);
            assert!(
                lo <= delay && delay <= hi,
                "{jitter:?} attempt {attempt}: {delay:?} not in [{lo:?}, {hi:?}]"
            );
            let row = task_by_id(&s, id).await;
            assert_eq!(row.state, TaskState::Pending);
            assert_eq!(row.scheduled_at, at);
            assert_eq!(
                row.last_error.as_deref(),
                Some(format!("error {attempt}").as_str())
            );
            // Not a moment before it is due.
            let just_before = at - chrono::TimeDelta::microseconds(1);
            if just_before >= now {
                assert!(
                    s.claim("w", 1, LEASE, just_before)
                        .await
                        .expect("claim")
                        .is_empty()
                );
            }
            delays.push(delay);
            now = at;
        }
        assert_eq!(audit_of(&s, &key).await.len(), 7, "every failure audited");
        // Finish this task so that the next jitter's task, whose clock starts again at t(0),
        // never sees it come due (the two schedules overlap at random).
        let last = s.claim("w", 1, LEASE, now).await.expect("final claim");
        assert_eq!(last.iter().map(|t| t.id).collect::<Vec<_>>(), [id]);
        assert!(s.complete(id, "w", &[], now).await.expect("complete"));
        match jitter {
            Jitter::None => assert_eq!(
                delays.iter().map(Duration::as_secs).collect::<Vec<_>>(),
                [10, 20, 40, 80, 160, 300, 300]
            ),
            // Consecutive ranges [c/2, c] and [c, 2c] only touch, so delays never shrink
            // until the cap.
            Jitter::Equal => assert!(delays[..5].windows(2).all(|w| w[0] <= w[1]), "{delays:?}"),
            Jitter::Full => {}
        }
    }
}

async fn dead_letter_after_max_attempts(db: &Db) {
    let s = db.open().await;
    let backoff = Backoff {
        jitter: Jitter::None,
        ..Backoff::default()
    };
    let new = NewTask {
        max_attempts: 3,
        ..task("dl")
    };
    let id = s.enqueue(&new, t(0)).await.expect("enqueue").id;
    let mut now = t(0);
    for attempt in 1..=3 {
        let got = s.claim("w", 1, LEASE, now).await.expect("claim");
        assert_eq!(got.len(), 1, "attempt {attempt}");
        let audit = entry("job-dl", AuditAction::TtlCleanup, now);
        let out = s
            .fail(
                id,
                "w",
                &format!("failure {attempt}"),
                &[audit],
                now,
                &backoff,
            )
            .await
            .expect("fail");
        match (attempt, out) {
            (1 | 2, FailOutcome::Retry(at)) => now = at,
            (3, FailOutcome::DeadLetter) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let far = t(1_000_000);
    assert!(
        s.claim("w", 10, LEASE, far)
            .await
            .expect("claim")
            .is_empty()
    );
    let dead = s.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].attempts, dead[0].state),
        (id, 3, TaskState::Dead)
    );
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 3"));
    assert_eq!(audit_of(&s, "job-dl").await.len(), 3);
    assert_eq!(
        s.queue_stats().await.expect("stats"),
        QueueStats {
            dead: 1,
            ..QueueStats::default()
        }
    );
    assert_eq!(
        s.next_due_at().await.expect("due"),
        None,
        "dead tasks are never due"
    );

    // An operator requeues it, but not while a live task has its key.
    let live = s.enqueue(&new, far).await.expect("same key");
    assert!(!live.duplicate);
    assert_eq!(
        s.requeue_dead(id, far).await.expect("requeue"),
        RequeueOutcome::ActiveDuplicate(live.id)
    );
    let got = s.claim("w", 1, LEASE, far).await.expect("claim");
    assert!(
        s.complete(got[0].id, "w", &[], far)
            .await
            .expect("complete")
    );
    assert_eq!(
        s.requeue_dead(id, far).await.expect("requeue"),
        RequeueOutcome::Requeued
    );
    assert_eq!(
        s.requeue_dead(id, far).await.expect("requeue"),
        RequeueOutcome::NotDead
    );
    assert_eq!(
        s.requeue_dead(9_999_999, far).await.expect("requeue"),
        RequeueOutcome::NotDead
    );
    let back = s.claim("w", 1, LEASE, far).await.expect("claim");
    assert_eq!((back[0].id, back[0].attempts), (id, 1));
}

async fn worker_lost_on_last_attempt_dead_letters(db: &Db) {
    let s = db.open().await;
    let new = NewTask {
        max_attempts: 2,
        ..task("poison")
    };
    let id = s.enqueue(&new, t(0)).await.expect("enqueue").id;
    assert_eq!(s.claim("w1", 1, LEASE, t(0)).await.expect("claim").len(), 1);
    // w1 dies; w2 takes over (attempt 2 of 2) and dies too.
    assert_eq!(
        s.claim("w2", 1, LEASE, t(30)).await.expect("claim").len(),
        1
    );
    assert_eq!(s.next_due_at().await.expect("due"), Some(t(60)));
    assert!(
        s.claim("w3", 1, LEASE, t(60))
            .await
            .expect("claim")
            .is_empty()
    );
    let row = task_by_id(&s, id).await;
    assert_eq!((row.state, row.attempts), (TaskState::Dead, 2));
    let err = row.last_error.unwrap_or_default();
    assert!(err.contains("w2") && err.contains("last attempt"), "{err}");
    assert!(
        !s.complete(id, "w2", &[], t(61))
            .await
            .expect("late complete")
    );
}

async fn complete_many_acks_only_held_tasks(db: &Db) {
    let s = db.open().await;
    let tasks: Vec<NewTask> = (0..10).map(|i| task(&format!("m{i}"))).collect();
    s.enqueue_many(&tasks, t(0)).await.expect("enqueue");
    let mine = s.claim("w1", 6, LEASE, t(0)).await.expect("claim");
    let theirs = s.claim("w2", 6, LEASE, t(0)).await.expect("claim");
    assert_eq!((mine.len(), theirs.len()), (6, 4));
    let done: Vec<Completion> = mine
        .iter()
        .chain(&theirs[..1])
        .map(|task| Completion {
            task_id: task.id,
            audit: vec![
                entry("batch", AuditAction::OrphanCleanup, t(1)),
                entry("batch", AuditAction::OrphanCleanup, t(1)),
            ],
        })
        .collect();
    let acked = s.complete_many("w1", &done, t(1)).await.expect("complete");
    assert_eq!(acked, mine.iter().map(|t| t.id).collect::<Vec<_>>());
    assert_eq!(
        audit_of(&s, "batch").await.len(),
        12,
        "only accepted completions are audited"
    );
    let stats = s.queue_stats().await.expect("stats");
    assert_eq!((stats.done, stats.running), (6, 4));
    assert!(
        s.complete_many("w1", &[], t(1))
            .await
            .expect("empty")
            .is_empty()
    );
}

// ----- audit -----

async fn audit_query_filters(db: &Db) {
    let s = db.open().await;
    let mut rows = [
        entry("j1", AuditAction::Warn, t(10)),
        entry("j1", AuditAction::SoftKill, t(20)),
        entry("j2", AuditAction::SoftKill, t(20)),
        entry("j1", AuditAction::HardKill, t(30)),
        entry("j3", AuditAction::OrphanCleanup, t(40)),
    ];
    rows[3].success = false;
    rows[3].error_message = Some("EPERM".into());
    rows[4].dry_run = true;
    rows[4].details = Some(serde_json::json!({"objects": 3, "bytes": 1024}));
    // Written out of time order: queries still return them by timestamp.
    s.append_audit(&rows[3..]).await.expect("append");
    s.append_audit(&rows[..3]).await.expect("append");
    s.append_audit(&[]).await.expect("append nothing");

    let q = |f: AuditQuery| {
        let s = s.clone();
        async move { s.query_audit(&f).await.expect("query") }
    };
    let all = q(AuditQuery::default()).await;
    assert_eq!(all.len(), 5);
    let times: Vec<Timestamp> = all.iter().map(|e| e.timestamp).collect();
    assert_eq!(times, [t(10), t(20), t(20), t(30), t(40)]);
    assert!(all[1].id < all[2].id, "same timestamp: insertion order");
    for (got, want) in all
        .iter()
        .zip([&rows[0], &rows[1], &rows[2], &rows[3], &rows[4]])
    {
        assert!(got.id > 0);
        assert_eq!(
            AuditEntry {
                id: 0,
                ..got.clone()
            },
            *want
        );
    }

    let j1 = q(AuditQuery {
        job_id: Some("j1".into()),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        j1.iter().map(|e| e.action).collect::<Vec<_>>(),
        [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill
        ]
    );

    let soft = q(AuditQuery {
        action: Some(AuditAction::SoftKill),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        soft.iter().map(|e| e.job_id.as_str()).collect::<Vec<_>>(),
        ["j1", "j2"]
    );

    // [since, until): 20 is in, 30 is out.
    let window = q(AuditQuery {
        since: Some(t(20)),
        until: Some(t(30)),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(window.len(), 2);
    assert!(window.iter().all(|e| e.timestamp == t(20)));
    // Microsecond precision: one microsecond later excludes the t(20) rows.
    let later = q(AuditQuery {
        since: Some(t(20) + chrono::TimeDelta::microseconds(1)),
        until: Some(t(30) + chrono::TimeDelta::microseconds(1)),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        later.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
        [t(30)]
    );

    let combined = q(AuditQuery {
        job_id: Some("j1".into()),
        action: Some(AuditAction::SoftKill),
        since: Some(t(0)),
        until: Some(t(100)),
        limit: None,
        org: None,
        newest_first: false,
    })
    .await;
    assert_eq!(combined.len(), 1);
    let limited = q(AuditQuery {
        limit: Some(2),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        limited.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
        [t(10), t(20)]
    );
    assert!(
        q(AuditQuery {
            job_id: Some("nobody".into()),
            ..AuditQuery::default()
        })
        .await
        .is_empty()
    );
}

async fn reclaimed_rows_carry_their_jobs_org_run_and_finish(db: &Db) {
    let s = db.open().await;
    let mut acme = job("j-acme");
    acme.finished_at = Some(t(30));
    acme.stage = Stage::Failed;
    acme.outcome = Some(Outcome::Terminated);
    s.insert_job(&acme).await.expect("insert");
    let mut other = job("j-other");
    other.org = Some("globex".into());
    s.insert_job(&other).await.expect("insert");
    let mut kill = entry("j-acme", AuditAction::SoftKill, t(20));
    kill.details =
        Some(serde_json::json!({"run_id": "run-1", "reclaimed": {"basis": "process_group"}}));
    let mut ws = entry("j-other", AuditAction::TtlCleanup, t(40));
    ws.details = Some(serde_json::json!({"bytes": 10}));
    let mut orphan = entry("01orphan", AuditAction::OrphanCleanup, t(50));
    orphan.details = Some(serde_json::json!({"bytes": 7}));
    let mut failed = entry("j-acme", AuditAction::TtlCleanup, t(60));
    failed.success = false;
    let mut dry = entry("j-acme", AuditAction::SoftKill, t(61));
    dry.dry_run = true;
    let warn = entry("j-acme", AuditAction::Warn, t(10));
    s.append_audit(&[kill, ws, orphan, failed, dry, warn])
        .await
        .expect("append");

    let all = s
        .reclaimed_rows(&jobwarden::reclaimed::ReportQuery::default())
        .await
        .expect("rows");
    let got: Vec<(String, Option<String>)> = all
        .iter()
        .map(|r| (r.entry.job_id.clone(), r.org.clone()))
        .collect();
    // Kills and deletions carried out, oldest first; not the failed, dry-run or warn rows.
    assert_eq!(
        got,
        [
            ("j-acme".to_owned(), Some("acme".to_owned())),
            ("j-other".to_owned(), Some("globex".to_owned())),
            ("01orphan".to_owned(), None),
        ]
    );
    assert_eq!(all[0].run_id.as_deref(), Some("run-1"));
    assert_eq!(all[0].finished_at, Some(t(30)));
    let only_acme = s
        .reclaimed_rows(&jobwarden::reclaimed::ReportQuery {
            org: Some("acme".into()),
            since: Some(t(15)),
            until: None,
        })
        .await
        .expect("rows");
    assert_eq!(only_acme.len(), 1);
    // The audit page: by organisation (through the jobs table), newest first.
    let acme_rows = s
        .query_audit(&AuditQuery {
            org: Some("acme".into()),
            newest_first: true,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    let times: Vec<Timestamp> = acme_rows.iter().map(|e| e.timestamp).collect();
    assert_eq!(times, [t(61), t(60), t(20), t(10)]);
    // The queue page: unfinished and dead tasks by kind and state.
    for (key, kind) in [("a", "workspace"), ("b", "workspace"), ("c", "log")] {
        s.enqueue(
            &NewTask {
                dedup_key: key.into(),
                job_id: Some("j-acme".into()),
                kind: kind.into(),
                resource_name: key.into(),
                payload: serde_json::json!({}),
                priority: 0,
                scheduled_at: t(0),
                max_attempts: 3,
            },
            t(0),
        )
        .await
        .expect("enqueue");
    }
    assert_eq!(
        s.queue_by_kind().await.expect("by kind"),
        [
            ("log".to_owned(), "pending".to_owned(), 1),
            ("workspace".to_owned(), "pending".to_owned(), 2),
        ]
    );
}

async fn audit_rows_survive_reopen(db: &Db) {
    let s = db.open().await;
    let rows = [
        entry("r1", AuditAction::ForceDelete, t(1)),
        entry("r1", AuditAction::TtlCleanup, t(2)),
    ];
    s.append_audit(&rows).await.expect("append");
    let j = job("r1");
    s.insert_job(&j).await.expect("insert");
    let before = audit_of(&s, "r1").await;
    s.close().await;
    drop(s);

    let reopened = db.open().await;
    assert_eq!(audit_of(&reopened, "r1").await, before);
    assert_eq!(before.len(), 2);
    assert_eq!(reopened.get_job(&j.id).await.expect("get"), Some(j));
    // Migrations ran again on open and changed nothing.
    reopened
        .append_audit(&rows[..1])
        .await
        .expect("append after reopen");
    assert_eq!(audit_of(&reopened, "r1").await.len(), 3);
}

async fn audit_log_rejects_update_and_delete(db: &Db) {
    let s = db.open().await;
    s.append_audit(&[entry("ao", AuditAction::HardKill, t(1))])
        .await
        .expect("append");
    let update = db
        .raw_exec("UPDATE cleanup_audit_log SET success = NOT success")
        .await
        .expect_err("UPDATE must be refused");
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = db
        .raw_exec("DELETE FROM cleanup_audit_log")
        .await
        .expect_err("DELETE must be refused");
    assert!(delete.to_string().contains("append-only"), "{delete}");
    let rows = audit_of(&s, "ao").await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].success, "row unchanged");
    // Inserting is still allowed through a raw connection; only changes are refused.
    db.raw_exec(
        "INSERT INTO cleanup_audit_log (timestamp, job_id, resource_type, resource_name, action, \
         reason, initiated_by, success) SELECT timestamp, job_id, resource_type, resource_name, \
         action, reason, initiated_by, success FROM cleanup_audit_log",
    )
    .await
    .expect("insert");
    assert_eq!(audit_of(&s, "ao").await.len(), 2);
}

async fn prune_done_is_bounded_and_ids_are_not_reused(db: &Db) {
    let s = db.open().await;
    let tasks: Vec<NewTask> = (0..5).map(|i| task(&format!("p{i}"))).collect();
    s.enqueue_many(&tasks, t(0)).await.expect("enqueue");
    let got = s.claim("w", 5, LEASE, t(0)).await.expect("claim");
    for (i, task) in got.iter().enumerate() {
        let at = t(10 + i64::try_from(i).expect("small"));
        assert!(s.complete(task.id, "w", &[], at).await.expect("complete"));
    }
    let max_id = got.iter().map(|t| t.id).max().expect("ids");
    // Done at t(10)..t(14); prune those before t(13), at most 2 per call.
    assert_eq!(s.prune_done(t(13), 2).await.expect("prune"), 2);
    assert_eq!(s.prune_done(t(13), 2).await.expect("prune"), 1);
    assert_eq!(s.prune_done(t(13), 2).await.expect("prune"), 0);
    assert_eq!(s.queue_stats().await.expect("stats").done, 2);
    // A pending task is never pruned, whatever its age.
    let p = s.enqueue(&task("fresh"), t(0)).await.expect("enqueue");
    assert!(p.id > max_id, "ids are not reused after pruning");
    assert_eq!(s.prune_done(t(1_000_000), 100).await.expect("prune"), 2);
    assert_eq!(s.queue_stats().await.expect("stats").pending, 1);
}

// ----- opening -----

#[tokio::test]
async fn unsupported_url_is_named() {
    let err = Store::open("mysql://root:hunter2@localhost/db")
        .await
        .expect_err("mysql is not supported");
    let msg = err.to_string();
    assert!(msg.contains("mysql://root:***@localhost/db"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("sqlite://PATH"), "{msg}");
}

#[tokio::test]
async fn open_failure_names_the_url_without_password() {
    // Port 1 refuses connections at once.
    let err = Store::open("postgres://u:hunter2@127.0.0.1:1/db")
        .await
        .expect_err("nothing listens on port 1");
    let msg = err.to_string();
    assert!(
        msg.starts_with("opening store postgres://u:***@127.0.0.1:1/db: "),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");

    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").expect("write");
    let url = format!("sqlite://{}/sub/x.db", blocker.display());
    let msg = Store::open(&url)
        .await
        .expect_err("parent is a file")
        .to_string();
    assert!(msg.starts_with(&format!("opening store {url}: ")), "{msg}");
}

#[tokio::test]
async fn memory_store_opens_migrated() {
    let s = Store::open("sqlite::memory:").await.expect("open");
    assert_eq!(s.backend(), "sqlite");
    s.insert_job(&job("m")).await.expect("insert");
    let id = JobId::parse("m").expect("id");
    let reads = futures::future::join_all((0..8).map(|_| s.get_job(&id))).await;
    assert!(reads.into_iter().all(|r| r.expect("get").is_some()));
    // Each open is a database of its own.
    let other = Store::open("sqlite::memory:").await.expect("open");
    assert_eq!(other.get_job(&id).await.expect("get"), None);
}
