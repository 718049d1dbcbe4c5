//! What follows a Kubernetes Job's TTL delete: its run's artifact and log cleanup in the
//! durable queue (the local runtime's task kind and dedupe keys, per-outcome retention), and
//! nothing queued when the delete failed, found a re-created Job, or was only a dry-run; the
//! one per-minute budget of destructive calls that TTL deletes and orphan deletes share; and,
//! end to end against a real S3 server (moto), the cleanup workers deleting exactly the
//! Job's prefixes and auditing it.
//!
//! The Reconciler talks to the scripted API server of `k8s_support`; the store is a real
//! SQLite file. The S3 test needs `JOBWARDEN_TEST_S3_ENDPOINT` (`eval "$(scripts/start-moto.sh)"`):
//! without it it is skipped with a loud notice, or fails when `CI` or
//! `JOBWARDEN_REQUIRE_SERVERS=1` is set.

mod k8s_support;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use jobwarden::artifacts::Artifacts;
use jobwarden::artifacts::config::{ArtifactsConfig, Secret};
use jobwarden::artifacts::retention::RetentionTask;
use jobwarden::config::Config;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::orphans::{Kind, LiveJobs, OrphanPass, PassSettings};
use jobwarden::kubernetes::reconcile::{Reconciled, Reconciler};
use jobwarden::model::{AuditAction, JobId, Stage, Timestamp};
use jobwarden::ratelimit::RateLimiter;
use jobwarden::runtime::kubernetes::actions::Actions;
use jobwarden::store::{AuditQuery, Store, Task, TaskFilter};
use k8s_support::*;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use serde_json::{Value, json};

fn t(s: &str) -> Timestamp {
    format!("2026-11-28T{s}Z").parse().expect("ts")
}

fn days(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::days(n)
}

/// A SQLite store in a file of its own (kept alive by the returned directory).
async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("jw.db").display());
    (Store::open(&url).await.expect("store"), dir)
}

/// A Job of org acme that finished (`condition`: Complete / Failed) at `finished`.
fn finished_json(name: &str, id: &str, uid: &str, condition: &str, finished: &str) -> Value {
    let mut v = job_json();
    v["metadata"]["name"] = name.into();
    v["metadata"]["uid"] = uid.into();
    v["metadata"]["labels"]["job-id"] = id.into();
    v["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] = uid.into();
    v["status"]["active"] = 0.into();
    v["status"]["ready"] = 0.into();
    v["status"]["conditions"] = json!([{"type": condition, "status": "True",
        "lastProbeTime": finished, "lastTransitionTime": finished}]);
    v
}

fn empty_pod_list() -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": []}),
    )
}

fn reconciler(config: Config, store: &Store, client: kube::Client, dry_run: bool) -> Reconciler {
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, dry_run, "jw-0"),
    )
}

/// One reconcile of `job_v` at `now` with a fresh reconciler; what the server saw.
async fn ttl_pass(
    store: &Store,
    config: Config,
    job_v: &Value,
    responses: Vec<(u16, Value)>,
    dry_run: bool,
    now: Timestamp,
) -> (Reconciled, Vec<String>) {
    let (client, server) = scripted(responses);
    let r = reconciler(config, store, client, dry_run);
    let out = r
        .reconcile(&job(job_v.clone()), &[], now)
        .await
        .expect("reconcile");
    drop(r);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    (out, seen.iter().map(Seen::line).collect())
}

async fn tasks_of(store: &Store, id: &str) -> Vec<Task> {
    store
        .list_tasks(&TaskFilter {
            job_id: Some(id.to_owned()),
            ..TaskFilter::default()
        })
        .await
        .expect("tasks")
}

async fn stage_of(store: &Store, id: &str) -> Stage {
    store
        .get_job(&JobId::parse(id).expect("id"))
        .await
        .expect("get")
        .expect("stored")
        .stage
}

/// (dedup key, kind, resource, due) of each task, sorted.
fn summary(tasks: &[Task]) -> Vec<(String, String, String, Timestamp)> {
    let mut v: Vec<_> = tasks
        .iter()
        .map(|t| {
            (
                t.dedup_key.clone(),
                t.kind.clone(),
                t.resource_name.clone(),
                t.scheduled_at,
            )
        })
        .collect();
    v.sort();
    v
}

const DELETE_A: &str = "DELETE /apis/batch/v1/namespaces/flowforge/jobs/a";

