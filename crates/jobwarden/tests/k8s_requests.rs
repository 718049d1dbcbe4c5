//! Exact-request tests of the Kubernetes actions (ApiServerVerifier style): for every action,
//! the method, path, query and body of each call jobwarden sends, how it reads 404 / 409 /
//! 429 / 500 Status answers, and that nothing is sent for jobs that are not ours or in
//! dry-run. Every request is also checked against `API_CALLS`, the list the RBAC role is
//! tested against.

mod k8s_support;

use std::time::Duration;

use jobwarden::kubernetes::observe::Ignored;
use jobwarden::model::{AuditAction, Timestamp};
use jobwarden::runtime::kubernetes::actions::{Outcome, Report};
use jobwarden::runtime::kubernetes::requests::CancelRequest;
use k8s_support::wiring::against;
use k8s_support::*;
use serde_json::{Value, json};

fn now() -> Timestamp {
    "2026-11-28T11:00:01.250000Z".parse().expect("ts")
}

fn ok(r: Result<Report, Ignored>) -> Report {
    r.expect("the job is ours")
}

fn event_reply() -> (u16, Value) {
    (
        201,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                 "metadata": {"name": "build-42.x", "namespace": "flowforge"},
                 "eventTime": "2026-11-28T11:00:01.250000Z", "reportingController": "flowforge.io/jobwarden",
                 "reportingInstance": "jobwarden-7d9f-abcde", "action": "Warn", "reason": "TimeoutWarning"}),
    )
}

fn assert_event(s: &Seen, reason: &str, action: &str) {
    assert_eq!(
        s.line(),
        "POST /apis/events.k8s.io/v1/namespaces/flowforge/events"
    );
    let b = &s.body;
    assert_eq!(b["apiVersion"], "events.k8s.io/v1");
    assert_eq!(b["kind"], "Event");
    assert_eq!(
        b["eventTime"], "2026-11-28T11:00:01.250000Z",
        "exactly 6 fraction digits"
    );
    assert_eq!(b["reportingController"], "flowforge.io/jobwarden");
    assert_eq!(b["reportingInstance"], "jobwarden-7d9f-abcde");
    assert_eq!(b["reason"], reason);
    assert_eq!(b["action"], action);
    assert_eq!(b["type"], "Warning");
    assert_eq!(
        b["regarding"],
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": "build-42", "namespace": "flowforge", "uid": JOB_UID})
    );
    assert!(
        b["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("build-42."))
    );
}

#[tokio::test]
async fn warn_posts_one_timeout_warning_event() {
    let j = job(job_json());
    let (r, seen) = against(vec![event_reply()], false, |a| async move {
        ok(a.warn(&j, "10m left before the deadline", now()).await)
    })
    .await;
    assert_eq!(seen.len(), 1);
    assert_event(&seen[0], "TimeoutWarning", "Warn");
    assert_eq!(seen[0].body["note"], "10m left before the deadline");
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 1);
    assert_eq!(r.audit[0].action, AuditAction::Warn);
    assert!(r.audit[0].success && !r.audit[0].dry_run);
    assert_eq!(r.job_id.as_str(), "j-42");
}

#[tokio::test]
async fn soft_kill_patches_the_deadline_and_annotations_then_shortens_pod_grace() {
    let j = job(job_json());
    let pods = vec![
        pod(pod_json("build-42-a", "pod-a", "Running")),
        pod(pod_json("build-42-done", "pod-d", "Succeeded")),
    ];
    let (r, seen) = against(
        vec![
            (200, job_json()),
            event_reply(),
            (200, pod_json("build-42-a", "pod-a", "Running")),
        ],
        false,
        |a| async move {
            ok(a.soft_kill(
                &j,
                &pods,
                Duration::from_secs(10),
                "timeout 1h exceeded",
                now(),
            )
            .await)
        },
    )
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42?fieldManager=jobwarden",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "DELETE /api/v1/namespaces/flowforge/pods/build-42-a",
        ],
        "the finished pod is left alone"
    );
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"annotations": {"flowforge.io/terminated-by": "jobwarden",
                                            "flowforge.io/termination-reason": "timeout 1h exceeded"}},
               "spec": {"activeDeadlineSeconds": 1}})
    );
    assert_event(&seen[1], "TimeoutSoftKill", "SoftKill");
    assert_eq!(
        seen[2].body,
        json!({"gracePeriodSeconds": 10, "preconditions": {"uid": "pod-a"}})
    );
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 3);
    assert!(
        r.audit
            .iter()
            .all(|a| a.action == AuditAction::SoftKill && a.success)
    );
    assert_eq!(r.audit[0].resource_name, "flowforge/build-42");
    assert_eq!(r.audit[2].resource_name, "flowforge/build-42-a");
}

