//! The executor on a fake runtime and a real (in-memory SQLite) store, with an explicit `now`:
//! each step once; nothing for a job that ended; re-timed when carried out late; a restart
//! in the middle of the ladder; dry-run; recovery counted once; the record/act order; a crash
//! between record and act.

use std::sync::{Arc, Mutex};

use super::*;
use crate::config::Config;
use crate::engine::Policy;
use crate::engine::ladder::tests::{running, t, take};
use crate::engine::plan::{Work, cancel_plan, fail_plan, plan as plan_for};
use crate::engine::recovery::Diagnosis;
use crate::hooks::Hooks;
use crate::model::{AuditAction, JobRecord, Outcome, Stage, Step};
use crate::runtime::{ActOutcome, Acted, Runtime};
use crate::store::AuditQuery;

/// One act the fake runtime was asked for, and what the store held for the job right then.
#[derive(Debug, Clone)]
struct Call {
    act: String,
    stored: Option<JobRecord>,
}

/// A runtime that records what it is asked and answers from a script (Done when empty).
/// `M`: whether it marks pending acts, as the Kubernetes runtime does.
#[derive(Clone)]
struct Fake<const M: bool> {
    store: Store,
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<Vec<ActOutcome>>>,
    shows: bool,
}

impl<const M: bool> Fake<M> {
    fn new(store: &Store) -> Self {
        Fake {
            store: store.clone(),
            calls: Arc::default(),
            script: Arc::default(),
            shows: false,
        }
    }

    fn answer(&self, outcomes: Vec<ActOutcome>) {
        *self.script.lock().expect("script") = outcomes;
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    async fn act(&self, act: &str, job: &JobRecord, now: Timestamp) -> Acted {
        let stored = self.store.get_job(&job.id).await.expect("store");
        self.calls.lock().expect("calls").push(Call {
            act: act.to_owned(),
            stored,
        });
        let outcome = {
            let mut script = self.script.lock().expect("script");
            if script.is_empty() {
                ActOutcome::Done
            } else {
                script.remove(0)
            }
        };
        let mut row = plan::job_row(job, now, AuditAction::SoftKill, &format!("{act} call"));
        row.success = outcome.is_done();
        Acted {
            outcome,
            ..Acted::done(vec![row])
        }
    }
}

#[async_trait::async_trait]
impl<const M: bool> Runtime for Fake<M> {
    type Target<'a> = ();
    const MARKS_PENDING: bool = M;

