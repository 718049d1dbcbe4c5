use std::time::Duration;

use super::*;
use crate::model::add;

fn t(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000 + secs, 123_456_789).expect("time")
}

fn local_job(n: u64) -> JobRecord {
    let now = t(0);
    let id = JobId::generate(add(now, Duration::from_millis(n)));
    let run = crate::runtime::local::new_run_id(now);
    JobRecord {
        org: Some("acme".into()),
        job_type: Some("etl".into()),
        reason: Some("timeout capped by the organisation maximum".into()),
        started_at: Some(t(1)),
        deadline: Some(t(61)),
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(30),
        ttl: Some(Duration::from_secs(3600)),
        heartbeat_timeout: Some(Duration::from_secs(10)),
        last_heartbeat: Some(t(5)),
        stage: Stage::Terminating,
        steps: vec![
            StepTaken {
                step: Step::Warn,
                due_at: t(51),
                at: t(52),
            },
            StepTaken {
                step: Step::SoftKill,
                due_at: t(61),
                at: t(61),
            },
        ],
        pid: Some(4242),
        pid_start_ticks: Some(987_654),
        spec: serde_json::json!({ "command": ["sleep", "100"], "cancel_requested": "x" }),
        ..JobRecord::new(id, run, RuntimeKind::Local, "sleep", now)
    }
}

#[test]
fn ulid_bits_round_trip_and_refuse_other_names() {
    let id = JobId::generate(t(0));
    let v = ulid_bits(id.as_str()).expect("a generated id is a ULID");
    assert_eq!(ulid_text(v), id.as_str());
    for other in [
        "job-1",
        "01JDS2K3ABCDEFGHJKMNPQRSTV", // uppercase
        "01jds2k3abcdefghjkmnpqrsti", // 'i' is not Crockford
        "81jds2k3abcdefghjkmnpqrstv", // more than 128 bits
        "00000000000000000000000001", // time part zero: reserved for other ids
        "01jds2k3abcdefghjkmnpqrst",  // 25 characters
    ] {
        assert_eq!(ulid_bits(other), None, "{other}");
    }
}

#[test]
fn a_local_job_is_held_compact_and_read_back_exactly() {
    let mut tr = Tracked::new();
    let job = local_job(1);
    tr.insert(job.clone());
    assert_eq!(tr.held_whole(), 0);
    assert_eq!(tr.get(&job.id), Some(job.clone()));
    assert_eq!(tr.stage(&job.id), Some(Stage::Terminating));
    // Finished: outcome, exit status, signal.
    let mut done = job.clone();
    done.stage = Stage::Failed;
    done.outcome = Some(Outcome::Terminated);
    done.finished_at = Some(t(70));
    done.exit_code = Some(-1);
    done.signal = Some(15);
    tr.insert(done.clone());
    assert_eq!(tr.len(), 1);
    assert_eq!(tr.get(&done.id), Some(done));
    // A bare job: nothing optional set.
    let bare = JobRecord::new(
        JobId::generate(t(3)),
        crate::runtime::local::new_run_id(t(3)),
        RuntimeKind::Local,
        "x",
        t(3),
    );
    tr.insert(bare.clone());
    assert_eq!(tr.get(&bare.id), Some(bare));
    assert_eq!(tr.held_whole(), 0);
}

#[test]
fn what_the_compact_form_cannot_hold_is_kept_whole_and_exact() {
    type Change = Box<dyn Fn(&mut JobRecord)>;
    let cases: Vec<Change> = vec![
        Box::new(|j| j.namespace = Some("ns".into())),
        Box::new(|j| j.run_id = "run-1".into()),
        Box::new(|j| j.grace = Duration::from_millis(1500)),
        Box::new(|j| j.ttl = Some(Duration::from_secs(u64::from(u32::MAX) + 7))),
        Box::new(|j| j.deadline = Some(chrono::DateTime::<chrono::Utc>::MAX_UTC)),
        Box::new(|j| j.steps[0].at = chrono::DateTime::<chrono::Utc>::MIN_UTC),
        Box::new(|j| j.pid = Some(i32::MIN)),
        Box::new(|j| j.pid_start_ticks = Some(u64::MAX)),
        Box::new(|j| j.attempt = 300),
        Box::new(|j| j.runtime = RuntimeKind::Kubernetes),
    ];
    let mut tr = Tracked::new();
    for (n, change) in cases.iter().enumerate() {
        let mut job = local_job(n as u64);
        change(&mut job);
        tr.insert(job.clone());
        assert_eq!(tr.get(&job.id), Some(job), "case {n}");
    }
    assert_eq!(tr.held_whole(), cases.len());
    // Ids that are not ULIDs are held too, and come back from the heap by name.
    let mut named = local_job(99);
    named.id = JobId::parse("job-1").expect("id");
    tr.insert(named.clone());
    assert_eq!(tr.get(&named.id), Some(named.clone()));
    tr.arm(&named.id, t(0));
    assert_eq!(
        tr.pop_due(t(0), 10),
        vec![(named.id.clone(), from_micros(micros(t(0))))]
    );
    assert!(tr.remove(&named.id));
    assert!(tr.other_ids.by_id.is_empty() && tr.other_ids.ids.is_empty());
}

