//! Dead-job recovery for Kubernetes Jobs, as the README's "Stuck and dead Jobs" promises it.
//!
//! A. Exact requests (scripted server) of `Actions::mark_failed` and `Actions::recreate`:
//!    the PATCH that fails a Job, the DELETE (Background, UID precondition) and the POST of the
//!    stored Job without server-set fields, the Events, how 404 / 409 / 429 / 500 / 403 are read,
//!    and that nothing is sent for a template that is not ours or in dry-run.
//! B. Scenarios against the stateful fake, through the controller (`run_with_orphans`) or the
//!    Reconciler directly, on a real SQLite store: a Job without heartbeats re-created once per
//!    attempt, then marked failed; a fresh heartbeat; a Job deleted while watched; a record whose
//!    Job is missing from the first listing; a crash between DELETE and POST; pods without the
//!    job-id label, a suspended Job, an unschedulable pod; dry-run.

mod k8s_support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::duration::Dur;
use jobwarden::kubernetes::observe::{Ignored, Scope, job_template, observe_job, to_record};
use jobwarden::kubernetes::reconcile::{Reconciled, Reconciler};
use jobwarden::model::{AuditAction, AuditEntry, JobId, JobRecord, Outcome as JobOutcome, Stage};
use jobwarden::model::{Timestamp, fmt_ts};
use jobwarden::runtime::kubernetes::actions::{Actions, Outcome};
use jobwarden::store::{AuditQuery, Store};
use k8s_support::fake::{Fake, k8s_time};
use k8s_support::wiring::*;
use k8s_support::*;
use serde_json::{Value, json};

// ---- A. Exact requests ----

fn now() -> Timestamp {
    "2026-11-28T11:00:01.250000Z".parse().expect("ts")
}

const NEW_UID: &str = "0b9e5c3a-1111-4222-8333-444455556666";

fn event_reply() -> (u16, Value) {
    (
        201,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
               "metadata": {"name": "build-42.x", "namespace": "flowforge"},
               "eventTime": "2026-11-28T11:00:01.250000Z"}),
    )
}

/// [`job_json`] as jobwarden may find it: our own annotations from an earlier action, kubectl's
/// last-applied configuration, a heartbeat timeout.
fn annotated_job() -> Value {
    let mut v = job_json();
    v["metadata"]["annotations"] = json!({
        "flowforge.io/timeout-seconds": "3600",
        "flowforge.io/heartbeat-timeout-seconds": "60",
        "flowforge.io/terminated-by": "jobwarden",
        "flowforge.io/termination-reason": "earlier",
        "flowforge.io/termination-outcome": "failed",
        "flowforge.io/recovery-attempt": "1",
        "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"batch/v1\"}",
    });
    v
}

fn template_of(v: &Value) -> Value {
    job_template(&job(v.clone()), &request_scope())
}

/// The API server's answer to the create: the body with a new uid and a resourceVersion.
fn created(body: &Value) -> (u16, Value) {
    let mut v = body.clone();
    v["metadata"]["uid"] = NEW_UID.into();
    v["metadata"]["resourceVersion"] = "5001".into();
    v["metadata"]["creationTimestamp"] = "2026-11-28T11:00:01Z".into();
    (201, v)
}

#[tokio::test]
async fn mark_failed_patches_the_deadline_with_outcome_failed_then_posts_marked_failed() {
    let j = job(job_json());
    let (r, seen) = against(
        vec![(200, job_json()), event_reply()],
        false,
        |a| async move {
            a.mark_failed(&j, "image ghcr.io/x:1 cannot be pulled", now())
                .await
                .expect("ours")
        },
    )
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42?fieldManager=jobwarden",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ]
    );
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"annotations": {
                   "flowforge.io/terminated-by": "jobwarden",
                   "flowforge.io/termination-reason": "image ghcr.io/x:1 cannot be pulled",
                   "flowforge.io/termination-outcome": "failed"}},
               "spec": {"activeDeadlineSeconds": 1}})
    );
    let ev = &seen[1].body;
    assert_eq!(ev["reason"], "MarkedFailed");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["note"], "image ghcr.io/x:1 cannot be pulled");
    assert_eq!(ev["regarding"]["uid"], JOB_UID);
    assert_eq!(ev["regarding"]["kind"], "Job");
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 2);
    assert!(
        r.audit
            .iter()
            .all(|a| a.action == AuditAction::MarkFailed && a.success && !a.dry_run),
        "{:#?}",
        r.audit
    );
}

#[tokio::test]
async fn mark_failed_of_a_vanished_job_posts_no_event() {
    let j = job(job_json());
    let (r, seen) = against(
        vec![(
            404,
            status(404, "NotFound", "jobs.batch \"build-42\" not found"),
        )],
        false,
        |a| async move { a.mark_failed(&j, "gone", now()).await.expect("ours") },
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 1);
}

