//! Wiring shared by the Kubernetes tests: `Actions` against the scripted server
//! ([`against`], every request checked against `API_CALLS`), and the watch loop over the
//! stateful fake with a real Reconciler on a SQLite store in a temp dir ([`start`],
//! [`start_with`]), on a clock that is `T0` plus the real time elapsed since the test started.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::kubernetes::config::KubernetesConfig;
use jobwarden::kubernetes::controller;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::orphans::OrphanPass;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{AuditAction, AuditEntry, Timestamp, add};
use jobwarden::runtime::kubernetes::actions::{API_CALLS, Actions, classify};
use jobwarden::store::{AuditQuery, Store};
use serde_json::Value;

use super::fake::{Fake, k8s_time};
use super::{Seen, job_json, pod_json, scripted};

pub const JOBS: &str = "/apis/batch/v1/jobs";
pub const JOB_PATH: &str = "/apis/batch/v1/namespaces/flowforge/jobs/build-42";
pub const NS_JOBS: &str = "/apis/batch/v1/namespaces/flowforge/jobs";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/flowforge/events";
pub const POD_PATH: &str = "/api/v1/namespaces/flowforge/pods/build-42-a";

/// The scope of the exact-request tests: the default config, prefix `flowforge.io/`.
pub fn request_scope() -> Scope {
    Scope::new(&KubernetesConfig::default(), "flowforge.io/")
}

/// Runs `f` on `Actions` against a scripted server answering `responses`; returns its result
/// and what the server saw, after checking every request against `API_CALLS`.
pub async fn against<F, Fut, T>(responses: Vec<(u16, Value)>, dry_run: bool, f: F) -> (T, Vec<Seen>)
where
    F: FnOnce(Actions) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (client, server) = scripted(responses);
    let out = f(Actions::new(
        client,
        request_scope(),
        dry_run,
        "jobwarden-7d9f-abcde",
    ))
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends when the client is dropped")
        .expect("server task");
    assert_in_api_calls(&seen);
    (out, seen)
}

/// Every request is one `API_CALLS` (and so the RBAC role) grants.
pub fn assert_in_api_calls(seen: &[Seen]) {
    for s in seen {
        let (g, r, v) = classify(&s.method, &s.path).expect("a resource URL");
        assert!(
            API_CALLS
                .iter()
                .any(|c| c.group == g && c.resource == r && c.verb == v),
            "{} needs ({g:?}, {r}, {v}), which API_CALLS (and so the RBAC role) lacks",
            s.line()
        );
    }
}

/// When each test starts, by the shared clock (whole seconds, as `startTime` is).
pub fn t0() -> Timestamp {
    "2026-11-28T10:30:00Z".parse().expect("ts")
}

/// `T0` plus (or minus) `secs`.
pub fn at(secs: f64) -> Timestamp {
    if secs < 0.0 {
        jobwarden::model::sub(t0(), Duration::from_secs_f64(-secs))
    } else {
        add(t0(), Duration::from_secs_f64(secs))
    }
}

/// `T0` plus the real time since `start`.
pub fn clock(start: Instant) -> impl Fn() -> Timestamp + Clone + Send + Sync + 'static {
    move || add(t0(), start.elapsed())
}

/// A running Job: started at `start`, with these annotations (timeout, grace, TTL).
pub fn running_job(name: &str, uid: &str, start: Timestamp, annotations: Value) -> Value {
    let mut j = job_json();
    j["metadata"]["name"] = name.into();
    j["metadata"]["uid"] = uid.into();
    j["metadata"]["creationTimestamp"] = k8s_time(start).into();
    j["metadata"]["annotations"] = annotations;
    j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] = uid.into();
    j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] = name.into();
    j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = uid.into();
    j["status"]["startTime"] = k8s_time(start).into();
    j
}

/// A running pod bound to a node (no kubelet here: it stays until force-removed) of the Job
/// named `job` with `job_uid`.
pub fn bound_pod(name: &str, uid: &str, job: &str, job_uid: &str) -> Value {
    let mut p = pod_json(name, uid, "Running");
    p["metadata"]["labels"]["batch.kubernetes.io/job-name"] = job.into();
    p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = job_uid.into();
    p["metadata"]["ownerReferences"][0]["name"] = job.into();
    p["metadata"]["ownerReferences"][0]["uid"] = job_uid.into();
    p["spec"]["nodeName"] = "node-1".into();
    p
}

