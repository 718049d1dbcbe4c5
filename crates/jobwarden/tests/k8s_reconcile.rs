//! A Job's whole ladder through `Reconciler` against a scripted API server and a real (SQLite)
//! store: nothing before its time, one warning, soft kill at the deadline, hard kill a grace
//! later, a retried 429, and the TTL delete after it ended; every step in the store and every
//! call in the audit log.

mod k8s_support;

use std::time::Duration;

use jobwarden::config::Config;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::{Reconciled, Reconciler};
use jobwarden::model::{AuditAction, JobId, Outcome, Stage, Step, Timestamp};
use jobwarden::runtime::kubernetes::actions::Actions;
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
    // Recorded before it was sent, and marked as not carried out yet.
    let rec = store.get_job(&id).await.expect("get").expect("row");
    assert!(rec.has_step(Step::SoftKill));
    assert_eq!(rec.spec["acting"]["step"], "soft_kill", "{}", rec.spec);
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
    assert!(
        rec.spec.get("acting").is_none(),
        "carried out: {}",
        rec.spec
    );
    let soft = rec
        .steps
        .iter()
        .find(|s| s.step == Step::SoftKill)
        .expect("step");
    assert_eq!(
        (soft.due_at, soft.at),
        (t("11:00:01"), t("11:00:04")),
        "re-timed to when it was carried out"
    );

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

    // Its outcome is decided (FailureTarget) and no pod is left, by the pods we see and by
    // the Job controller's counts: it ended, terminated; TTL 24 h from then; nothing sent
    // meanwhile.
    killed["status"]["conditions"] = json!([{"type": "FailureTarget", "status": "True",
        "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline",
        "lastProbeTime": "2026-11-28T11:05:05Z", "lastTransitionTime": "2026-11-28T11:05:05Z"}]);
    killed["status"]
        .as_object_mut()
        .expect("status")
        .remove("active");
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
        [
            vec![(200, killed.clone()), (200, list)],
            no_labelled_objects().to_vec(),
        ]
        .concat(),
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
    // Delete a, list its pods and its labelled objects; then c's GracePeriodTooShort, overdue warning, soft-kill
    // patch and its Event.
    let [pvcs, secrets, configmaps] = no_labelled_objects();
    let (client, server) = scripted(vec![
        (200, job_json()),
        (200, list),
        pvcs,
        secrets,
        configmaps,
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
/// attempt is audited as failed. The step is recorded once, before the first attempt, and
/// stays marked as not carried out until it succeeds; the hard kill counts from then.
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
        assert!(rec.has_step(Step::SoftKill));
        assert_eq!(
            rec.spec["acting"]["step"], "soft_kill",
            "carried out although forbidden"
        );
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
    assert!(rec.spec.get("acting").is_none(), "{}", rec.spec);
    let steps = actions_of(&store)
        .await
        .into_iter()
        .filter(|(a, kind, ok)| *a == AuditAction::SoftKill && kind == "job" && *ok)
        .count();
    assert_eq!(
        steps, 2,
        "the step's row, once, and the PATCH that went through"
    );
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

/// `[[hooks]]` whose commands append the event, the job id, namespace and stage and the job
/// JSON to `<dir>/<event>` (one line per run), plus a hook that always fails on `warn`.
fn hooks_config(dir: &std::path::Path, soft_kill_delay: &str) -> Config {
    let mut text = String::new();
    for on in ["warn", "terminating", "soft_kill", "hard_kill", "cleanup"] {
        let delay = if on == "soft_kill" {
            soft_kill_delay
        } else {
            "0"
        };
        let script = format!(
            "sleep {delay}; printf '%s %s %s %s %s\\n' \"$JOBWARDEN_EVENT\" \"$JOBWARDEN_JOB_ID\" \"$JOBWARDEN_JOB_NAMESPACE\" \"$JOBWARDEN_JOB_STAGE\" \"$JOBWARDEN_JOB_JSON\" >> \"{}/$JOBWARDEN_EVENT\"",
            dir.display()
        );
        text.push_str(&format!(
            "[[hooks]]\non = \"{on}\"\ncommand = [\"sh\", \"-c\", {}]\n\n",
            toml_string(&script)
        ));
    }
    text.push_str(
        "[[hooks]]\non = \"warn\"\ncommand = [\"sh\", \"-c\", \"echo no-pager >&2; exit 4\"]\nretries = 0\n",
    );
    Config::parse(&text, "hooks.toml").expect("hooks config")
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("json string") // a JSON string is a TOML basic string
}

/// The lines the hook on `event` wrote: (event, job id, namespace, stage, job JSON).
fn hook_runs(dir: &std::path::Path, event: &str) -> Vec<(String, String, String, String, Value)> {
    let Ok(text) = std::fs::read_to_string(dir.join(event)) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(5, ' ');
            let mut next = || parts.next().unwrap_or_default().to_owned();
            let (e, id, ns, stage) = (next(), next(), next(), next());
            let json = serde_json::from_str(&next()).expect("job JSON");
            (e, id, ns, stage, json)
        })
        .collect()
}