#[tokio::test]
async fn recreate_deletes_the_current_job_by_uid_then_posts_the_stored_one_with_the_attempt() {
    let current = job(annotated_job());
    let template = template_of(&annotated_job());
    let (client_side, seen) = {
        // The server answers the create with what it was sent plus a new uid.
        let mut expected_body = template.clone();
        expected_body["metadata"]["annotations"]["flowforge.io/recovery-attempt"] = "2".into();
        against(
            vec![
                (200, success_status("jobs", "build-42", JOB_UID)),
                created(&expected_body),
                event_reply(),
            ],
            false,
            |a| async move {
                a.recreate(Some(&current), &template, 2, "no heartbeat for 5m", now())
                    .await
                    .expect("ours")
            },
        )
        .await
    };
    let (r, uid) = client_side;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-42",
            "POST /apis/batch/v1/namespaces/flowforge/jobs",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ]
    );
    assert_eq!(
        seen[0].body,
        json!({"propagationPolicy": "Background", "preconditions": {"uid": JOB_UID}})
    );
    let body = &seen[1].body;
    let meta = &body["metadata"];
    assert_eq!(meta["name"], "build-42");
    assert_eq!(meta["namespace"], "flowforge");
    for server_set in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
    ] {
        assert!(meta[server_set].is_null(), "{server_set} sent: {meta}");
    }
    assert!(body["status"].is_null(), "status sent: {body}");
    assert_eq!(
        meta["labels"],
        json!({"job-id": "j-42", "flowforge.io/organization-id": "acme"})
    );
    assert_eq!(
        meta["annotations"],
        json!({"flowforge.io/timeout-seconds": "3600",
               "flowforge.io/heartbeat-timeout-seconds": "60",
               "flowforge.io/recovery-attempt": "2"}),
        "jobwarden's annotations and kubectl's last-applied configuration are dropped"
    );
    let spec = &body["spec"];
    assert!(
        spec["selector"].is_null(),
        "generated selector sent: {spec}"
    );
    assert_eq!(
        spec["template"]["metadata"]["labels"],
        json!({"job-id": "j-42"}),
        "the Job controller's template labels are not sent"
    );
    assert_eq!(
        spec["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/flowforge/runner:1"
    );
    assert_eq!(spec["backoffLimit"], 0);
    let ev = &seen[2].body;
    assert_eq!(ev["reason"], "Recreated");
    assert_eq!(
        ev["regarding"]["uid"], NEW_UID,
        "the Event is on the new Job"
    );
    assert!(
        ev["note"]
            .as_str()
            .is_some_and(|n| n.contains("recovery attempt 2") && n.contains("no heartbeat")),
        "{ev}"
    );
    assert_eq!(uid.as_deref(), Some(NEW_UID));
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 3);
    assert!(
        r.audit
            .iter()
            .all(|a| a.action == AuditAction::Recover && a.success && !a.dry_run),
        "{:#?}",
        r.audit
    );
    assert_eq!(
        r.audit[1].details.as_ref().expect("details")["uid"],
        NEW_UID
    );
}

#[tokio::test]
async fn recreate_with_a_manual_selector_keeps_the_selector_and_template_labels() {
    let mut v = job_json();
    v["spec"]["manualSelector"] = true.into();
    v["spec"]["selector"] = json!({"matchLabels": {"job-id": "j-42", "controller-uid": "pinned"}});
    v["spec"]["template"]["metadata"]["labels"] =
        json!({"job-id": "j-42", "controller-uid": "pinned", "job-name": "build-42"});
    let template = template_of(&v);
    let (out, seen) = against(vec![created(&template), event_reply()], false, |a| {
        let template = template.clone();
        async move {
            a.recreate(None, &template, 1, "gone", now())
                .await
                .expect("ours")
        }
    })
    .await;
    assert_eq!(seen.len(), 2, "no DELETE without a current Job: {seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].body["spec"]["selector"],
        json!({"matchLabels": {"job-id": "j-42", "controller-uid": "pinned"}})
    );
    assert_eq!(
        seen[0].body["spec"]["template"]["metadata"]["labels"],
        json!({"job-id": "j-42", "controller-uid": "pinned", "job-name": "build-42"})
    );
    assert_eq!(seen[0].body["spec"]["manualSelector"], true);
    assert_eq!(out.0.outcome, Outcome::Done);
}

