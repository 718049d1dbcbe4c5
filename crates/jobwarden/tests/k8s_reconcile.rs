//! A Job's whole ladder through `Reconciler` against a scripted API server and a real (SQLite)
//! store: nothing before its time, one warning, soft kill at the deadline, hard kill a grace
//! later, a retried 429, and the TTL delete after it ended; every step in the store and every
//! call in the audit log.

mod k8s_support;

use std::time::Duration;

use jobwarden::config::Config;
use jobwarden::kubernetes::actions::Actions;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::{Reconciled, Reconciler};
use jobwarden::model::{AuditAction, JobId, Outcome, Stage, Step, Timestamp};
use jobwarden::store::{AuditQuery, Store};
use k8s_support::*;
use serde_json::{Value, json};

fn t(s: &str) -> Timestamp {
    format!("2026-11-28T{s}Z").parse().expect("ts")
}

/// Runs one reconcile of `job` with `pods` at `now` against a server answering `responses`.
async fn pass(
    store: &Store,
    job_v: &Value,
    pods: &[Value],
    responses: Vec<(u16, Value)>,
    now: Timestamp,
) -> (Reconciled, Vec<Seen>) {
    let (client, server) = scripted(responses);
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, false, "jw-0"),
    );
    let pods: Vec<_> = pods.iter().cloned().map(pod).collect();
    let out = r
        .reconcile(&job(job_v.clone()), &pods, now)
        .await
        .expect("reconcile");
    drop(r);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    (out, seen)
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn event() -> (u16, Value) {
    (
        201,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                 "eventTime": "2026-11-28T10:50:01.000000Z"}),
    )
}

async fn actions_of(store: &Store) -> Vec<(AuditAction, String, bool)> {
    store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit")
        .into_iter()
        .map(|a| (a.action, a.resource_type, a.success))
        .collect()
}

