//! End to end: the escalation ladder on real processes with real signals, through the real
//! `jobwarden` binary (the four `demo` cases, cancel, heartbeats and dead-job recovery,
//! hooks, and `jobwarden demo` itself).

mod common;

use std::time::{Duration, Instant};

use common::*;
use jobwarden::model::{AuditAction, Outcome, Stage, Step};

/// The four demo cases on one daemon: finishes, saves work on SIGTERM, ignores SIGTERM, and
/// a timeout capped by the organisation maximum. Also the job environment contract (cwd,
/// log file, process group, FLOWFORGE_* variables).
fn demo_cases(backend: Backend) {
    let cfg = config(
        r#"
[policy.organization_max]
acme = "2s"
"#,
    );
    let Some(d) = Daemon::start(backend, &cfg) else {
        return;
    };
    let finishes = d.submit_sh(
        &["--timeout", "10s", "--name", "finishes"],
        "pwd > cwd.txt; env | grep '^FLOWFORGE_' | sort > env.txt; \
         cut -d' ' -f5 /proc/$$/stat > pgid.txt; echo working; sleep 0.3; echo done",
    );
    let saves = d.submit_sh(
        &["--timeout", "2s", "--grace", "2s", "--name", "saves-work"],
        SAVES_WORK,
    );
    let ignores = d.submit_sh(
        &["--timeout", "2s", "--grace", "1s", "--name", "ignores-term"],
        IGNORES_TERM,
    );
    let capped = d.submit_sh(
        &["--timeout", "1h", "--org", "acme", "--name", "capped"],
        SAVES_WORK,
    );

    // Failures jobwarden did not cause: a non-zero exit, a signal it did not send.
    let exits_3 = d.submit_sh(&["--name", "exits-3"], "exit 3");
    let self_killed = d.submit_sh(&["--name", "self-killed"], "kill -TERM $$");

    // 1. Finishes on its own: succeeded, no kill steps, exit 0.
    let j = d.wait_finished(&finishes);
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Succeeded)),
        "{j:#?}"
    );
    assert_eq!(j.exit_code, Some(0));
    assert!(
        !has_step(&j, Step::SoftKill) && !has_step(&j, Step::HardKill),
        "a job that finished was signalled: {:#?}",
        j.steps
    );
    let ws = d.ws(&finishes);
    assert_eq!(
        std::fs::read_to_string(ws.join("cwd.txt"))
            .expect("cwd.txt")
            .trim(),
        ws.canonicalize().expect("ws").display().to_string(),
        "job cwd is its workspace"
    );
    let pgid: i32 = std::fs::read_to_string(ws.join("pgid.txt"))
        .expect("pgid")
        .trim()
        .parse()
        .expect("pgid");
    assert_eq!(Some(pgid), j.pid, "the job leads its own process group");
    let env = std::fs::read_to_string(ws.join("env.txt")).expect("env.txt");
    for want in [
        format!("FLOWFORGE_JOB_ID={finishes}"),
        "FLOWFORGE_TIMEOUT=10".to_owned(),
        "FLOWFORGE_GRACE_PERIOD=2".to_owned(),
        format!(
            "FLOWFORGE_DEADLINE={}",
            jobwarden::model::fmt_ts(deadline(&j))
        ),
        format!("FLOWFORGE_ARTIFACTS_DIR={}", ws.join("artifacts").display()),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "missing {want:?} in the job's environment:\n{env}"
        );
    }
    let log = std::fs::read_to_string(d.log(&finishes)).expect("log file");
    assert!(
        log.contains("working") && log.contains("done"),
        "log: {log:?}"
    );

    // 2. Traps SIGTERM and saves work: terminated at the deadline, no hard_kill; it exited 0
    // inside its grace, so its stage is `completed` (its outcome says jobwarden ended it).
    let j = d.wait_finished(&saves);
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Terminated)),
        "{j:#?}"
    );
    assert_eq!((j.exit_code, j.signal), (Some(0), None), "{j:#?}");
    let dl = deadline(&j);
    assert_eq!(dl, plus(j.started_at.expect("started"), 2));
    assert_step_on_time(&j, Step::Warn, plus(j.started_at.expect("started"), 1));
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert!(
        !has_step(&j, Step::HardKill),
        "hard_kill after a clean exit: {:#?}",
        j.steps
    );
    assert_term_seen_near(&d.ws(&saves).join("term_at"), dl);
    assert_eq!(
        std::fs::read_to_string(d.ws(&saves).join("saved.txt"))
            .expect("saved.txt")
            .trim(),
        "progress"
    );
    // The log gives the enforcement delay in whole milliseconds.
    let logs = d.logs();
    let delays: Vec<&str> = logs
        .split("delay_ms=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!delays.is_empty(), "no delay_ms in the log:\n{logs}");
    for v in &delays {
        assert!(
            v.parse::<i64>().is_ok(),
            "delay_ms={v} is not whole milliseconds"
        );
    }
    // Give a hard_kill that should not happen the chance to show up.
    std::thread::sleep(Duration::from_millis(300));
    let audit = d.audit(&saves);
    assert_eq!(rows(&audit, AuditAction::SoftKill).len(), 1, "{audit:#?}");
    assert!(rows(&audit, AuditAction::HardKill).is_empty(), "{audit:#?}");

    // 3. Ignores SIGTERM: SIGKILL after the grace period, killed by signal 9.
    let j = d.wait_finished(&ignores);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    let dl = deadline(&j);
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_hard_kill_on_time(&j);
    assert_eq!(j.signal, Some(9), "{j:#?}");
    assert!(!has_step(&j, Step::ForceDelete), "{:#?}", j.steps);
    assert_term_seen_near(&d.ws(&ignores).join("term_at"), dl);
    let audit = d.audit(&ignores);
    assert_eq!(rows(&audit, AuditAction::SoftKill).len(), 1, "{audit:#?}");
    assert_eq!(rows(&audit, AuditAction::HardKill).len(), 1, "{audit:#?}");

    // 4. Asked for 1h, org max 2s: capped, SIGTERM 2s after the start.
    let j = d.wait_finished(&capped);
    assert_eq!(j.effective_timeout_seconds, 2, "{j:#?}");
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Terminated)),
        "{j:#?}"
    );
    let dl = deadline(&j);
    assert_eq!(dl, plus(j.started_at.expect("started"), 2));
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_term_seen_near(&d.ws(&capped).join("term_at"), dl);

    let j = d.wait_finished(&exits_3);
    assert_eq!(
        (j.outcome, j.exit_code, j.signal),
        (Some(Outcome::Failed), Some(3), None),
        "{j:#?}"
    );
    let j = d.wait_finished(&self_killed);
    assert_eq!(
        (j.outcome, j.signal),
        (Some(Outcome::Failed), Some(15)),
        "{j:#?}"
    );
    assert!(j.steps.is_empty(), "{:#?}", j.steps);

    // The documented JSON fields are all there.
    let raw = d.show_json(&capped);
    for key in [
        "id",
        "name",
        "org",
        "type",
        "stage",
        "outcome",
        "pid",
        "started_at",
        "finished_at",
        "effective_timeout_seconds",
        "grace_period_seconds",
        "deadline",
        "steps",
    ] {
        assert!(
            raw.get(key).is_some(),
            "job show --json lacks {key:?}: {raw}"
        );
    }
    assert_eq!(raw["org"], "acme");
    assert_eq!(raw["outcome"], "terminated");

    // `jobs --json` lists all four.
    let listed: Vec<String> = d.jobs().into_iter().map(|j| j.id).collect();
    for id in [&finishes, &saves, &ignores, &capped] {
        assert!(listed.contains(id), "jobs --json lacks {id}: {listed:?}");
    }
    // The table reads naturally: stage, outcome, and the next step is the cleanup after the
    // TTL ([retention] 1h), never the outcome again.
    let table = d.ok(&["jobs"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ID", "NAME", "ORG", "TYPE", "STAGE", "OUTCOME", "ELAPSED", "TIMEOUT", "NEXT", "STEP"
        ],
        "{table}"
    );
    for (id, stage, outcome) in [
        (&finishes, "completed", "succeeded"),
        (&saves, "completed", "terminated"),
        (&ignores, "failed", "terminated"),
    ] {
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .split_whitespace()
            .collect();
        assert_eq!((row[4], row[5]), (stage, outcome), "{table}");
        let next = row[8..].join(" ");
        assert!(
            next.starts_with("cleanup in 59m") || next == "cleanup in 1h",
            "NEXT STEP of a finished job: {next:?}\n{table}"
        );
    }
    let shown = d.ok(&["job", "show", &saves]);
    assert!(
        shown.contains("stage:     completed") && shown.contains("outcome:   terminated"),
        "{shown}"
    );
    assert!(shown.contains("cleanup:   at "), "{shown}");
}

