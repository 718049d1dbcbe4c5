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

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobwarden::config::{Config, WarnBefore};
use jobwarden::duration::Dur;
use jobwarden::model::{AuditAction, AuditEntry, Timestamp, add};
use jobwarden::runtime::kubernetes::actions::classify;
use k8s_support::fake::{Fake, k8s_time};
use k8s_support::wiring::*;
use k8s_support::*;
use serde_json::{Value, json};

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

/// A Job that succeeded at `finished` with a TTL of `ttl` seconds, and its Succeeded pod.
fn finished_job(uid: &str, finished: Timestamp, ttl: u32) -> Value {
    let mut j = running_job(
        "build-42",
        uid,
        jobwarden::model::sub(finished, Duration::from_secs(60)),
        json!({"flowforge.io/ttl-seconds-after-finished": ttl.to_string()}),
    );
    j["status"] = json!({
        "startTime": k8s_time(jobwarden::model::sub(finished, Duration::from_secs(60))),
        "completionTime": k8s_time(finished), "succeeded": 1, "ready": 0, "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "lastProbeTime": k8s_time(finished), "lastTransitionTime": k8s_time(finished)},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "lastProbeTime": k8s_time(finished), "lastTransitionTime": k8s_time(finished)}
        ]
    });
    j
}

fn succeeded_pod(name: &str, uid: &str, job_uid: &str) -> Value {
    let mut p = bound_pod(name, uid, "build-42", job_uid);
    p["status"]["phase"] = "Succeeded".into();
    p["metadata"]["finalizers"] = json!([]);
    p
}

/// A finished Job goes at finish + TTL (Foreground, its UID as precondition; the fake's
/// garbage collector removes its pod, then the Job). A Job re-created under the name (new UID)
/// while jobwarden's watch lags behind gets the old UID's precondition: 409, left alone.
#[tokio::test]
async fn a_finished_job_is_deleted_at_its_ttl_and_a_recreated_one_is_not() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(finished_job("uid-a", t0(), 1));
    fake.insert(succeeded_pod("build-42-a", "pod-a", "uid-a"));
    let now = clock(start_time);
    let c = start(&fake, Config::default(), false, clock(start_time)).await;
    c.until(10, "the Job is deleted at its TTL", |f| {
        f.get("jobs", "flowforge", "build-42").is_none()
    })
    .await;
    assert!(now() >= at(1.0), "not before finish + TTL");
    assert!(
        fake.get("pods", "flowforge", "build-42-a").is_none(),
        "its pod went first"
    );
    let writes = fake.mutations();
    assert_eq!(lines(&writes), [format!("DELETE {JOB_PATH}")]);
    assert_eq!(writes[0].body["propagationPolicy"], "Foreground");
    assert_eq!(writes[0].body["preconditions"]["uid"], "uid-a");

    // A second run of the job finishes under the same name, TTL 2 s.
    let finished_b = add(now(), Duration::from_millis(0));
    fake.insert(finished_job("uid-b", finished_b, 2));
    c.until(5, "the new run is seen", |_| true).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let rec = c
                .store
                .get_job(&jobwarden::model::JobId::parse("j-42").expect("id"))
                .await
                .expect("store");
            if rec.is_some_and(|r| r.run_id == "uid-b") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the controller records run uid-b");
    // It is deleted and re-created (uid-c, running) while jobwarden's watch lags.
    fake.pause_watches(true);
    fake.remove("jobs", "flowforge", "build-42");
    let mut recreated = running_job("build-42", "uid-c", t0(), json!({}));
    // Pods' grace as long as the policy's: no GracePeriodTooShort Event for it either.
    recreated["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 300.into();
    fake.insert(recreated);
    c.until(10, "the TTL delete of uid-b is tried", |f| {
        count(&f.mutations(), "DELETE", JOB_PATH) == 2
    })
    .await;
    fake.pause_watches(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        [format!("DELETE {JOB_PATH}"), format!("DELETE {JOB_PATH}")],
        "nothing for the re-created Job"
    );
    assert_eq!(writes[1].body["preconditions"]["uid"], "uid-b");
    let job = fake
        .get("jobs", "flowforge", "build-42")
        .expect("the re-created Job is kept");
    assert_eq!(job["metadata"]["uid"], "uid-c");
    assert!(job["metadata"]["deletionTimestamp"].is_null());
    let audit = c.audit().await;
    let deletes: Vec<&AuditEntry> = audit
        .iter()
        .filter(|a| a.action == AuditAction::TtlCleanup && a.resource_type == "job")
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:#?}");
    assert!(deletes[0].success);
    assert!(!deletes[1].success);
    assert!(
        deletes[1].details.as_ref().expect("details")["conflict"].is_string(),
        "{:?}",
        deletes[1]
    );
    assert!(
        deletes[1]
            .error_message
            .as_deref()
            .is_some_and(|e| e.contains("409") && e.contains("uid-b")),
        "{:?}",
        deletes[1].error_message
    );
    c.finish().await;
}