#[tokio::test]
async fn soft_kill_leaves_pod_grace_alone_when_the_pods_own_is_shorter() {
    let j = job(job_json());
    let pods = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];
    let (r, seen) = against(
        vec![(200, job_json()), event_reply()],
        false,
        |a| async move {
            ok(a.soft_kill(&j, &pods, Duration::from_secs(30), "t", now())
                .await)
        },
    )
    .await;
    assert_eq!(
        seen.len(),
        2,
        "grace 30 s is not shorter than the pods' 30 s: no pod DELETE"
    );
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn soft_kill_of_a_vanished_job_is_done_and_a_throttled_one_retries() {
    let j = job(job_json());
    let (r, seen) = against(
        vec![(
            404,
            status(404, "NotFound", "jobs.batch \"build-42\" not found"),
        )],
        false,
        |a| async move {
            ok(a.soft_kill(&j, &[], Duration::from_secs(1), "t", now())
                .await)
        },
    )
    .await;
    assert_eq!(seen.len(), 1, "no Event for a Job that is gone");
    assert_eq!(r.outcome, Outcome::Done);
    assert!(r.audit[0].success);

    let j = job(job_json());
    let mut throttled = status(
        429,
        "TooManyRequests",
        "the server has received too many requests",
    );
    throttled["details"] = json!({"retryAfterSeconds": 7});
    let (r, seen) = against(vec![(429, throttled)], false, |a| async move {
        ok(a.soft_kill(&j, &[], Duration::from_secs(1), "t", now())
            .await)
    })
    .await;
    assert_eq!(seen.len(), 1);
    assert!(
        matches!(&r.outcome, Outcome::Retry { after, error } if *after == Duration::from_secs(7) && error.contains("429")),
        "{:?}",
        r.outcome
    );
    assert!(!r.audit[0].success);
    assert!(
        r.audit[0]
            .error_message
            .as_deref()
            .is_some_and(|e| e.contains("TooManyRequests"))
    );
}

#[tokio::test]
async fn hard_kill_deletes_remaining_pods_with_grace_zero() {
    let j = job(job_json());
    let pods = vec![
        pod(pod_json("build-42-a", "pod-a", "Running")),
        pod(pod_json("build-42-b", "pod-b", "Failed")),
    ];
    let (r, seen) = against(
        vec![
            event_reply(),
            (200, pod_json("build-42-a", "pod-a", "Running")),
        ],
        false,
        |a| async move { ok(a.hard_kill(&j, &pods, "grace over", now()).await) },
    )
    .await;
    assert_event(&seen[0], "TimeoutHardKill", "HardKill");
    assert_eq!(
        seen[1].line(),
        "DELETE /api/v1/namespaces/flowforge/pods/build-42-a"
    );
    assert_eq!(
        seen[1].body,
        json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "pod-a"}})
    );
    assert_eq!(
        seen.len(),
        2,
        "no status patch with the default podReplacementPolicy"
    );
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn hard_kill_never_touches_a_pod_without_the_jobs_own_id_label() {
    let j = job(job_json());
    // Both controlled by the Job (same owner UID), neither labelled as ours: one has no
    // job-id label (a template without it), one carries another job's id.
    let mut unlabelled = pod_json("build-42-x", "pod-x", "Running");
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("job-id");
    let mut other = pod_json("build-42-y", "pod-y", "Running");
    other["metadata"]["labels"]["job-id"] = "j-other".into();
    let pods = vec![pod(unlabelled), pod(other)];
    let (r, seen) = against(vec![event_reply()], false, |a| async move {
        ok(a.hard_kill(&j, &pods, "grace over", now()).await)
    })
    .await;
    assert_event(&seen[0], "TimeoutHardKill", "HardKill");
    assert_eq!(seen.len(), 1, "only the Event: {seen:?}");
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn hard_kill_with_replacement_policy_failed_also_fails_the_pod_phase() {
    let mut v = job_json();
    v["spec"]["podReplacementPolicy"] = "Failed".into();
    let j = job(v);
    let pods = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];
    let (r, seen) = against(
        vec![
            event_reply(),
            (200, pod_json("build-42-a", "pod-a", "Running")),
            (200, pod_json("build-42-a", "pod-a", "Failed")),
        ],
        false,
        |a| async move { ok(a.hard_kill(&j, &pods, "grace over", now()).await) },
    )
    .await;
    assert_eq!(seen[1].method, "DELETE");
    assert_eq!(
        seen[2].line(),
        "PATCH /api/v1/namespaces/flowforge/pods/build-42-a/status?fieldManager=jobwarden"
    );
    assert_eq!(seen[2].body, json!({"status": {"phase": "Failed"}}));
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 3);
}