/// `cancel`: SIGTERM now, then the ladder; unknown and finished jobs are errors.
fn cancel(backend: Backend) {
    let Some(d) = Daemon::start(backend, &config("")) else {
        return;
    };
    let saves = d.submit_sh(&["--timeout", "1h"], SAVES_WORK);
    let stubborn = d.submit_sh(&["--timeout", "1h", "--grace", "1s"], IGNORES_TERM);
    d.wait_job(&saves, "running", |j| j.stage == Stage::Running);
    d.wait_job(&stubborn, "running", |j| j.stage == Stage::Running);
    std::thread::sleep(Duration::from_millis(300)); // let the shells install their traps

    // `plan` shows each job's next step with its due time (warn, 1 s before the deadline).
    let plan: Vec<jobwarden::api_types::PlanEntry> =
        serde_json::from_str(&d.ok(&["plan", "--json"])).expect("plan --json");
    let entry = plan
        .iter()
        .find(|p| p.job_id == saves)
        .expect("plan lists the job");
    let dl = deadline(&d.get(&saves));
    assert_eq!(
        (entry.action.as_str(), entry.due_now),
        ("warn", false),
        "{entry:#?}"
    );
    assert_eq!(
        entry.due_at,
        Some(jobwarden::model::sub(dl, Duration::from_secs(1)))
    );

    let before = jobwarden::clock::now();
    let out = d.ok(&["cancel", &saves]);
    let after = jobwarden::clock::now();
    assert!(out.starts_with(&saves), "cancel output: {out:?}");
    let j = d.wait_finished(&saves);
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Terminated)),
        "{j:#?}"
    );
    // SIGTERM now: the soft_kill was taken while the cancel request was being answered.
    let soft = step(&j, Step::SoftKill);
    assert!(
        before <= soft.at && soft.at <= after && soft.due_at == soft.at,
        "cancel's soft_kill at {} (due {}), request from {before} to {after}",
        soft.at,
        soft.due_at
    );
    assert_term_seen_near(&d.ws(&saves).join("term_at"), soft.at);
    assert!(d.ws(&saves).join("saved.txt").exists());
    let audit = d.audit(&saves);
    let c = rows(&audit, AuditAction::Cancel);
    assert_eq!(c.len(), 1, "{audit:#?}");
    assert_eq!(c[0].initiated_by, "user");
    // `audit --action` and `--since` filter.
    let only: Vec<jobwarden::model::AuditEntry> =
        serde_json::from_str(&d.ok(&["audit", "--action", "cancel", "--since", "1h", "--json"]))
            .expect("audit");
    assert!(
        !only.is_empty() && only.iter().all(|r| r.action == AuditAction::Cancel),
        "{only:#?}"
    );

    // Then the ladder: one that ignores SIGTERM is SIGKILLed a grace period later.
    d.ok(&["cancel", &stubborn]);
    let j = d.wait_finished(&stubborn);
    assert_hard_kill_on_time(&j);
    assert_eq!(
        (j.outcome, j.signal),
        (Some(Outcome::Terminated), Some(9)),
        "{j:#?}"
    );

    // `--since` leaves out older rows.
    let newest = d
        .audit(&saves)
        .iter()
        .map(|r| r.timestamp)
        .max()
        .expect("rows");
    let cutoff = jobwarden::model::add(newest, Duration::from_millis(1500));
    wait_until("1.5 s after the last audit row", || {
        jobwarden::clock::now() > cutoff
    });
    let recent: Vec<jobwarden::model::AuditEntry> =
        serde_json::from_str(&d.ok(&["audit", "--job", &saves, "--since", "1s", "--json"]))
            .expect("audit");
    assert!(
        recent.is_empty(),
        "--since 1s returned older rows: {recent:#?}"
    );

    // Cancelling a finished job, or one that does not exist, is an error.
    let before = d.get(&saves);
    let out = d.cli(&["cancel", &saves]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("not running") && out.stderr.contains("409"),
        "{out:?}"
    );
    let unknown = "01jzzzzzzzzzzzzzzzzzzzzzzz";
    let out = d.cli(&["cancel", unknown]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("404") && out.stderr.contains(unknown),
        "{out:?}"
    );
    // The refused cancel changed nothing.
    assert_eq!(d.get(&saves), before);
    assert_eq!(rows(&d.audit(&saves), AuditAction::Cancel).len(), 1);
}

