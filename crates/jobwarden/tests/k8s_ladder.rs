//! The ladder to its end against the stateful fake, with the fake's Job controller running as
//! a real 1.36 control plane's does (KUBERNETES.md §1, as a real kube-controller-manager was
//! seen to act): the soft kill's `activeDeadlineSeconds` gives the Job `FailureTarget` at once
//! and deletes its pods with their grace; a pod bound to a node whose kubelet never confirms
//! stays Terminating until it is deleted with grace 0; `Failed` comes only once no pod of the
//! Job is left. `FailureTarget` means the Job is *ending*: jobwarden's ladder must go on while
//! its pods exist (a real cluster kept such a Job at `FailureTarget` for as long as its pod
//! stayed Terminating, and jobwarden, taking `FailureTarget` for the end, never hard-killed).
//!
//! Scenarios (timeout 2 s, warning 1 s before, grace 2 s: warn at T0+1, soft kill at T0+2,
//! hard kill at T0+4, force delete at T0+6):
//! - the stuck pod is deleted with grace 0 by the hard kill, then the Job fails; no force
//!   delete;
//! - a pod that outlives the hard kill (another controller's finalizer) gets the force delete;
//! - the same ladder when the leader fails over after the soft kill;
//! - jobwarden killed right after its soft-kill PATCH (before anything else): after the
//!   restart the step has one row and the hard kill comes a grace after the PATCH;
//! - two Events in one pass (warning and soft kill at the same instant) are both stored.

mod k8s_support;

use std::time::{Duration, Instant};

use jobwarden::config::{Config, WarnBefore};
use jobwarden::duration::Dur;
use jobwarden::model::{AuditAction, JobId, Outcome, Stage, Timestamp, add};
use jobwarden::store::Store;
use k8s_support::fake::Fake;
use k8s_support::wiring::*;
use serde_json::{Value, json};

/// The fake's Job controller, syncing every 50 ms until dropped (the real one syncs on every
/// change, pod-driven syncs batched by 1 s).
struct JobController(tokio::task::JoinHandle<()>);