    async fn step(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Acted {
        self.act(plan.step().as_str(), job, now).await
    }

    fn shows(&self, _: &(), _: &StepPlan) -> bool {
        self.shows
    }

    fn usage(&self, _: &(), _: &JobRecord, plan: &StepPlan) -> Option<crate::reclaimed::Usage> {
        (plan.step() == Step::SoftKill).then(|| crate::reclaimed::Usage {
            basis: crate::reclaimed::Basis::ProcessGroup,
            cpu_cores: Some(0.25),
            memory_bytes: None,
            otherwise_until: None,
            bound: "fake".into(),
        })
    }

    async fn cleanup(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        _: &CleanupPlan,
        now: Timestamp,
    ) -> Acted {
        self.act("cleanup", job, now).await
    }

    async fn mark_failed(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        _: &FailPlan,
        now: Timestamp,
    ) -> Acted {
        self.act("mark_failed", job, now).await
    }

    async fn recover(
        &self,
        _: &Self::Target<'_>,
        job: &mut JobRecord,
        _: &RecoverPlan,
        now: Timestamp,
    ) -> Acted {
        self.act("recover", job, now).await
    }
}

async fn store_with(job: &JobRecord) -> Store {
    let store = Store::open("sqlite::memory:").await.expect("store");
    store.insert_job(job).await.expect("insert");
    store
}

fn executor<const M: bool>(fake: &Fake<M>) -> Executor<Fake<M>> {
    let metrics = Arc::new(Metrics::default());
    let hooks = HookRunner::new(Hooks::new(Vec::new()), fake.store.clone(), metrics.clone());
    Executor::new(fake.clone(), fake.store.clone(), hooks, metrics, 8)
}

fn policy() -> Policy {
    Policy::from_config(&Config::default())
}

/// The step the engine plans for `job` at `now`.
fn step_at(job: &JobRecord, now: Timestamp, dry_run: bool) -> StepPlan {
    match plan_for(job, &Diagnosis::Healthy, &policy(), now, dry_run).work {
        Work::Step(s) => s,
        other => panic!("expected a step, got {other:?}"),
    }
}

/// A running job (deadline t(100), grace 10 s) already warned.
fn warned() -> JobRecord {
    let mut j = running();
    take(&mut j, Step::Warn, 0, 0);
    j
}

async fn rows(store: &Store, action: AuditAction) -> Vec<AuditEntry> {
    store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.action == action)
        .collect()
}

#[tokio::test]
async fn each_step_is_recorded_then_carried_out_once() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    let mut copy = job.clone();
    assert_eq!(
        ex.step(&(), &mut job, &soft, t(100)).await.expect("step"),
        Carried::Done
    );
    // The same step again (a second replica, a replayed decision): refused by the store.
    assert_eq!(
        ex.step(&(), &mut copy, &soft, t(100)).await.expect("step"),
        Carried::AlreadyRecorded
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // Recorded before it was carried out: the store held the step and its marker.
    let seen = calls[0].stored.as_ref().expect("stored");
    assert!(seen.has_step(Step::SoftKill));
    assert_eq!(seen.spec[ACTING]["step"], "soft_kill");
    assert_eq!(seen.stage, Stage::Terminating);
    let stored = store.get_job(&job.id).await.expect("get").expect("job");
    assert!(stored.spec.get(ACTING).is_none(), "{}", stored.spec);
    assert_eq!(job, stored);
    let step_rows: Vec<AuditEntry> = rows(&store, AuditAction::SoftKill)
        .await
        .into_iter()
        .filter(|r| r.details.is_some())
        .collect();
    assert_eq!(step_rows.len(), 1, "one row for the step: {step_rows:#?}");
    // What the run used was measured before it was recorded and written with its row.
    let usage =
        crate::reclaimed::Usage::from_details(step_rows[0].details.as_ref()).expect("usage");
    assert_eq!(usage.cpu_cores, Some(0.25));
    assert_eq!(
        step_rows[0].details.as_ref().expect("details")["run_id"],
        job.run_id
    );
}

#[tokio::test]
async fn only_the_soft_kill_row_carries_a_measurement() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<false>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    ex.step(&(), &mut job, &soft, t(100)).await.expect("soft");
    let hard = step_at(&job, t(111), false);
    ex.step(&(), &mut job, &hard, t(111)).await.expect("hard");
    let measured = |rows: Vec<AuditEntry>| {
        rows.iter()
            .filter(|r| crate::reclaimed::Usage::from_details(r.details.as_ref()).is_some())
            .count()
    };
    assert_eq!(measured(rows(&store, AuditAction::SoftKill).await), 1);
    assert_eq!(measured(rows(&store, AuditAction::HardKill).await), 0);
    assert_eq!(measured(rows(&store, AuditAction::Warn).await), 0);
}

#[tokio::test]
async fn a_runtime_without_markers_records_no_marker() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<false>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    ex.step(&(), &mut job, &soft, t(100)).await.expect("step");
    let seen = fake.calls()[0].stored.clone().expect("stored");
    assert!(seen.has_step(Step::SoftKill), "recorded before the signal");
    assert!(seen.spec.get(ACTING).is_none());
}