/// Metadata of an object the orphan pass lists.
fn object(kind: &str, ns: &str, name: &str, uid: &str, labels: Value, created: Timestamp) -> Value {
    json!({"apiVersion": "v1", "kind": kind,
           "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels,
                        "creationTimestamp": k8s_time(created)}})
}

/// One orphan pass through the running controller: the labelled Pod, PVC, Secret and
/// ConfigMap whose job has no Job go (Background, UID precondition, one audit row each); an
/// unlabelled object, one in a protected namespace, one owned by a live Job, one carrying a
/// live Job's id and one younger than its minimum age stay.
#[tokio::test]
async fn orphans_are_removed_and_non_orphans_survive() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let old = at(-7200.0);
    fake.insert(running_job("build-42", JOB_UID, at(-60.0), json!({})));
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));
    // Orphans.
    fake.insert(object(
        "Pod",
        "flowforge",
        "build-7-a",
        "u-p7",
        json!({"job-id": "j-7"}),
        old,
    ));
    fake.insert(object(
        "PersistentVolumeClaim",
        "flowforge",
        "ws-8",
        "u-pvc8",
        json!({"job-id": "j-8"}),
        old,
    ));
    fake.insert(object(
        "Secret",
        "flowforge",
        "sec-9",
        "u-s9",
        json!({"job-id": "j-9"}),
        old,
    ));
    fake.insert(object(
        "ConfigMap",
        "flowforge",
        "cfg-9",
        "u-c9",
        json!({"job-id": "j-9"}),
        old,
    ));
    // Not orphans.
    fake.insert(object(
        "ConfigMap",
        "flowforge",
        "kube-root-ca.crt",
        "u-root",
        json!({}),
        old,
    ));
    fake.insert(object(
        "Secret",
        "kube-system",
        "sys-1",
        "u-sys",
        json!({"job-id": "j-1"}),
        old,
    ));
    let mut owned = object(
        "PersistentVolumeClaim",
        "flowforge",
        "ws-42",
        "u-pvc42",
        json!({"job-id": "j-99"}),
        old,
    );
    owned["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "build-42", "uid": JOB_UID}]);
    fake.insert(owned);
    fake.insert(object(
        "ConfigMap",
        "flowforge",
        "cfg-42",
        "u-c42",
        json!({"job-id": "j-42"}),
        old,
    ));
    fake.insert(object(
        "Secret",
        "flowforge",
        "young",
        "u-young",
        json!({"job-id": "j-10"}),
        at(-5.0),
    ));
    let mut config = Config::default();
    config.orphans.clean = true;
    let c = start(&fake, config, true, clock(start_time)).await;
    c.until(10, "four DELETEs", |f| {
        f.mutations()
            .iter()
            .filter(|m| m.method == "DELETE")
            .count()
            >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deletes: Vec<Seen> = fake
        .mutations()
        .into_iter()
        .filter(|m| m.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 4, "{:?}", lines(&deletes));
    for d in &deletes {
        assert_eq!(d.body["propagationPolicy"], "Background");
        assert!(
            d.body["preconditions"]["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("u-"))
        );
    }
    assert_eq!(fake.names("pods"), ["flowforge/build-42-a"]);
    assert_eq!(fake.names("persistentvolumeclaims"), ["flowforge/ws-42"]);
    assert_eq!(
        fake.names("secrets"),
        ["flowforge/young", "kube-system/sys-1"]
    );
    assert_eq!(
        fake.names("configmaps"),
        ["flowforge/cfg-42", "flowforge/kube-root-ca.crt"]
    );
    assert_eq!(fake.names("jobs"), ["flowforge/build-42"]);
    // Metadata-only, paginated, labelled lists.
    let lists: Vec<Seen> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/secrets"))
        .collect();
    assert!(!lists.is_empty());
    assert!(
        lists.iter().all(
            |l| l.query.get("labelSelector").map(String::as_str) == Some("job-id")
                && l.query.get("limit").map(String::as_str) == Some("500")
        )
    );
    let audit = c.audit().await;
    let rows: Vec<&AuditEntry> = audit
        .iter()
        .filter(|a| a.action == AuditAction::OrphanCleanup)
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.success));
    c.finish().await;
}

/// Every open watch ends with a 410 Gone; the re-list then fails once (500) while a Job is
/// created. The watcher re-lists after its backoff and the new Job's warning (due 5 s after
/// its start) still lands on time.
///
/// This found a bug: on a re-list kube's reflector buffers `InitApply` objects and swaps them
/// into its store only at `InitDone`, and the loop used to reconcile each `InitApply` at once,
/// find no Job yet and forget it until it changed. It now reconciles every Job at `InitDone`.
#[tokio::test]
async fn a_410_mid_watch_relists_and_a_job_created_meanwhile_gets_its_step_on_time() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let mut config = Config::default();
    config.policy.warn_before = WarnBefore::One(Dur::secs(1));
    let c = start(&fake, config, false, clock(start_time)).await;
    c.until(10, "ready", |_| c.ready.load(Ordering::Relaxed))
        .await;
    let lists = |f: &Fake| {
        f.requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.path.starts_with(JOBS) && !r.path.contains("watch=true")
            })
            .count()
    };
    assert_eq!(lists(&fake), 1);
    fake.fail("GET", JOBS, 500, None, 1);
    fake.expire_watches();
    // Created during the outage: started now (whole seconds), timeout 6 s: warn due +5 s.
    let now = clock(start_time);
    let started: Timestamp = k8s_time(now()).parse().expect("ts");
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        started,
        json!({"flowforge.io/timeout-seconds": "6", "flowforge.io/grace-period-seconds": "300"}),
    ));
    // The warning's step row (not just any Event: a GracePeriodTooShort one comes first).
    let ok = tokio::time::timeout(Duration::from_secs(12), async {
        while steps(&c.audit().await).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "the warning; requests: {:#?}",
        fake.timed_requests()
            .iter()
            .map(|(t, s)| format!("{t} {}", s.line()))
            .collect::<Vec<_>>()
    );
    assert!(
        lists(&fake) >= 3,
        "the failed re-list and the one that worked: {}",
        lists(&fake)
    );
    let taken = steps(&c.audit().await);
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (action, due, when) = taken[0];
    assert_eq!(action, AuditAction::Warn);
    assert_eq!(due, add(started, Duration::from_secs(5)));
    assert!(
        when >= due && when - due < chrono::TimeDelta::milliseconds(500),
        "due {due}, taken {when}"
    );
    c.finish().await;
}