impl JobController {
    fn start(fake: &Fake, clock: impl Fn() -> Timestamp + Send + 'static) -> Self {
        let fake = fake.clone();
        JobController(tokio::spawn(async move {
            loop {
                fake.job_controller_tick(clock());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for JobController {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Warning 1 s before the deadline.
fn config() -> Config {
    let mut config = Config::default();
    config.policy.warn_before = WarnBefore::One(Dur::secs(1));
    config
}

/// The Job under test: started at T0, timeout 2 s, grace 2 s; its pod (own grace 30 s) is
/// bound to a node with no kubelet.
fn insert_job(fake: &Fake) {
    fake.insert(running_job(
        "build-42",
        k8s_support::JOB_UID,
        t0(),
        json!({"flowforge.io/timeout-seconds": "2", "flowforge.io/grace-period-seconds": "2"}),
    ));
    fake.insert(bound_pod(
        "build-42-a",
        "pod-a",
        "build-42",
        k8s_support::JOB_UID,
    ));
}

fn has_condition(fake: &Fake, condition: &str) -> bool {
    fake.get("jobs", "flowforge", "build-42").is_some_and(|j| {
        j["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == condition && c["status"] == "True")
        })
    })
}

/// The calls of the ladder for the Job: warn (Event); soft kill (PATCH, Event, the pod
/// deleted with grace 2 s); hard kill (Event, the pod deleted with grace 0); with `force`,
/// the force delete (Event, the Job, the pod).
fn ladder_calls(force: bool) -> Vec<String> {
    let mut calls = vec![
        format!("POST {EVENTS}"),
        format!("PATCH {JOB_PATH}"),
        format!("POST {EVENTS}"),
        format!("DELETE {POD_PATH}"),
        format!("POST {EVENTS}"),
        format!("DELETE {POD_PATH}"),
    ];
    if force {
        calls.extend([
            format!("POST {EVENTS}"),
            format!("DELETE {JOB_PATH}"),
            format!("DELETE {POD_PATH}"),
        ]);
    }
    calls
}

/// The `reason` of every Event posted, in order, and whether their names are all different.
fn event_reasons(fake: &Fake) -> (Vec<String>, bool) {
    let posted: Vec<Value> = fake
        .mutations()
        .into_iter()
        .filter(|w| w.method == "POST" && w.path.starts_with(EVENTS))
        .map(|w| w.body)
        .collect();
    let names: std::collections::BTreeSet<&str> = posted
        .iter()
        .filter_map(|e| e["metadata"]["name"].as_str())
        .collect();
    let reasons = posted
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    (reasons, names.len() == posted.len())
}

/// The audit log keeps milliseconds: `a` and `b` are the same instant at that precision.
fn assert_close(a: Timestamp, b: Timestamp) {
    assert!(
        (a - b).abs() < chrono::TimeDelta::milliseconds(1),
        "{a} is not {b}"
    );
}

/// Sleeps until the shared clock reads `T0 + secs`.
async fn sleep_until(start: Instant, secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs).saturating_sub(start.elapsed())).await;
}

/// A replica on a shared store (whose directory the test keeps).
fn replica_on(fake: &Fake, store: &Store, start: Instant, leading: bool) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    replica(
        fake,
        config(),
        false,
        false,
        (store.clone(), dir),
        clock(start),
        leading,
    )
}

/// The store's record of the job.
async fn record(store: &Store) -> jobwarden::model::JobRecord {
    store
        .get_job(&JobId::parse("j-42").expect("id"))
        .await
        .expect("store")
        .expect("record")
}

#[tokio::test]
async fn a_pod_stuck_terminating_after_failure_target_is_hard_killed_and_then_the_job_fails() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    insert_job(&fake);
    let c = start(&fake, config(), false, clock(start_time)).await;
    let _jc = JobController::start(&fake, clock(start_time));
    c.until(10, "the Job reaches FailureTarget", |f| {
        has_condition(f, "FailureTarget")
    })
    .await;
    assert!(
        !has_condition(&fake, "Failed"),
        "its pod is still terminating"
    );
    c.until(
        10,
        "the Job fails once its stuck pod is force-deleted",
        |f| has_condition(f, "Failed"),
    )
    .await;
    // Past when the force delete would have been due: nothing more is sent.
    sleep_until(start_time, 6.5).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        ladder_calls(false),
        "warn, soft kill (patch, Event, pod grace 2 s), hard kill (Event, pod grace 0); no force delete for a Job that has ended"
    );
    assert_eq!(writes[3].body["gracePeriodSeconds"], 2);
    assert_eq!(writes[5].body["gracePeriodSeconds"], 0);
    assert_eq!(writes[5].body["preconditions"]["uid"], "pod-a");
    let (reasons, unique) = event_reasons(&fake);
    assert_eq!(
        reasons,
        ["TimeoutWarning", "TimeoutSoftKill", "TimeoutHardKill"]
    );
    assert!(unique, "Event names must differ");
    assert!(fake.get("pods", "flowforge", "build-42-a").is_none());

    let taken = steps(&c.audit().await);
    let actions: Vec<AuditAction> = taken.iter().map(|s| s.0).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill
        ],
        "each step once, with one row"
    );
    assert_eq!((taken[0].1, taken[1].1), (at(1.0), at(2.0)));
    // The hard kill is due a grace after the soft kill actually happened, and taken on time.
    assert_close(taken[2].1, add(taken[1].2, Duration::from_secs(2)));
    for (action, due, when) in &taken {
        assert!(
            *when >= *due && *when - *due < chrono::TimeDelta::milliseconds(900),
            "{action:?} due {due} taken {when}"
        );
    }
    // Failed: terminated by jobwarden, finished when its outcome was decided.
    let ft = fake.get("jobs", "flowforge", "build-42").expect("job")["status"]["conditions"]
        [0]["lastTransitionTime"]
        .as_str()
        .expect("FailureTarget time")
        .parse::<Timestamp>()
        .expect("ts");
    c.until(5, "the record settles", |_| true).await;
    let rec = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = record(&c.store).await;
            if r.stage == Stage::Failed {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the record reaches failed");
    assert_eq!(
        (rec.outcome, rec.finished_at),
        (Some(Outcome::Terminated), Some(ft))
    );
    assert!(rec.spec.get("acting").is_none(), "{}", rec.spec);
    c.finish().await;
}

#[tokio::test]
async fn a_pod_that_outlives_the_hard_kill_gets_the_force_delete() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    insert_job(&fake);
    // Another controller's finalizer: even a grace-0 delete leaves the pod Terminating.
    fake.modify("pods", "flowforge", "build-42-a", |p| {
        p["metadata"]["finalizers"] =
            json!(["batch.kubernetes.io/job-tracking", "example.com/forensics"]);
    });
    let c = start(&fake, config(), false, clock(start_time)).await;
    let _jc = JobController::start(&fake, clock(start_time));
    c.until(10, "the Job is force-deleted", |f| {
        f.get("jobs", "flowforge", "build-42").is_none()
    })
    .await;
    sleep_until(start_time, 6.5).await;
    let writes = fake.mutations();
    assert_eq!(
        lines(&writes),
        ladder_calls(true),
        "the Job stayed at FailureTarget with its pod Terminating: force delete at D + 2G"
    );
    assert_eq!(writes[7].body["propagationPolicy"], "Background");
    assert_eq!(writes[7].body["preconditions"]["uid"], k8s_support::JOB_UID);
    let (reasons, unique) = event_reasons(&fake);
    assert_eq!(
        reasons,
        [
            "TimeoutWarning",
            "TimeoutSoftKill",
            "TimeoutHardKill",
            "TimeoutForceDelete"
        ]
    );
    assert!(unique);
    let taken = steps(&c.audit().await);
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
    assert_close(taken[3].1, add(taken[2].2, Duration::from_secs(2)));
    c.finish().await;
}