#[tokio::test]
async fn hard_kill_counts_a_vanished_pod_as_done_and_stops_on_a_server_error() {
    let j = job(job_json());
    let pods = vec![
        pod(pod_json("build-42-a", "pod-a", "Running")),
        pod(pod_json("build-42-b", "pod-b", "Running")),
        pod(pod_json("build-42-c", "pod-c", "Running")),
    ];
    let (r, seen) = against(
        vec![
            event_reply(),
            (
                404,
                status(404, "NotFound", "pods \"build-42-a\" not found"),
            ),
            (
                500,
                status(500, "InternalError", "etcdserver: request timed out"),
            ),
        ],
        false,
        |a| async move { ok(a.hard_kill(&j, &pods, "g", now()).await) },
    )
    .await;
    assert_eq!(
        seen.len(),
        3,
        "stops after the 500: the third pod waits for the retry"
    );
    assert!(matches!(&r.outcome, Outcome::Retry { after, .. } if *after == Duration::from_secs(5)));
    assert!(r.audit[1].success, "NotFound is done");
    assert!(!r.audit[2].success);
}

#[tokio::test]
async fn force_delete_deletes_the_job_in_the_background_with_its_uid_and_removes_stuck_pods() {
    let j = job(job_json());
    let mut stuck = pod_json("build-42-a", "pod-a", "Running");
    stuck["metadata"]["deletionTimestamp"] = "2026-11-28T10:59:00Z".into();
    stuck["metadata"]["deletionGracePeriodSeconds"] = 0.into();
    let mut terminating = pod_json("build-42-b", "pod-b", "Running");
    terminating["metadata"]["deletionTimestamp"] = "2026-11-28T11:00:20Z".into();
    let pods = vec![
        pod(stuck.clone()),
        pod(terminating),
        pod(pod_json("build-42-c", "pod-c", "Running")),
    ];
    let (r, seen) = against(
        vec![
            event_reply(),
            (200, success_status("jobs", "build-42", JOB_UID)),
            (200, stuck),
        ],
        false,
        |a| async move {
            ok(a.force_delete(&j, &pods, "hard kill did not end it", now())
                .await)
        },
    )
    .await;
    assert_event(&seen[0], "TimeoutForceDelete", "ForceDelete");
    assert_eq!(
        seen[1].line(),
        "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-42"
    );
    assert_eq!(
        seen[1].body,
        json!({"propagationPolicy": "Background", "preconditions": {"uid": JOB_UID}})
    );
    assert_eq!(
        seen[2].line(),
        "DELETE /api/v1/namespaces/flowforge/pods/build-42-a"
    );
    assert_eq!(
        seen[2].body,
        json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "pod-a"}})
    );
    assert_eq!(
        seen.len(),
        3,
        "only the pod past its deletion time is stuck; GC takes the rest"
    );
    assert_eq!(r.outcome, Outcome::Done);
    assert!(r.audit.iter().all(|a| a.action == AuditAction::ForceDelete));
}