async fn idle(r: &Reconciler) {
    tokio::time::timeout(Duration::from_secs(20), r.hooks_idle())
        .await
        .expect("hooks finish");
}

/// Hooks in Kubernetes mode: warn and soft_kill (with `terminating`) fire once each, from
/// real processes, with the local runtime's payload plus the namespace; a reconcile of the
/// same state fires nothing; a slow hook does not hold up the soft kill; every outcome
/// (a failing hook too) is audited; and the steps are counted in the metrics with their delay.
#[tokio::test]
async fn steps_fire_their_hooks_once_and_the_outcomes_are_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open("sqlite::memory:").await.expect("store");
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": []});
    let (client, server) = scripted(vec![
        event(),               // GracePeriodTooShort
        event(),               // TimeoutWarning
        (200, job_json()),     // soft kill PATCH
        event(),               // its Event
        (200, job_json()),     // TTL DELETE of the finished Job j-c
        (200, list),           // its pods
        empty_metadata_list(), // its PVCs, Secrets, ConfigMaps
        empty_metadata_list(),
        empty_metadata_list(),
    ]);
    let config = hooks_config(dir.path(), "2");
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, false, "jw-0"),
    );
    let running = job(job_json()); // deadline 11:00:01, warning at 10:50:01
    let pods = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];

    r.reconcile(&running, &pods, t("10:50:01"))
        .await
        .expect("warn");
    idle(&r).await;
    let warned = hook_runs(dir.path(), "warn");
    assert_eq!(warned.len(), 1, "{warned:?}");
    let (e, id, ns, stage, view) = &warned[0];
    assert_eq!(
        (e.as_str(), id.as_str(), ns.as_str(), stage.as_str()),
        ("warn", "j-42", "flowforge", "running")
    );
    assert_eq!(view["name"], "build-42");
    assert_eq!(view["org"], "acme");
    assert_eq!(view["namespace"], "flowforge");
    assert!(
        view["deadline"]
            .as_str()
            .is_some_and(|d| d.starts_with("2026-11-28T11:00:01")),
        "{view}"
    );

    // The same state again: the warning is recorded, nothing fires.
    r.reconcile(&running, &pods, t("10:50:02"))
        .await
        .expect("again");
    idle(&r).await;
    assert_eq!(hook_runs(dir.path(), "warn").len(), 1, "warn fired twice");

    // Soft kill, 2 s late. Its hook sleeps 2 s first: the reconcile returns before it wrote.
    let out = r
        .reconcile(&running, &pods, t("11:00:03"))
        .await
        .expect("kill");
    assert_eq!(out, Reconciled::Wake(Some(t("11:05:03"))));
    assert!(
        hook_runs(dir.path(), "soft_kill").is_empty(),
        "the reconcile waited for the slow soft_kill hook"
    );
    idle(&r).await;
    for event in ["terminating", "soft_kill"] {
        let runs = hook_runs(dir.path(), event);
        assert_eq!(runs.len(), 1, "{event}: {runs:?}");
        assert_eq!(
            runs[0].3, "terminating",
            "{event}: the stage after the kill"
        );
    }
    r.reconcile(&running, &pods, t("11:00:04"))
        .await
        .expect("again");
    idle(&r).await;
    assert_eq!(
        hook_runs(dir.path(), "soft_kill").len(),
        1,
        "soft_kill fired twice"
    );
    assert_eq!(hook_runs(dir.path(), "terminating").len(), 1);
    assert!(hook_runs(dir.path(), "hard_kill").is_empty());

    // Another Job, finished long ago: TTL delete, `cleanup` fires once.
    let mut done = job_json();
    done["metadata"]["name"] = "c".into();
    done["metadata"]["uid"] = "u-c".into();
    done["metadata"]["labels"]["job-id"] = "j-c".into();
    done["status"]["conditions"] = json!([{"type": "Complete", "status": "True",
        "lastProbeTime": "2026-11-28T10:10:00Z", "lastTransitionTime": "2026-11-28T10:10:00Z"}]);
    let done = job(done);
    assert_eq!(
        r.reconcile(&done, &[], t("12:00:00")).await.expect("ttl"),
        Reconciled::Wake(None)
    );
    r.reconcile(&done, &[], t("12:00:01")).await.expect("again");
    idle(&r).await;
    let cleaned = hook_runs(dir.path(), "cleanup");
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    assert_eq!(
        (cleaned[0].1.as_str(), cleaned[0].3.as_str()),
        ("j-c", "cleanup")
    );

    // Every hook run is audited: four that worked, the failing one with its output.
    let audit = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit");
    let hooks: Vec<_> = audit
        .iter()
        .filter(|a| a.action == AuditAction::Hook)
        .collect();
    let mut ok: Vec<_> = hooks
        .iter()
        .filter(|a| a.success)
        .map(|a| {
            (
                a.job_id.as_str(),
                a.details.as_ref().expect("details")["event"].to_string(),
            )
        })
        .collect();
    ok.sort();
    assert_eq!(
        ok,
        [
            ("j-42", "\"soft_kill\"".to_owned()),
            ("j-42", "\"terminating\"".to_owned()),
            ("j-42", "\"warn\"".to_owned()),
            ("j-c", "\"cleanup\"".to_owned()),
        ],
        "{hooks:#?}"
    );
    let failed: Vec<_> = hooks.iter().filter(|a| !a.success).collect();
    assert_eq!(failed.len(), 1, "{hooks:#?}");
    assert!(
        failed[0]
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("no-pager"),
        "{failed:#?}"
    );

    // Metrics: one warn, one soft kill (2 s late), the failed hook, every audit row.
    let text = r.metrics().render();
    for want in [
        "jobwarden_escalation_steps_total{action=\"warn\"} 1\n",
        "jobwarden_escalation_steps_total{action=\"soft_kill\"} 1\n",
        "jobwarden_escalation_steps_total{action=\"hard_kill\"} 0\n",
        "jobwarden_enforcement_delay_seconds_bucket{le=\"1\"} 1\n",
        "jobwarden_enforcement_delay_seconds_bucket{le=\"2.5\"} 2\n",
        "jobwarden_enforcement_delay_seconds_count 2\n",
        "jobwarden_errors_total{kind=\"hook\"} 1\n",
        &format!("jobwarden_audit_rows_total {}\n", audit.len()),
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    drop(r);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    assert_eq!(seen.len(), 9, "{:?}", lines(&seen));
}