#[tokio::test]
async fn a_ttl_delete_queues_the_runs_artifact_and_log_cleanup_by_outcome_once() {
    let (store, _dir) = sqlite().await;
    // Succeeded at 10:10: TTL 1 h, so the artifacts (default: the TTL) are due at once; the
    // partial saves a week and the logs 30 days after the finish.
    let config = Config::parse(
        "[retention.artifacts]\nlogs = \"30d\"\npartial = \"7d\"\n",
        "test.toml",
    )
    .expect("config");
    let ok = finished_json("a", "j-a", "u-a", "Complete", "2026-11-28T10:10:00Z");
    let now = t("12:00:00");
    let (out, seen) = ttl_pass(
        &store,
        config.clone(),
        &ok,
        [
            vec![(200, ok.clone()), empty_pod_list()],
            no_labelled_objects().to_vec(),
        ]
        .concat(),
        false,
        now,
    )
    .await;
    assert_eq!(out, Reconciled::Wake(None));
    assert_eq!(seen[0], DELETE_A);
    assert_eq!(stage_of(&store, "j-a").await, Stage::Cleanup);
    let tasks = tasks_of(&store, "j-a").await;
    assert_eq!(
        summary(&tasks),
        [
            (
                "artifacts:jobs:j-a:u-a".to_owned(),
                "artifact_prefix".to_owned(),
                "jobs/acme/j-a".to_owned(),
                now,
            ),
            (
                "artifacts:logs:j-a:u-a".to_owned(),
                "artifact_prefix".to_owned(),
                "logs/j-a".to_owned(),
                t("10:10:00") + days(30),
            ),
            (
                "artifacts:partial:j-a:u-a".to_owned(),
                "artifact_prefix".to_owned(),
                "partial/j-a".to_owned(),
                t("10:10:00") + days(7),
            ),
        ]
    );
    assert!(tasks.iter().all(|t| t.payload["run_id"] == "u-a"));

    // Failed at 10:10: the artifacts follow the failed TTL (24 h), not the successful one.
    let mut failed = finished_json("a", "j-b", "u-b", "Failed", "2026-11-28T10:10:00Z");
    failed["metadata"]["name"] = "b".into();
    let later = t("10:10:00") + days(2);
    let (_, seen) = ttl_pass(
        &store,
        config.clone(),
        &failed,
        [
            vec![(200, failed.clone()), empty_pod_list()],
            no_labelled_objects().to_vec(),
        ]
        .concat(),
        false,
        later,
    )
    .await;
    assert_eq!(seen[0], "DELETE /apis/batch/v1/namespaces/flowforge/jobs/b");
    let artifacts: Vec<_> = tasks_of(&store, "j-b")
        .await
        .into_iter()
        .filter(|t| t.dedup_key.starts_with("artifacts:jobs:"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    let planned: RetentionTask =
        serde_json::from_value(artifacts[0].payload.clone()).expect("payload");
    assert_eq!(planned.due_at, t("10:10:00") + days(1));
    assert_eq!(artifacts[0].scheduled_at, later, "overdue: due now");

    // The next reconcile of the deleted Job queues nothing more.
    let (_, seen) = ttl_pass(&store, config.clone(), &ok, vec![], false, now).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(tasks_of(&store, "j-a").await.len(), 3);

    // A crash after the queueing and before the stage was written: the next reconcile
    // deletes again (404: done) and queues again; the dedupe keys merge it.
    let mut rec = store
        .get_job(&JobId::parse("j-a").expect("id"))
        .await
        .expect("get")
        .expect("row");
    rec.stage = Stage::Completed;
    store.update_job(&rec).await.expect("update");
    let (_, seen) = ttl_pass(
        &store,
        config.clone(),
        &ok,
        [
            vec![
                (404, status(404, "NotFound", "jobs.batch \"a\" not found")),
                empty_pod_list(),
            ],
            no_labelled_objects().to_vec(),
        ]
        .concat(),
        false,
        now,
    )
    .await;
    assert_eq!(seen[0], DELETE_A);
    assert_eq!(stage_of(&store, "j-a").await, Stage::Cleanup);
    assert_eq!(
        summary(&tasks_of(&store, "j-a").await),
        summary(&tasks),
        "queued twice"
    );
}

#[tokio::test]
async fn a_failed_or_conflicting_ttl_delete_queues_nothing() {
    let (store, _dir) = sqlite().await;
    let ok = finished_json("a", "j-a", "u-a", "Complete", "2026-11-28T10:10:00Z");
    let now = t("12:00:00");
    let forbidden = status(403, "Forbidden", "cannot delete resource \"jobs\"");
    let mut throttled = status(429, "TooManyRequests", "slow down");
    throttled["details"] = json!({"retryAfterSeconds": 3});
    for (code, body) in [
        (403, forbidden),
        (429, throttled),
        (500, status(500, "InternalError", "etcd timeout")),
    ] {
        let (out, seen) = ttl_pass(
            &store,
            Config::default(),
            &ok,
            vec![(code, body)],
            false,
            now,
        )
        .await;
        assert_eq!(seen, [DELETE_A], "{code}");
        assert!(
            matches!(out, Reconciled::Wake(Some(at)) if at > now),
            "{code}: {out:?}"
        );
        assert_ne!(stage_of(&store, "j-a").await, Stage::Cleanup, "{code}");
        assert!(tasks_of(&store, "j-a").await.is_empty(), "{code}");
    }

    // 409: the name belongs to a re-created Job (a new run, whose objects these would be).
    let (_, seen) = ttl_pass(
        &store,
        Config::default(),
        &ok,
        vec![(
            409,
            status(
                409,
                "Conflict",
                "Precondition failed: UID in precondition: u-a",
            ),
        )],
        false,
        now,
    )
    .await;
    assert_eq!(seen, [DELETE_A]);
    assert!(tasks_of(&store, "j-a").await.is_empty());
    let all = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("tasks");
    assert!(all.is_empty(), "{all:?}");
}

#[tokio::test]
async fn dry_run_queues_and_deletes_nothing() {
    let (store, _dir) = sqlite().await;
    let ok = finished_json("a", "j-a", "u-a", "Complete", "2026-11-28T10:10:00Z");
    let (out, seen) = ttl_pass(&store, Config::default(), &ok, vec![], true, t("12:00:00")).await;
    assert_eq!(out, Reconciled::Wake(None));
    assert!(seen.is_empty(), "dry-run sent {seen:?}");
    let all = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("tasks");
    assert!(all.is_empty(), "dry-run queued {all:?}");
    let rows = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit");
    assert!(
        rows.iter()
            .any(|a| a.action == AuditAction::TtlCleanup && a.dry_run),
        "the decision is audited as dry-run: {rows:?}"
    );
}

// ---- one budget of destructive calls ----

fn meta_page(items: Vec<Value>) -> (u16, Value) {
    let items: Vec<Value> = items
        .into_iter()
        .map(|m| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m}))
        .collect();
    (
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "5000"}, "items": items}),
    )
}