#[tokio::test]
async fn a_step_carried_out_late_is_re_timed_unless_it_had_taken_effect() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<false>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    ex.record_steps(&(), &mut [(&mut job, &soft)])
        .await
        .expect("record");
    // The write took 150 ms: within LATE, the decision time stands.
    let now = add(t(100), Duration::from_millis(150));
    ex.act_step(&(), &mut job, &soft, now).await.expect("act");
    assert_eq!(job.steps[1].at, t(100));
    // The hard kill's write took 2 s: its grace counts from when it went out.
    let hard = step_at(&job, t(110), false);
    assert_eq!(hard.step(), Step::HardKill);
    ex.record_steps(&(), &mut [(&mut job, &hard)])
        .await
        .expect("record");
    ex.act_step(&(), &mut job, &hard, t(112))
        .await
        .expect("act");
    let stored = store.get_job(&job.id).await.expect("get").expect("job");
    let at = stored
        .steps
        .iter()
        .find(|s| s.step == Step::HardKill)
        .map(|s| (s.due_at, s.at));
    assert_eq!(at, Some((t(110), t(112))), "stored, not only in memory");
    // A soft kill the runtime already shows (sent before a crash) keeps its time.
    let mut other = warned();
    other.id = crate::model::JobId::parse("job-2").expect("id");
    store.insert_job(&other).await.expect("insert");
    let mut shows = Fake::<true>::new(&store);
    shows.shows = true;
    let ex = executor(&shows);
    let soft = step_at(&other, t(100), false);
    ex.record_steps(&(), &mut [(&mut other, &soft)])
        .await
        .expect("record");
    ex.act_step(&(), &mut other, &soft, t(130))
        .await
        .expect("act");
    assert_eq!(other.steps[1].at, t(100));
}

#[tokio::test]
async fn a_failed_call_keeps_the_marker_and_a_restart_carries_the_step_out_once() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    fake.answer(vec![ActOutcome::Retry {
        after: Duration::from_secs(3),
        error: "429".into(),
    }]);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    assert_eq!(
        ex.step(&(), &mut job, &soft, t(100)).await.expect("step"),
        Carried::Retry(t(103))
    );
    drop(ex);
    // A new process (or leader) reads the record: the step is there, still to be done.
    let mut stored = store.get_job(&job.id).await.expect("get").expect("job");
    assert_eq!(stored.spec[ACTING]["step"], "soft_kill");
    // Nothing new is planned for it meanwhile: the soft kill is taken.
    assert_ne!(
        plan_for(&stored, &Diagnosis::Healthy, &policy(), t(101), false).work,
        Work::Step(soft.clone())
    );
    let restarted = Fake::<true>::new(&store);
    let ex = executor(&restarted);
    assert_eq!(
        ex.resume(&(), &mut stored, t(103)).await.expect("resume"),
        Some(Carried::Done)
    );
    assert_eq!(
        ex.resume(&(), &mut stored, t(104)).await.expect("resume"),
        None,
        "done: nothing pending"
    );
    assert_eq!(restarted.calls().len(), 1);
    let soft_rows = rows(&store, AuditAction::SoftKill).await;
    assert_eq!(
        soft_rows.iter().filter(|r| r.details.is_some()).count(),
        1,
        "one step row: {soft_rows:#?}"
    );
    assert_eq!(
        soft_rows.iter().filter(|r| !r.success).count(),
        1,
        "the 429 is audited"
    );
    // It was carried out 3 s after it was recorded: the hard kill counts from then.
    assert_eq!(stored.steps[1].at, t(103));
}

#[tokio::test]
async fn a_crash_between_record_and_act_leaves_the_step_to_the_next_process() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    ex.record_steps(&(), &mut [(&mut job, &soft)])
        .await
        .expect("record");
    drop(ex); // the process dies before the act
    assert!(fake.calls().is_empty());
    let mut stored = store.get_job(&job.id).await.expect("get").expect("job");
    let next = Fake::<true>::new(&store);
    executor(&next)
        .resume(&(), &mut stored, t(100))
        .await
        .expect("resume");
    assert_eq!(next.calls().len(), 1);
    assert_eq!(next.calls()[0].act, "soft_kill");
}

#[tokio::test]
async fn nothing_is_carried_out_for_a_job_that_ended() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    ex.record_steps(&(), &mut [(&mut job, &soft)])
        .await
        .expect("record");
    // It exited inside the grace before the call went out.
    job.stage = Stage::Failed;
    job.outcome = Some(Outcome::Terminated);
    job.finished_at = Some(t(101));
    assert_eq!(
        ex.resume(&(), &mut job, t(101)).await.expect("resume"),
        None
    );
    assert!(fake.calls().is_empty());
    // Nor does the engine plan a hard kill for it.
    assert_eq!(
        plan_for(&job, &Diagnosis::Healthy, &policy(), t(200), false).work,
        Work::Nothing
    );
}

