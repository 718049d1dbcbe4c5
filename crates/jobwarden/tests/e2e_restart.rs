//! End to end: restart safety. The daemon is `kill -9`ed mid-ladder; its jobs keep running,
//! are re-adopted on restart (pid + start time) and still get every step at its due time;
//! jobs that vanished meanwhile are settled; a stale pid is never signalled.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use jobwarden::model::{AuditAction, Outcome, Stage, Step};

/// Sleeps until `t` (wall clock), if it is in the future.
fn sleep_until(t: jobwarden::model::Timestamp) {
    let d = ms_between(jobwarden::clock::now(), t);
    if d > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(d).expect("positive")));
    }
}

/// Appends each SIGTERM's arrival time (so a re-sent signal is visible) and ignores it.
const LOGS_EVERY_TERM: &str = "trap 'date +%s.%N >> term_at' TERM; while :; do sleep 0.1; done";

fn restart_mid_ladder(backend: Backend) {
    let Some(mut d) = Daemon::start(backend, &config("")) else {
        return;
    };
    // exits while the daemon is down, never signalled → lost
    let exits = d.submit(&["--timeout", "1h"], &["sleep", "2"]);
    // D = 4 s, G = 2 s: every step is due after the crash (warn at D-1 while down)
    let late = d.submit_sh(&["--timeout", "4s", "--grace", "2s"], IGNORES_TERM);
    // D = 1 s, G = 3 s: soft_kill before the crash, hard_kill after the restart
    let mid = d.submit_sh(&["--timeout", "1s", "--grace", "3s"], LOGS_EVERY_TERM);
    // soft-killed before the crash, exits during it → terminated
    let dying = d.submit_sh(
        &["--timeout", "1s", "--grace", "5s"],
        "trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.1; done",
    );
    d.wait_step(&mid, Step::SoftKill);
    d.wait_step(&dying, Step::SoftKill);
    let late0 = d.get(&late);
    let pids: Vec<i32> = [&exits, &late, &mid, &dying]
        .iter()
        .map(|id| d.get(id).pid.expect("pid"))
        .collect();

    d.kill9();
    // The jobs keep running without the daemon.
    assert!(
        alive(pids[1]) && alive(pids[2]),
        "jobs died with the daemon"
    );
    wait_until(
        "`exits` and `dying` to end while the daemon is down",
        || !alive(pids[0]) && !alive(pids[3]),
    );
    assert!(
        alive(pids[1]) && alive(pids[2]),
        "jobs died while the daemon was down"
    );
    let started = late0.started_at.expect("started");
    let restart_at = jobwarden::model::add(started, Duration::from_millis(3200));
    assert!(
        ms_between(jobwarden::clock::now(), restart_at) > 0,
        "too slow: the restart would not fall between `late`'s warning and its deadline"
    );
    sleep_until(restart_at);
    d.restart();

    // `late`: every step once, on time (warn was overdue: taken at the restart).
    let j = d.wait_finished(&late);
    assert_eq!(j.pid, late0.pid, "pid changed across the restart");
    assert_eq!(deadline(&j), deadline(&late0));
    let dl = deadline(&j);
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_hard_kill_on_time(&j);
    step(&j, Step::Warn);
    assert_eq!(j.steps.len(), 3, "{:#?}", j.steps);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    assert_term_seen_near(&d.ws(&late).join("term_at"), dl);
    assert!(!alive(pids[1]));

    // `mid`: soft_kill before the crash, re-sent once at the restart (audited), hard_kill
    // at D + G after the restart; each step once in the job's record.
    let j = d.wait_finished(&mid);
    let dl = deadline(&j);
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_hard_kill_on_time(&j);
    step(&j, Step::Warn); // due at the start: the timeout is shorter than warn_before
    assert_eq!(j.steps.len(), 3, "{:#?}", j.steps);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    assert_term_seen_near(&d.ws(&mid).join("term_at"), dl);
    let audit = d.audit(&mid);
    let soft = rows(&audit, AuditAction::SoftKill);
    assert_eq!(
        soft.len(),
        2,
        "one soft_kill and one audited re-send: {audit:#?}"
    );
    assert!(
        soft.iter().any(|r| r.reason.contains("re-sent")),
        "{audit:#?}"
    );
    assert_eq!(rows(&audit, AuditAction::HardKill).len(), 1, "{audit:#?}");
    assert!(!alive(pids[2]));

    // `exits`: vanished while the daemon was down, never signalled → lost.
    let j = d.wait_finished(&exits);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Lost)), "{j:#?}");
    assert!(j.steps.is_empty(), "{:#?}", j.steps);
    let audit = d.audit(&exits);
    assert!(
        rows(&audit, AuditAction::MarkFailed)
            .iter()
            .any(|r| r.reason.contains("vanished")),
        "{audit:#?}"
    );

    // `dying`: soft-killed, then vanished while the daemon was down → terminated.
    let j = d.wait_finished(&dying);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    assert!(!has_step(&j, Step::HardKill), "{:#?}", j.steps);
}