fn orphan_meta(name: &str, uid: &str, id: &str) -> Value {
    json!({"name": name, "namespace": "flowforge", "uid": uid, "resourceVersion": "100",
           "creationTimestamp": "2026-11-28T09:00:00Z", "labels": {"job-id": id}})
}

/// With `destructive_calls_per_minute = 3`, two TTL deletes and an orphan pass with three
/// orphans send three DELETEs in all: the pass deletes one and leaves two for later, and a
/// third TTL delete waits. Time is the test's: no sleeping (a token takes 20 s to come back).
#[tokio::test]
async fn ttl_deletes_and_orphan_deletes_share_one_per_minute_budget() {
    let (store, _dir) = sqlite().await;
    let mut config = Config::default();
    config.kubernetes.destructive_calls_per_minute = 3;
    config.orphans.clean = true;
    let limiter = Arc::new(RateLimiter::per_minute(3));
    let a = finished_json("a", "j-a", "u-a", "Complete", "2026-11-28T10:10:00Z");
    let mut b = finished_json("b", "j-b", "u-b", "Complete", "2026-11-28T10:10:00Z");
    b["metadata"]["name"] = "b".into();
    let mut c = finished_json("c", "j-c", "u-c", "Complete", "2026-11-28T10:10:00Z");
    c["metadata"]["name"] = "c".into();
    let [pa, sa, ca] = no_labelled_objects();
    let [pb, sb, cb] = no_labelled_objects();
    let (client, server) = scripted(vec![
        (200, a.clone()),
        empty_pod_list(),
        pa,
        sa,
        ca,
        (200, b.clone()),
        empty_pod_list(),
        pb,
        sb,
        cb,
        meta_page(vec![
            orphan_meta("o-1", "p-1", "j-1"),
            orphan_meta("o-2", "p-2", "j-2"),
        ]),
        meta_page(vec![]),
        meta_page(vec![orphan_meta("o-3", "s-3", "j-3")]),
        meta_page(vec![]),
        (200, success_status("pods", "o-1", "p-1")),
    ]);
    let r = reconciler(config.clone(), &store, client.clone(), false).with_limiter(limiter.clone());
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let pass = OrphanPass::new(client, scope, PassSettings::from_config(&config), false)
        .with_store(store.clone())
        .with_limiter(limiter);
    let now = t("12:00:00");
    let mono = Instant::now();

    assert_eq!(
        r.reconcile(&job(a), &[], now).await.expect("a"),
        Reconciled::Wake(None)
    );
    assert_eq!(
        r.reconcile(&job(b), &[], now).await.expect("b"),
        Reconciled::Wake(None)
    );
    let report = pass
        .run_at(
            || LiveJobs {
                synced: true,
                ..LiveJobs::default()
            },
            now,
            mono,
        )
        .await;
    assert_eq!(report.selection.orphans.len(), 3);
    assert_eq!((report.deleted, report.deferred), (1, 2));
    assert!(
        report
            .stopped
            .as_deref()
            .is_some_and(|s| s.contains("per-minute limit")),
        "{report:?}"
    );
    assert_eq!(report.selection.orphans[0].kind, Kind::Pod);
    let out = r.reconcile(&job(c), &[], now).await.expect("c");
    let Reconciled::Wake(Some(at)) = out else {
        panic!("the third TTL delete should wait: {out:?}")
    };
    assert!(
        at > now && at <= now + chrono::TimeDelta::seconds(20),
        "{at}"
    );
    assert_ne!(stage_of(&store, "j-c").await, Stage::Cleanup);
    drop((r, pass));
    let seen = server.await.expect("server");
    let deletes: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(Seen::line)
        .collect();
    assert_eq!(
        deletes,
        [
            DELETE_A,
            "DELETE /apis/batch/v1/namespaces/flowforge/jobs/b",
            "DELETE /api/v1/namespaces/flowforge/pods/o-1",
        ]
    );
}

