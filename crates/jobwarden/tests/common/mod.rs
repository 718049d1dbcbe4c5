//! Shared harness for the end-to-end tests: a real `jobwarden run` per test (its own temp
//! data dir, config file and port), the real CLI, raw HTTP, and helpers that poll with
//! deadlines.
//!
//! Every daemon listens on `127.0.0.1:0`; its address is read from the line
//! `jobwarden listening on http://ADDR` it prints on stderr (kept in `daemon-N.log` beside
//! the data dir and printed when a test fails). On drop, the daemon is SIGKILLed and every
//! process whose cwd lies under the test's data dir (the jobs and their children) is
//! SIGKILLed with its process group, so a failing test leaves nothing running.
//!
//! PostgreSQL variants create a fresh database per test on the server named by
//! `DATABASE_URL` (`eval "$(scripts/start-postgres.sh)"`) and drop it afterwards. Without
//! `DATABASE_URL` they fail when `JOBWARDEN_REQUIRE_SERVERS=1` or `CI` is set, and are
//! skipped with a loud notice otherwise.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobwarden::api_types::{JobView, StepView};
use jobwarden::model::{AuditAction, AuditEntry, Outcome, Stage, Step, Timestamp};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_jobwarden");

/// Generous bound for anything we wait for.
pub const WAIT: Duration = Duration::from_secs(20);

/// How late a ladder step may be taken in tests (the target is 50 ms; CI is noisy).
pub const MAX_STEP_LATENESS_MS: i64 = 200;

/// How far from its due time the job itself may see SIGTERM.
pub const MAX_SIGNAL_SKEW_MS: i64 = 500;

/// Which store a daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://<data-dir>/jobwarden.db` (the default: no `--store` flag).
    Sqlite,
    /// A fresh database on `DATABASE_URL`.
    Postgres,
}

impl Backend {
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Generates `<name>_sqlite` and `<name>_postgres` tests calling `<name>(Backend)`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Sqlite) })+
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Postgres) })+
        }
    };
}