#[tokio::test]
async fn force_delete_of_a_recreated_job_leaves_it() {
    let j = job(job_json());
    let conflict = status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on jobs.batch \"build-42\": Precondition failed: UID in precondition: 6f1c1d0e-5b8e-4a4e-9a51-0d0c2b1e7a10, UID in object meta: 0b9e",
    );
    let (r, seen) = against(
        vec![event_reply(), (409, conflict)],
        false,
        |a| async move { ok(a.force_delete(&j, &[], "x", now()).await) },
    )
    .await;
    assert_eq!(seen.len(), 2);
    assert_eq!(r.outcome, Outcome::Recreated);
    let row = &r.audit[1];
    assert!(!row.success);
    assert!(
        row.error_message
            .as_deref()
            .is_some_and(|e| e.contains("Precondition"))
    );
    assert!(row.details.as_ref().is_some_and(|d| {
        d["conflict"]
            .as_str()
            .is_some_and(|c| c.contains("re-created"))
    }));
}

fn finished_job() -> Value {
    let mut v = job_json();
    v["status"] = json!({"startTime": "2026-11-28T10:00:01Z", "completionTime": "2026-11-28T10:30:01Z",
        "succeeded": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
        "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached",
            "message": "Reached expected number of succeeded pods",
            "lastProbeTime": "2026-11-28T10:30:01Z", "lastTransitionTime": "2026-11-28T10:30:01Z"}]});
    v
}

#[tokio::test]
async fn ttl_delete_is_foreground_with_uid_then_force_removes_stuck_pods_by_job_name() {
    let j = job(finished_job());
    let mut deleting = finished_job();
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T11:00:01Z".into();
    deleting["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    let mut stuck = pod_json("build-42-a", "pod-a", "Running");
    stuck["metadata"]["deletionTimestamp"] = "2026-11-28T10:40:00Z".into();
    let mut other_run = pod_json("build-42-z", "pod-z", "Running");
    other_run["metadata"]["ownerReferences"][0]["uid"] = "another-job-uid".into();
    other_run["metadata"]["deletionTimestamp"] = "2026-11-28T10:40:00Z".into();
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5000"},
                      "items": [stuck.clone(), other_run, pod_json("build-42-s", "pod-s", "Succeeded")]});
    let (r, seen) = against(
        vec![(200, deleting), (200, list), (200, stuck)],
        false,
        |a| async move { ok(a.ttl_delete(&j, "ttl 1h after success", now()).await) },
    )
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "DELETE /apis/batch/v1/namespaces/flowforge/jobs/build-42",
            "GET /api/v1/namespaces/flowforge/pods?labelSelector=batch.kubernetes.io/job-name=build-42",
            "DELETE /api/v1/namespaces/flowforge/pods/build-42-a",
        ],
        "the pod of another Job with the same name is not touched"
    );
    assert_eq!(
        seen[0].body,
        json!({"propagationPolicy": "Foreground", "preconditions": {"uid": JOB_UID}})
    );
    assert_eq!(
        seen[2].body,
        json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "pod-a"}})
    );
    assert_eq!(r.outcome, Outcome::Done);
    assert!(
        r.audit
            .iter()
            .all(|a| a.action == AuditAction::TtlCleanup && a.success)
    );
}