// ---- end to end: the workers against S3 ----

fn s3_artifacts(test: &str) -> Option<Artifacts> {
    let endpoint = std::env::var("JOBWARDEN_TEST_S3_ENDPOINT").unwrap_or_default();
    if endpoint.is_empty() {
        let required = std::env::var("JOBWARDEN_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !required,
            "JOBWARDEN_TEST_S3_ENDPOINT is not set, but S3 tests are required here (CI or \
             JOBWARDEN_REQUIRE_SERVERS=1): start moto with `eval \"$(scripts/start-moto.sh)\"`"
        );
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n********************************************************************\n\
             SKIPPED S3 test {test}: JOBWARDEN_TEST_S3_ENDPOINT is not set.\n\
             Run `eval \"$(scripts/start-moto.sh)\"` to test against moto.\n\
             ********************************************************************"
        );
        return None;
    }
    let bucket =
        std::env::var("JOBWARDEN_TEST_S3_BUCKET").unwrap_or_else(|_| "jobwarden-test".into());
    let prefix = format!("jw-k8s-ttl-test-{:016x}", rand::random::<u64>());
    let env_has_keys = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| !v.is_empty());
    let config = ArtifactsConfig {
        url: Some(format!("s3://{bucket}/{prefix}")),
        endpoint: Some(endpoint),
        allow_http: Some(true),
        access_key_id: (!env_has_keys).then(|| "test".to_owned()),
        secret_access_key: (!env_has_keys).then(|| Secret::new("test")),
        ..Default::default()
    };
    let url = config.url.clone().expect("url");
    Some(
        jobwarden::kubernetes::cleanup::open_artifacts(
            &url,
            &Config {
                artifacts: config,
                ..Config::default()
            },
        )
        .expect("open s3://"),
    )
}