/// After a restart, a stored pid that now belongs to another process (same pid, different
/// start time) is never signalled; the job is settled instead.
fn stale_pid_is_never_signalled(backend: Backend) {
    let Some(mut d) = Daemon::start(backend, &config("")) else {
        return;
    };
    // Soft-killed before the crash (a re-adopted job gets that signal re-sent), hard_kill due
    // after the restart.
    let killed = d.submit_sh(&["--timeout", "1s", "--grace", "2s"], IGNORES_TERM);
    // No steps yet: lost.
    let quiet = d.submit(&["--timeout", "1h"], &["sleep", "60"]);
    d.wait_step(&killed, Step::SoftKill);
    let k0 = d.get(&killed);
    let q0 = d.get(&quiet);
    d.kill9();
    for j in [&k0, &q0] {
        let pid = rustix::process::Pid::from_raw(j.pid.expect("pid")).expect("pid");
        rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).expect("kill job");
    }
    wait_until("the jobs to be gone", || {
        !alive(k0.pid.expect("pid")) && !alive(q0.pid.expect("pid"))
    });
    // An unrelated process leading its own process group, with the jobs' pid in the store.
    let mut bystander = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let other = i32::try_from(bystander.id()).expect("pid");
    let sql = format!(
        "UPDATE jobs SET pid = {other} WHERE id IN ('{}', '{}')",
        k0.id, q0.id
    );
    match &d.pg {
        Some(pg) => {
            pg.sql(&sql);
        }
        None => {
            let db = d.data.join("jobwarden.db");
            let out = Command::new("sqlite3")
                .arg(&db)
                .arg(&sql)
                .output()
                .expect("sqlite3");
            assert!(
                out.status.success(),
                "sqlite3: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    d.restart();
    assert_eq!(
        d.get(&k0.id).pid,
        Some(other),
        "the store edit did not take"
    );

    let k = d.wait_finished(&k0.id);
    assert_eq!(so(&k), (Stage::Failed, Some(Outcome::Terminated)), "{k:#?}");
    let q = d.wait_finished(&q0.id);
    assert_eq!(so(&q), (Stage::Failed, Some(Outcome::Lost)), "{q:#?}");
    // Past the time `killed`'s hard_kill would have been due.
    sleep_until(plus(deadline(&k0), 3));
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the unrelated process with the stored pid was signalled"
    );
    let k = d.get(&k0.id);
    assert!(!has_step(&k, Step::HardKill), "{:#?}", k.steps);
    let audit = d.audit(&k0.id);
    assert!(
        !rows(&audit, AuditAction::SoftKill)
            .iter()
            .any(|r| r.reason.contains("re-sent")),
        "a signal was re-sent to a process that is not the job: {audit:#?}"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// A crash between "job moved to cleanup" and "tasks queued" (simulated by editing the
/// store while the daemon is down) does not strand the job: the restart queues its cleanup.
fn interrupted_cleanup_resumes_after_restart(backend: Backend) {
    let Some(mut d) = Daemon::start(backend, &config("")) else {
        return;
    };
    let id = d.submit_sh(&["--ttl", "1h"], "echo x > out.txt");
    let keep = d.submit_sh(&["--ttl", "1h"], "echo y > out.txt");
    d.wait_finished(&id);
    d.wait_finished(&keep);
    d.kill9();
    let sql = format!("UPDATE jobs SET stage = 'cleanup' WHERE id = '{id}'");
    match &d.pg {
        Some(pg) => {
            pg.sql(&sql);
        }
        None => {
            let out = Command::new("sqlite3")
                .arg(d.data.join("jobwarden.db"))
                .arg(&sql)
                .output()
                .expect("sqlite3");
            assert!(
                out.status.success(),
                "sqlite3: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    d.restart();
    let j = d.wait_job(&id, "cleaned", |j| j.stage == Stage::Cleaned);
    assert_eq!(j.outcome, Some(Outcome::Succeeded));
    assert!(
        !d.ws(&id).exists(),
        "the workspace of the interrupted cleanup is still there"
    );
    assert!(
        d.ws(&keep).join("out.txt").exists(),
        "another job's workspace was removed"
    );
    assert_eq!(d.get(&keep).stage, Stage::Completed);
}

/// SIGTERM to the daemon: it exits 0 promptly and leaves its jobs running; the next start
/// re-adopts them and keeps their ladder.
#[test]
fn graceful_shutdown_leaves_jobs_running() {
    let Some(mut d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    let id = d.submit_sh(&["--timeout", "3s", "--grace", "1s"], SAVES_WORK);
    let j0 = d.wait_job(&id, "running", |j| j.stage == Stage::Running);
    let pid = j0.pid.expect("pid");
    let started = std::time::Instant::now();
    assert_eq!(d.stop(), Some(0), "graceful shutdown exit code");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(alive(pid), "the job died with the daemon");
    assert!(
        d.logs()
            .contains("1 job is still running and is re-adopted on the next start"),
        "{}",
        d.logs()
    );
    d.restart();
    let j = d.wait_finished(&id);
    assert_eq!(j.pid, Some(pid));
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    assert_step_on_time(&j, Step::SoftKill, deadline(&j));
    assert_term_seen_near(&d.ws(&id).join("term_at"), deadline(&j));
}

/// Jobs past their TTL are counted in `jobwarden_jobs{stage}` (before and after a restart),
/// and shutdown says how many jobs are still running: none, when the only jobs have finished.
#[test]
fn cleaned_jobs_are_counted_and_shutdown_counts_only_running_jobs() {
    let Some(mut d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    let cleaned = d.submit(&["--ttl", "1s"], &["true"]);
    let kept = d.submit(&["--ttl", "1h"], &["true"]);
    d.wait_job(&cleaned, "cleaned", |j| j.stage == Stage::Cleaned);
    d.wait_finished(&kept);
    let gauge = |d: &Daemon, stage: &str| {
        let (status, text) = d.http("GET", "/metrics", &[], None);
        assert_eq!(status, 200, "{text}");
        let prefix = format!("jobwarden_jobs{{stage=\"{stage}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}in {text}"))
    };
    // The gauges refresh within half a second of a change.
    wait_until("the gauges", || {
        (
            gauge(&d, "cleaned"),
            gauge(&d, "completed"),
            gauge(&d, "running"),
        ) == (1, 1, 0)
    });
    assert_eq!(d.stop(), Some(0));
    let logs = d.logs();
    assert!(
        logs.contains("enforcer stopped; no job is running"),
        "{logs}"
    );
    assert!(!logs.contains("still running"), "{logs}");
    d.restart();
    d.wait_loaded();
    wait_until("the gauges after a restart", || {
        (gauge(&d, "cleaned"), gauge(&d, "completed")) == (1, 1)
    });
}

/// The warning says how long is left, to the nearest second ("1s left" for `warn_before =
/// "1s"`, taken a few milliseconds after its due time, not "0s left"), and a warning taken
/// after the deadline (jobwarden was down) says "overdue by", not "0s left".
#[test]
fn warnings_say_the_time_left_or_overdue() {
    let Some(mut d) = Daemon::start(Backend::Sqlite, &config("")) else {
        return;
    };
    let on_time = d.submit_sh(&["--timeout", "3s", "--grace", "1s"], SAVES_WORK);
    let late = d.submit_sh(&["--timeout", "6s", "--grace", "1s"], SAVES_WORK);
    let rows = d.wait_audit(&on_time, "the warning", |r| r.action == AuditAction::Warn);
    let warn = &rows
        .iter()
        .find(|r| r.action == AuditAction::Warn)
        .expect("warn row")
        .reason;
    assert!(warn.starts_with("1s left before the deadline"), "{warn}");
    // The daemon is down through the late job's warning and deadline, back 4 s after it.
    let deadline = d.get(&late).deadline.expect("deadline");
    d.kill9();
    sleep_until(deadline + chrono::TimeDelta::seconds(4));
    d.restart();
    let rows = d.wait_audit(&late, "the late warning", |r| r.action == AuditAction::Warn);
    let warn = &rows
        .iter()
        .find(|r| r.action == AuditAction::Warn)
        .expect("warn row")
        .reason;
    let overdue: u64 = warn
        .strip_prefix("overdue by ")
        .and_then(|r| r.split_once("s:"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("not an overdue warning: {warn}"));
    assert!((4..=6).contains(&overdue), "{warn}");
}

/// A job stored with an organisation that cannot be part of an object key (by an older
/// version, or edited by hand) is not left in silence: its `jobs/<org>/` artifacts get a
/// failed `ttl_cleanup` audit row naming the problem and `jobwarden_errors_total{kind=
/// "artifact_key"}`; its `partial/` and `logs/` prefixes are still queued.
fn a_stored_org_that_cannot_be_a_key_is_audited(backend: Backend) {
    let Some(mut d) = Daemon::start(backend, &config("")) else {
        return;
    };
    let id = d.submit_sh(&["--org", "acme", "--timeout", "1h"], "sleep 2");
    d.wait_job(&id, "running", |j| j.stage == Stage::Running);
    d.kill9();
    d.store_sql(&format!(
        "UPDATE jobs SET org = '../../x' WHERE id = '{id}'"
    ));
    d.restart();
    let audit = d.wait_audit(&id, "the refused artifacts prefix", |r| {
        r.action == AuditAction::TtlCleanup && !r.success && r.resource_type == "object_prefix"
    });
    let row = audit
        .iter()
        .find(|r| r.action == AuditAction::TtlCleanup && r.resource_type == "object_prefix")
        .expect("row");
    assert!(
        row.resource_name.contains("\"../../x\"") && row.reason.contains("not cleaned"),
        "{row:#?}"
    );
    assert!(
        row.error_message
            .as_deref()
            .is_some_and(|e| e.contains("organisation \"../../x\"")),
        "{row:#?}"
    );
    let (status, metrics) = d.http("GET", "/metrics", &[], None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("jobwarden_errors_total{kind=\"artifact_key\"} 1"),
        "{metrics}"
    );
    let queued = d.store_sql(&format!(
        "SELECT resource_name FROM cleanup_tasks WHERE job_id = '{id}' AND kind = 'artifact_prefix' ORDER BY resource_name"
    ));
    let queued: Vec<&str> = queued.lines().collect();
    assert_eq!(
        queued,
        [format!("logs/{id}"), format!("partial/{id}")],
        "partial/ and logs/ are still cleaned"
    );
}

both_stores!(
    restart_mid_ladder,
    stale_pid_is_never_signalled,
    interrupted_cleanup_resumes_after_restart,
    a_stored_org_that_cannot_be_a_key_is_audited
);