#[tokio::test]
async fn a_job_goes_through_the_ladder_and_is_deleted_at_its_ttl() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let id = JobId::parse("j-42").expect("id");
    let running = job_json(); // timeout 3600 s from startTime 10:00:01; grace 300 s (default)
    let pods = vec![pod_json("build-42-a", "pod-a", "Running")];

    // Early: only the once-per-run GracePeriodTooShort (pods' 30 s < the policy's 300 s);
    // wake at the warning (10 min before 11:00:01).
    let (r, seen) = pass(&store, &running, &pods, vec![event()], t("10:05:00")).await;
    assert_eq!(
        lines(&seen),
        ["POST /apis/events.k8s.io/v1/namespaces/flowforge/events"]
    );
    assert_eq!(seen[0].body["reason"], "GracePeriodTooShort");
    assert_eq!(r, Reconciled::Wake(Some(t("10:50:01"))));
    let (_, seen) = pass(&store, &running, &pods, vec![], t("10:06:00")).await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
    let rec = store.get_job(&id).await.expect("get").expect("stored");
    assert_eq!(
        (rec.stage, rec.deadline),
        (Stage::Running, Some(t("11:00:01")))
    );

    // The warning: one Event, once.
    let (r, seen) = pass(&store, &running, &pods, vec![event()], t("10:50:01")).await;
    assert_eq!(
        lines(&seen),
        ["POST /apis/events.k8s.io/v1/namespaces/flowforge/events"]
    );
    assert_eq!(seen[0].body["reason"], "TimeoutWarning");
    assert_eq!(r, Reconciled::Wake(Some(t("11:00:01"))));
    let (_, seen) = pass(&store, &running, &pods, vec![], t("10:50:02")).await;
    assert!(seen.is_empty(), "warned twice: {:?}", lines(&seen));

    // Soft kill at the deadline, throttled once: retried after the server's 3 s, then done.
    let mut throttled = status(429, "TooManyRequests", "slow down");
    throttled["details"] = json!({"retryAfterSeconds": 3});
    let (r, seen) = pass(
        &store,
        &running,
        &pods,
        vec![(429, throttled)],
        t("11:00:01"),
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(r, Reconciled::Wake(Some(t("11:00:04"))));
    assert!(
        !store
            .get_job(&id)
            .await
            .expect("get")
            .expect("row")
            .has_step(Step::SoftKill)
    );
    let (r, seen) = pass(
        &store,
        &running,
        &pods,
        vec![(200, job_json()), event()],
        t("11:00:04"),
    )
    .await;
    assert_eq!(
        lines(&seen),
        [
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42?fieldManager=jobwarden",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ],
        "the pods' own grace (30 s) is shorter than the policy's 300 s: no pod DELETE"
    );
    assert_eq!(seen[0].body["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(
        r,
        Reconciled::Wake(Some(t("11:05:04"))),
        "hard kill a grace after the actual soft kill"
    );
    let rec = store.get_job(&id).await.expect("get").expect("row");
    assert_eq!(rec.stage, Stage::Terminating);
    assert!(rec.has_step(Step::SoftKill));

    // The Job as it now looks: our annotation and deadline, FailureTarget, a pod still there.
    let mut killed = job_json();
    killed["metadata"]["annotations"]["flowforge.io/terminated-by"] = "jobwarden".into();
    killed["spec"]["activeDeadlineSeconds"] = 1.into();
    let (r, seen) = pass(&store, &killed, &pods, vec![], t("11:03:00")).await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
    assert_eq!(
        r,
        Reconciled::Wake(Some(t("11:05:04"))),
        "the patched deadline does not move ours"
    );

    let (_, seen) = pass(
        &store,
        &killed,
        &pods,
        vec![event(), (200, pods[0].clone())],
        t("11:05:04"),
    )
    .await;
    assert_eq!(
        lines(&seen)[1],
        "DELETE /api/v1/namespaces/flowforge/pods/build-42-a"
    );
    assert_eq!(seen[1].body["gracePeriodSeconds"], 0);

    // It ended (FailureTarget): terminated; TTL 24 h from then; nothing sent meanwhile.
    killed["status"]["conditions"] = json!([{"type": "FailureTarget", "status": "True",
        "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline",
        "lastProbeTime": "2026-11-28T11:05:05Z", "lastTransitionTime": "2026-11-28T11:05:05Z"}]);
    let (r, seen) = pass(&store, &killed, &[], vec![], t("11:06:00")).await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
    assert_eq!(
        r,
        Reconciled::Wake(Some("2026-11-29T11:05:05Z".parse().expect("ts")))
    );
    let rec = store.get_job(&id).await.expect("get").expect("row");
    assert_eq!(
        (rec.stage, rec.outcome),
        (Stage::Failed, Some(Outcome::Terminated))
    );

    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": []});
    let at_ttl: Timestamp = "2026-11-29T11:05:05Z".parse().expect("ts");
    let (r, seen) = pass(
        &store,
        &killed,
        &[],
        vec![(200, killed.clone()), (200, list)],
        at_ttl,
    )
    .await;
    assert_eq!(
        lines(&seen)[0],
        "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-42"
    );
    assert_eq!(seen[0].body["propagationPolicy"], "Foreground");
    assert_eq!(seen[0].body["preconditions"]["uid"], JOB_UID);
    assert_eq!(r, Reconciled::Wake(None));
    assert_eq!(
        store.get_job(&id).await.expect("get").expect("row").stage,
        Stage::Cleanup
    );
    let (_, seen) = pass(&store, &killed, &[], vec![], at_ttl).await;
    assert!(seen.is_empty(), "deleted twice: {:?}", lines(&seen));

    // Still there (Foreground waits for its pods), one pod stuck terminating: force-removed;
    // the Job is looked at again 30 s later.
    let mut deleting = killed.clone();
    deleting["metadata"]["deletionTimestamp"] = "2026-11-29T11:05:05Z".into();
    let mut stuck = pod_json("build-42-a", "pod-a", "Running");
    stuck["metadata"]["deletionTimestamp"] = "2026-11-29T11:05:35Z".into();
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
                      "items": [stuck.clone()]});
    let later = at_ttl + chrono::TimeDelta::seconds(60);
    let (r, seen) = pass(
        &store,
        &deleting,
        &[],
        vec![(200, list), (200, stuck)],
        later,
    )
    .await;
    assert_eq!(
        lines(&seen),
        [
            "GET /api/v1/namespaces/flowforge/pods?labelSelector=batch.kubernetes.io/job-name=build-42",
            "DELETE /api/v1/namespaces/flowforge/pods/build-42-a",
        ]
    );
    assert_eq!(seen[1].body["gracePeriodSeconds"], 0);
    assert_eq!(
        r,
        Reconciled::Wake(Some(later + chrono::TimeDelta::seconds(30)))
    );

    let audit = actions_of(&store).await;
    for want in [
        AuditAction::Warn,
        AuditAction::SoftKill,
        AuditAction::HardKill,
        AuditAction::TtlCleanup,
    ] {
        assert!(
            audit.iter().any(|(a, _, ok)| *a == want && *ok),
            "no {want} row in {audit:?}"
        );
    }
    assert!(
        audit
            .iter()
            .any(|(a, _, ok)| *a == AuditAction::SoftKill && !ok),
        "the throttled attempt is audited too: {audit:?}"
    );
}

