//! Crash safety (the README's "When things fail": no task is lost or repeated harmfully
//! across a crash of jobwarden at any point), end to end with real processes.
//!
//! One run: a daemon with 200 jobs whose escalation ladders (warn, soft_kill, hard_kill) fall
//! due over ~10 s, and 200 finished jobs whose 1,000 cleanup tasks (workspace, log and three
//! artifact prefixes each) sit in the durable queue; the escalating jobs queue 1,000 more as
//! they end. The daemon is SIGKILLed at seeded random moments (during the ladders, the cleanup
//! bursts and its own start-up) and restarted on the same data dir and store each time, until
//! everything is settled. Every job writes one object under each of its artifact prefixes (so
//! the artifact tasks really delete something) and appends the arrival time of every SIGTERM
//! it receives to a file outside its workspace.
//!
//! Then, from the store and the audit log (`jobs`, `audit --json`, `cleanup_tasks`):
//! - every job reached its final stage (`cleaned`) with the right outcome;
//! - every escalating job has each ladder step once in its record and exactly one audit row
//!   for it; any repeat is a re-sent signal after a restart, audited as such; no other step;
//! - no job saw SIGTERM before its soft_kill was recorded, nor more often than the audit log
//!   says it was sent (a repeat without an audit row would be a harmful repeat);
//! - every cleanup task completed (none pending, running or dead-lettered), each of the five
//!   per job; every workspace, log and artifact object is gone and each deletion is audited.
//!
//! Seeds: 3 per store (`JOBWARDEN_KILL9_SEEDS=7,8` runs others); a failure names its seed and
//! the kill schedule, so it can be replayed.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use jobwarden::api_types::JobView;
use jobwarden::model::{AuditAction, AuditEntry, Outcome, Stage, Step};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Jobs that are still running and get the whole ladder.
const ESCALATING: usize = 200;
/// Jobs that finish at once: five cleanup tasks each.
const FINISHED: usize = 200;
/// SIGKILLs per run.
const KILLS: usize = 6;
/// The kills fall in this window after the last submission.
const KILL_WINDOW_MS: u64 = 13_000;
/// Longest the daemon stays down per kill.
const MAX_DOWN_MS: u64 = 1_200;
/// Bound on settling after the last restart.
const SETTLE: Duration = Duration::from_secs(120);

fn config() -> String {
    r#"
[policy]
global_default = "1h"
grace_period = "1s"
warn_before = "1s"

[retention]
successful = "2s"
failed = "0s"
terminated = "0s"

[retention.artifacts]
logs = "2s"
partial = "2s"

[queue]
workers = 4
# A killed daemon's claims are taken over after this (and a slow batch extends it).
lease = "10s"
# Each kill may cost a claimed task one attempt; 6 kills must never dead-letter one.
max_attempts = 25
backoff_initial = "1s"
backoff_max = "2s"

[safety]
max_deletions_per_minute = 1000000
max_batch = 1000
"#
    .to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Finishes at once with status 0.
    Finished,
    /// Ignores SIGTERM: warn, soft_kill, hard_kill.
    Ignorer,
    /// Exits on SIGTERM: warn, soft_kill.
    Exiter,
}

/// Writes one object under each artifact prefix of the job (file:// store).
const WRITE_ARTIFACTS: &str = r#"r=${FLOWFORGE_ARTIFACTS_URL#file://}; i=$FLOWFORGE_JOB_ID; mkdir -p "$r/partial/$i" "$r/logs/$i" "$r/jobs/acme/$i" && for p in partial logs jobs/acme; do echo x > "$r/$p/$i/a.txt"; done"#;

fn script(kind: Kind, terms: &Path) -> String {
    let record = format!("date +%s%N >> {}/$FLOWFORGE_JOB_ID", terms.display());
    // Says that the artifacts were written (outside the workspace, which is cleaned).
    let written = format!(
        "{WRITE_ARTIFACTS} && echo ok > {}/$FLOWFORGE_JOB_ID.artifacts",
        terms.display()
    );
    match kind {
        Kind::Finished => format!("{written}; echo done"),
        // The sleeper ignores SIGTERM too (it goes to the whole process group): were it to die,
        // `wait` would return at once and the loop would spin.
        Kind::Ignorer => format!(
            "{written}; trap '{record}' TERM; (trap '' TERM; exec sleep 600) & while :; do wait; done"
        ),
        Kind::Exiter => format!(
            "{written}; trap '{record}; kill $! 2>/dev/null; exit 0' TERM; sleep 600 & wait"
        ),
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("JOBWARDEN_KILL9_SEEDS") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("JOBWARDEN_KILL9_SEEDS: comma-separated u64")
            })
            .collect(),
        _ => vec![1, 2, 3],
    }
}

