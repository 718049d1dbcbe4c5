//! Cleanup-queue throughput: enqueue → claim → complete with one audit row per task, on SQLite
//! (a file in a temporary directory) and PostgreSQL (a fresh database on the server named by
//! `DATABASE_URL`; skipped with a notice when it is unset).
//!
//! `cargo bench --bench queue`. Each sample moves [`TASKS`] tasks through the queue in
//! batches of `batch` (one `enqueue_many`, one `claim`, one `complete_many` per batch), with
//! `workers` workers claiming concurrently; divan reports the time per sample and tasks/s.
//! Targets (issue 2): ≥ 2 000 tasks/s on SQLite, ≥ 5 000 tasks/s on PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use divan::Bencher;
use divan::counter::ItemsCount;
use jobwarden::model::{AuditAction, AuditEntry, Timestamp};
use jobwarden::store::{Completion, NewTask, Store};
use sqlx::Connection as _;

/// Tasks per sample.
const TASKS: usize = 2_000;

/// (batch size, concurrent workers)
const SHAPES: &[(usize, usize)] = &[(1, 1), (50, 1), (200, 1), (200, 2)];

fn main() {
    divan::main();
}

fn now() -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Numbers the samples, so every sample enqueues fresh keys.
static ROUND: AtomicU64 = AtomicU64::new(0);

async fn worker(store: Store, name: String, batch: usize) -> usize {
    let mut done = 0;
    loop {
        let claimed = store
            .claim(
                &name,
                u32::try_from(batch).unwrap_or(u32::MAX),
                Duration::from_secs(60),
                now(),
            )
            .await
            .expect("claim");
        if claimed.is_empty() {
            return done;
        }
        let completions: Vec<Completion> = claimed
            .iter()
            .map(|t| Completion {
                task_id: t.id,
                audit: vec![AuditEntry {
                    id: 0,
                    timestamp: now(),
                    job_id: t.job_id.clone().unwrap_or_default(),
                    resource_type: "workspace".into(),
                    resource_name: t.resource_name.clone(),
                    action: AuditAction::TtlCleanup,
                    reason: "ttl expired".into(),
                    initiated_by: "jobwarden".into(),
                    success: true,
                    error_message: None,
                    dry_run: false,
                    details: None,
                }],
            })
            .collect();
        let acked = store
            .complete_many(&name, &completions, now())
            .await
            .expect("complete");
        assert_eq!(acked.len(), completions.len(), "every claimed task acked");
        done += acked.len();
    }
}

/// One sample: `TASKS` tasks enqueued in batches, then drained by `workers` workers.
async fn cycle(store: &Store, batch: usize, workers: usize) {
    let round = ROUND.fetch_add(1, Ordering::Relaxed);
    let tasks: Vec<NewTask> = (0..TASKS)
        .map(|i| NewTask {
            dedup_key: format!("ttl:{round}:{i}"),
            job_id: Some(format!("job-{round}-{i}")),
            kind: "ttl_cleanup".into(),
            resource_name: format!("/var/lib/jobwarden/ws/job-{round}-{i}"),
            payload: serde_json::json!({"path": format!("/var/lib/jobwarden/ws/job-{round}-{i}")}),
            priority: 0,
            scheduled_at: now(),
            max_attempts: 5,
        })
        .collect();
    for chunk in tasks.chunks(batch) {
        store.enqueue_many(chunk, now()).await.expect("enqueue");
    }
    let handles: Vec<_> = (0..workers)
        .map(|w| tokio::spawn(worker(store.clone(), format!("bench-{w}"), batch)))
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("worker");
    }
    assert_eq!(total, TASKS);
}

fn bench_store(
    bencher: Bencher,
    store: &Store,
    rt: &tokio::runtime::Runtime,
    shape: (usize, usize),
) {
    let (batch, workers) = shape;
    bencher
        .counter(ItemsCount::new(TASKS))
        .bench_local(|| rt.block_on(cycle(store, batch, workers)));
}

#[divan::bench(args = SHAPES, sample_count = 10, sample_size = 1)]
fn sqlite(bencher: Bencher, shape: (usize, usize)) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let store = rt.block_on(Store::open(&url)).expect("open sqlite");
    bench_store(bencher, &store, &rt, shape);
    rt.block_on(store.close());
}

/// A throwaway database on the `DATABASE_URL` server, dropped on drop.
struct PgDb {
    server: String,
    name: String,
    url: String,
}

impl PgDb {
    async fn create(server: &str) -> PgDb {
        let name = format!("jw_bench_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(server)
            .await
            .expect("connect DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create bench database");
        let mut url = url::Url::parse(server).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        PgDb {
            server: server.to_owned(),
            name,
            url: url.to_string(),
        }
    }

    async fn drop_db(&self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.server).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

#[divan::bench(args = SHAPES, sample_count = 10, sample_size = 1)]
fn postgres(bencher: Bencher, shape: (usize, usize)) {
    let Ok(server) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "!!! postgres queue benchmark SKIPPED: DATABASE_URL is not set \
             (eval \"$(scripts/start-postgres.sh)\") !!!"
        );
        bencher.bench_local(|| ());
        return;
    };
    let rt = runtime();
    let db = rt.block_on(PgDb::create(&server));
    let store = rt.block_on(Store::open(&db.url)).expect("open postgres");
    bench_store(bencher, &store, &rt, shape);
    rt.block_on(async {
        store.close().await;
        db.drop_db().await;
    });
}
