//! The watch loop end to end against the stateful fake API server (tests/k8s_support/fake.rs,
//! an axum Router used as kube's `Client` service), with a real Reconciler on a real SQLite
//! store in a temp dir. The clock is the fake's and the controller's: `T0` plus the real time
//! elapsed since the test started, so deadlines a few seconds out fall due without sleeping
//! for them in the code under test.
//!
//! Scenarios: the loop lists, becomes ready and soft-kills an overdue Job; a Job passes its
//! deadline and gets every step of the ladder in order; a finished Job is deleted at its TTL
//! and a re-created Job of the same name is not; orphans are removed and non-orphans survive;
//! a 410 Gone mid-watch makes the watcher re-list and a Job created meanwhile still gets its
//! step on time; a 429 on the soft kill is retried after its Retry-After; nothing is sent for
//! Jobs in protected namespaces or without the job-id label.

mod k8s_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jobwarden::config::{Config, WarnBefore};
use jobwarden::duration::Dur;
use jobwarden::kubernetes::actions::{API_CALLS, Actions, classify};
use jobwarden::kubernetes::controller;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::orphans::OrphanPass;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{AuditAction, AuditEntry, Timestamp, add};
use jobwarden::store::{AuditQuery, Store};
use k8s_support::fake::{Fake, k8s_time};
use k8s_support::*;
use serde_json::{Value, json};

const JOB_PATH: &str = "/apis/batch/v1/namespaces/flowforge/jobs/build-42";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/flowforge/events";
const POD_PATH: &str = "/api/v1/namespaces/flowforge/pods/build-42-a";

/// When each test starts, by the shared clock (whole seconds, as `startTime` is).
fn t0() -> Timestamp {
    "2026-11-28T10:30:00Z".parse().expect("ts")
}

/// `T0` plus (or minus) `secs`.
fn at(secs: f64) -> Timestamp {
    if secs < 0.0 {
        jobwarden::model::sub(t0(), Duration::from_secs_f64(-secs))
    } else {
        add(t0(), Duration::from_secs_f64(secs))
    }
}

/// `T0` plus the real time since `start`.
fn clock(start: Instant) -> impl Fn() -> Timestamp + Clone + Send + Sync + 'static {
    move || add(t0(), start.elapsed())
}

/// A running Job: started at `start`, with these annotations (timeout, grace, TTL).
fn running_job(name: &str, uid: &str, start: Timestamp, annotations: Value) -> Value {
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
fn bound_pod(name: &str, uid: &str, job: &str, job_uid: &str) -> Value {
    let mut p = pod_json(name, uid, "Running");
    p["metadata"]["labels"]["batch.kubernetes.io/job-name"] = job.into();
    p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = job_uid.into();
    p["metadata"]["ownerReferences"][0]["name"] = job.into();
    p["metadata"]["ownerReferences"][0]["uid"] = job_uid.into();
    p["spec"]["nodeName"] = "node-1".into();
    p
}

struct Running {
    fake: Fake,
    store: Store,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    _leading: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// The controller (leading throughout; tests/k8s_leader.rs covers following) over `fake`,
/// with a SQLite store in a temp dir and an orphan pass when `orphans` is set.
async fn start(
    fake: &Fake,
    config: Config,
    orphans: bool,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/jobwarden.db", dir.path().display());
    let store = Store::open(&url).await.expect("store");
    let client = fake.client();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let pass =
        orphans.then(|| OrphanPass::from_config(client.clone(), &config, store.clone(), false));
    let reconciler = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client.clone(), scope, false, "jw-0"),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (leading, leading_rx) = tokio::sync::watch::channel(true);
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
        _leading: leading,
        task,
        _dir: dir,
    }
}