#[tokio::test]
async fn unlabelled_jobs_are_neither_stored_nor_touched_and_bad_annotations_are_audited() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let mut unlabelled = job_json();
    unlabelled["metadata"]["labels"] = json!({});
    let (r, seen) = pass(&store, &unlabelled, &[], vec![], t("12:00:00")).await;
    assert_eq!(r, Reconciled::Ignored);
    assert!(seen.is_empty());
    assert!(
        store
            .get_job(&JobId::parse("j-42").expect("id"))
            .await
            .expect("get")
            .is_none()
    );

    let mut bad = job_json();
    bad["metadata"]["annotations"]["flowforge.io/timeout-seconds"] = "2 hours".into();
    let (r, _) = pass(&store, &bad, &[], vec![], t("10:05:00")).await;
    // Falls back to the global default (2 h): warning 10 min before 12:00:01.
    assert_eq!(r, Reconciled::Wake(Some(t("11:50:01"))));
    let audit = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit");
    let rows: Vec<_> = audit.iter().filter(|a| a.resource_type == "job").collect();
    assert_eq!(rows.len(), 1, "{audit:?}");
    assert_eq!(rows[0].action, AuditAction::ConfigWarning);
    assert!(rows[0].reason.contains("\"2 hours\""), "{}", rows[0].reason);
    assert!(
        audit
            .iter()
            .any(|a| a.resource_type == "event" && !a.success),
        "the GracePeriodTooShort Event the server refused (500) is audited as failed: {audit:?}"
    );
}