#[tokio::test]
async fn recreate_reads_conflicts_and_errors() {
    let template = template_of(&job_json());
    let conflict = |m: &str| (409, status(409, "Conflict", m));
    // 409 on the DELETE: someone re-created the Job under the name; nothing created.
    let (out, seen) = against(
        vec![conflict(
            "Precondition failed: UID in precondition: 6f1c, UID in object meta: 0b9e",
        )],
        false,
        |a| {
            let (cur, t) = (job(job_json()), template.clone());
            async move {
                a.recreate(Some(&cur), &t, 1, "r", now())
                    .await
                    .expect("ours")
            }
        },
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(out.0.outcome, Outcome::Recreated);
    assert_eq!(out.1, None);

    // 409 on the POST (AlreadyExists): retried.
    let (out, seen) = against(
        vec![
            (200, success_status("jobs", "build-42", JOB_UID)),
            (
                409,
                status(
                    409,
                    "AlreadyExists",
                    "jobs.batch \"build-42\" already exists",
                ),
            ),
        ],
        false,
        |a| {
            let (cur, t) = (job(job_json()), template.clone());
            async move {
                a.recreate(Some(&cur), &t, 1, "r", now())
                    .await
                    .expect("ours")
            }
        },
    )
    .await;
    assert_eq!(seen.len(), 2, "no Event without a new Job: {seen:?}");
    assert!(
        matches!(&out.0.outcome, Outcome::Retry { .. }),
        "{:?}",
        out.0.outcome
    );
    assert_eq!(out.1, None);

    // 429 / 500 on the DELETE: retried, nothing created; on the POST: retried.
    for (code, reason) in [(429, "TooManyRequests"), (500, "InternalError")] {
        let (out, seen) = against(vec![(code, status(code, reason, "x"))], false, |a| {
            let (cur, t) = (job(job_json()), template.clone());
            async move {
                a.recreate(Some(&cur), &t, 1, "r", now())
                    .await
                    .expect("ours")
            }
        })
        .await;
        assert_eq!(seen.len(), 1, "{code}: {seen:?}");
        assert!(
            matches!(&out.0.outcome, Outcome::Retry { .. }),
            "{code}: {:?}",
            out.0.outcome
        );
        let (out, seen) = against(vec![(code, status(code, reason, "x"))], false, |a| {
            let t = template.clone();
            async move { a.recreate(None, &t, 1, "r", now()).await.expect("ours") }
        })
        .await;
        assert_eq!(seen.len(), 1, "{code}: {seen:?}");
        assert!(
            matches!(&out.0.outcome, Outcome::Retry { .. }),
            "{code}: {:?}",
            out.0.outcome
        );
    }

    // 403 on the POST: failed (RBAC lacks create).
    let (out, seen) = against(
        vec![(
            403,
            status(403, "Forbidden", "jobs.batch is forbidden: cannot create"),
        )],
        false,
        |a| {
            let t = template.clone();
            async move { a.recreate(None, &t, 1, "r", now()).await.expect("ours") }
        },
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert!(
        matches!(&out.0.outcome, Outcome::Failed { error } if error.contains("forbidden")),
        "{:?}",
        out.0.outcome
    );
}

#[tokio::test]
async fn recreate_sends_nothing_for_a_template_that_is_not_ours() {
    let mut unlabelled = job_json();
    unlabelled["metadata"]["labels"] = json!({"app": "other"});
    let mut protected = job_json();
    protected["metadata"]["namespace"] = "kube-system".into();
    for (v, want) in [
        (unlabelled, Ignored::NoLabel),
        (protected, Ignored::Namespace("kube-system".into())),
    ] {
        let template = template_of(&v);
        let (out, seen) = against(vec![], false, |a| {
            let t = template.clone();
            async move { a.recreate(None, &t, 1, "r", now()).await.err() }
        })
        .await;
        assert!(seen.is_empty(), "sent {seen:?}");
        assert_eq!(out, Some(want));
    }
}

#[tokio::test]
async fn recreate_and_mark_failed_in_dry_run_send_nothing_and_audit_dry_run() {
    let template = template_of(&job_json());
    let ((recreated, marked), seen) = against(vec![], true, |a| {
        let (cur, t) = (job(job_json()), template.clone());
        async move {
            (
                a.recreate(Some(&cur), &t, 1, "r", now())
                    .await
                    .expect("ours"),
                a.mark_failed(&cur, "r", now()).await.expect("ours"),
            )
        }
    })
    .await;
    assert!(seen.is_empty(), "sent {seen:?}");
    let (r, uid) = recreated;
    assert_eq!(uid, None);
    assert_eq!(r.outcome, Outcome::Done);
    // DELETE and POST would be made; no Event (no new Job to point at).
    assert_eq!(r.audit.len(), 2, "{:#?}", r.audit);
    assert_eq!(
        marked.audit.len(),
        2,
        "PATCH and Event: {:#?}",
        marked.audit
    );
    for a in r.audit.iter().chain(&marked.audit) {
        assert!(a.dry_run && a.success, "{a:?}");
    }
}

// ---- B. Scenarios ----

const HB: &str = "flowforge.io/heartbeat-timeout-seconds";

/// `running_job` for job id `id` (labels on the Job and its pod template).
fn job_with_id(name: &str, uid: &str, id: &str, start: Timestamp, annotations: Value) -> Value {
    let mut j = running_job(name, uid, start, annotations);
    j["metadata"]["labels"]["job-id"] = id.into();
    j["spec"]["template"]["metadata"]["labels"]["job-id"] = id.into();
    // The policy's default grace: no GracePeriodTooShort Event in the way.
    j["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 300.into();
    j
}

fn id(s: &str) -> JobId {
    JobId::parse(s).expect("id")
}

fn recovery_config(max_attempts: u32, initial: Duration) -> Config {
    let mut c = Config::default();
    c.recovery.max_attempts = max_attempts;
    c.recovery.backoff_initial = Dur(initial);
    c
}

/// The record jobwarden would have written on first seeing `v` at `now`.
fn record_of(v: &Value, config: &Config, now: Timestamp) -> JobRecord {
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let obs = observe_job(&job(v.clone()), &[], &scope).expect("ours");
    to_record(&obs, None, &config.policy, now)
}

async fn record(store: &Store, job_id: &str) -> Option<JobRecord> {
    store.get_job(&id(job_id)).await.expect("store")
}

async fn audit_of(store: &Store) -> Vec<AuditEntry> {
    store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit")
}

/// Waits (at most `secs`) for `f` on the store's record of `job_id`.
async fn until_record(store: &Store, job_id: &str, secs: u64, f: impl Fn(&JobRecord) -> bool) {
    let ok = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if record(store, job_id).await.is_some_and(|r| f(&r)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "record {job_id}: {:#?}",
        record(store, job_id).await
    );
}

/// The fake's Job `name` started by the Job controller at `start` with one active pod
/// (emulated: the fake has no Job controller that starts Jobs).
fn started(fake: &Fake, name: &str, start: Timestamp) {
    fake.modify("jobs", "flowforge", name, |j| {
        j["status"] = json!({"startTime": k8s_time(start), "active": 1, "ready": 1,
                             "terminating": 0, "uncountedTerminatedPods": {}});
    });
}

fn uid_of(fake: &Fake, name: &str) -> Option<String> {
    fake.get("jobs", "flowforge", name)
        .and_then(|j| j["metadata"]["uid"].as_str().map(String::from))
}

/// The heartbeat timeout is 1 s and the Job never heartbeats: re-created (attempt 1), its
/// successor started and silent, re-created again (attempt 2), and the third run, out of
/// attempts (`max_attempts = 2`), is marked failed; the Job controller then fails it and the
/// record says failed.
#[tokio::test]
async fn a_silent_job_is_recreated_once_per_attempt_then_marked_failed() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-120.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "1"}),
    ));
    fake.insert(bound_pod("build-42-a", "pod-a", "build-42", JOB_UID));
    let now = clock(start_time);
    let c = start(
        &fake,
        recovery_config(2, Duration::ZERO),
        false,
        clock(start_time),
    )
    .await;
    c.until(10, "the first re-creation", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 1
    })
    .await;
    let new_uid = uid_of(&fake, "build-42").expect("a Job named build-42");
    assert_ne!(new_uid, JOB_UID);
    let new_job = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(
        new_job["metadata"]["annotations"]["flowforge.io/recovery-attempt"],
        "1"
    );
    // The old pod goes with its own grace (Background), not forced.
    let old_pod = fake.get("pods", "flowforge", "build-42-a").expect("pod");
    assert_eq!(old_pod["metadata"]["deletionGracePeriodSeconds"], 30);
    // The controller takes the new Job as the job's next run.
    until_record(&c.store, "j-42", 5, |r| r.run_id == new_uid).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = fake.mutations();
    assert_eq!(
        count(&writes, "DELETE", JOB_PATH),
        1,
        "{:?}",
        lines(&writes)
    );
    assert_eq!(count(&writes, "POST", NS_JOBS), 1, "{:?}", lines(&writes));
    let delete = writes
        .iter()
        .find(|w| w.method == "DELETE")
        .expect("delete");
    assert_eq!(
        delete.body,
        json!({"propagationPolicy": "Background", "preconditions": {"uid": JOB_UID}})
    );
    let rec = record(&c.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 1);
    assert_eq!(rec.stage, Stage::PreStart, "not started yet: {rec:#?}");
    let decided: Vec<AuditEntry> = c
        .audit()
        .await
        .into_iter()
        .filter(|a| a.action == AuditAction::Recover && a.reason.starts_with("recovery attempt"))
        .collect();
    assert_eq!(decided.len(), 1, "{decided:#?}");
    assert!(decided[0].reason.starts_with("recovery attempt 1:"));

    // The new run starts and is silent too: attempt 2.
    started(&fake, "build-42", now());
    c.until(10, "the second re-creation", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 2
    })
    .await;
    let third_uid = uid_of(&fake, "build-42").expect("job");
    assert!(third_uid != new_uid && third_uid != JOB_UID);
    assert_eq!(
        fake.get("jobs", "flowforge", "build-42").expect("job")["metadata"]["annotations"]["flowforge.io/recovery-attempt"],
        "2"
    );
    until_record(&c.store, "j-42", 5, |r| r.run_id == third_uid).await;

    // The third run is out of attempts: marked failed, not re-created.
    started(&fake, "build-42", now());
    c.until(10, "the mark_failed patch", |f| {
        count(&f.mutations(), "PATCH", JOB_PATH) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = fake.mutations();
    assert_eq!(count(&writes, "POST", NS_JOBS), 2, "{:?}", lines(&writes));
    assert_eq!(
        count(&writes, "DELETE", JOB_PATH),
        2,
        "{:?}",
        lines(&writes)
    );
    assert_eq!(count(&writes, "PATCH", JOB_PATH), 1, "{:?}", lines(&writes));
    let patch = writes.iter().find(|w| w.method == "PATCH").expect("patch");
    let annotations = &patch.body["metadata"]["annotations"];
    assert_eq!(annotations["flowforge.io/termination-outcome"], "failed");
    assert_eq!(annotations["flowforge.io/terminated-by"], "jobwarden");
    assert!(
        annotations["flowforge.io/termination-reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 recovery attempts")),
        "{annotations}"
    );
    assert_eq!(patch.body["spec"]["activeDeadlineSeconds"], 1);
    assert!(
        writes
            .iter()
            .any(|w| w.method == "POST" && w.body["reason"] == "MarkedFailed")
    );
    // The Job controller ends it; the record counts it as failed.
    fake.job_controller_tick(add_secs(now(), 2));
    until_record(&c.store, "j-42", 5, |r| {
        r.outcome == Some(JobOutcome::Failed)
    })
    .await;
    let rec = record(&c.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 2);
    assert_eq!(rec.run_id, third_uid);
    c.finish().await;
}