impl Running {
    /// Waits (at most `secs`) until `done` holds for the fake.
    async fn until(&self, secs: u64, what: &str, done: impl Fn(&Fake) -> bool) {
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

    async fn audit(&self) -> Vec<AuditEntry> {
        self.store
            .query_audit(&AuditQuery::default())
            .await
            .expect("audit")
    }

    /// Stops the loop; checks every request it made is in `API_CALLS`.
    async fn finish(self) -> Vec<Seen> {
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
fn lines(seen: &[Seen]) -> Vec<String> {
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

fn count(seen: &[Seen], method: &str, path: &str) -> usize {
    seen.iter()
        .filter(|s| s.method == method && s.path.split('?').next() == Some(path))
        .count()
}

/// The step rows (one per step taken, `details.due_at` set) in order.
fn steps(audit: &[AuditEntry]) -> Vec<(AuditAction, Timestamp, Timestamp)> {
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

#[tokio::test]
async fn the_loop_lists_becomes_ready_and_soft_kills_a_job_past_its_deadline() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    // Started 29 min ago with a 60 s timeout; the default grace (300 s) exceeds the pods' 30 s.
    let overdue = running_job(
        "build-42",
        JOB_UID,
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60"}),
    );
    fake.insert(overdue);
    let mut unlabelled = running_job(
        "other",
        "uid-other",
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60"}),
    );
    unlabelled["metadata"]["labels"] = json!({"app": "x"});
    fake.insert(unlabelled);
    let mut protected = running_job(
        "sys",
        "uid-sys",
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60"}),
    );
    protected["metadata"]["namespace"] = "kube-system".into();
    fake.insert(protected);
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));

    let c = start(&fake, Config::default(), false, clock(start_time)).await;
    c.until(10, "the overdue Job is soft-killed", |f| {
        f.mutations().len() >= 4
    })
    .await;
    assert!(c.ready.load(Ordering::Relaxed));
    // Give the loop a moment to send anything it should not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        [
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
            format!("PATCH {JOB_PATH}"),
            format!("POST {EVENTS}"),
        ],
        "pod grace too short, the overdue warning, then the soft kill; nothing for the unlabelled Job or the kube-system one"
    );
    assert_eq!(writes[0].body["reason"], "GracePeriodTooShort");
    assert_eq!(writes[1].body["reason"], "TimeoutWarning");
    assert_eq!(writes[2].body["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(writes[3].body["reason"], "TimeoutSoftKill");
    // The fake applied the patch.
    let job = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(
        job["metadata"]["annotations"]["flowforge.io/terminated-by"],
        "jobwarden"
    );
    let seen = c.finish().await;
    let calls: Vec<(String, String, String)> = seen
        .iter()
        .filter_map(|s| classify(&s.method, &s.path))
        .collect();
    for needed in [
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
    ] {
        assert!(
            calls
                .iter()
                .any(|(g, r, v)| (g.as_str(), r.as_str(), v.as_str()) == needed),
            "the loop never made {needed:?}: {calls:?}"
        );
    }
}

/// Timeout 2 s, warning 1 s before, grace 1 s: warn at T0+1, soft_kill at T0+2, hard_kill at
/// T0+3, force_delete at T0+4. The Job controller does not act on the patched deadline here
/// (the test never runs its emulation, as when kube-controller-manager is down), so the Job
/// stays active and its pod, bound to a node without kubelet, stays: every step is taken.
#[tokio::test]
async fn a_job_past_its_deadline_gets_each_step_in_order_with_audit_rows() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        t0(),
        json!({"flowforge.io/timeout-seconds": "2", "flowforge.io/grace-period-seconds": "1"}),
    ));
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));
    let mut config = Config::default();
    config.policy.warn_before = WarnBefore::One(Dur::secs(1));

    let c = start(&fake, config, false, clock(start_time)).await;
    c.until(15, "the Job is force-deleted", |f| {
        f.get("jobs", "flowforge", "build-42").is_none()
    })
    .await;
    // Anything after the Job is gone would follow at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        [
            format!("POST {EVENTS}"),
            format!("PATCH {JOB_PATH}"),
            format!("POST {EVENTS}"),
            format!("DELETE {POD_PATH}"),
            format!("POST {EVENTS}"),
            format!("DELETE {POD_PATH}"),
            format!("POST {EVENTS}"),
            format!("DELETE {JOB_PATH}"),
            format!("DELETE {POD_PATH}"),
        ],
        "warn; soft_kill (patch, event, pod grace 1 s < its own 30 s); hard_kill (event, pod grace 0); force_delete (event, Job, the pod stuck terminating)"
    );
    let reasons: Vec<&Value> = writes
        .iter()
        .filter(|w| w.method == "POST")
        .map(|w| &w.body["reason"])
        .collect();
    assert_eq!(
        reasons,
        [
            "TimeoutWarning",
            "TimeoutSoftKill",
            "TimeoutHardKill",
            "TimeoutForceDelete"
        ]
    );
    assert_eq!(
        writes[1].body,
        json!({"metadata": {"annotations": {"flowforge.io/terminated-by": "jobwarden",
               "flowforge.io/termination-reason": writes[1].body["metadata"]["annotations"]["flowforge.io/termination-reason"]}},
               "spec": {"activeDeadlineSeconds": 1}})
    );
    assert_eq!(
        writes[1].query.get("fieldManager").map(String::as_str),
        Some("jobwarden")
    );
    assert_eq!(writes[3].body["gracePeriodSeconds"], 1);
    assert_eq!(writes[3].body["preconditions"]["uid"], "pod-a");
    assert_eq!(writes[5].body["gracePeriodSeconds"], 0);
    assert_eq!(writes[5].body["preconditions"]["uid"], "pod-a");
    assert_eq!(writes[7].body["propagationPolicy"], "Background");
    assert_eq!(writes[7].body["preconditions"]["uid"], JOB_UID);
    assert_eq!(writes[8].body["gracePeriodSeconds"], 0);

    // The steps are in the store, each on time: not before it was due, and within 1 s.
    let audit = c.audit().await;
    let taken = steps(&audit);
    let actions: Vec<AuditAction> = taken.iter().map(|s| s.0).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill,
            AuditAction::ForceDelete
        ]
    );
    assert_eq!(taken[0].1, at(1.0));
    assert_eq!(taken[1].1, at(2.0));
    for (action, due, when) in &taken {
        assert!(
            *when >= *due && *when - *due < chrono::TimeDelta::seconds(1),
            "{action:?} due {due} taken {when}"
        );
    }
    // One audit row per call, each a success.
    let calls: Vec<&AuditEntry> = audit
        .iter()
        .filter(|a| a.details.as_ref().is_some_and(|d| d["call"].is_string()))
        .collect();
    assert_eq!(calls.len(), writes.len(), "{calls:#?}");
    assert!(calls.iter().all(|a| a.success), "{calls:#?}");
    // The fake's state: Job gone; its pod still there (no kubelet, the Job controller's
    // tracking finalizer), deleted with grace 0.
    let pod = fake.get("pods", "flowforge", "build-42-a").expect("pod");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 0);
    c.finish().await;
}