#[test]
fn interned_names_leave_with_their_last_job() {
    let mut tr = Tracked::new();
    let (a, b) = (local_job(1), local_job(2));
    tr.insert(a.clone());
    tr.insert(b.clone());
    assert!(tr.remove(&a.id));
    assert_eq!(tr.get(&b.id), Some(b.clone()));
    // Replacing a record releases the names of the one it replaces.
    let mut renamed = b.clone();
    renamed.org = Some("other".into());
    tr.insert(renamed.clone());
    assert_eq!(tr.get(&b.id), Some(renamed));
    assert!(tr.remove(&b.id));
    assert!(tr.strings.by_str.is_empty(), "{:?}", tr.strings.by_str);
    assert!(tr.is_empty() && tr.get(&b.id).is_none());
}

#[test]
fn wake_ups_pop_in_due_order_and_follow_re_arms_and_cancels() {
    let mut tr = Tracked::new();
    let jobs: Vec<JobRecord> = (0..5).map(local_job).collect();
    for j in &jobs {
        tr.insert(j.clone());
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
    tr.arm(&ids[0], t(30));
    tr.arm(&ids[1], t(10));
    tr.arm(&ids[2], t(20));
    tr.arm(&ids[3], t(5));
    tr.arm(&ids[3], t(40)); // later
    tr.arm(&ids[2], t(1)); // earlier
    tr.set(&ids[0], None); // cancelled
    tr.arm(&JobId::generate(t(0)), t(0)); // not held: not armed
    assert_eq!(tr.armed(), 3);
    assert_eq!(tr.next_due(), Some(from_micros(micros(t(1)))));
    let popped: Vec<JobId> = tr
        .pop_due(t(20), 10)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(popped, vec![ids[2].clone(), ids[1].clone()]);
    assert_eq!(tr.pop_due(t(39), 10), vec![]);
    assert_eq!(tr.next_due(), Some(from_micros(micros(t(40)))));
    // A removed job's wake-up goes with it, and its slot's next tenant never gets it.
    assert!(tr.remove(&ids[3]));
    let newcomer = local_job(7);
    tr.insert(newcomer.clone());
    assert_eq!(tr.next_due(), None);
    assert_eq!(tr.pop_due(t(1000), 10), vec![]);
    tr.arm(&newcomer.id, t(50));
    assert_eq!(tr.pop_due(t(1000), 1).len(), 1);
    assert_eq!(tr.armed(), 0);
}

#[test]
fn heartbeats_move_forward_only() {
    let mut tr = Tracked::new();
    let job = local_job(1);
    tr.insert(job.clone());
    assert!(tr.set_heartbeat(&job.id, t(9)));
    assert!(tr.set_heartbeat(&job.id, t(7)));
    assert_eq!(tr.get(&job.id).and_then(|j| j.last_heartbeat), Some(t(9)));
    assert!(!tr.set_heartbeat(&JobId::generate(t(0)), t(9)));
}

#[test]
fn many_re_arms_keep_the_heap_bounded() {
    let mut tr = Tracked::new();
    let job = local_job(1);
    tr.insert(job.clone());
    for i in 0..10_000 {
        tr.arm(&job.id, t(i));
    }
    assert!(tr.heap.len() <= 1025, "{}", tr.heap.len());
    // Re-arming at the time it is armed for pushes nothing.
    let before = tr.heap.len();
    tr.arm(&job.id, t(9_999));
    assert_eq!(tr.heap.len(), before);
    assert_eq!(tr.pop_due(t(20_000), 10).len(), 1);
}

#[test]
fn a_compact_slot_stays_small() {
    // What a million tracked jobs cost (BENCHMARKS.md): grow this only knowingly.
    assert!(
        std::mem::size_of::<Slot>() <= 152,
        "{} bytes",
        std::mem::size_of::<Slot>()
    );
}