/// The controller running over a fake.
pub struct Running {
    pub fake: Fake,
    pub store: Store,
    pub ready: Arc<AtomicBool>,
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Whether this replica leads (acts); the controller follows changes.
    pub leading: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A SQLite store in a new temp dir (keep the dir while the store is used).
pub async fn temp_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/jobwarden.db", dir.path().display());
    let store = Store::open(&url).await.expect("store");
    (store, dir)
}

/// The controller (leading throughout; tests/k8s_leader.rs covers following) over `fake`,
/// with a SQLite store in a temp dir and an orphan pass when `orphans` is set.
pub async fn start(
    fake: &Fake,
    config: Config,
    orphans: bool,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> Running {
    start_with(fake, config, orphans, false, temp_store().await, clock).await
}

/// [`start`] on a given store (records may be in it already), acting or in dry-run.
pub async fn start_with(
    fake: &Fake,
    config: Config,
    orphans: bool,
    dry_run: bool,
    store: (Store, tempfile::TempDir),
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> Running {
    replica(fake, config, orphans, dry_run, store, clock, true)
}

/// One replica of the controller over `fake`, leading from the start or following until
/// [`Running::leading`] says otherwise.
pub fn replica(
    fake: &Fake,
    config: Config,
    orphans: bool,
    dry_run: bool,
    (store, dir): (Store, tempfile::TempDir),
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
    leading: bool,
) -> Running {
    let client = fake.client();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let pass =
        orphans.then(|| OrphanPass::from_config(client.clone(), &config, store.clone(), dry_run));
    let reconciler = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client.clone(), scope, dry_run, "jw-0"),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (leading, leading_rx) = tokio::sync::watch::channel(leading);
    let task = tokio::spawn(controller::run_with_orphans(
        pass,
        client,
        "job-id".into(),
        reconciler,
        ready.clone(),
        leading_rx,
        stop_rx,
        clock,
    ));
    Running {
        fake: fake.clone(),
        store,
        ready,
        stop,
        leading,
        task,
        _dir: dir,
    }
}

impl Running {
    /// Waits (at most `secs`) until `done` holds for the fake.
    pub async fn until(&self, secs: u64, what: &str, done: impl Fn(&Fake) -> bool) {
        let ok = tokio::time::timeout(Duration::from_secs(secs), async {
            while !done(&self.fake) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "{what}; mutations so far: {:#?}",
            lines(&self.fake.mutations())
        );
    }

    pub async fn audit(&self) -> Vec<AuditEntry> {
        self.store
            .query_audit(&AuditQuery::default())
            .await
            .expect("audit")
    }

    /// Ends the loop as a crash (`kill -9`) would, wherever it is: nothing more is sent or
    /// written, nothing is released.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops the loop; checks every request it made is in `API_CALLS`.
    pub async fn finish(self) -> Vec<Seen> {
        self.stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the loop stops on shutdown")
            .expect("task");
        let seen = self.fake.requests();
        for s in &seen {
            let (g, r, v) = classify(&s.method, &s.path).expect("a resource URL");
            assert!(
                API_CALLS
                    .iter()
                    .any(|c| c.group == g && c.resource == r && c.verb == v),
                "{}: ({g:?}, {r}, {v}) is not in API_CALLS",
                s.line()
            );
        }
        seen
    }
}

/// `METHOD path` (no query) of each request.
pub fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| {
            format!(
                "{} {}",
                s.method,
                s.path.split('?').next().unwrap_or_default()
            )
        })
        .collect()
}

/// How many requests had `method` and `path` (no query).
pub fn count(seen: &[Seen], method: &str, path: &str) -> usize {
    seen.iter()
        .filter(|s| s.method == method && s.path.split('?').next() == Some(path))
        .count()
}

/// The step rows (one per step taken, `details.due_at` set) in order.
pub fn steps(audit: &[AuditEntry]) -> Vec<(AuditAction, Timestamp, Timestamp)> {
    audit
        .iter()
        .filter(|a| {
            a.resource_type == "job" && a.details.as_ref().is_some_and(|d| d["due_at"].is_string())
        })
        .filter(|a| {
            matches!(
                a.action,
                AuditAction::Warn
                    | AuditAction::SoftKill
                    | AuditAction::HardKill
                    | AuditAction::ForceDelete
            )
        })
        .map(|a| {
            let due: Timestamp = a.details.as_ref().expect("details")["due_at"]
                .as_str()
                .expect("due_at")
                .parse()
                .expect("due_at parses");
            (a.action, due, a.timestamp)
        })
        .collect()
}