#[tokio::test]
async fn ttl_delete_conflict_means_recreated_and_not_found_means_done() {
    let j = job(finished_job());
    let (r, seen) = against(
        vec![(
            409,
            status(409, "Conflict", "Precondition failed: UID in precondition"),
        )],
        false,
        |a| async move { ok(a.ttl_delete(&j, "ttl", now()).await) },
    )
    .await;
    assert_eq!(
        seen.len(),
        1,
        "a re-created Job's pods are not listed or touched"
    );
    assert_eq!(r.outcome, Outcome::Recreated);
    assert_eq!(r.audit.len(), 1, "the conflict is audited");

    let j = job(finished_job());
    let (r, seen) = against(
        vec![(404, status(404, "NotFound", "gone"))],
        false,
        |a| async move { ok(a.ttl_delete(&j, "ttl", now()).await) },
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn ttl_delete_of_a_job_already_being_deleted_only_looks_for_stuck_pods() {
    let mut v = finished_job();
    v["metadata"]["deletionTimestamp"] = "2026-11-28T10:59:00Z".into();
    let j = job(v);
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5000"}, "items": []});
    let (r, seen) = against(vec![(200, list)], false, |a| async move {
        ok(a.ttl_delete(&j, "ttl", now()).await)
    })
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn ttl_delete_with_a_forbidden_pod_list_fails_and_says_so() {
    let j = job(finished_job());
    let (r, _) = against(
        vec![(200, finished_job()), (403, status(403, "Forbidden", "pods is forbidden: User \"system:serviceaccount:jobwarden:jobwarden\" cannot list resource \"pods\""))],
        false,
        |a| async move { ok(a.ttl_delete(&j, "ttl", now()).await) },
    )
    .await;
    assert!(matches!(&r.outcome, Outcome::Failed { error } if error.contains("forbidden")));
    assert_eq!(r.audit.len(), 2);
    assert!(!r.audit[1].success);
}

#[tokio::test]
async fn nothing_is_sent_for_unlabelled_or_protected_jobs() {
    let mut unlabelled = job_json();
    unlabelled["metadata"]["labels"] = json!({"app": "other"});
    let mut protected = job_json();
    protected["metadata"]["namespace"] = "kube-system".into();
    for (v, want) in [
        (unlabelled, Ignored::NoLabel),
        (protected, Ignored::Namespace("kube-system".into())),
    ] {
        let j = job(v);
        let p = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];
        let (results, seen) = against(vec![], false, |a| async move {
            vec![
                a.warn(&j, "n", now()).await.err(),
                a.soft_kill(&j, &p, Duration::ZERO, "r", now()).await.err(),
                a.hard_kill(&j, &p, "r", now()).await.err(),
                a.force_delete(&j, &p, "r", now()).await.err(),
                a.ttl_delete(&j, "r", now()).await.err(),
            ]
        })
        .await;
        assert!(seen.is_empty(), "sent {seen:?}");
        assert!(
            results.iter().all(|r| r.as_ref() == Some(&want)),
            "{results:?}"
        );
    }
}

#[tokio::test]
async fn dry_run_sends_nothing_and_audits_every_call_it_would_make() {
    let mut v = job_json();
    v["spec"]["podReplacementPolicy"] = "Failed".into();
    let j = job(v);
    let mut stuck = pod_json("build-42-a", "pod-a", "Running");
    stuck["metadata"]["deletionTimestamp"] = "2026-11-28T10:59:00Z".into();
    let p = vec![pod(stuck)];
    let (reports, seen) = against(vec![], true, |a| async move {
        vec![
            ok(a.warn(&j, "n", now()).await),
            ok(a.soft_kill(&j, &p, Duration::ZERO, "r", now()).await),
            ok(a.hard_kill(&j, &p, "r", now()).await),
            ok(a.force_delete(&j, &p, "r", now()).await),
            ok(a.ttl_delete(&j, "r", now()).await),
        ]
    })
    .await;
    assert!(seen.is_empty(), "sent {seen:?}");
    let counts: Vec<usize> = reports.iter().map(|r| r.audit.len()).collect();
    // warn: event; soft: patch, event, pod delete; hard: event, delete, status patch;
    // force: event, job delete, pod delete, status patch; ttl: job delete (no listing).
    assert_eq!(counts, [1, 3, 3, 4, 1]);
    for r in &reports {
        assert_eq!(r.outcome, Outcome::Done);
        assert!(
            r.audit
                .iter()
                .all(|a| a.dry_run && a.success && a.error_message.is_none())
        );
    }
    assert_eq!(
        reports[1].audit[0]
            .details
            .as_ref()
            .map(|d| d["body"]["spec"]["activeDeadlineSeconds"].clone()),
        Some(json!(1))
    );
}

#[tokio::test]
async fn soft_kill_never_raises_an_existing_smaller_deadline() {
    let mut v = job_json();
    v["spec"]["activeDeadlineSeconds"] = 0.into();
    let j = job(v);
    let (_, seen) = against(
        vec![(200, job_json()), event_reply()],
        false,
        |a| async move {
            ok(a.soft_kill(&j, &[], Duration::from_secs(60), "t", now())
                .await)
        },
    )
    .await;
    assert_eq!(seen[0].body["spec"]["activeDeadlineSeconds"], 0);
}

/// Metadata of a labelled object as a metadata-only list serves it.
fn labelled(kind: &str, name: &str, uid: &str, job_id: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": name, "namespace": "flowforge", "uid": uid,
                        "resourceVersion": "77", "creationTimestamp": "2026-11-28T10:00:00Z",
                        "labels": {"job-id": job_id}, "annotations": {"kind": kind}}})
}