#[tokio::test]
async fn dry_run_records_and_audits_but_moves_no_stage() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<false>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), true);
    ex.step(&(), &mut job, &soft, t(100)).await.expect("step");
    assert!(job.has_step(Step::SoftKill));
    assert_eq!(
        job.stage,
        Stage::Running,
        "a dry-run never brings a state about"
    );
    let r = rows(&store, AuditAction::SoftKill).await;
    assert!(r.iter().any(|r| r.dry_run && r.details.is_some()), "{r:#?}");
    // A cancel in dry-run is decided the same way.
    let mut j2 = running();
    j2.id = crate::model::JobId::parse("job-2").expect("id");
    let c = cancel_plan(&j2, t(5), t(5), true).expect("cancel");
    assert!(c.dry_run && c.row.dry_run && c.stage_after.is_none());
}

#[tokio::test]
async fn a_recovery_attempt_is_counted_once_across_a_failed_call() {
    let mut job = warned();
    job.heartbeat_timeout = Some(Duration::from_secs(30));
    job.last_heartbeat = Some(t(0));
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    fake.answer(vec![ActOutcome::Retry {
        after: Duration::from_secs(5),
        error: "503".into(),
    }]);
    let ex = executor(&fake);
    let Work::Recover(r) = plan_for(&job, &Diagnosis::Healthy, &policy(), t(40), false).work else {
        panic!("a recovery");
    };
    assert_eq!(r.attempt, 1);
    assert_eq!(
        ex.recover(&(), &mut job, &r, t(40)).await.expect("recover"),
        Carried::Retry(t(45))
    );
    // Counted and audited before the call.
    let seen = fake.calls()[0].stored.clone().expect("stored");
    assert_eq!(seen.recovery_attempts, 1);
    assert_eq!(seen.spec[RECOVERING]["done"], false);
    assert_eq!(rows(&store, AuditAction::Recover).await.len(), 1);
    // The next pass finishes the attempt under way; it is not a second one.
    let mut stored = store.get_job(&job.id).await.expect("get").expect("job");
    assert_eq!(
        ex.recover(&(), &mut stored, &r, t(45))
            .await
            .expect("recover"),
        Carried::Done
    );
    assert_eq!(stored.recovery_attempts, 1);
    assert_eq!(stored.attempt, 1, "one more run, once");
    assert_eq!(stored.spec[RECOVERING]["done"], true);
    assert_eq!(rows(&store, AuditAction::Recover).await.len(), 1);
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test]
async fn mark_failed_is_recorded_first_and_done_once_per_run() {
    let mut job = running();
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let fail = fail_plan(&job, "image cannot be pulled".into(), t(10), false);
    ex.mark_failed(&(), &mut job, &fail, t(10))
        .await
        .expect("mark_failed");
    let seen = fake.calls()[0].stored.clone().expect("stored");
    assert_eq!(seen.stage, Stage::Terminating, "recorded before the call");
    assert_eq!(seen.spec[MARKED_FAILED]["done"], false);
    assert_eq!(job.spec[MARKED_FAILED]["done"], true);
    ex.mark_failed(&(), &mut job, &fail, t(11))
        .await
        .expect("mark_failed");
    assert_eq!(fake.calls().len(), 1, "once per run");
    // The engine does not plan it again either.
    let mut dead = job.clone();
    dead.stage = Stage::PreStart;
    dead.started_at = None;
    assert_eq!(
        plan_for(&dead, &Diagnosis::Healthy, &policy(), t(10_000), false).work,
        Work::Nothing
    );
}