/// Dry-run does as the local runtime's dry-run: the step events fire (the steps are decided
/// and recorded), `terminating` and `cleanup` do not (nothing was ended or removed); nothing
/// is sent to the API server and nothing fires twice.
#[tokio::test]
async fn dry_run_fires_step_hooks_only_and_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open("sqlite::memory:").await.expect("store");
    let (client, server) = scripted(vec![]);
    let config = hooks_config(dir.path(), "0");
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(
        config,
        store.clone(),
        Actions::new(client, scope, true, "jw-0"),
    );
    let running = job(job_json());
    let pods = vec![pod(pod_json("build-42-a", "pod-a", "Running"))];
    // Overdue: warning and soft kill in one reconcile; then the same state again.
    r.reconcile(&running, &pods, t("11:00:01"))
        .await
        .expect("dry");
    r.reconcile(&running, &pods, t("11:00:02"))
        .await
        .expect("again");
    let mut done = job_json();
    done["metadata"]["labels"]["job-id"] = "j-c".into();
    done["metadata"]["uid"] = "u-c".into();
    done["status"]["conditions"] = json!([{"type": "Complete", "status": "True",
        "lastProbeTime": "2026-11-28T10:10:00Z", "lastTransitionTime": "2026-11-28T10:10:00Z"}]);
    assert_eq!(
        r.reconcile(&job(done), &[], t("12:00:00"))
            .await
            .expect("ttl"),
        Reconciled::Wake(None)
    );
    idle(&r).await;
    for (event, n) in [
        ("warn", 1),
        ("soft_kill", 1),
        ("terminating", 0),
        ("cleanup", 0),
    ] {
        let runs = hook_runs(dir.path(), event);
        assert_eq!(runs.len(), n, "{event}: {runs:?}");
    }
    assert_eq!(hook_runs(dir.path(), "soft_kill")[0].4["dry_run"], true);
    let hook_rows = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|a| a.action == AuditAction::Hook)
        .count();
    assert_eq!(hook_rows, 3, "warn (two hooks) and soft_kill");
    drop(r);
    let seen = server.await.expect("server");
    assert!(seen.is_empty(), "dry-run sent {:?}", lines(&seen));
}

/// `/metrics` of the Kubernetes health server, over HTTP: the reconciler's step counter and
/// `jobwarden_leader` following the leadership channel; `/readyz` following readiness.
#[tokio::test]
async fn the_health_server_serves_the_reconcilers_metrics_and_leadership() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let store = Store::open("sqlite::memory:").await.expect("store");
    let (client, _server) = scripted(vec![]);
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let r = Reconciler::new(config, store, Actions::new(client, scope, true, "jw-0"));
    r.reconcile(&job(job_json()), &[], t("11:00:01"))
        .await
        .expect("reconcile");

    let ready = Arc::new(AtomicBool::new(false));
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    let app = jobwarden::kubernetes::cli::health_router(ready.clone(), r.metrics(), leading_rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let resp = reqwest::get(&url).await.expect("GET");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };

    let (code, text) = get("/metrics").await;
    assert_eq!(code, 200);
    for want in [
        "jobwarden_escalation_steps_total{action=\"warn\"} 1\n",
        "jobwarden_escalation_steps_total{action=\"soft_kill\"} 1\n",
        "jobwarden_enforcement_delay_seconds_count 2\n",
        "# TYPE jobwarden_leader gauge\njobwarden_leader 0\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    leading_tx.send(true).expect("send");
    let (_, text) = get("/metrics").await;
    assert!(text.contains("\njobwarden_leader 1\n"), "{text}");

    assert_eq!(get("/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/healthz").await, (200, "ok\n".to_owned()));
    serving.abort();
}