fn add_secs(t: Timestamp, s: u64) -> Timestamp {
    jobwarden::model::add(t, Duration::from_secs(s))
}

/// A Reconciler on the fake (its clock fixed; `now` passed to each call) and a temp store.
struct Direct {
    fake: Fake,
    store: Store,
    r: Reconciler,
    _dir: tempfile::TempDir,
}

async fn direct(config: Config, dry_run: bool) -> Direct {
    let fake = Fake::new(t0);
    let (store, dir) = temp_store().await;
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(fake.client(), scope, dry_run, "jw-0"),
    );
    Direct {
        fake,
        store,
        r,
        _dir: dir,
    }
}

impl Direct {
    async fn reconcile(&self, v: &Value, now: Timestamp) -> Reconciled {
        self.r
            .reconcile(&job(v.clone()), &[], now)
            .await
            .expect("reconcile")
    }

    fn writes(&self) -> Vec<String> {
        lines(&self.fake.mutations())
    }
}

/// After the re-creation, the dead run's Job reconciled again, its DELETED event and a sweep
/// of a listing without it make no second attempt; the next run's attempt waits for the
/// backoff (initial 10 s × 2 for the second attempt) after its heartbeat deadline.
#[tokio::test]
async fn the_dead_runs_job_seen_again_makes_no_second_attempt_and_the_next_waits_its_backoff() {
    let d = direct(recovery_config(3, Duration::from_secs(10)), false).await;
    let old = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-120.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    d.fake.insert(old.clone());
    // Dead since -90 s, attempt 1 due 10 s later: now.
    d.reconcile(&old, at(0.0)).await;
    assert_eq!(
        d.writes(),
        [
            format!("DELETE {JOB_PATH}"),
            format!("POST {NS_JOBS}"),
            format!("POST {EVENTS}"),
        ]
    );
    d.reconcile(&old, at(1.0)).await;
    d.r.reconcile_deleted(&job(old.clone()), at(1.0))
        .await
        .expect("deleted");
    d.r.sweep_gone(&HashSet::new(), at(1.0))
        .await
        .expect("sweep");
    assert_eq!(d.writes().len(), 3, "{:?}", d.writes());
    let rec = record(&d.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 1);
    assert!(rec.stage.is_active(), "{rec:#?}");

    // The new run, started at +2 s: dead at +32 s, attempt 2 due 20 s later.
    let new_uid = uid_of(&d.fake, "build-42").expect("job");
    started(&d.fake, "build-42", at(2.0));
    let new = d.fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(
        d.reconcile(&new, at(3.0)).await,
        Reconciled::Wake(Some(at(32.0)))
    );
    assert_eq!(
        record(&d.store, "j-42").await.expect("record").run_id,
        new_uid
    );
    d.reconcile(&new, at(51.9)).await;
    assert_eq!(d.writes().len(), 3, "before the backoff: {:?}", d.writes());
    d.reconcile(&new, at(52.0)).await;
    assert_eq!(d.writes().len(), 6, "{:?}", d.writes());
    let rec = record(&d.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 2);
}