#[tokio::test]
async fn ttl_deletes_are_limited_per_minute_but_the_ladder_is_not() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let mut config = Config::default();
    config.kubernetes.destructive_calls_per_minute = 1;
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": []});
    // Delete a, list its pods; then c's GracePeriodTooShort, overdue warning, soft-kill
    // patch and its Event.
    let (client, server) = scripted(vec![
        (200, job_json()),
        (200, list),
        event(),
        event(),
        (200, job_json()),
        event(),
    ]);
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(config, store, Actions::new(client, scope, false, "jw-0"));
    let finished = |name: &str, id: &str, uid: &str| {
        let mut v = job_json();
        v["metadata"]["name"] = name.into();
        v["metadata"]["uid"] = uid.into();
        v["metadata"]["labels"]["job-id"] = id.into();
        v["status"]["conditions"] = json!([{"type": "Complete", "status": "True",
            "lastProbeTime": "2026-11-28T10:10:00Z", "lastTransitionTime": "2026-11-28T10:10:00Z"}]);
        job(v)
    };
    let now = t("12:00:00"); // successful TTL 1 h: both expired at 11:10:00
    let first = r
        .reconcile(&finished("a", "j-a", "u-a"), &[], now)
        .await
        .expect("a");
    assert_eq!(first, Reconciled::Wake(None));
    let second = r
        .reconcile(&finished("b", "j-b", "u-b"), &[], now)
        .await
        .expect("b");
    let Reconciled::Wake(Some(at)) = second else {
        panic!("the second delete should wait: {second:?}")
    };
    assert!(at > now && at <= t("12:01:00"), "{at}");
    // A soft kill is not held back by the exhausted budget.
    let mut overdue = job_json();
    overdue["metadata"]["annotations"] = json!({"flowforge.io/timeout-seconds": "60"});
    overdue["metadata"]["labels"]["job-id"] = "j-c".into();
    overdue["metadata"]["uid"] = "u-c".into();
    let out = r
        .reconcile(&job(overdue), &[], t("10:20:00"))
        .await
        .expect("c");
    drop(r);
    let seen = server.await.expect("server");
    let lines = lines(&seen);
    assert_eq!(
        lines[0],
        "DELETE /apis/batch/v1/namespaces/flowforge/jobs/a"
    );
    assert!(!lines.iter().any(|l| l.ends_with("/jobs/b")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42")),
        "{lines:?}"
    );
    // Warned, soft-killed; next: the hard kill a grace (300 s) later.
    assert_eq!(out, Reconciled::Wake(Some(t("10:25:00"))));
}

/// A soft kill the API forbids (RBAC) is retried, but with a doubling wait (60 s, 120 s,
/// 240 s, … up to an hour), so a permanent 403 does not write an audit row every minute; each
/// attempt is audited as failed, and nothing is recorded as taken until it succeeds.
#[tokio::test]
async fn a_forbidden_soft_kill_is_retried_with_a_doubling_wait() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let id = JobId::parse("j-42").expect("id");
    let running = job_json(); // deadline 11:00:01
    let pods = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];
    let forbidden = (
        403,
        status(
            403,
            "Forbidden",
            "jobs.batch \"build-42\" is forbidden: User \"system:serviceaccount:jobwarden:jobwarden\" cannot patch resource \"jobs\"",
        ),
    );
    // GracePeriodTooShort and TimeoutWarning Events on the first pass, then the PATCH: three
    // times forbidden, then allowed (the operator fixed the Role).
    let (client, server) = scripted(vec![
        event(),
        event(),
        forbidden.clone(),
        forbidden.clone(),
        forbidden,
        (200, job_json()),
        event(),
    ]);
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, false, "jw-0"),
    );
    let j = job(running);
    let mut wakes = Vec::new();
    let mut now = t("11:00:01");
    for _ in 0..3 {
        let Reconciled::Wake(Some(at)) = r.reconcile(&j, &pods, now).await.expect("reconcile")
        else {
            panic!("no retry scheduled");
        };
        wakes.push(at);
        let rec = store.get_job(&id).await.expect("get").expect("row");
        assert!(!rec.has_step(Step::SoftKill), "recorded although forbidden");
        now = at;
    }
    assert_eq!(wakes, [t("11:01:01"), t("11:03:01"), t("11:07:01")]);
    let out = r.reconcile(&j, &pods, now).await.expect("reconcile");
    assert_eq!(
        out,
        Reconciled::Wake(Some(t("11:12:01"))),
        "hard kill a grace later"
    );
    let rec = store.get_job(&id).await.expect("get").expect("row");
    assert!(rec.has_step(Step::SoftKill));
    drop(r);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    assert_eq!(seen.len(), 7, "{:?}", lines(&seen));
    let failed = actions_of(&store)
        .await
        .into_iter()
        .filter(|(a, _, ok)| *a == AuditAction::SoftKill && !ok)
        .count();
    assert_eq!(failed, 3, "one failed soft_kill row per attempt");
}