/// Heartbeats never move the deadline; a job without heartbeats is restarted up to
/// `[recovery] max_attempts`, then failed.
fn heartbeats_and_recovery(backend: Backend) {
    let cfg = config(
        r#"
[recovery]
max_attempts = 2
backoff_initial = "1s"
backoff_multiplier = 1.0
backoff_max = "1s"
"#,
    );
    let Some(d) = Daemon::start(backend, &cfg) else {
        return;
    };
    let beating = d.submit_sh(
        &["--timeout", "2s", "--heartbeat-timeout", "1s"],
        SAVES_WORK,
    );
    let silent = d.submit_sh(
        &["--timeout", "1h", "--heartbeat-timeout", "1s"],
        "echo $$ >> pids; exec sleep 60",
    );
    let first = d.get(&beating);
    let dl = deadline(&first);
    // Heartbeat every 200 ms until the job ends (well past its deadline if it were extended).
    let started = Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let (status, body) = d.http("POST", &format!("/v1/jobs/{beating}/heartbeat"), &[], None);
        if d.get(&beating).outcome.is_some() {
            break;
        }
        assert_eq!(status, 204, "heartbeat: {body}");
        beats += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(beats >= 5, "only {beats} heartbeats sent");
    let j = d.wait_finished(&beating);
    assert_eq!(deadline(&j), dl, "a heartbeat moved the deadline");
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Terminated)),
        "{j:#?}"
    );
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_term_seen_near(&d.ws(&beating).join("term_at"), dl);
    let hb = j.last_heartbeat.expect("heartbeats were recorded");
    assert!(hb > j.started_at.expect("started"), "{j:#?}");
    assert!(
        rows(&d.audit(&beating), AuditAction::Recover).is_empty(),
        "a beating job was recovered"
    );

    // The silent job: recovered twice (new run each time), then failed.
    let j = d.wait_finished(&silent);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Failed)), "{j:#?}");
    assert_eq!((j.attempt, j.recovery_attempts), (2, 2), "{j:#?}");
    let audit = d.audit(&silent);
    assert_eq!(rows(&audit, AuditAction::Recover).len(), 2, "{audit:#?}");
    assert_eq!(rows(&audit, AuditAction::MarkFailed).len(), 1, "{audit:#?}");
    let pids: Vec<i32> = std::fs::read_to_string(d.ws(&silent).join("pids"))
        .expect("pids")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 3, "three runs expected: {pids:?}");
    wait_until("every run of the dead job to be gone", || {
        pids.iter().all(|p| !alive(*p))
    });
    // Runs were ~1 s (heartbeat timeout) + 1 s (backoff) apart.
    let recovered_at: Vec<_> = rows(&audit, AuditAction::Recover)
        .iter()
        .map(|r| r.timestamp)
        .collect();
    let gap = ms_between(recovered_at[0], recovered_at[1]);
    assert!(
        (1800..3000).contains(&gap),
        "recoveries {gap} ms apart: {recovered_at:?}"
    );
}

