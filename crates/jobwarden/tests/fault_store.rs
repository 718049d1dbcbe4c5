//! The store goes away mid-run: a private PostgreSQL server (initdb + pg_ctl in a temp dir on a
//! free port; the shared test server is never touched) is stopped with `pg_ctl stop -m
//! immediate` while jobs escalate, then started again.
//!
//! While it is down: `/readyz` says not-ready and names the store, a submit is refused with a
//! clear 503 (not a hang), and no escalation step is carried out: a job sees no signal, since
//! none could be recorded (the README's "When things fail": only a recorded step is carried
//! out). Once it is back: ready again, every step that fell due is taken once and recorded once (one audit
//! row each), each job received SIGTERM exactly once and only after the store returned, the jobs
//! finish with the right outcome, and a job that exited on its own during the outage has that
//! outcome recorded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jobwarden::model::{AuditAction, Outcome, Stage, Step};

/// A PostgreSQL server of our own, stopped and removed on drop.
struct PrivatePg {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    url: String,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (as scripts/start-postgres.sh
/// finds it; that script installs PostgreSQL when it is missing), or `$JOBWARDEN_PG_BINDIR`.
fn pg_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("JOBWARDEN_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

impl PrivatePg {
    fn start() -> Option<PrivatePg> {
        let Some(bindir) = pg_bindir() else {
            let msg = "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (run \
                       scripts/start-postgres.sh, which installs them, or set JOBWARDEN_PG_BINDIR)";
            assert!(!require_servers(), "{msg}");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("\n!!! SKIPPED fault_store: {msg}\n").as_bytes(),
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("jw-pg-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let pg = PrivatePg {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bindir,
            port,
        };
        if is_root() {
            run_ok(Command::new("chown").arg("postgres").arg(pg.dir.path()));
        }
        run_ok(pg.as_pg("initdb").args([
            "-D",
            &pg.data().display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]));
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, run as the postgres user when we are root (the server refuses
    /// to run as root).
    fn as_pg(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start_server(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=40",
            self.port,
            self.dir.path().display()
        );
        run_ok(self.as_pg("pg_ctl").args([
            "-D",
            &self.data().display().to_string(),
            "-w",
            "-t",
            "60",
            "-l",
            &self.dir.path().join("server.log").display().to_string(),
            "-o",
            &opts,
            "start",
        ]));
    }

    /// `pg_ctl stop -m immediate`: every backend is killed, no checkpoint.
    fn stop_immediate(&self) {
        run_ok(self.as_pg("pg_ctl").args([
            "-D",
            &self.data().display().to_string(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
    }
}

impl PrivatePg {
    /// The server's processes (postmaster and backends).
    fn processes(&self) -> Vec<i32> {
        let pidfile =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let master: i32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster pid");
        let mut pids = vec![master];
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids
    }

    /// SIGSTOP (or SIGCONT) every server process: queries in flight hang, nothing fails.
    fn signal_all(&self, sig: rustix::process::Signal) {
        for pid in self.processes() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.signal_all_quietly(rustix::process::Signal::CONT);
        let _ = self
            .as_pg("pg_ctl")
            .args([
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

impl PrivatePg {
    fn signal_all_quietly(&self, sig: rustix::process::Signal) {
        if self.data().join("postmaster.pid").exists() {
            self.signal_all(sig);
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// SIGTERM arrivals a job appended to `path` (epoch nanoseconds).
fn arrivals(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn now_ns() -> i64 {
    jobwarden::clock::now()
        .timestamp_nanos_opt()
        .expect("in range")
}

/// Polls `/readyz` until its status is `want`; returns the body.
fn wait_ready(d: &Daemon, want: u16, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let (status, body) = d.readyz();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after {bound:?} (wanted {want}): {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Jobs whose ladder falls due while the store is down.
const ESCALATING: usize = 6;

#[test]
fn postgres_stopped_mid_run() {
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let cfg = r#"
[policy]
global_default = "1h"
grace_period = "2s"
warn_before = "1s"

[retention]
successful = "1h"
failed = "1h"
terminated = "1h"
"#;
    let opts = SpawnOpts {
        store_url: Some(pg.url.clone()),
        ..SpawnOpts::default()
    };
    let Some(d) = Daemon::start_opts(Backend::Postgres, cfg, &[], opts) else {
        return;
    };
    let terms = d.root.path().join("terms");
    std::fs::create_dir_all(&terms).expect("mkdir");
    let record = format!("date +%s%N >> {}/$FLOWFORGE_JOB_ID", terms.display());
    // The sleeper ignores SIGTERM too (it goes to the whole group); otherwise `wait` would
    // return at once and the loop would spin.
    let ignores_term =
        format!("trap '{record}' TERM; (trap '' TERM; exec sleep 600) & while :; do wait; done");
    // warn at 7 s, soft_kill at 8 s, hard_kill at 10 s: all while the store is down (from
    // about 1 s after the submits until every hard_kill is overdue).
    let escalating: Vec<String> = (0..ESCALATING)
        .map(|_| d.submit_sh(&["--timeout", "8s", "--grace", "2s"], &ignores_term))
        .collect();
    // Exits by itself (status 0) while the store is down, and says when.
    let exits = d.submit_sh(
        &["--timeout", "1h"],
        "sleep 5; date +%s%N > exited_at; exit 0",
    );
    let before: Vec<jobwarden::api_types::JobView> =
        escalating.iter().map(|id| d.get(id)).collect();
    let pids: Vec<i32> = before.iter().map(|j| j.pid.expect("pid")).collect();
    let warn_due = before
        .iter()
        .map(|j| jobwarden::model::sub(deadline(j), Duration::from_secs(1)))
        .min()
        .expect("jobs");
    let last_hard_due = before
        .iter()
        .map(|j| plus(deadline(j), 2))
        .max()
        .expect("jobs");
    assert_eq!(wait_ready(&d, 200, WAIT), "ready\n");

    pg.stop_immediate();
    let down_at = now_ns();
    let body = wait_ready(&d, 503, Duration::from_secs(15));
    assert!(
        body.contains("store unreachable") && body.contains("\"error\""),
        "/readyz should name the store: {body}"
    );
    assert!(
        ms_between(jobwarden::clock::now(), warn_due) > 0,
        "too slow: the daemon reported the outage only after the first step fell due"
    );
    // A submit is refused, clearly and within a bound.
    let t = Instant::now();
    let (status, body) = d.post_job(&serde_json::json!({ "command": ["true"] }));
    assert_eq!(status, 503, "submit during the outage: {body}");
    assert!(body.contains("store"), "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "submit took {:?} to fail",
        t.elapsed()
    );
    // Every step falls due while the store is down (soft_kill at D, hard_kill at D + G).
    let until = jobwarden::model::add(last_hard_due, Duration::from_millis(1500));
    while ms_between(jobwarden::clock::now(), until) > 0 {
        std::thread::sleep(Duration::from_millis(100));
        let (status, _) = d.readyz();
        assert_eq!(status, 503, "ready while the store is down");
    }
    for id in &escalating {
        assert!(
            arrivals(&terms.join(id)).is_empty(),
            "job {id} got SIGTERM while the store was down: a step carried out without a record"
        );
    }
    assert!(
        pids.iter().all(|p| alive(*p)),
        "a job was killed while the store was down"
    );

    // Taken before the restart begins: the daemon may reconnect, record and signal before
    // start_server returns to this thread, so a later reading could follow the SIGTERM.
    let up_at = now_ns();
    pg.start_server();
    wait_ready(&d, 200, Duration::from_secs(30));

    for id in &escalating {
        let j = d.wait_job(id, "its outcome after the store returned", |j| {
            j.outcome.is_some()
        });
        assert_eq!(so(&j), (Stage::Failed, Some(Outcome::Terminated)), "{j:#?}");
        for s in [Step::Warn, Step::SoftKill, Step::HardKill] {
            let taken = step(&j, s);
            assert!(
                taken.at.timestamp_nanos_opt().expect("ns") > down_at,
                "job {id}: {s} taken at {} before the outage",
                taken.at
            );
        }
        assert!(!has_step(&j, Step::ForceDelete), "{:#?}", j.steps);
        // A job that got SIGTERM late still gets its whole grace period.
        assert_hard_kill_on_time_late(&j);
        let audit = d.audit(id);
        for a in [
            AuditAction::Warn,
            AuditAction::SoftKill,
            AuditAction::HardKill,
        ] {
            let n = rows(&audit, a);
            assert_eq!(
                n.len(),
                1,
                "job {id}: {a} audited {} times: {audit:#?}",
                n.len()
            );
            assert!(n[0].success, "{:#?}", n[0]);
        }
        let got = arrivals(&terms.join(id));
        assert_eq!(got.len(), 1, "job {id}: SIGTERM arrivals {got:?}");
        assert!(
            got[0] > up_at,
            "job {id}: SIGTERM arrived before the store was back"
        );
        let soft = step(&j, Step::SoftKill);
        assert!(
            got[0] >= soft.at.timestamp_nanos_opt().expect("ns"),
            "job {id}: SIGTERM arrived before soft_kill was recorded"
        );
    }
    // The job that exited during the outage: its real outcome, not `lost`.
    let exited_at = arrivals(&d.ws(&exits).join("exited_at"));
    assert!(
        exited_at.len() == 1 && exited_at[0] > down_at && exited_at[0] < up_at,
        "too slow: the job meant to exit during the outage exited at {exited_at:?} (outage \
         {down_at}..{up_at} ns)"
    );
    let j = d.wait_job(
        &exits,
        "the outcome of the job that exited during the outage",
        |j| j.outcome.is_some(),
    );
    assert_eq!(
        so(&j),
        (Stage::Completed, Some(Outcome::Succeeded)),
        "exited 0 while the store was down: {j:#?}"
    );
    assert_eq!(j.exit_code, Some(0), "{j:#?}");
    // New work is accepted again.
    let id = d.submit(&["--timeout", "1h"], &["true"]);
    d.wait_finished(&id);
}

/// hard_kill due a grace period after the (late) soft kill; taken without much delay.
fn assert_hard_kill_on_time_late(j: &jobwarden::api_types::JobView) {
    let soft = step(j, Step::SoftKill);
    let hard = step(j, Step::HardKill);
    let due = jobwarden::model::add(soft.at, Duration::from_secs(j.grace_period_seconds));
    assert!(
        ms_between(due, hard.due_at).abs() <= 5,
        "job {}: hard_kill due {} but soft_kill was at {} (grace {} s)",
        j.id,
        hard.due_at,
        soft.at,
        j.grace_period_seconds
    );
    let late = ms_between(hard.due_at, hard.at);
    assert!(
        (0..2_000).contains(&late),
        "job {}: hard_kill {late} ms late",
        j.id
    );
}

/// A store that answers slowly (the private server paused with SIGSTOP for 3.5 s just as
/// soft_kill falls due, so recording it takes that long) must not shorten the job's grace
/// period: SIGTERM goes out only once soft_kill is recorded, and hard_kill is due a grace
/// period after that (the README's "When things fail": "a slow store never shortens a job's
/// grace"; its Concepts: "a job that exits inside its grace is never SIGKILLed"). A job that needs 1 s of its 2 s grace to save its work must get to save it.
#[test]
fn slow_store_keeps_the_grace_period() {
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let cfg = r#"
[policy]
global_default = "1h"
grace_period = "2s"
warn_before = "1s"

[retention]
successful = "1h"
failed = "1h"
terminated = "1h"
"#;
    let opts = SpawnOpts {
        store_url: Some(pg.url.clone()),
        ..SpawnOpts::default()
    };
    let Some(d) = Daemon::start_opts(Backend::Postgres, cfg, &[], opts) else {
        return;
    };
    // Saving work takes 1 s of the 2 s grace.
    let saves = d.submit_sh(
        &["--timeout", "3s", "--grace", "2s"],
        "trap 'date +%s%N > term_at; sleep 1; echo saved > saved.txt; exit 0' TERM; \
         (trap '' TERM; exec sleep 600) & while :; do wait; done",
    );
    d.wait_step(&saves, Step::Warn);
    let j0 = d.get(&saves);
    let soft_due = deadline(&j0);
    assert!(
        ms_between(jobwarden::clock::now(), soft_due) > 200,
        "too slow: soft_kill is due before the store could be paused"
    );
    pg.signal_all(rustix::process::Signal::STOP);
    // Paused over the deadline and past D + G.
    std::thread::sleep(Duration::from_millis(
        u64::try_from(ms_between(jobwarden::clock::now(), soft_due)).unwrap_or(0) + 3_500,
    ));
    let resumed_at = now_ns();
    pg.signal_all(rustix::process::Signal::CONT);

    let j = d.wait_finished(&saves);
    let term = arrivals(&d.ws(&saves).join("term_at"));
    let soft = step(&j, Step::SoftKill);
    let soft_ns = soft.at.timestamp_nanos_opt().expect("ns");
    if let Some(hard) = j.steps.iter().find(|s| s.step == Step::HardKill) {
        panic!(
            "hard_kill fell due {} ms after soft_kill was recorded as taken, but SIGTERM could \
             only go out once the store answered, {} ms after that: the job got {} ms of its \
             2 s grace (SIGTERM arrivals seen by the job: {term:?}); steps {:#?}",
            (hard.due_at - soft.at).num_milliseconds(),
            (resumed_at - soft_ns) / 1_000_000,
            (hard.at.timestamp_nanos_opt().expect("ns") - resumed_at) / 1_000_000,
            j.steps
        );
    }
    assert_eq!(term.len(), 1, "SIGTERM arrivals: {term:?}");
    assert!(
        term[0] > resumed_at,
        "SIGTERM before soft_kill could be recorded"
    );
    assert!(
        d.ws(&saves).join("saved.txt").exists(),
        "the job could not save its work within its grace period: {j:#?}"
    );
    assert_eq!(j.outcome, Some(Outcome::Terminated), "{j:#?}");
}

/// A job whose start cannot be recorded must not be acknowledged as started and then left
/// running unwatched. Here the store goes away while the job's pre_start hook runs (between
/// the job's insert and the record of its start), and the daemon crashes before the store
/// returns. Either the submit is refused and nothing runs, or the job is acknowledged and,
/// after the restart, is watched (its pid recorded) or settled. Today the submit answers 201,
/// the process runs, its start is never recorded, and after the restart the job sits in
/// `pre_start` with no pid while its process runs with no timeout enforced.
#[test]
fn unrecorded_start_is_not_acknowledged() {
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let cfg = r#"
[policy]
global_default = "1h"

[[hooks]]
on = "pre_start"
command = ["sleep", "3"]
timeout = "30s"
"#;
    let opts = SpawnOpts {
        store_url: Some(pg.url.clone()),
        ..SpawnOpts::default()
    };
    let Some(mut d) = Daemon::start_opts(Backend::Postgres, cfg, &[], opts) else {
        return;
    };
    let addr = d.addr.clone();
    let t0 = std::time::Instant::now();
    let submit = std::thread::spawn(move || {
        http_timeout(
            &addr,
            "POST",
            "/v1/jobs",
            &[],
            Some(br#"{"command":["sh","-c","sleep 120"],"timeout":"1h"}"#),
            SLOW_WAIT,
        )
    });
    // Stop the store once the job is inserted, while its pre_start hook (3 s) still runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql(&pg.url, "SELECT count(*) FROM jobs").trim() != "1" {
        assert!(Instant::now() < deadline, "the job was never inserted");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop_immediate();
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "too slow: the store stopped {:?} after the submit, maybe after the hook ended",
        t0.elapsed()
    );
    let (status, body) = submit.join().expect("submit thread");
    d.kill9();
    pg.start_server();
    d.restart();
    d.wait_loaded();
    let jobs = d.list();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let j = &jobs[0];
    let running: Vec<i32> = processes_in(&d.ws(&j.id));
    match status {
        201 => assert!(
            j.pid.is_some() || j.outcome.is_some(),
            "the submit was acknowledged (201) but the job's start was never recorded: after a \
             restart it is {} with no pid, while its process {running:?} runs unwatched (no \
             timeout will stop it); job {j:#?}",
            j.stage
        ),
        503 => assert!(
            running.is_empty(),
            "the submit was refused ({body}) but its process {running:?} runs"
        ),
        other => panic!("submit answered {other}: {body}"),
    }
}

/// Live processes whose cwd is `dir`.
fn processes_in(dir: &Path) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c == dir) && alive(pid) {
            found.push(pid);
        }
    }
    found
}