/// The soft kill's PATCH is answered 429 with Retry-After 1 once: the step is retried 1 s
/// later and lands; one failed and one good audit row for the PATCH, one step row.
#[tokio::test]
async fn a_429_on_the_soft_kill_is_retried_after_its_retry_after() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60", "flowforge.io/grace-period-seconds": "30"}),
    ));
    fake.fail("PATCH", JOB_PATH, 429, Some(1), 1);
    let c = start(&fake, Config::default(), false, clock(start_time)).await;
    c.until(10, "the second PATCH", |f| {
        count(&f.mutations(), "PATCH", JOB_PATH) == 2
    })
    .await;
    c.until(5, "the soft kill Event", |f| {
        f.mutations()
            .iter()
            .any(|m| m.body["reason"] == "TimeoutSoftKill")
    })
    .await;
    let patches: Vec<Timestamp> = fake
        .timed_requests()
        .into_iter()
        .filter(|(_, s)| s.method == "PATCH")
        .map(|(t, _)| t)
        .collect();
    // The retry is armed at the reconcile's `now` + 1 s; the first PATCH left just after it.
    let gap = patches[1] - patches[0];
    assert!(
        gap >= chrono::TimeDelta::milliseconds(950) && gap < chrono::TimeDelta::seconds(2),
        "retried after Retry-After (1 s), not before and not after the 5 s default: {patches:?}"
    );
    let job = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 1);
    let patch_rows = |audit: &[AuditEntry]| -> Vec<AuditEntry> {
        audit
            .iter()
            .filter(|a| {
                a.action == AuditAction::SoftKill
                    && a.details.as_ref().is_some_and(|d| d["call"].is_string())
                    && a.resource_type == "job"
            })
            .cloned()
            .collect()
    };
    // The rows are written once the step's calls returned, just after the fake saw them.
    let mut audit = c.audit().await;
    for _ in 0..250 {
        if patch_rows(&audit).len() >= 2 && steps(&audit).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        audit = c.audit().await;
    }
    let rows = patch_rows(&audit);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        !rows[0].success
            && rows[0]
                .error_message
                .as_deref()
                .is_some_and(|e| e.contains("429"))
    );
    assert!(rows[1].success);
    let taken: Vec<AuditAction> = steps(&audit).iter().map(|s| s.0).collect();
    assert_eq!(taken, [AuditAction::Warn, AuditAction::SoftKill]);
    c.finish().await;
}