/// Heartbeats recorded in the store keep a running Job alive: nothing is sent while the
/// last one is younger than the timeout; once it is older (and the backoff passed), the Job
/// is re-created.
#[tokio::test]
async fn a_fresh_heartbeat_sends_nothing() {
    let d = direct(recovery_config(3, Duration::ZERO), false).await;
    let v = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-20.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "60"}),
    );
    d.fake.insert(v.clone());
    assert_eq!(
        d.reconcile(&v, at(0.0)).await,
        Reconciled::Wake(Some(at(40.0)))
    );
    assert!(
        d.store
            .record_heartbeat(&id("j-42"), at(30.0))
            .await
            .expect("heartbeat")
    );
    d.store
        .record_heartbeat(&id("j-42"), at(50.0))
        .await
        .expect("heartbeat");
    for t in [40.0, 100.0, 109.9] {
        d.reconcile(&v, at(t)).await;
    }
    assert_eq!(d.writes(), Vec::<String>::new());
    d.reconcile(&v, at(110.0)).await;
    assert_eq!(
        d.writes(),
        [
            format!("DELETE {JOB_PATH}"),
            format!("POST {NS_JOBS}"),
            format!("POST {EVENTS}"),
        ]
    );
}

/// Two running Jobs deleted by someone while the controller watches: the one with a heartbeat
/// timeout is created again (no DELETE: it is gone), the other's record is settled as lost.
#[tokio::test]
async fn a_job_deleted_while_watched_is_recreated_only_with_a_heartbeat_timeout() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-10.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "60"}),
    ));
    fake.insert(job_with_id(
        "build-43",
        "uid-43",
        "j-43",
        at(-10.0),
        json!({"flowforge.io/timeout-seconds": "3600"}),
    ));
    let c = start(
        &fake,
        recovery_config(3, Duration::from_secs(10)),
        false,
        clock(start_time),
    )
    .await;
    until_record(&c.store, "j-42", 10, |r| r.stage == Stage::Running).await;
    until_record(&c.store, "j-43", 10, |r| r.stage == Stage::Running).await;
    fake.remove("jobs", "flowforge", "build-42");
    fake.remove("jobs", "flowforge", "build-43");
    c.until(10, "build-42 created again", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 1
    })
    .await;
    until_record(&c.store, "j-43", 5, |r| r.stage == Stage::Cleanup).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = fake.mutations();
    let posts: Vec<&Seen> = writes
        .iter()
        .filter(|w| w.method == "POST" && w.path.starts_with(NS_JOBS))
        .collect();
    assert_eq!(posts.len(), 1, "{:?}", lines(&writes));
    assert_eq!(posts[0].body["metadata"]["name"], "build-42");
    assert_eq!(
        posts[0].body["metadata"]["annotations"]["flowforge.io/recovery-attempt"],
        "1"
    );
    assert!(
        writes.iter().all(|w| w.method != "DELETE"),
        "{:?}",
        lines(&writes)
    );
    assert_eq!(fake.names("jobs"), ["flowforge/build-42"]);
    let lost = record(&c.store, "j-43").await.expect("record");
    assert_eq!(lost.outcome, Some(JobOutcome::Lost));
    assert!(lost.finished_at.is_some());
    let rows: Vec<AuditEntry> = c
        .audit()
        .await
        .into_iter()
        .filter(|a| a.job_id == "j-43" && a.action == AuditAction::TtlCleanup)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    c.finish().await;
}