#[tokio::test]
async fn after_a_leader_failover_the_new_leader_finishes_the_ladder_once() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    insert_job(&fake);
    // The store's directory outlives the replica that crashes.
    let (store, _dir) = temp_store().await;
    let a = replica_on(&fake, &store, start_time, true);
    let b = replica_on(&fake, &store, start_time, false);
    let _jc = JobController::start(&fake, clock(start_time));
    a.until(10, "the soft kill", |f| {
        count(&f.mutations(), "PATCH", JOB_PATH) == 1
    })
    .await;
    // The leader dies once the soft kill is carried out (recorded, patched, marker gone).
    tokio::time::timeout(Duration::from_secs(5), async {
        while record(&a.store).await.spec.get("acting").is_some()
            || event_reasons(&fake).0.len() < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the soft kill completes");
    a.crash().await;
    b.leading.send(true).expect("lead");
    b.until(10, "the Job fails after the new leader's hard kill", |f| {
        has_condition(f, "Failed")
    })
    .await;
    sleep_until(start_time, 6.5).await;
    let (reasons, unique) = event_reasons(&fake);
    assert_eq!(
        reasons,
        ["TimeoutWarning", "TimeoutSoftKill", "TimeoutHardKill"]
    );
    assert!(unique);
    assert_eq!(count(&fake.mutations(), "PATCH", JOB_PATH), 1);
    assert_eq!(count(&fake.mutations(), "DELETE", JOB_PATH), 0);
    let taken = steps(&b.audit().await);
    let actions: Vec<AuditAction> = taken.iter().map(|s| s.0).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill
        ]
    );
    assert_close(taken[2].1, add(taken[1].2, Duration::from_secs(2)));
    b.finish().await;
}

#[tokio::test]
async fn killed_right_after_the_soft_kill_patch_the_restarted_controller_records_it_once() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    insert_job(&fake);
    // The store's directory outlives the replica that crashes.
    let (store, _dir) = temp_store().await;
    let a = replica_on(&fake, &store, start_time, true);
    let _jc = JobController::start(&fake, clock(start_time));
    a.until(10, "the warning", |f| event_reasons(f).0.len() == 1)
        .await;
    // The soft kill's Event never gets an answer: the process is killed between its PATCH
    // and anything after it.
    fake.hang("POST", EVENTS);
    a.until(10, "the soft kill's PATCH and the Event that hangs", |f| {
        count(&f.requests(), "PATCH", JOB_PATH) == 1 && count(&f.requests(), "POST", EVENTS) == 2
    })
    .await;
    a.crash().await;
    let patched = fake.get("jobs", "flowforge", "build-42").expect("job");
    assert_eq!(
        patched["spec"]["activeDeadlineSeconds"], 1,
        "the PATCH went through"
    );
    let before = record(&store).await;
    assert!(
        before.has_step(jobwarden::model::Step::SoftKill),
        "recorded before the PATCH"
    );
    assert_eq!(before.spec["acting"]["step"], "soft_kill");

    // Restart on the same store.
    fake.clear_faults();
    let b = replica_on(&fake, &store, start_time, true);
    b.until(10, "the Job fails after the hard kill", |f| {
        has_condition(f, "Failed")
    })
    .await;
    sleep_until(start_time, 6.5).await;
    let taken = steps(&b.audit().await);
    let actions: Vec<AuditAction> = taken.iter().map(|s| s.0).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill
        ],
        "exactly one soft_kill row"
    );
    // The Job shows the PATCH went out before the crash: the hard kill comes a grace after
    // the recorded soft kill, not after the restart.
    assert_close(taken[2].1, add(taken[1].2, Duration::from_secs(2)));
    let rec = record(&b.store).await;
    assert!(rec.spec.get("acting").is_none(), "{}", rec.spec);
    let soft_rows = b
        .audit()
        .await
        .iter()
        .filter(|a| a.action == AuditAction::SoftKill && a.resource_type == "event" && a.success)
        .count();
    assert_eq!(
        soft_rows, 1,
        "the restarted controller posted the soft kill's Event"
    );
    b.finish().await;
}

/// A Job first seen past its deadline: the warning and the soft kill are due in the same pass,
/// and each Event is stored under its own name.
#[tokio::test]
async fn two_events_in_one_pass_are_both_stored() {
    let start_time = Instant::now();
    let fake = Fake::new(clock(start_time));
    fake.insert(running_job(
        "build-42",
        k8s_support::JOB_UID,
        at(-600.0),
        json!({"flowforge.io/timeout-seconds": "60", "flowforge.io/grace-period-seconds": "30"}),
    ));
    let c = start(&fake, config(), false, clock(start_time)).await;
    c.until(10, "the soft kill's Event", |f| {
        event_reasons(f).0.len() == 2
    })
    .await;
    let (reasons, unique) = event_reasons(&fake);
    assert_eq!(reasons, ["TimeoutWarning", "TimeoutSoftKill"]);
    assert!(unique, "{:#?}", fake.mutations());
    assert_eq!(
        fake.all("events").len(),
        2,
        "both stored, none refused with 409 AlreadyExists"
    );
    let refused = c
        .audit()
        .await
        .iter()
        .filter(|a| a.resource_type == "event" && !a.success)
        .count();
    assert_eq!(refused, 0);
    c.finish().await;
}