async fn keys(artifacts: &Artifacts) -> Vec<String> {
    let mut keys: Vec<String> = artifacts
        .store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

/// A Job's TTL delete, then the cleanup workers `jobwarden run --runtime kubernetes` starts:
/// every object under the Job's three prefixes is deleted from S3 and audited; the objects of
/// job `j-420` (whose id starts like `j-42`'s) and of another organisation's `j-42` survive.
#[tokio::test]
async fn the_workers_delete_the_deleted_jobs_objects_in_s3_and_nothing_else() {
    let Some(artifacts) = s3_artifacts("the_workers_delete_the_deleted_jobs_objects_in_s3") else {
        return;
    };
    let (store, dir) = sqlite().await;
    let mine = [
        "jobs/acme/j-42/out.tar",
        "jobs/acme/j-42/reports/a.json",
        "partial/j-42/step-3.bin",
        "logs/j-42/stdout.log",
    ];
    let others = [
        "jobs/acme/j-420/out.tar",
        "jobs/acme/j-42x",
        "jobs/other/j-42/out.tar",
        "partial/j-420/step-1.bin",
        "logs/j-420/stdout.log",
        "logs/j-4/stdout.log",
    ];
    for key in mine.iter().chain(&others) {
        artifacts
            .store()
            .put(&Path::from(*key), format!("data of {key}").into())
            .await
            .expect("put");
    }
    // Every retention short enough to be due: the worker runs on the real clock.
    let mut config = Config::parse(
        "[retention.artifacts]\nlogs = \"0s\"\npartial = \"0s\"\n",
        "test.toml",
    )
    .expect("config");
    config.queue.workers = 2;
    let now = jobwarden::clock::now();
    let finished = (now - chrono::TimeDelta::hours(2))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut done = job_json();
    done["status"]["active"] = 0.into();
    done["status"]["conditions"] = json!([{"type": "Complete", "status": "True",
        "lastProbeTime": finished, "lastTransitionTime": finished}]);
    let (client, server) = scripted(
        [
            vec![(200, done.clone()), empty_pod_list()],
            no_labelled_objects().to_vec(),
        ]
        .concat(),
    );
    let r = reconciler(config.clone(), &store, client, false);
    assert_eq!(
        r.reconcile(&job(done), &[], now).await.expect("ttl"),
        Reconciled::Wake(None)
    );
    drop(r);
    let seen = server.await.expect("server");
    assert_eq!(
        seen[0].line(),
        "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-42"
    );
    assert_eq!(tasks_of(&store, "j-42").await.len(), 3);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = jobwarden::kubernetes::cleanup::start(
        &config,
        store.clone(),
        artifacts.clone(),
        dir.path(),
        "sqlite://unused",
        "jw-test",
        jobwarden::events::EventBus::new(),
        &stop_rx,
    );
    assert_eq!(workers.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = tasks_of(&store, "j-42").await;
        if tasks
            .iter()
            .all(|t| t.state == jobwarden::store::TaskState::Done)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not finish: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    for w in workers {
        w.await.expect("worker");
    }

    let mut left = keys(&artifacts).await;
    let mut want: Vec<String> = others.iter().map(|k| (*k).to_owned()).collect();
    want.sort();
    // Clean up the shared bucket before asserting, so a failure leaves nothing behind.
    for k in &left {
        artifacts
            .store()
            .delete(&Path::from(k.as_str()))
            .await
            .expect("delete");
    }
    left.sort();
    assert_eq!(left, want, "exactly the Job's objects are gone");

    let rows: Vec<_> = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|a| a.resource_type == "object_prefix")
        .collect();
    let mut audited: Vec<_> = rows
        .iter()
        .map(|a| {
            (
                a.job_id.as_str(),
                a.action,
                a.success,
                ["jobs/acme/j-42", "logs/j-42", "partial/j-42"]
                    .into_iter()
                    .find(|p| a.resource_name.ends_with(&format!("/{p}")))
                    .unwrap_or("another prefix")
                    .to_owned(),
                a.details.as_ref().map(|d| d["objects"].clone()),
            )
        })
        .collect();
    audited.sort_by(|x, y| x.3.cmp(&y.3));
    assert_eq!(
        audited,
        [
            (
                "j-42",
                AuditAction::TtlCleanup,
                true,
                "jobs/acme/j-42".to_owned(),
                Some(json!(2))
            ),
            (
                "j-42",
                AuditAction::TtlCleanup,
                true,
                "logs/j-42".to_owned(),
                Some(json!(1))
            ),
            (
                "j-42",
                AuditAction::TtlCleanup,
                true,
                "partial/j-42".to_owned(),
                Some(json!(1))
            ),
        ],
        "{rows:#?}"
    );
}