/// Active records whose Job is missing from the first listing (deleted while no replica
/// watched), with a heartbeat timeout long passed: settled as lost, nothing created.
#[tokio::test]
async fn a_record_whose_job_is_missing_from_the_first_listing_is_settled_not_recreated() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let config = recovery_config(3, Duration::ZERO);
    let (store, dir) = temp_store().await;
    let v = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    store
        .insert_job(&record_of(&v, &config, at(-590.0)))
        .await
        .expect("insert");
    let c = start_with(&fake, config, false, false, (store, dir), clock(start_time)).await;
    until_record(&c.store, "j-42", 10, |r| r.stage == Stage::Cleanup).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lines(&fake.mutations()), Vec::<String>::new());
    assert!(fake.names("jobs").is_empty());
    let rec = record(&c.store, "j-42").await.expect("record");
    assert_eq!(rec.outcome, Some(JobOutcome::Lost));
    assert_eq!(rec.recovery_attempts, 0);
    assert!(
        rec.reason.as_deref().is_some_and(|r| r.contains("missing")),
        "{rec:#?}"
    );
    // Its objects in storage are queued for deletion as after a TTL delete, and only its own.
    let tasks = c
        .store
        .list_tasks(&jobwarden::store::TaskFilter::default())
        .await
        .expect("tasks");
    let mut prefixes: Vec<&str> = tasks.iter().map(|t| t.resource_name.as_str()).collect();
    prefixes.sort_unstable();
    assert_eq!(
        prefixes,
        ["jobs/acme/j-42", "logs/j-42", "partial/j-42"],
        "{tasks:#?}"
    );
    assert!(
        tasks
            .iter()
            .all(|t| t.kind == "artifact_prefix" && t.job_id.as_deref() == Some("j-42"))
    );
    c.finish().await;
}

/// The record of a re-creation decided and counted (the `recovering` marker, not done) as
/// `start_recovery` writes it before its calls.
fn recovering(v: &Value, config: &Config) -> JobRecord {
    let mut rec = record_of(v, config, at(-590.0));
    rec.recovery_attempts = 1;
    rec.spec["recovering"] = json!({"attempt": 1, "reason": "no heartbeat for 9m",
                                    "at": fmt_ts(at(-1.0)), "done": false});
    rec
}

/// Crash after the DELETE, before the POST: the restarted controller finds the marker with no
/// Job and creates the Job, exactly once.
#[tokio::test]
async fn a_crash_between_delete_and_post_creates_the_job_exactly_once() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let config = recovery_config(3, Duration::ZERO);
    let (store, dir) = temp_store().await;
    let v = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    store
        .insert_job(&recovering(&v, &config))
        .await
        .expect("insert");
    let c = start_with(&fake, config, false, false, (store, dir), clock(start_time)).await;
    c.until(10, "the Job is created", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 1
    })
    .await;
    let new_uid = uid_of(&fake, "build-42").expect("job");
    until_record(&c.store, "j-42", 5, |r| r.run_id == new_uid).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes = fake.mutations();
    assert_eq!(count(&writes, "POST", NS_JOBS), 1, "{:?}", lines(&writes));
    assert_eq!(
        count(&writes, "DELETE", JOB_PATH),
        0,
        "{:?}",
        lines(&writes)
    );
    let job_now = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(
        job_now["metadata"]["annotations"]["flowforge.io/recovery-attempt"],
        "1"
    );
    let rec = record(&c.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 1, "the attempt is not counted twice");
    c.finish().await;
}

/// Crash after the marker was written, before the DELETE: the old Job is deleted and the Job
/// created, once each.
#[tokio::test]
async fn a_crash_before_the_delete_finishes_the_recreation_once() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let config = recovery_config(3, Duration::ZERO);
    let (store, dir) = temp_store().await;
    let v = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    store
        .insert_job(&recovering(&v, &config))
        .await
        .expect("insert");
    fake.insert(v);
    let c = start_with(&fake, config, false, false, (store, dir), clock(start_time)).await;
    c.until(10, "the Job is created", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes = fake.mutations();
    assert_eq!(count(&writes, "POST", NS_JOBS), 1, "{:?}", lines(&writes));
    assert_eq!(
        count(&writes, "DELETE", JOB_PATH),
        1,
        "{:?}",
        lines(&writes)
    );
    assert_ne!(uid_of(&fake, "build-42").as_deref(), Some(JOB_UID));
    assert_eq!(
        record(&c.store, "j-42")
            .await
            .expect("record")
            .recovery_attempts,
        1
    );
    c.finish().await;
}