/// With the Job controller acting on the soft kill (FailureTarget, pods deleted, then the
/// pods go), the Job ends inside its grace: no hard_kill, no force_delete.
#[tokio::test]
async fn a_job_that_fails_after_the_soft_kill_is_not_hard_killed() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        t0(),
        json!({"flowforge.io/timeout-seconds": "1", "flowforge.io/grace-period-seconds": "1"}),
    ));
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));
    let mut config = Config::default();
    config.policy.warn_before = WarnBefore::One(Dur::secs(1));
    let now = clock(start_time);
    let c = start(&fake, config, false, clock(start_time)).await;
    c.until(10, "the soft kill", |f| {
        count(&f.mutations(), "PATCH", JOB_PATH) == 1
    })
    .await;
    // The Job controller syncs at once (KUBERNETES.md §1); the pod is force-removed by its
    // kubelet-less node only once deleted with grace 0, so emulate the kubelet finishing it.
    fake.job_controller_tick(now());
    let job = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(job["status"]["conditions"][0]["type"], "FailureTarget");
    assert_eq!(job["status"]["conditions"][0]["reason"], "DeadlineExceeded");
    fake.modify("pods", "flowforge", "build-42-a", |p| {
        p["status"]["phase"] = "Failed".into();
    });
    fake.job_controller_tick(now());
    assert!(
        fake.get("pods", "flowforge", "build-42-a").is_none(),
        "terminal and released: gone"
    );
    let job = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(job["status"]["conditions"][1]["type"], "Failed");
    // Past when hard_kill (T0+2) and force_delete (T0+3) would have been due.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(start_time.elapsed())).await;
    let writes = fake.mutations();
    assert_eq!(
        count(&writes, "DELETE", JOB_PATH),
        0,
        "{:?}",
        lines(&writes)
    );
    assert!(
        writes.iter().all(|w| w.body["reason"] != "TimeoutHardKill"),
        "{:?}",
        lines(&writes)
    );
    let taken: Vec<AuditAction> = steps(&c.audit().await).iter().map(|s| s.0).collect();
    assert_eq!(taken, [AuditAction::Warn, AuditAction::SoftKill]);
    assert!(fake.get("jobs", "flowforge", "build-42").is_some());
    c.finish().await;
}