/// `[[hooks]]`: a soft_kill command hook sees the job id; a webhook gets the event and the
/// job as JSON; failing hooks (command or unreachable webhook) are audited and do not hold
/// up the ladder; a failing pre_start hook vetoes the job.
#[test]
fn hooks() {
    let sink = WebhookSink::start();
    let cfg = config(&format!(
        r#"
[[hooks]]
on = "warn"
webhook = "{}"

[[hooks]]
on = "hard_kill"
webhook = "http://127.0.0.1:9/unreachable"
retries = 0
{}"#,
        sink.url,
        r#"
[[hooks]]
on = "soft_kill"
command = ["sh", "-c", "mkdir -p hooks && echo $JOBWARDEN_JOB_ID > hooks/soft_kill-$JOBWARDEN_JOB_ID && printf %s \"$JOBWARDEN_REASON\" > hooks/soft_kill-reason-$JOBWARDEN_JOB_ID"]

[[hooks]]
on = "soft_kill"
command = ["sh", "-c", "echo hook-broke >&2; exit 3"]
retries = 0

[[hooks]]
on = "pre_start"
command = ["sh", "-c", "case \"$JOBWARDEN_JOB_NAME\" in veto*) echo 'policy forbids this job' >&2; exit 1;; esac"]
retries = 0
"#
    ));
    let Some(d) = Daemon::start(Backend::Sqlite, &cfg) else {
        return;
    };
    let job = d.submit_sh(
        &["--timeout", "1s", "--grace", "1s", "--name", "ladder"],
        IGNORES_TERM,
    );
    let vetoed = d.submit_sh(&["--name", "veto-me"], "touch ran");

    let j = d.wait_finished(&vetoed);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Failed)), "{j:#?}");
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("sh exited with status 1: policy forbids this job"),
        "veto reason: {reason:?}"
    );
    assert_eq!(j.pid, None, "a vetoed job was started: {j:#?}");
    assert!(!d.ws(&vetoed).join("ran").exists());

    let j = d.wait_finished(&job);
    let dl = deadline(&j);
    assert_step_on_time(&j, Step::SoftKill, dl);
    assert_hard_kill_on_time(&j);
    let marker = d.root.path().join("hooks").join(format!("soft_kill-{job}"));
    wait_until("the soft_kill hook's file", || marker.exists());
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker").trim(),
        job
    );
    // The command hook's JOBWARDEN_REASON is the reason of the step's audit row.
    let reason_file = d
        .root
        .path()
        .join("hooks")
        .join(format!("soft_kill-reason-{job}"));
    wait_until("the soft_kill hook's reason file", || reason_file.exists());
    let hook_reason = std::fs::read_to_string(&reason_file).expect("reason");
    let audited = rows(&d.audit(&job), AuditAction::SoftKill)
        .first()
        .map(|r| r.reason.clone())
        .expect("a soft_kill row");
    assert!(
        !hook_reason.is_empty(),
        "JOBWARDEN_REASON is empty for soft_kill"
    );
    assert_eq!(
        hook_reason, audited,
        "JOBWARDEN_REASON differs from the audit row"
    );
    // Both failing hooks (the command on soft_kill, the unreachable webhook on hard_kill) are
    // audited as failures; the working ones as successes.
    d.wait_audit(&job, "the failing command hook", |r| {
        r.action == AuditAction::Hook && !r.success && r.resource_name.starts_with("command")
    });
    let audit = d.wait_audit(&job, "the unreachable webhook", |r| {
        r.action == AuditAction::Hook && !r.success && r.resource_name.contains("unreachable")
    });
    let hooks = rows(&audit, AuditAction::Hook);
    let failed: Vec<_> = hooks.iter().filter(|r| !r.success).collect();
    assert_eq!(failed.len(), 2, "{hooks:#?}");
    assert!(
        failed.iter().any(|r| r
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("sh exited with status 3: hook-broke")),
        "{failed:#?}"
    );
    assert_eq!(
        hooks.iter().filter(|r| r.success).count(),
        3,
        "pre_start command + warn webhook + soft_kill command: {hooks:#?}"
    );

    // The webhook saw the warning (due at the start: the timeout is shorter than warn_before).
    let body = sink.next();
    assert_eq!(body["event"], "warn", "{body}");
    let warned = rows(&d.audit(&job), AuditAction::Warn)
        .first()
        .map(|r| r.reason.clone())
        .expect("a warn row");
    assert_eq!(
        body["reason"],
        warned.as_str(),
        "the webhook's reason: {body}"
    );
    assert_eq!(body["job"]["id"], job.as_str(), "{body}");
    assert_eq!(body["job"]["name"], "ladder", "{body}");
}