fn metadata_list(items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "5000"}, "items": items}),
    )
}

/// After the TTL delete: the job's labelled PVCs, Secrets and ConfigMaps are listed by its id
/// in its namespace and deleted with their UID. NOT deleted: one another Job owns (a
/// re-created Job's), one already being deleted, one whose label names another job (the
/// server's selector is not trusted alone).
#[tokio::test]
async fn the_ttl_cleanup_deletes_the_jobs_labelled_objects_and_nothing_else() {
    let j = job(finished_job());
    let mut other_jobs = labelled("pvc", "data-new", "pvc-new", "j-42");
    other_jobs["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "build-42", "uid": "another-job-uid", "controller": true}]);
    let mut deleting = labelled("pvc", "data-going", "pvc-going", "j-42");
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T10:59:00Z".into();
    let mut own_secret = labelled("secret", "creds", "sec-1", "j-42");
    own_secret["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "build-42", "uid": JOB_UID, "controller": true}]);
    let (r, seen) = against(
        vec![
            metadata_list(vec![
                labelled("pvc", "data", "pvc-1", "j-42"),
                other_jobs,
                deleting,
                labelled("pvc", "data-43", "pvc-43", "j-43"),
            ]),
            (
                200,
                success_status("persistentvolumeclaims", "data", "pvc-1"),
            ),
            metadata_list(vec![own_secret]),
            (200, success_status("secrets", "creds", "sec-1")),
            metadata_list(vec![]),
        ],
        false,
        |a| async move { ok(a.delete_labelled(&j, "ttl 1h after success", now()).await) },
    )
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/namespaces/flowforge/persistentvolumeclaims?labelSelector=job-id=j-42",
            "DELETE /api/v1/namespaces/flowforge/persistentvolumeclaims/data",
            "GET /api/v1/namespaces/flowforge/secrets?labelSelector=job-id=j-42",
            "DELETE /api/v1/namespaces/flowforge/secrets/creds",
            "GET /api/v1/namespaces/flowforge/configmaps?labelSelector=job-id=j-42",
        ]
    );
    assert_eq!(seen[1].body, json!({"preconditions": {"uid": "pvc-1"}}));
    assert_eq!(seen[3].body, json!({"preconditions": {"uid": "sec-1"}}));
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.audit.len(), 2);
    assert!(
        r.audit
            .iter()
            .all(|a| a.action == AuditAction::TtlCleanup && a.success)
    );
}

/// A failed listing stops the cleanup with nothing deleted (retried with the TTL delete);
/// dry-run sends nothing at all.
#[tokio::test]
async fn the_ttl_cleanup_of_labelled_objects_fails_closed_and_dry_run_sends_nothing() {
    let j = job(finished_job());
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "persistentvolumeclaims is forbidden", "reason": "Forbidden", "code": 403});
    let (r, seen) = against(vec![(403, forbidden)], false, |a| async move {
        ok(a.delete_labelled(&j, "ttl", now()).await)
    })
    .await;
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
    assert!(
        matches!(r.outcome, Outcome::Failed { .. }),
        "{:?}",
        r.outcome
    );
    assert!(r.audit.len() == 1 && !r.audit[0].success);

    let j = job(finished_job());
    let (r, seen) = against(vec![], true, |a| async move {
        ok(a.delete_labelled(&j, "ttl", now()).await)
    })
    .await;
    assert!(seen.is_empty());
    assert_eq!(r.outcome, Outcome::Done);
}