fn servers_required() -> bool {
    std::env::var("JOBWARDEN_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A throwaway PostgreSQL database, dropped on drop.
pub struct PgDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgDb {
    /// Creates a database, or returns None (after a loud notice) when PostgreSQL is not
    /// configured and not required.
    pub fn create() -> Option<PgDb> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            if servers_required() {
                panic!(
                    "DATABASE_URL is not set but JOBWARDEN_REQUIRE_SERVERS=1 or CI is: start \
                     PostgreSQL with `eval \"$(scripts/start-postgres.sh)\"` and re-run"
                );
            }
            // Straight to fd 2: the test harness would swallow eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED the PostgreSQL variant of an end-to-end test: DATABASE_URL is \
                 not set. Run `eval \"$(scripts/start-postgres.sh)\"` first to test both stores.\n"
            );
            return None;
        };
        let name = format!(
            "jw_e2e_{}_{}",
            std::process::id(),
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(PgDb {
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    /// Runs SQL on this database.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qAt",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs `sql` with psql; panics with its stderr on failure; returns stdout.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .expect("running psql (is the postgresql client installed?)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The result of a CLI invocation.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the binary with `args` and `envs`.
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("JOBWARDEN_SERVER")
        .env_remove("JOBWARDEN_TOKEN")
        .env_remove("JOBWARDEN_CONFIG")
        .env_remove("JOBWARDEN_STORE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running jobwarden");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running (or stopped) daemon with its own data dir.
pub struct Daemon {
    /// Keeps the temp dir alive; holds `config.toml`, `data/` and the daemon logs.
    pub root: tempfile::TempDir,
    /// `--data-dir`.
    pub data: PathBuf,
    /// `--config`.
    pub config: PathBuf,
    /// Which store.
    pub backend: Backend,
    /// The PostgreSQL database, if any (dropped after the daemon).
    pub pg: Option<PgDb>,
    /// Extra `run` flags (e.g. `--dry-run`).
    pub extra: Vec<String>,
    /// Environment, store override and wrapper of the daemon process (read at every start,
    /// so a test may change them between [`Daemon::kill9`] and [`Daemon::restart`]).
    pub opts: SpawnOpts,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    starts: u32,
}

impl Daemon {
    /// Starts a daemon with `config` (TOML text) on `backend`; None when the backend is
    /// not available and not required (the test returns early).
    pub fn start(backend: Backend, config: &str) -> Option<Daemon> {
        Daemon::start_with(backend, config, &[])
    }

    /// Like [`Daemon::start`], with extra `run` flags.
    pub fn start_with(backend: Backend, config: &str, extra: &[&str]) -> Option<Daemon> {
        Daemon::start_opts(backend, config, extra, SpawnOpts::default())
    }

    /// Like [`Daemon::start_with`], with [`SpawnOpts`]. With `opts.store_url` set, no
    /// database is created on `DATABASE_URL` (the test brings its own store).
    pub fn start_opts(
        backend: Backend,
        config: &str,
        extra: &[&str],
        opts: SpawnOpts,
    ) -> Option<Daemon> {
        let mut d = Daemon::create(backend, config, extra, opts)?;
        d.spawn();
        Some(d)
    }

    /// Sets up the data dir and config without starting the daemon (see
    /// [`Daemon::try_spawn`]).
    pub fn create(
        backend: Backend,
        config: &str,
        extra: &[&str],
        opts: SpawnOpts,
    ) -> Option<Daemon> {
        let pg = match (backend, &opts.store_url) {
            (Backend::Postgres, None) => Some(PgDb::create()?),
            _ => None,
        };
        let root = tempfile::Builder::new()
            .prefix("jw-e2e-")
            .tempdir()
            .expect("tempdir");
        let data = root.path().join("data");
        let config_path = root.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        Some(Daemon {
            data,
            config: config_path,
            backend,
            pg,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            opts,
            child: None,
            url: String::new(),
            addr: String::new(),
            starts: 0,
            root,
        })
    }

    /// The store URL the daemon uses (`None` for the default SQLite file).
    pub fn store_url(&self) -> Option<String> {
        self.opts
            .store_url
            .clone()
            .or_else(|| self.pg.as_ref().map(|p| p.url.clone()))
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.root.path().join(format!("daemon-{n}.log"))
    }

    /// Starts the daemon process and waits for its listening line.
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the daemon process and waits for its listening line; the error (with the
    /// daemon's output) if it exits first.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = std::fs::File::create(&log_path).expect("create daemon log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--data-dir".into(),
            self.data.display().to_string(),
        ];
        if !self.extra.iter().any(|a| a == "--listen") {
            args.push("--listen".into());
            args.push("127.0.0.1:0".into());
        }
        if let Some(url) = self.store_url() {
            args.push("--store".into());
            args.push(url);
        }
        args.extend(self.extra.iter().cloned());
        let mut cmd = match self.opts.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .args(&args)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("JOBWARDEN_CONFIG")
            .env_remove("JOBWARDEN_STORE")
            .env("JOBWARDEN_LOG", "info,sqlx=warn")
            .spawn()
            .expect("spawn jobwarden run");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Only a whole line: the log may be read while the line is half written.
            if let Some(rest) = text.split("jobwarden listening on http://").nth(1)
                && let Some((line, _)) = rest.split_once('\n')
            {
                let addr = line.split_whitespace().next().expect("address").to_owned();
                let port = addr.rsplit(':').next().expect("port").to_owned();
                self.addr = format!("127.0.0.1:{port}");
                self.url = format!("http://{}", self.addr);
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                self.child = None;
                return Err(format!(
                    "jobwarden run exited with {status} before listening:\n{text}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "jobwarden run did not print its address within {WAIT:?}:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the current start has loaded the store's jobs and re-adopted (or settled)
    /// their processes: before that, a listing still shows the states of before the restart.
    pub fn wait_loaded(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.last_log().contains("loaded jobs from the store") {
            assert!(
                Instant::now() < deadline,
                "the daemon did not load its jobs within {WAIT:?}:\n{}",
                self.last_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the daemon (its jobs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the daemon and wait for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(c.id()).expect("pid")).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("daemon did not stop within {WAIT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same data dir and store (after [`Daemon::kill9`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        self.spawn();
    }

    /// Everything the daemon printed so far, all starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                format!(
                    "----- daemon start {n} -----\n{}",
                    std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Out {
        run_cli(args, &[("JOBWARDEN_SERVER", &self.url)])
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code, 0,
            "jobwarden {args:?} failed: {}\n{}",
            out.stderr, out.stdout
        );
        out.stdout
    }

    /// `jobwarden submit FLAGS -- CMD…`; returns the id.
    pub fn submit(&self, flags: &[&str], command: &[&str]) -> String {
        let mut args = vec!["submit"];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(command);
        let id = self.ok(&args).trim().to_owned();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "submit printed more than an id: {id:?}"
        );
        id
    }

    /// `jobwarden submit FLAGS -- sh -c SCRIPT`.
    pub fn submit_sh(&self, flags: &[&str], script: &str) -> String {
        self.submit(flags, &["sh", "-c", script])
    }

    /// `jobwarden job show ID --json`, raw.
    pub fn show_json(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["job", "show", id, "--json"]))
            .expect("job show --json is JSON")
    }

    /// `jobwarden job show ID --json`, typed.
    pub fn show(&self, id: &str) -> JobView {
        serde_json::from_str(&self.ok(&["job", "show", id, "--json"]))
            .expect("job show --json is a job")
    }

    /// `jobwarden jobs --json`.
    pub fn jobs(&self) -> Vec<JobView> {
        serde_json::from_str(&self.ok(&["jobs", "--json"])).expect("jobs --json")
    }

    /// `jobwarden audit --job ID --json`.
    pub fn audit(&self, id: &str) -> Vec<AuditEntry> {
        serde_json::from_str(&self.ok(&["audit", "--job", id, "--json"])).expect("audit --json")
    }

    /// Every audit row.
    pub fn audit_all(&self) -> Vec<AuditEntry> {
        serde_json::from_str(&self.ok(&["audit", "--json"])).expect("audit --json")
    }

    /// `GET /v1/jobs/{id}` (cheaper than spawning the CLI; used for polling).
    pub fn get(&self, id: &str) -> JobView {
        let (status, body) = self.http("GET", &format!("/v1/jobs/{id}"), &[], None);
        assert_eq!(status, 200, "GET /v1/jobs/{id}: {body}");
        serde_json::from_str(&body).expect("a job")
    }

    /// Polls the job until `pred` holds; panics (with the daemon log) after [`WAIT`].
    pub fn wait_job(&self, id: &str, what: &str, pred: impl Fn(&JobView) -> bool) -> JobView {
        let deadline = Instant::now() + WAIT;
        loop {
            let j = self.get(id);
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: waited {WAIT:?} for {what}; last seen: {j:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the job has an outcome.
    pub fn wait_finished(&self, id: &str) -> JobView {
        self.wait_job(id, "an outcome", |j| j.outcome.is_some())
    }

    /// Waits until the job has taken `step`.
    pub fn wait_step(&self, id: &str, step: Step) -> JobView {
        self.wait_job(id, &format!("step {step}"), |j| has_step(j, step))
    }

    /// Waits until some audit row of the job satisfies `pred`.
    pub fn wait_audit(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&AuditEntry) -> bool,
    ) -> Vec<AuditEntry> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.audit(id);
            if rows.iter().any(&pred) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: waited {WAIT:?} for an audit row: {what}; rows: {rows:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `<data>/workspaces/<id>`.
    pub fn ws(&self, id: &str) -> PathBuf {
        self.data.join("workspaces").join(id)
    }

    /// `<data>/logs/<id>.log`.
    pub fn log(&self, id: &str) -> PathBuf {
        self.data.join("logs").join(format!("{id}.log"))
    }

    /// Raw HTTP to the daemon.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, String) {
        http(&self.addr, method, path, headers, body)
    }
}

impl Daemon {
    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon process has exited (reaps it); its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// The log of the latest start.
    pub fn last_log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// `<data>/jobwarden.db` (the default SQLite store).
    pub fn sqlite_path(&self) -> PathBuf {
        self.data.join("jobwarden.db")
    }

    /// Runs `sql` on the daemon's store (sqlite3 on the SQLite file, psql on PostgreSQL);
    /// returns the rows, one per line, columns separated by `|`.
    pub fn store_sql(&self, sql: &str) -> String {
        match self.store_url() {
            Some(url) => psql(&url, sql),
            None => sqlite(&self.sqlite_path(), sql),
        }
    }

    /// `GET /readyz`: status and body.
    pub fn readyz(&self) -> (u16, String) {
        self.http("GET", "/readyz", &[], None)
    }

    /// `POST /v1/jobs` with a JSON body (cheaper than the CLI for many jobs): status, body.
    pub fn post_job(&self, body: &serde_json::Value) -> (u16, String) {
        let bytes = serde_json::to_vec(body).expect("JSON");
        http_timeout(&self.addr, "POST", "/v1/jobs", &[], Some(&bytes), SLOW_WAIT)
    }

    /// Submits through `POST /v1/jobs`; returns the job (panics unless 201).
    pub fn submit_json(&self, body: &serde_json::Value) -> JobView {
        let (status, text) = self.post_job(body);
        assert_eq!(status, 201, "POST /v1/jobs {body}: {text}");
        serde_json::from_str(&text).expect("a job")
    }

    /// `GET /v1/jobs` (one request for every job).
    pub fn list(&self) -> Vec<JobView> {
        let (status, body) = http_timeout(&self.addr, "GET", "/v1/jobs", &[], None, SLOW_WAIT);
        assert_eq!(status, 200, "GET /v1/jobs: {body}");
        serde_json::from_str(&body).expect("jobs")
    }
}

/// How the daemon process is started, beyond its config and flags.
#[derive(Debug, Clone, Default)]
pub struct SpawnOpts {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A store URL instead of the backend's (e.g. a private PostgreSQL server).
    pub store_url: Option<String>,
    /// A program (and its arguments) the daemon is run under, e.g.
    /// `["prlimit", "--fsize=1048576", "--"]`.
    pub wrapper: Vec<String>,
}

/// Runs `sql` with the sqlite3 CLI on `db`; panics with its stderr on failure; returns stdout.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 5000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("running sqlite3 (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {} {sql:?}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether servers are required (CI or `JOBWARDEN_REQUIRE_SERVERS=1`): a missing one fails
/// the test instead of skipping it.
pub fn require_servers() -> bool {
    servers_required()
}

/// Cases for a property test: `PROPTEST_CASES`, else `JOBWARDEN_PROPTEST_CASES`, else
/// `default` (small enough for CI).
pub fn proptest_cases(default: u32) -> u32 {
    proptest_cases_scaled(default, 1)
}

/// [`proptest_cases`] for an expensive property: a count from the environment is divided by
/// `divisor` (at least 1 case), so that one `PROPTEST_CASES` sizes a whole long run.
pub fn proptest_cases_scaled(default: u32, divisor: u32) -> u32 {
    ["PROPTEST_CASES", "JOBWARDEN_PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<u32>().ok())
        .map_or(default, |n| (n / divisor.max(1)).max(1))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== daemon logs ({}) =====\n{}",
                self.backend.name(),
                self.logs()
            );
        }
        self.kill9();
        kill_processes_under(&self.data);
        // `pg` drops after this, once the daemon is gone.
    }
}

/// SIGKILLs the process group of every process whose cwd is under `dir`.
pub fn kill_processes_under(dir: &Path) {
    for _ in 0..3 {
        let mut found = false;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
                continue;
            };
            if !cwd.starts_with(dir) {
                continue;
            }
            found = true;
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    http_timeout(addr, method, path, headers, body, WAIT)
}

/// Bound on one request in the fault tests: a loaded machine (several builds at once) can
/// stall the daemon for seconds; a hang is still a failure.
pub const SLOW_WAIT: Duration = Duration::from_secs(60);

/// [`http`] with its own read timeout.
pub fn http_timeout(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let body = body.unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

/// A tiny webhook receiver: answers 200 to every POST and hands each body over.
pub struct WebhookSink {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    bodies: std::sync::mpsc::Receiver<String>,
}

impl WebhookSink {
    /// Binds a free port and serves in a background thread (for the rest of the test).
    pub fn start() -> WebhookSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers, then Content-Length bytes of body.
                let body = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break Some(body[..len].to_owned());
                        }
                    }
                };
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Some(b) = body {
                    let _ = tx.send(b);
                }
            }
        });
        WebhookSink { url, bodies }
    }

    /// The next body received, within [`WAIT`].
    pub fn next(&self) -> serde_json::Value {
        let body = self
            .bodies
            .recv_timeout(WAIT)
            .expect("no webhook call within the wait");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body}"))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the job took `step` in its current run.
pub fn has_step(j: &JobView, step: Step) -> bool {
    j.steps.iter().any(|s| s.step == step)
}

/// The job's record of `step` (exactly one).
pub fn step(j: &JobView, step: Step) -> StepView {
    let found: Vec<&StepView> = j.steps.iter().filter(|s| s.step == step).collect();
    assert_eq!(
        found.len(),
        1,
        "job {}: expected exactly one {step} step: {:#?}",
        j.id,
        j.steps
    );
    found[0].clone()
}

/// Milliseconds from `a` to `b` (negative when `b` is earlier).
pub fn ms_between(a: Timestamp, b: Timestamp) -> i64 {
    (b - a).num_milliseconds()
}

/// Asserts `step` was due at `expected_due` (±5 ms, for rounding) and taken on time.
pub fn assert_step_on_time(j: &JobView, which: Step, expected_due: Timestamp) {
    let s = step(j, which);
    let off = ms_between(expected_due, s.due_at).abs();
    assert!(
        off <= 5,
        "job {}: {which} due at {} but expected {expected_due}",
        j.id,
        s.due_at
    );
    let late = ms_between(s.due_at, s.at);
    assert!(
        (0..MAX_STEP_LATENESS_MS).contains(&late),
        "job {}: {which} due {} taken {} ({late} ms late; limit {MAX_STEP_LATENESS_MS} ms)",
        j.id,
        s.due_at,
        s.at
    );
}

/// Asserts hard_kill was due a grace period after the soft_kill actually happened, and was
/// taken on time.
pub fn assert_hard_kill_on_time(j: &JobView) {
    let soft = step(j, Step::SoftKill);
    let due = jobwarden::model::add(soft.at, Duration::from_secs(j.grace_period_seconds));
    assert_step_on_time(j, Step::HardKill, due);
}

/// The job's deadline.
pub fn deadline(j: &JobView) -> Timestamp {
    j.deadline
        .unwrap_or_else(|| panic!("job {} has no deadline", j.id))
}

/// `deadline + secs`.
pub fn plus(t: Timestamp, secs: u64) -> Timestamp {
    jobwarden::model::add(t, Duration::from_secs(secs))
}

/// Reads a `date +%s.%N` stamp the job wrote into its workspace.
pub fn read_stamp(path: &Path) -> Timestamp {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text.lines().next().unwrap_or_default().trim();
    let (secs, nanos) = line.split_once('.').unwrap_or((line, "0"));
    let secs: i64 = secs
        .parse()
        .unwrap_or_else(|_| panic!("{}: bad stamp {line:?}", path.display()));
    let nanos: u32 = format!("{nanos:0<9}")[..9].parse().expect("nanos");
    chrono::DateTime::from_timestamp(secs, nanos).expect("timestamp")
}

/// Asserts the job saw SIGTERM (its trap's stamp file) within [`MAX_SIGNAL_SKEW_MS`] of `due`.
pub fn assert_term_seen_near(stamp: &Path, due: Timestamp) {
    let seen = read_stamp(stamp);
    let d = ms_between(due, seen);
    assert!(
        (-50..MAX_SIGNAL_SKEW_MS).contains(&d),
        "SIGTERM seen at {seen}, {d} ms from its due time {due} (limit {MAX_SIGNAL_SKEW_MS} ms)"
    );
}

/// Audit rows with `action`.
pub fn rows(all: &[AuditEntry], action: AuditAction) -> Vec<&AuditEntry> {
    all.iter().filter(|r| r.action == action).collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// A shell loop that records SIGTERM's arrival in `term_at` and then keeps running
/// (so only SIGKILL ends it).
pub const IGNORES_TERM: &str = "trap 'date +%s.%N > term_at' TERM; while :; do sleep 0.1; done";

/// A shell loop that records SIGTERM's arrival, saves work and exits 0.
pub const SAVES_WORK: &str = "trap 'date +%s.%N > term_at; echo progress > saved.txt; exit 0' TERM; while :; do sleep 0.1; done";

/// A config with short times; `extra` is appended.
pub fn config(extra: &str) -> String {
    format!(
        r#"
[policy]
global_default = "1h"
grace_period = "2s"
warn_before = "1s"

[retention]
successful = "1h"
failed = "1h"
terminated = "1h"

{extra}
"#
    )
}

/// Stage, outcome convenience for assertions.
pub fn so(j: &JobView) -> (Stage, Option<Outcome>) {
    (j.stage, j.outcome)
}