/// A Job whose pods lack the job-id label (the Job controller counts one active, jobwarden
/// sees none) is not "no pods": with a fresh heartbeat it is left alone. A Job with no pods
/// that the Job controller also counts none active is re-created.
#[tokio::test]
async fn a_job_whose_pods_lack_the_job_id_label_is_not_recreated() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-10.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "60"}),
    ));
    let mut unlabelled = bound_pod("build-42-a", "pod-a", "build-42", JOB_UID);
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("job-id");
    fake.insert(unlabelled);
    let mut none_active = job_with_id(
        "build-43",
        "uid-43",
        "j-43",
        at(-10.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "60"}),
    );
    none_active["status"]["active"] = 0.into();
    none_active["status"]["ready"] = 0.into();
    fake.insert(none_active);
    let c = start(
        &fake,
        recovery_config(3, Duration::ZERO),
        false,
        clock(start_time),
    )
    .await;
    c.until(10, "build-43 is re-created", |f| {
        count(&f.mutations(), "POST", NS_JOBS) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        [
            "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-43".to_owned(),
            format!("POST {NS_JOBS}"),
            format!("POST {EVENTS}"),
        ],
        "nothing for build-42"
    );
    assert_eq!(uid_of(&fake, "build-42").as_deref(), Some(JOB_UID));
    c.finish().await;
}

/// A suspended Job past the startup timeout: nothing. An unschedulable pod past the startup
/// timeout: marked failed with the scheduler's message.
#[tokio::test]
async fn a_suspended_job_is_left_alone_and_an_unschedulable_one_is_marked_failed() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    let mut suspended = job_with_id(
        "build-44",
        "uid-44",
        "j-44",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    suspended["spec"]["suspend"] = true.into();
    suspended["status"] = json!({"active": 0, "ready": 0, "terminating": 0,
                                 "uncountedTerminatedPods": {}});
    fake.insert(suspended);
    fake.insert(job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600"}),
    ));
    let mut pending = pod_json("build-42-a", "pod-a", "Pending");
    pending["status"]["conditions"] = json!([{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu.",
        "lastTransitionTime": k8s_time(at(-599.0))}]);
    fake.insert(pending);
    let mut config = recovery_config(3, Duration::ZERO);
    config.policy.startup_timeout = Dur::secs(60);
    let c = start(&fake, config, false, clock(start_time)).await;
    c.until(10, "the unschedulable Job is marked failed", |f| {
        count(&f.mutations(), "PATCH", JOB_PATH) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        [format!("PATCH {JOB_PATH}"), format!("POST {EVENTS}")],
        "nothing for the suspended Job"
    );
    let a = &writes[0].body["metadata"]["annotations"];
    assert_eq!(a["flowforge.io/termination-outcome"], "failed");
    assert!(
        a["flowforge.io/termination-reason"]
            .as_str()
            .is_some_and(
                |r| r.contains("0/3 nodes are available: 3 Insufficient cpu.")
                    && r.contains("startup timeout")
            ),
        "{a}"
    );
    assert_eq!(writes[1].body["reason"], "MarkedFailed");
    let rec = record(&c.store, "j-42").await.expect("record");
    assert_eq!(rec.stage, Stage::Terminating);
    c.finish().await;
}