#[tokio::test]
async fn a_cancel_request_patches_the_job_it_read_and_reads_again_on_a_conflict() {
    let id = jobwarden::model::JobId::parse("j-42").expect("id");
    let mut newer = job_json();
    newer["metadata"]["resourceVersion"] = "4712".into();
    let ((asked, rows), seen) = against(
        vec![
            (200, job_json()),
            (409, status(409, "Conflict", "the object has been modified")),
            (200, newer.clone()),
            (200, newer),
        ],
        // A request, not a decision: sent in dry-run too.
        true,
        |a| async move { a.request_cancel("flowforge", "build-42", &id, now()).await },
    )
    .await;
    assert_eq!(asked, CancelRequest::Requested);
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    let path = "/apis/batch/v1/namespaces/flowforge/jobs/build-42";
    assert_eq!(
        lines,
        [
            format!("GET {path}"),
            format!("PATCH {path}?fieldManager=jobwarden"),
            format!("GET {path}"),
            format!("PATCH {path}?fieldManager=jobwarden"),
        ]
    );
    let want = |rv: &str| {
        json!({"metadata": {"resourceVersion": rv,
            "annotations": {"flowforge.io/cancel-requested": "2026-11-28T11:00:01.250Z"}}})
    };
    assert_eq!(seen[1].body, want("4711"));
    assert_eq!(
        seen[3].body,
        want("4712"),
        "the second PATCH carries what was read again"
    );
    // One row per PATCH, the user's, the conflict failed.
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r.action == AuditAction::Cancel && r.initiated_by == "user" && !r.dry_run)
    );
    assert_eq!((rows[0].success, rows[1].success), (false, true));
}

#[tokio::test]
async fn a_cancel_request_never_patches_another_jobs_job_nor_asks_twice() {
    let id = jobwarden::model::JobId::parse("j-42").expect("id");
    // The name now holds another job's Job: read, left alone.
    let mut other = job_json();
    other["metadata"]["labels"]["job-id"] = "j-7".into();
    let ((asked, rows), seen) = against(vec![(200, other)], false, |a| {
        let id = id.clone();
        async move { a.request_cancel("flowforge", "build-42", &id, now()).await }
    })
    .await;
    assert_eq!((asked, rows.len(), seen.len()), (CancelRequest::Gone, 0, 1));
    // Asked already: the first request's time stays; one row says so.
    let mut asked_before = job_json();
    asked_before["metadata"]["annotations"]["flowforge.io/cancel-requested"] =
        "2026-11-28T10:59:00Z".into();
    let ((asked, rows), seen) = against(vec![(200, asked_before)], false, |a| async move {
        a.request_cancel("flowforge", "build-42", &id, now()).await
    })
    .await;
    assert_eq!((asked, seen.len()), (CancelRequest::Requested, 1));
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].details.as_ref().expect("details")["alreadyRequested"],
        "2026-11-28T10:59:00Z"
    );
    // Gone: 404 on the read; forbidden: refused, nothing patched.
    for (code, want) in [
        (404, CancelRequest::Gone),
        (
            403,
            CancelRequest::Refused("jobs \"build-42\" is forbidden".into()),
        ),
    ] {
        let id = jobwarden::model::JobId::parse("j-42").expect("id");
        let ((asked, _), seen) = against(
            vec![(code, status(code, "x", "jobs \"build-42\" is forbidden"))],
            false,
            |a| async move { a.request_cancel("flowforge", "build-42", &id, now()).await },
        )
        .await;
        assert_eq!(seen.len(), 1, "{code}");
        assert_eq!(
            std::mem::discriminant(&asked),
            std::mem::discriminant(&want),
            "{code}: {asked:?}"
        );
    }
}