/// Prints the seed and schedule if the run panics.
struct SeedGuard {
    backend: Backend,
    seed: u64,
    schedule: Vec<(u64, u64)>,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! fault_kill9 FAILED on {} with seed {} (kills at ms after the last submit, \
                 down ms): {:?}\n    replay: JOBWARDEN_KILL9_SEEDS={} cargo test -p jobwarden \
                 --test fault_kill9 {}\n",
                self.backend.name(),
                self.seed,
                self.schedule,
                self.seed,
                self.backend.name()
            );
        }
    }
}

fn kill9_at_random_points(backend: Backend) {
    for seed in seeds() {
        let started = Instant::now();
        let Some(stats) = run(backend, seed) else {
            return;
        };
        let _ = writeln!(
            std::io::stderr(),
            "fault_kill9 {} seed {seed}: {} in {:.1}s",
            backend.name(),
            stats,
            started.elapsed().as_secs_f64()
        );
    }
}

fn run(backend: Backend, seed: u64) -> Option<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut schedule: Vec<(u64, u64)> = (0..KILLS)
        .map(|_| {
            (
                rng.random_range(0..KILL_WINDOW_MS),
                rng.random_range(0..MAX_DOWN_MS),
            )
        })
        .collect();
    schedule.sort_unstable();
    let guard = SeedGuard {
        backend,
        seed,
        schedule: schedule.clone(),
    };
    let mut d = Daemon::start(backend, &config())?;
    let terms = d.root.path().join("terms");
    std::fs::create_dir_all(&terms).expect("mkdir terms");

    // The finished jobs first, so that their tasks are queued while the ladders run.
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    for _ in 0..FINISHED {
        let j = d.submit_json(&serde_json::json!({
            "command": ["sh", "-c", script(Kind::Finished, &terms)],
            "org": "acme",
        }));
        kinds.insert(j.id, Kind::Finished);
    }
    for i in 0..ESCALATING {
        let kind = if i % 2 == 0 {
            Kind::Ignorer
        } else {
            Kind::Exiter
        };
        // An exiter's grace is long enough that only a starved shell could outlive it; an
        // ignorer's leaves 2 s between its SIGKILL and force_delete, so that only a restart
        // (not a daemon slowed by a loaded machine noticing the exit late) can bring a
        // force_delete (seen once with 1 s, at load 6).
        let grace = if kind == Kind::Ignorer { "2s" } else { "3s" };
        let timeout = format!("{}s", rng.random_range(3..=10));
        let j = d.submit_json(&serde_json::json!({
            "command": ["sh", "-c", script(kind, &terms)],
            "org": "acme",
            "timeout": timeout,
            "grace": grace,
        }));
        kinds.insert(j.id, kind);
    }

    let t0 = Instant::now();
    for &(at, down) in &schedule {
        let when = t0 + Duration::from_millis(at);
        if let Some(wait) = when.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        d.kill9();
        std::thread::sleep(Duration::from_millis(down));
        d.restart();
    }

    // Settle: every job cleaned and the queue drained.
    let deadline = Instant::now() + SETTLE;
    let jobs = loop {
        let jobs = d.list();
        let cleaned = jobs.iter().filter(|j| j.stage == Stage::Cleaned).count();
        let open =
            d.store_sql("SELECT count(*) FROM cleanup_tasks WHERE state IN ('pending', 'running')");
        if cleaned == kinds.len() && open.trim() == "0" {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not settled within {SETTLE:?}: {cleaned} of {} jobs cleaned, {} tasks \
             open; stages: {:?}",
            kinds.len(),
            open.trim(),
            stage_counts(&jobs)
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    let audit = d.audit_all();
    let mut by_job: HashMap<&str, Vec<&AuditEntry>> = HashMap::new();
    for row in &audit {
        by_job.entry(row.job_id.as_str()).or_default().push(row);
    }
    let tasks =
        d.store_sql("SELECT job_id, dedup_key, state, attempts FROM cleanup_tasks ORDER BY id");
    let mut done_keys: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    let mut problems = Vec::new();
    let (mut total_tasks, mut max_attempts) = (0usize, 0u32);
    for line in tasks.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let [job_id, key, state, attempts] = cols[..] else {
            panic!("unexpected task row {line:?}");
        };
        total_tasks += 1;
        max_attempts = max_attempts.max(attempts.parse().unwrap_or(0));
        if state != "done" {
            problems.push(format!("task {key} of job {job_id} ended {state}"));
        }
        done_keys
            .entry(job_id.to_owned())
            .or_default()
            .insert(key.to_owned());
    }

    let artifacts = d.data.join("artifacts");
    for j in &jobs {
        let Some(&kind) = kinds.get(&j.id) else {
            problems.push(format!("job {} was never submitted by this test", j.id));
            continue;
        };
        let rows = by_job.get(j.id.as_str()).cloned().unwrap_or_default();
        let arrivals = read_terms(&terms.join(&j.id));
        if let Err(e) = check_job(j, kind, &rows, &arrivals) {
            problems.push(format!("job {} ({kind:?}): {e}", j.id));
        }
        if !terms.join(format!("{}.artifacts", j.id)).exists() {
            problems.push(format!(
                "job {} ({kind:?}) did not write its artifacts",
                j.id
            ));
        }
        if let Err(e) = check_cleanup(&d, j, &rows, &artifacts, done_keys.get(&j.id)) {
            problems.push(format!("job {} ({kind:?}): {e}", j.id));
        }
    }
    for id in kinds.keys() {
        if !jobs.iter().any(|j| &j.id == id) {
            problems.push(format!("job {id} is missing from the store"));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for p in &problems {
            let what = p.split_once("): ").map_or(p.as_str(), |(_, w)| w);
            let what: String = what
                .split([':', '('])
                .next()
                .unwrap_or(what)
                .chars()
                .take(70)
                .collect();
            *kinds.entry(what).or_default() += 1;
        }
        problems.truncate(25);
        panic!(
            "seed {seed} on {}: {n} problems: {kinds:#?}\nfirst 25:\n  {}",
            backend.name(),
            problems.join("\n  ")
        );
    }
    let resent = audit
        .iter()
        .filter(|r| r.reason.contains("re-sent"))
        .count();
    let lost = audit
        .iter()
        .filter(|r| r.action == AuditAction::MarkFailed)
        .count();
    drop(guard);
    Some(format!(
        "{} jobs, {KILLS} kills, {total_tasks} tasks (max {max_attempts} attempts), {} audit \
         rows, {resent} signals re-sent after a restart, {lost} exits noticed only at a restart",
        jobs.len(),
        audit.len()
    ))
}

fn stage_counts(jobs: &[JobView]) -> Vec<(Stage, usize)> {
    let mut m: HashMap<Stage, usize> = HashMap::new();
    for j in jobs {
        *m.entry(j.stage).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by_key(|(s, _)| s.as_str());
    v
}

/// SIGTERM arrivals the job recorded (epoch nanoseconds).
fn read_terms(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn step_action(s: Step) -> AuditAction {
    s.into()
}

/// Ladder steps, signals and their audit rows.
fn check_job(
    j: &JobView,
    kind: Kind,
    rows: &[&AuditEntry],
    arrivals: &[i64],
) -> Result<(), String> {
    if j.stage != Stage::Cleaned {
        return Err(format!("stage {} (expected cleaned)", j.stage));
    }
    let want = if kind == Kind::Finished {
        Outcome::Succeeded
    } else {
        Outcome::Terminated
    };
    if j.outcome != Some(want) {
        return Err(format!(
            "outcome {:?} (expected {want}): {:?}",
            j.outcome, j.reason
        ));
    }
    if j.attempt != 0 {
        return Err(format!("attempt {} (a run was repeated)", j.attempt));
    }
    // An exit noticed only at a restart is settled by a decision of its own: audited too.
    if j.reason.as_deref().is_some_and(|r| r.contains("vanished"))
        && !rows.iter().any(|r| r.action == AuditAction::MarkFailed)
    {
        return Err(format!(
            "settled as vanished without an audit row: {:?}",
            j.reason
        ));
    }
    let all = [
        Step::Warn,
        Step::SoftKill,
        Step::HardKill,
        Step::ForceDelete,
    ];
    let count = |s: Step| j.steps.iter().filter(|t| t.step == s).count();
    for s in all {
        if count(s) > 1 {
            return Err(format!("{s} recorded {} times: {:?}", count(s), j.steps));
        }
    }
    let resent = |s: Step| {
        rows.iter()
            .filter(|r| r.action == step_action(s) && r.reason.contains("re-sent"))
            .count()
    };
    for s in all {
        let original: Vec<_> = rows
            .iter()
            .filter(|r| r.action == step_action(s) && !r.reason.contains("re-sent"))
            .collect();
        let taken = count(s) == 1;
        if taken && original.len() != 1 {
            return Err(format!(
                "{s} is recorded but has {} audit rows: {original:#?}",
                original.len()
            ));
        }
        if !taken && (!original.is_empty() || resent(s) > 0) {
            return Err(format!("{s} audited but not recorded: {original:#?}"));
        }
        if let Some(bad) = rows
            .iter()
            .find(|r| r.action == step_action(s) && !r.success)
        {
            return Err(format!("{s} failed: {bad:#?}"));
        }
    }
    match kind {
        Kind::Finished => {
            if !j.steps.is_empty() || !arrivals.is_empty() {
                return Err(format!(
                    "a finished job got steps {:?} / {} SIGTERMs",
                    j.steps,
                    arrivals.len()
                ));
            }
            return Ok(());
        }
        Kind::Ignorer | Kind::Exiter => {}
    }
    for s in [Step::Warn, Step::SoftKill] {
        if count(s) != 1 {
            return Err(format!("{s} missing: {:?}", j.steps));
        }
    }
    match kind {
        Kind::Ignorer if count(Step::HardKill) != 1 => {
            return Err(format!(
                "ignores SIGTERM but hard_kill missing: {:?}",
                j.steps
            ));
        }
        // Only a soft kill re-sent after a restart that came later than D + G can leave an
        // exiter running at its hard_kill.
        Kind::Exiter if count(Step::HardKill) == 1 && resent(Step::SoftKill) == 0 => {
            return Err(format!(
                "exits on SIGTERM but got hard_kill without a delayed SIGTERM: {:?}",
                j.steps
            ));
        }
        _ => {}
    }
    if count(Step::ForceDelete) == 1 && resent(Step::HardKill) == 0 {
        return Err(format!(
            "force_delete without a delayed SIGKILL: {:?}",
            j.steps
        ));
    }
    // Signals as the job saw them.
    let soft = j
        .steps
        .iter()
        .find(|t| t.step == Step::SoftKill)
        .expect("checked above");
    let recorded_ns = soft.at.timestamp_nanos_opt().expect("in range");
    if let Some(early) = arrivals.iter().find(|&&t| t < recorded_ns) {
        return Err(format!(
            "SIGTERM arrived at {early} ns, before soft_kill was recorded ({recorded_ns} ns): a \
             signal without a record"
        ));
    }
    let sent = 1 + resent(Step::SoftKill);
    if arrivals.is_empty() {
        return Err("soft_kill recorded but no SIGTERM arrived".into());
    }
    if arrivals.len() > sent {
        return Err(format!(
            "{} SIGTERMs arrived but the audit log records {sent} (a harmful, unaudited repeat)",
            arrivals.len()
        ));
    }
    if kind == Kind::Ignorer && resent(Step::SoftKill) == 0 && arrivals.len() != 1 {
        return Err(format!("{} SIGTERMs, expected exactly 1", arrivals.len()));
    }
    Ok(())
}

fn bytes(r: &AuditEntry) -> u64 {
    let d = r.details.as_ref();
    d.and_then(|d| d.get("bytes").or_else(|| d.get("objects")))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// The five cleanup tasks, their effect and their audit rows.
fn check_cleanup(
    d: &Daemon,
    j: &JobView,
    rows: &[&AuditEntry],
    artifacts: &Path,
    done: Option<&std::collections::BTreeSet<String>>,
) -> Result<(), String> {
    let id = &j.id;
    let keys = done.cloned().unwrap_or_default();
    let want = [
        format!("workspace:{id}:{}", j.run_id),
        format!("log:{id}"),
        format!("artifacts:partial:{id}:{}", j.run_id),
        format!("artifacts:logs:{id}:{}", j.run_id),
        format!("artifacts:jobs:{id}:{}", j.run_id),
    ];
    for k in &want {
        if !keys.contains(k) {
            return Err(format!("no completed task {k}; tasks: {keys:?}"));
        }
    }
    if keys.len() != want.len() {
        return Err(format!("unexpected tasks: {keys:?}"));
    }
    let files: [(PathBuf, &str); 5] = [
        (d.ws(id), "workspace"),
        (d.log(id), "log"),
        (artifacts.join("partial").join(id).join("a.txt"), "partial"),
        (artifacts.join("logs").join(id).join("a.txt"), "logs"),
        (
            artifacts.join("jobs/acme").join(id).join("a.txt"),
            "artifacts",
        ),
    ];
    for (path, what) in &files {
        if path.exists() {
            return Err(format!("{what} {} still exists", path.display()));
        }
    }
    let ttl: Vec<&&AuditEntry> = rows
        .iter()
        .filter(|r| r.action == AuditAction::TtlCleanup)
        .collect();
    if let Some(bad) = ttl.iter().find(|r| !r.success) {
        return Err(format!("failed cleanup: {bad:#?}"));
    }
    let matching = |pred: &dyn Fn(&AuditEntry) -> bool| -> Vec<&AuditEntry> {
        ttl.iter().map(|r| **r).filter(|r| pred(r)).collect()
    };
    let groups: [(&str, Vec<&AuditEntry>); 5] = [
        ("workspace", matching(&|r| r.resource_type == "workspace")),
        ("log", matching(&|r| r.resource_type == "log")),
        (
            "partial prefix",
            matching(&|r| r.resource_name.ends_with(&format!("/partial/{id}"))),
        ),
        (
            "logs prefix",
            matching(&|r| r.resource_name.ends_with(&format!("/logs/{id}"))),
        ),
        (
            "artifacts prefix",
            matching(&|r| r.resource_name.ends_with(&format!("/jobs/acme/{id}"))),
        ),
    ];
    for (what, found) in &groups {
        if found.is_empty() {
            return Err(format!(
                "the {what} was deleted but no audit row says so; cleanup rows: {ttl:#?}"
            ));
        }
        let destructive = found.iter().filter(|r| bytes(r) > 0).count();
        if destructive > 1 {
            return Err(format!(
                "the {what} was deleted {destructive} times: {found:#?}"
            ));
        }
    }
    Ok(())
}

/// What the kill -9 loop found, reproduced without a crash: a job the enforcer settles itself
/// in the middle of a pass (here `mark_failed` for a missed heartbeat; in the loop, a
/// `force_delete`) and whose TTL has already expired goes straight to `cleanup` in the same
/// pass, and its log and artifact retention tasks are never queued (they are queued only at the
/// top of a pass, for a job that is already finished). Its log file and artifacts then stay
/// forever, or until a daemon restart re-queues them. A job that exits by itself is cleaned
/// completely (the control).
fn settled_within_a_pass_still_gets_its_retention_tasks(backend: Backend) {
    let cfg = r#"
[policy]
global_default = "1h"
grace_period = "1s"
warn_before = "1s"

[retention]
successful = "0s"
failed = "0s"
terminated = "0s"

[retention.artifacts]
logs = "0s"
partial = "0s"

[recovery]
max_attempts = 0
"#;
    let Some(d) = Daemon::start(backend, cfg) else {
        return;
    };
    let control = d.submit_sh(&["--org", "acme"], &format!("{WRITE_ARTIFACTS}; echo done"));
    // No heartbeat within 1 s and no recovery attempts left: marked failed, then cleaned.
    let dead = d.submit_sh(
        &[
            "--org",
            "acme",
            "--heartbeat-timeout",
            "1s",
            "--timeout",
            "1h",
        ],
        &format!("{WRITE_ARTIFACTS}; sleep 60"),
    );
    for id in [&control, &dead] {
        d.wait_job(id, "cleaned", |j| j.stage == Stage::Cleaned);
    }
    let j = d.get(&dead);
    assert_eq!(j.outcome, Some(Outcome::Failed), "{j:#?}");
    let artifacts = d.data.join("artifacts");
    for id in [&control, &dead] {
        let leftovers = || {
            let mut left: Vec<PathBuf> = vec![d.log(id)];
            for p in ["partial", "logs", "jobs/acme"] {
                left.push(artifacts.join(p).join(id.as_str()).join("a.txt"));
            }
            left.retain(|p| p.exists());
            left
        };
        let deadline = Instant::now() + WAIT;
        while !leftovers().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = leftovers();
        assert!(
            left.is_empty(),
            "job {id} ({}) is cleaned, but its log and artifacts were never removed (0 s \
             retention; no retention task was queued): {left:?}; tasks: {}",
            if id == &dead {
                "marked failed"
            } else {
                "control"
            },
            d.store_sql(&format!(
                "SELECT kind, state FROM cleanup_tasks WHERE job_id = '{id}'"
            ))
        );
    }
}

both_stores!(kill9_at_random_points);

#[test]
fn settled_within_a_pass_still_gets_its_retention_tasks_sqlite() {
    settled_within_a_pass_still_gets_its_retention_tasks(Backend::Sqlite);
}