#[tokio::test]
async fn a_cleanup_acts_before_the_stage_moves_and_queues_the_tasks() {
    let mut job = running();
    job.stage = Stage::Completed;
    job.outcome = Some(Outcome::Succeeded);
    job.finished_at = Some(t(100));
    let store = store_with(&job).await;
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let Work::Cleanup(c) = plan_for(&job, &Diagnosis::Healthy, &policy(), t(3700), false).work
    else {
        panic!("cleanup");
    };
    ex.cleanup(&(), &mut job, &c, t(3700))
        .await
        .expect("cleanup");
    assert_eq!(
        fake.calls()[0].stored.as_ref().map(|j| j.stage),
        Some(Stage::Completed),
        "the act comes before the stage write"
    );
    assert_eq!(job.stage, Stage::Cleanup);
    let tasks = store
        .list_tasks(&crate::store::TaskFilter::default())
        .await
        .expect("tasks");
    assert_eq!(tasks.len(), c.tasks.len());
    assert!(tasks.iter().all(|t| t.job_id.as_deref() == Some("job-1")));
    // A failed delete (a 403) queues nothing and moves nothing; retried with a backoff.
    let mut again = running();
    again.id = crate::model::JobId::parse("job-2").expect("id");
    again.stage = Stage::Failed;
    again.outcome = Some(Outcome::Failed);
    again.finished_at = Some(t(100));
    store.insert_job(&again).await.expect("insert");
    fake.answer(vec![ActOutcome::Failed {
        error: "403".into(),
    }]);
    let Work::Cleanup(c2) =
        plan_for(&again, &Diagnosis::Healthy, &policy(), t(100_000), false).work
    else {
        panic!("cleanup");
    };
    assert_eq!(
        ex.cleanup(&(), &mut again, &c2, t(100_000))
            .await
            .expect("cleanup"),
        Carried::Retry(add(t(100_000), Duration::from_secs(60)))
    );
    assert_eq!(again.stage, Stage::Failed);
    let tasks = store
        .list_tasks(&crate::store::TaskFilter::default())
        .await
        .expect("tasks");
    assert!(tasks.iter().all(|t| t.job_id.as_deref() == Some("job-1")));
}

#[tokio::test]
async fn a_local_act_that_fails_is_audited_and_the_ladder_goes_on() {
    let mut job = warned();
    let store = store_with(&job).await;
    let fake = Fake::<false>::new(&store);
    fake.answer(vec![ActOutcome::Failed {
        error: "EPERM".into(),
    }]);
    let ex = executor(&fake);
    let soft = step_at(&job, t(100), false);
    assert_eq!(
        ex.step(&(), &mut job, &soft, t(100)).await.expect("step"),
        Carried::Done
    );
    assert!(
        rows(&store, AuditAction::SoftKill)
            .await
            .iter()
            .any(|r| !r.success)
    );
    assert_eq!(step_at(&job, t(110), false).step(), Step::HardKill);
}

/// Issue 18: the steps of concurrent callers are recorded together (the group commit), and
/// still each one before its act, each once: a second caller with the same step, in the same
/// group, is refused.
#[tokio::test]
async fn concurrent_steps_are_recorded_together_each_before_its_act_and_once() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let mut jobs = Vec::new();
    for i in 0..12 {
        let mut j = warned();
        j.id = crate::model::JobId::parse(&format!("j-group-{i}")).expect("id");
        store.insert_job(&j).await.expect("insert");
        jobs.push(j);
    }
    let fake = Fake::<true>::new(&store);
    let ex = executor(&fake);
    let soft = step_at(&jobs[0], t(100), false);
    let mut copy = jobs[0].clone();
    let mut work: Vec<&mut JobRecord> = jobs.iter_mut().collect();
    work.push(&mut copy);
    let ex = &ex;
    let results = futures::future::join_all(work.into_iter().map(|j| {
        let plan = soft.clone();
        async move { ex.step(&(), j, &plan, t(100)).await.expect("step") }
    }))
    .await;
    let done = results.iter().filter(|r| **r == Carried::Done).count();
    let refused = results
        .iter()
        .filter(|r| **r == Carried::AlreadyRecorded)
        .count();
    assert_eq!((done, refused), (12, 1), "{results:?}");
    let calls = fake.calls();
    assert_eq!(calls.len(), 12, "each acted once: {calls:?}");
    for c in &calls {
        let seen = c.stored.as_ref().expect("stored");
        assert!(seen.has_step(Step::SoftKill), "recorded before its act");
        assert_eq!(seen.spec[ACTING]["step"], "soft_kill");
    }
    for j in &jobs {
        let stored = store.get_job(&j.id).await.expect("get").expect("job");
        assert_eq!(
            stored
                .steps
                .iter()
                .filter(|s| s.step == Step::SoftKill)
                .count(),
            1
        );
        assert!(stored.spec.get(ACTING).is_none(), "{}", stored.spec);
    }
}