/// A slow pre_start hook for one job must not hold up another job's ladder; a job can be
/// cancelled while its pre_start hooks run (and is then never started).
#[test]
fn slow_pre_start_hook_does_not_delay_other_jobs() {
    let cfg = config(
        r#"
[[hooks]]
on = "pre_start"
command = ["sh", "-c", "case \"$JOBWARDEN_JOB_NAME\" in slow*) sleep 3;; esac"]
"#,
    );
    let Some(d) = Daemon::start(Backend::Sqlite, &cfg) else {
        return;
    };
    let fast = d.submit_sh(
        &["--timeout", "1s", "--grace", "1s", "--name", "fast"],
        SAVES_WORK,
    );
    std::thread::sleep(Duration::from_millis(300));
    let submit_in_background = |name: &'static str| {
        let url = d.url.clone();
        std::thread::spawn(move || {
            run_cli(
                &[
                    "submit",
                    "--name",
                    name,
                    "--timeout",
                    "1h",
                    "--",
                    "sh",
                    "-c",
                    "touch ran; exec sleep 30",
                ],
                &[("JOBWARDEN_SERVER", &url)],
            )
        })
    };
    let slow = submit_in_background("slow-runs");
    let cancelled = submit_in_background("slow-cancelled");

    // The fast job's ladder is on time while the hooks run.
    let j = d.wait_finished(&fast);
    assert_step_on_time(&j, Step::SoftKill, deadline(&j));
    assert_term_seen_near(&d.ws(&fast).join("term_at"), deadline(&j));

    // Cancel the other slow job while its hook still runs.
    let deadline_ = Instant::now() + WAIT;
    let victim = loop {
        let found = d
            .jobs()
            .into_iter()
            .find(|j| j.name == "slow-cancelled" && j.stage == Stage::PreStart);
        if let Some(j) = found {
            break j.id;
        }
        assert!(
            Instant::now() < deadline_,
            "slow-cancelled never showed up as pre_start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    d.ok(&["cancel", &victim]);

    let out = slow.join().expect("submit thread");
    assert_eq!(out.code, 0, "{out:?}");
    let j = d.wait_job(out.stdout.trim(), "running", |j| j.stage == Stage::Running);
    assert!(j.pid.is_some());
    let out = cancelled.join().expect("submit thread");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), victim);
    let j = d.wait_finished(&victim);
    assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
    assert_eq!(
        j.pid, None,
        "a job cancelled before it started was started: {j:#?}"
    );
    assert!(!d.ws(&victim).join("ran").exists());
    assert_eq!(rows(&d.audit(&victim), AuditAction::Cancel).len(), 1);
}

/// `jobwarden demo` runs to completion in under a minute and shows the four outcomes.
#[test]
fn demo_runs_to_completion() {
    let start = Instant::now();
    let out = run_cli(&["demo"], &[]);
    assert_eq!(out.code, 0, "demo failed: {}\n{}", out.stderr, out.stdout);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "demo took {:?}",
        start.elapsed()
    );
    for (name, stage, outcome) in [
        ("finishes", "completed", "succeeded"),
        ("saves-work", "completed", "terminated"),
        ("ignores-term", "failed", "terminated"),
        ("capped", "failed", "terminated"),
    ] {
        let tables = out.stdout.split("\naudit log (").next().unwrap_or_default();
        let last = tables
            .lines()
            .rfind(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("demo output has no row for {name}:\n{}", out.stdout));
        let cells: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(
            (cells.get(4).copied(), cells.get(5).copied()),
            (Some(stage), Some(outcome)),
            "{name}: its last row {last:?}"
        );
    }
    assert!(out.stdout.contains("saves-work wrote"), "{}", out.stdout);
}

both_stores!(demo_cases, cancel, heartbeats_and_recovery);