/// Overdue and finished-past-TTL Jobs in a protected namespace or without the job-id label,
/// with their pods, and leftovers that look like orphans there: nothing mutating is sent.
#[tokio::test]
async fn nothing_is_sent_for_protected_or_unlabelled_jobs() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let overdue = json!({"flowforge.io/timeout-seconds": "60"});
    let mut protected = running_job("sys", "uid-sys", at(-1800.0), overdue.clone());
    protected["metadata"]["namespace"] = "kube-system".into();
    fake.insert(protected);
    let mut pod = bound_pod("sys-a", "pod-sys", "sys", "uid-sys");
    pod["metadata"]["namespace"] = "kube-system".into();
    fake.insert(pod);
    let mut unlabelled = running_job("other", "uid-other", at(-1800.0), overdue);
    unlabelled["metadata"]["labels"] = json!({"app": "x"});
    fake.insert(unlabelled);
    let mut done = finished_job("uid-done", at(-7200.0), 1);
    done["metadata"]["name"] = "done".into();
    done["metadata"]["labels"] = json!({"app": "x"});
    fake.insert(done);
    let mut leftover = object(
        "Secret",
        "kube-system",
        "left",
        "u-left",
        json!({"job-id": "j-5"}),
        at(-7200.0),
    );
    leftover["metadata"]["namespace"] = "kube-system".into();
    fake.insert(leftover);
    let mut config = Config::default();
    config.orphans.clean = true;
    let c = start(&fake, config, true, clock(start_time)).await;
    c.until(10, "ready", |_| c.ready.load(Ordering::Relaxed))
        .await;
    // The orphan pass lists secrets once it ran.
    c.until(10, "the orphan pass", |f| {
        f.requests()
            .iter()
            .any(|r| r.path.starts_with("/api/v1/configmaps"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(lines(&fake.mutations()), Vec::<String>::new());
    assert_eq!(fake.names("jobs").len(), 3);
    assert_eq!(fake.names("secrets"), ["kube-system/left"]);
    c.finish().await;
}

/// Issue 18: the watch's echo of our own PATCH (exactly the resourceVersion it returned) is
/// not reconciled again; any other version of the Job is, and one PATCH is one echo.
#[tokio::test]
async fn only_the_exact_echo_of_our_own_patch_counts_as_ours() {
    use jobwarden::kubernetes::observe::Scope;
    use jobwarden::runtime::kubernetes::actions::Actions;
    let fake = Fake::new(clock(Instant::now()));
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60"}),
    ));
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let actions = Actions::new(fake.client(), scope, false, "jw-0");
    let current = || job(fake.get("jobs", "flowforge", "build-42").expect("job"));
    let before = current();
    assert!(!actions.is_own_echo(&before), "a version we never wrote");
    actions
        .soft_kill(&before, &[], Duration::from_secs(300), "timeout", at(0.0))
        .await
        .expect("ours");
    let echo = current();
    assert_ne!(
        echo.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(
        !actions.is_own_echo(&before),
        "the version before our PATCH"
    );
    // Seeing an older version gave up on ours (it cannot be told apart): patch again.
    actions
        .soft_kill(&echo, &[], Duration::from_secs(300), "timeout", at(1.0))
        .await
        .expect("ours");
    let echo = current();
    assert!(actions.is_own_echo(&echo), "exactly what our PATCH left");
    assert!(!actions.is_own_echo(&echo), "one echo per PATCH");
    // Our PATCH, then someone else's change before the echo was seen: theirs is reconciled.
    actions
        .soft_kill(&echo, &[], Duration::from_secs(300), "timeout", at(2.0))
        .await
        .expect("ours");
    fake.modify("jobs", "flowforge", "build-42", |j| {
        j["metadata"]["labels"]["team"] = "other".into();
    });
    let theirs = current();
    assert!(!actions.is_own_echo(&theirs), "changed by someone else");
}

/// Issue 18: with background Events the step is recorded and carried out (its PATCH) by the
/// reconcile, and the `TimeoutSoftKill` Event follows with its own audit row from the poster.
#[tokio::test]
async fn a_background_event_follows_the_recorded_and_carried_out_soft_kill() {
    use jobwarden::kubernetes::observe::Scope;
    use jobwarden::kubernetes::reconcile::Reconciler;
    use jobwarden::model::{JobId, Step};
    use jobwarden::runtime::kubernetes::actions::Actions;
    let fake = Fake::new(clock(Instant::now()));
    fake.insert(running_job(
        "build-42",
        JOB_UID,
        at(-1800.0),
        json!({"flowforge.io/timeout-seconds": "60", "flowforge.io/grace-period-seconds": "10"}),
    ));
    let (store, _dir) = temp_store().await;
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(fake.client(), scope, false, "jw-0"),
    )
    .with_background_events();
    let k = job(fake.get("jobs", "flowforge", "build-42").expect("job"));
    r.reconcile(&k, &[], at(0.0)).await.expect("reconcile");
    // Recorded and carried out when the reconcile returns: the step, no marker left, the PATCH.
    let record = store
        .get_job(&JobId::parse("j-42").expect("id"))
        .await
        .expect("store")
        .expect("record");
    assert!(
        record.steps.iter().any(|s| s.step == Step::SoftKill),
        "{:?}",
        record.steps
    );
    assert!(record.spec.get("acting").is_none(), "{}", record.spec);
    assert_eq!(count(&fake.requests(), "PATCH", JOB_PATH), 1);
    // As at a graceful shutdown: the reconciler goes, the poster posts what it holds, and
    // `events_posted` says when it has (the Event and its row are then both there).
    let posted = r.events_posted();
    drop(r);
    tokio::time::timeout(Duration::from_secs(10), posted)
        .await
        .expect("the poster drains once the reconciler is gone");
    let rows = store
        .query_audit(&jobwarden::store::AuditQuery::default())
        .await
        .expect("audit");
    let row = rows
        .iter()
        .find(|a| {
            a.resource_type == "event"
                && a.action == AuditAction::SoftKill
                && a.success
                && a.details
                    .as_ref()
                    .is_some_and(|d| d["eventReason"] == "TimeoutSoftKill")
        })
        .unwrap_or_else(|| panic!("no Event row: {rows:?}"));
    let name = row.resource_name.rsplit('/').next().unwrap_or_default();
    assert!(
        fake.requests()
            .iter()
            .any(|s| s.method == "POST" && s.body["metadata"]["name"] == name),
        "the row names the Event posted"
    );
}

/// Issue 18: a poster that cannot keep up never holds up a step: its Events are dropped,
/// counted (`event_dropped`), and every PATCH still goes out at once.
#[tokio::test]
async fn a_full_event_queue_drops_and_counts_without_delaying_the_steps() {
    use jobwarden::kubernetes::observe::Scope;
    use jobwarden::metrics::Metrics;
    use jobwarden::runtime::kubernetes::actions::Actions;
    use jobwarden::runtime::kubernetes::poster::EventPoster;
    let fake = Fake::new(clock(Instant::now()));
    let names = ["build-1", "build-2", "build-3", "build-4"];
    for (i, name) in names.iter().enumerate() {
        fake.insert(running_job(
            name,
            &format!("uid-{i}"),
            at(-1800.0),
            json!({"flowforge.io/timeout-seconds": "60"}),
        ));
    }
    // The API server never answers an Event: the poster is stuck on its first.
    fake.hang("POST", EVENTS);
    let (store, _dir) = temp_store().await;
    let metrics = std::sync::Arc::new(Metrics::default());
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let actions = Actions::new(fake.client(), scope, false, "jw-0")
        .with_event_poster(EventPoster::spawn_with(store.clone(), metrics.clone(), 1));
    for name in names {
        let k = job(fake.get("jobs", "flowforge", name).expect("job"));
        let report = tokio::time::timeout(
            Duration::from_secs(5),
            actions.soft_kill(&k, &[], Duration::from_secs(300), "timeout", at(0.0)),
        )
        .await
        .expect("never waits for an Event")
        .expect("ours");
        assert_eq!(report.audit.len(), 1, "the PATCH's row only: {report:?}");
        assert!(report.audit[0].success);
        tokio::task::yield_now().await;
    }
    let patches = fake
        .requests()
        .iter()
        .filter(|s| s.method == "PATCH")
        .count();
    assert_eq!(patches, names.len());
    let text = metrics.render();
    let dropped: u64 = text
        .lines()
        .find(|l| l.contains("kind=\"event_dropped\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (2..=3).contains(&dropped),
        "one Event hangs, one waits in the queue, the rest dropped: {text}"
    );
}