/// Dry-run: a silent Job and an unschedulable one; nothing is sent, each decision and the
/// calls it would make are audited once as dry-run, however often the Jobs change.
#[tokio::test]
async fn dry_run_sends_nothing_and_audits_each_decision_once() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-120.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    ));
    fake.insert(job_with_id(
        "build-45",
        "uid-45",
        "j-45",
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "3600"}),
    ));
    let mut pending = pod_json("build-45-a", "pod-45", "Pending");
    pending["metadata"]["labels"]["job-id"] = "j-45".into();
    pending["metadata"]["ownerReferences"][0]["name"] = "build-45".into();
    pending["metadata"]["ownerReferences"][0]["uid"] = "uid-45".into();
    pending["status"]["conditions"] = json!([{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available", "lastTransitionTime": k8s_time(at(-599.0))}]);
    fake.insert(pending);
    let mut config = recovery_config(3, Duration::ZERO);
    config.policy.startup_timeout = Dur::secs(60);
    let (store, dir) = temp_store().await;
    let c = start_with(&fake, config, false, true, (store, dir), clock(start_time)).await;
    let rows = |audit: Vec<AuditEntry>| -> Vec<AuditEntry> {
        audit
            .into_iter()
            .filter(|a| matches!(a.action, AuditAction::Recover | AuditAction::MarkFailed))
            .collect()
    };
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        while rows(audit_of(&c.store).await).len() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "{:#?}", rows(audit_of(&c.store).await));
    // Both Jobs change a few times: each change is a reconcile.
    for n in 0..3 {
        for name in ["build-42", "build-45"] {
            fake.modify("jobs", "flowforge", name, |j| {
                j["metadata"]["labels"]["touched"] = n.to_string().into();
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lines(&fake.mutations()), Vec::<String>::new());
    let rows = rows(c.audit().await);
    let summary: Vec<(String, AuditAction, bool)> = rows
        .iter()
        .map(|a| (a.job_id.clone(), a.action, a.dry_run))
        .collect();
    // j-42: the decision, the DELETE and the POST it would make; j-45: PATCH and Event.
    let of = |id: &str, action| {
        summary
            .iter()
            .filter(|s| s.0 == id && s.1 == action)
            .count()
    };
    assert_eq!(of("j-42", AuditAction::Recover), 3, "{summary:#?}");
    assert_eq!(of("j-45", AuditAction::MarkFailed), 2, "{summary:#?}");
    assert_eq!(rows.len(), 5, "{summary:#?}");
    assert!(rows.iter().all(|a| a.dry_run), "{summary:#?}");
    assert!(c.ready.load(Ordering::Relaxed));
    c.finish().await;
}
/// The dead run's Job, seen again after the next run was recorded (a stale copy,
/// `Reconciler::reconcile` called with it), is not a new run: no attempt. (Found a bug: it
/// was taken for a new run and got attempt 2; superseded UIDs are now kept in the record.)
#[tokio::test]
async fn a_stale_copy_of_the_dead_runs_job_after_the_next_run_makes_no_attempt() {
    let d = direct(recovery_config(3, Duration::from_secs(10)), false).await;
    let old = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-120.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "30"}),
    );
    d.fake.insert(old.clone());
    d.reconcile(&old, at(0.0)).await;
    started(&d.fake, "build-42", at(2.0));
    let new = d.fake.get("jobs", "flowforge", "build-42").expect("job");
    d.reconcile(&new, at(3.0)).await;
    assert_eq!(d.writes().len(), 3);
    d.reconcile(&old, at(40.0)).await;
    assert_eq!(
        d.writes().len(),
        3,
        "the stale Job made an attempt: {:?}",
        d.writes()
    );
    let rec = record(&d.store, "j-42").await.expect("record");
    assert_eq!(rec.recovery_attempts, 1, "{rec:#?}");
}

/// A stored template that cannot be created (no job-id label, protected namespace) is
/// refused before anything is sent. (Found a bug: the Job was deleted first, then nothing
/// created.)
#[tokio::test]
async fn recreate_refuses_a_foreign_template_before_deleting_the_current_job() {
    let mut unlabelled = job_json();
    unlabelled["metadata"]["labels"] = json!({"app": "other"});
    let mut protected = job_json();
    protected["metadata"]["namespace"] = "kube-system".into();
    for (v, want) in [
        (unlabelled, Ignored::NoLabel),
        (protected, Ignored::Namespace("kube-system".into())),
    ] {
        let template = template_of(&v);
        let (out, seen) = against(
            vec![(200, success_status("jobs", "build-42", JOB_UID))],
            false,
            |a| {
                let (cur, t) = (job(job_json()), template.clone());
                async move { a.recreate(Some(&cur), &t, 1, "r", now()).await.err() }
            },
        )
        .await;
        assert!(
            seen.is_empty(),
            "the current Job was deleted although its template cannot be created: {:?}",
            seen.iter().map(Seen::line).collect::<Vec<_>>()
        );
        assert_eq!(out, Some(want));
    }
}

/// A running Job with no pods (none active for the Job controller either) is re-created once
/// that has lasted the backoff from when it was first seen, without waiting for its heartbeat
/// timeout. (Found a bug: the engine took each look as the time it died, so the backoff
/// started again at every look.)
#[tokio::test]
async fn a_job_with_no_pods_is_recreated_after_the_backoff_not_only_after_its_heartbeat_timeout() {
    let d = direct(recovery_config(3, Duration::from_secs(1)), false).await;
    let mut v = job_with_id(
        "build-42",
        JOB_UID,
        "j-42",
        at(-10.0),
        json!({"flowforge.io/timeout-seconds": "3600", HB: "60"}),
    );
    v["status"]["active"] = 0.into();
    v["status"]["ready"] = 0.into();
    d.fake.insert(v.clone());
    let first = d.reconcile(&v, at(0.0)).await;
    assert_eq!(
        first,
        Reconciled::Wake(Some(at(1.0))),
        "attempt 1 due after 1 s"
    );
    let second = d.reconcile(&v, at(1.0)).await;
    assert_eq!(
        d.writes(),
        [
            format!("DELETE {JOB_PATH}"),
            format!("POST {NS_JOBS}"),
            format!("POST {EVENTS}"),
        ],
        "at the due time the reconcile answered {second:?} and sent nothing"
    );
}

/// With `[kubernetes] namespaces` listed, each namespace has its own watch: when one of them
/// re-lists (after a 410), only that namespace's records are judged against its listing. A
/// record of another namespace, missing from it by construction, is never settled as lost.
#[tokio::test]
async fn a_sweep_after_one_namespace_relisted_judges_only_that_namespaces_records() {
    let mut config = Config::default();
    config.kubernetes.namespaces = vec!["flowforge".into(), "batch".into()];
    let d = direct(config, false).await;
    let mut a = job_with_id("build-42", JOB_UID, "j-42", at(-60.0), json!({}));
    a["metadata"]["namespace"] = "flowforge".into();
    let mut b = job_with_id("build-43", "uid-43", "j-43", at(-60.0), json!({}));
    b["metadata"]["namespace"] = "batch".into();
    d.reconcile(&a, at(0.0)).await;
    d.reconcile(&b, at(0.0)).await;
    // The batch namespace re-listed and holds neither Job (it never held build-42).
    let found =
        d.r.sweep_gone_in(&HashSet::new(), Some("batch"), at(1.0))
            .await
            .expect("sweep");
    assert_eq!(found, 1, "only batch's record was judged");
    let ra = record(&d.store, "j-42").await.expect("record");
    assert_eq!(ra.stage, Stage::Running, "flowforge's record is untouched");
    let rb = record(&d.store, "j-43").await.expect("record");
    assert_eq!(rb.outcome, Some(JobOutcome::Lost));
}
