//! `jobwarden-bench`: the enforcement benchmark (issue 7).
//!
//! ```text
//! cargo build --release -p jobwarden --bins
//! cargo run --release --bin jobwarden-bench -- [--jobs 100,1000,10000] [--window 10s] [--keep]
//! ```
//!
//! For each N it starts the real `jobwarden` release binary (the one next to this binary) as a
//! child process with a fresh temporary data dir, a loopback port and a config with a small
//! `warn_before`, a long grace and a long retention; submits N jobs over HTTP (bounded
//! concurrency) whose deadlines fall due over `--window`, after every submission has finished;
//! and measures for each job the delay between its deadline (the due time of `soft_kill`,
//! `deadline` in `GET /v1/jobs`) and the moment its process received SIGTERM. Each job is one
//! process: `jobwarden-bench probe` (hidden), which waits for SIGTERM on a current-thread tokio
//! runtime, writes the wall-clock arrival (epoch microseconds) to `sigterm-arrival` in its cwd
//! (the job's workspace) and exits 0.
//!
//! Also measured: daemon CPU while every job waits and none is due (utime + stime from
//! `/proc/<pid>/stat`), daemon CPU during the window, daemon RSS, VmHWM and open fds before
//! and with all jobs waiting, the daemon's own `jobwarden_enforcement_delay_seconds`
//! histogram, and two baselines: (a) a loop checking every job every 30 s (the seed's
//! design), simulated over the same due times and pooled over 200 random phases; (b) GNU
//! `timeout(1)` running one probe, the single-process floor.
//!
//! The soft `RLIMIT_NOFILE` and `RLIMIT_NPROC` are raised to their hard limits; the daemon and
//! the probes inherit them. Everything started is stopped and the temporary directory removed
//! at the end, on error and on Ctrl-C (unless `--keep`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use jobwarden::api_types::{JobView, SubmitRequest};
use jobwarden::clock;
use jobwarden::duration::Dur;
use jobwarden::model::{Step, Timestamp, add, since};
use rand::{Rng, SeedableRng};

/// The file a probe writes in its cwd when SIGTERM arrives.
const ARRIVAL_FILE: &str = "sigterm-arrival";
/// The seed design's check interval (baseline a).
const POLL_PERIOD_MICROS: i64 = 30_000_000;
/// `/proc/<pid>/stat` reports CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;
/// Submission rate assumed for the first N before one was measured (jobs per second).
const INITIAL_RATE_GUESS: f64 = 50.0;
/// Random phases the 30 s poll baseline is pooled over.
const POLL_PHASES: usize = 200;
/// Grace given to every job: far beyond the window, so SIGKILL never comes into it.
const GRACE: Dur = Dur::secs(3600);

/// Enforcement benchmark: SIGTERM delay at the deadline for N local jobs.
#[derive(Debug, Parser)]
#[command(name = "jobwarden-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// A job: wait for SIGTERM, write its arrival time to ./sigterm-arrival, exit 0.
    #[command(hide = true)]
    Probe {
        /// Identifies this bench run (cleanup only kills processes carrying it).
        #[arg(long)]
        token: String,
        /// Exit (status 3) if no SIGTERM came within this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Opts {
    /// Job counts, one fresh daemon each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    jobs: Vec<usize>,
    /// Deadlines fall due over this window (after all submissions; + up to 1 s since
    /// timeouts are whole seconds).
    #[arg(long, default_value = "10s")]
    window: Dur,
    /// Keep the temporary directory (data dirs, daemon logs).
    #[arg(long)]
    keep: bool,
    /// `[policy] warn_before` of the daemon's config.
    #[arg(long, default_value = "0s")]
    warn_before: Dur,
    /// Time from the first submission to the window [default: from the measured submission
    /// rate of the previous N, ×2, plus the idle sample and margins].
    #[arg(long)]
    lead: Option<Dur>,
    /// Submissions in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Length of the idle CPU sample (all jobs waiting, none due).
    #[arg(long, default_value = "5s")]
    idle: Dur,
    /// How many times to run the timeout(1) floor.
    #[arg(long, default_value_t = 20)]
    floor_runs: usize,
    /// Seed for the 30 s poll baseline's phase [default: random].
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Probe { max_secs, .. }) = cli.cmd {
        return probe(max_secs);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobwarden-bench: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            r = bench(cli.opts) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; stopped the daemon and cleaned up".to_owned()),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {
                Err("terminated; stopped the daemon and cleaned up".to_owned())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobwarden-bench: {e}");
            ExitCode::from(1)
        }
    }
}

// ----- the probe -----

/// The job: one small process per job. A current-thread runtime with only the IO (signal) and
/// time drivers; nothing allocates while it waits.
fn probe(max_secs: u64) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    else {
        return ExitCode::from(2);
    };
    let arrival = rt.block_on(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()?;
        tokio::select! {
            _ = term.recv() => Some(clock::now()),
            () = tokio::time::sleep(Duration::from_secs(max_secs)) => None,
        }
    });
    match arrival {
        Some(at) => match std::fs::write(ARRIVAL_FILE, format!("{}\n", at.timestamp_micros())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(4),
        },
        None => ExitCode::from(3),
    }
}

// ----- the benchmark -----

async fn bench(o: Opts) -> Result<(), String> {
    if o.jobs.is_empty() || o.jobs.contains(&0) {
        return Err("--jobs: give positive job counts, e.g. --jobs 100,1000".into());
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let daemon_exe = exe
        .parent()
        .map(|d| d.join("jobwarden"))
        .ok_or("current_exe has no directory")?;
    if !daemon_exe.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p jobwarden --bins)",
            daemon_exe.display()
        ));
    }
    let max_n = o.jobs.iter().copied().max().unwrap_or(0);
    let env = Environment::probe_and_raise(max_n);
    let token = format!(
        "jwbench-{}-{}",
        std::process::id(),
        clock::now().timestamp_micros()
    );
    let root = std::env::temp_dir().join(&token);
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let root_guard = DirGuard {
        path: root.clone(),
        keep: o.keep,
    };
    eprintln!("jobwarden-bench: daemon {}", daemon_exe.display());
    eprintln!("jobwarden-bench: temp dir {}", root.display());
    for l in &env.lines {
        eprintln!("jobwarden-bench: {l}");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;

    let floor = match floor_baseline(&exe, &root.join("floor"), &token, o.floor_runs).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("jobwarden-bench: timeout(1) floor skipped: {e}");
            Vec::new()
        }
    };
    let seed = o.seed.unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rate_est = INITIAL_RATE_GUESS;
    let mut results = Vec::new();
    let mut failure = None;
    for &n in &o.jobs {
        let poll_phases = (0..POLL_PHASES)
            .map(|_| rng.random_range(0..POLL_PERIOD_MICROS))
            .collect();
        let ctx = RunCtx {
            opts: &o,
            n,
            daemon_exe: &daemon_exe,
            exe: &exe,
            dir: root.join(format!("n{n}")),
            token: &token,
            http: &http,
            rate_est,
            poll_phases,
        };
        match run_one(ctx).await {
            Ok(r) => {
                if r.submit_rate.is_finite() && r.submit_rate > 0.0 {
                    rate_est = r.submit_rate;
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("jobwarden-bench: N = {n}: {e}");
                failure = Some(format!("N = {n}: {e}"));
                break;
            }
        }
    }
    print!(
        "{}",
        report(
            &command_line,
            &o,
            &env,
            &floor,
            seed,
            &results,
            failure.as_deref()
        )
    );
    drop(root_guard);
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Limits and machine facts, after raising the soft limits.
struct Environment {
    lines: Vec<String>,
}

impl Environment {
    fn probe_and_raise(max_n: usize) -> Self {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let mut lines = Vec::new();
        let show = |v: Option<u64>| {
            v.map(|v| v.to_string())
                .unwrap_or_else(|| "unlimited".into())
        };
        for (name, res) in [
            ("RLIMIT_NOFILE", Resource::Nofile),
            ("RLIMIT_NPROC", Resource::Nproc),
        ] {
            let before = getrlimit(res);
            let mut line = format!(
                "{name}: soft {} hard {}",
                show(before.current),
                show(before.maximum)
            );
            if before.current != before.maximum {
                let new = Rlimit {
                    current: before.maximum,
                    maximum: before.maximum,
                };
                match setrlimit(res, new) {
                    Ok(()) => {
                        let after = getrlimit(res);
                        let _ = write!(
                            line,
                            "; raised soft to {} (inherited by the daemon and its jobs)",
                            show(after.current)
                        );
                    }
                    Err(e) => {
                        let _ = write!(line, "; raising the soft limit failed: {e}");
                    }
                }
            } else {
                line.push_str("; soft already at hard (inherited by the daemon and its jobs)");
            }
            lines.push(line);
        }
        let nofile = getrlimit(Resource::Nofile).current;
        if let Some(limit) = nofile
            && limit < max_n as u64 + 200
        {
            lines.push(format!(
                "warning: RLIMIT_NOFILE {limit} may be too low for {max_n} jobs (the daemon holds about one fd per job)"
            ));
        }
        let pid_max = read_trim("/proc/sys/kernel/pid_max");
        let threads_max = read_trim("/proc/sys/kernel/threads-max");
        let loadavg = read_trim("/proc/loadavg");
        lines.push(format!(
            "kernel.pid_max {}, kernel.threads-max {}, loadavg {}, {} CPUs",
            pid_max.as_deref().unwrap_or("?"),
            threads_max.as_deref().unwrap_or("?"),
            loadavg.as_deref().unwrap_or("?"),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ));
        Environment { lines }
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Threads (pids) in use system-wide and `kernel.pid_max`.
fn pid_headroom() -> Option<(u64, u64)> {
    let load = read_trim("/proc/loadavg")?;
    let used = load
        .split_whitespace()
        .nth(3)?
        .split('/')
        .nth(1)?
        .parse()
        .ok()?;
    let max = read_trim("/proc/sys/kernel/pid_max")?.parse().ok()?;
    Some((used, max))
}

/// Removes a directory tree on drop unless asked to keep it.
struct DirGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("jobwarden-bench: kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("jobwarden-bench: removing {}: {e}", self.path.display());
        }
    }
}

// ----- baseline (b): timeout(1) -----

/// Runs `timeout --kill-after=5s 1 <probe>` `runs` times, one after another; returns the
/// delays (ms) between spawn + 1 s and the probe's SIGTERM arrival. The spawn time is taken
/// just before spawning timeout(1), so its own exec is included in the delay.
async fn floor_baseline(
    exe: &Path,
    dir: &Path,
    token: &str,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for i in 0..runs {
        let d = dir.join(i.to_string());
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let t0 = clock::now();
        let status = tokio::process::Command::new("timeout")
            .arg("--kill-after=5s")
            .arg("1")
            .arg(exe)
            .args(["probe", "--token", token, "--max-secs", "30"])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("running timeout(1): {e}"))?;
        let arrival = read_arrival(&d.join(ARRIVAL_FILE))
            .ok_or_else(|| format!("timeout(1) run {i}: no arrival recorded (status {status})"))?;
        let expected = add(t0, Duration::from_secs(1));
        out.push(micros_between(expected, arrival) as f64 / 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

// ----- one N -----

struct RunCtx<'a> {
    opts: &'a Opts,
    n: usize,
    daemon_exe: &'a Path,
    exe: &'a Path,
    dir: PathBuf,
    token: &'a str,
    http: &'a reqwest::Client,
    rate_est: f64,
    poll_phases: Vec<i64>,
}

/// A job as submitted.
struct Submitted {
    id: String,
    deadline: Option<Timestamp>,
}

/// What one N measured.
#[derive(Default)]
struct RunResult {
    n: usize,
    submitted: usize,
    submit_failures: usize,
    first_submit_error: Option<String>,
    submit_secs: f64,
    submit_rate: f64,
    lead_secs: f64,
    span_secs: f64,
    /// Jobs whose deadline fell before the last submission finished.
    overlap: usize,
    /// SIGTERM delay per job (ms), sorted.
    delays_ms: Vec<f64>,
    /// Jobs without an arrival file (first few ids).
    missing: Vec<String>,
    missing_count: usize,
    /// soft_kill step: `at − due_at` as the daemon recorded it (ms), sorted.
    daemon_ms: Vec<f64>,
    /// Arrival − the soft_kill step's `at` (ms): store write, kill(2), wake-up; sorted.
    after_step_ms: Vec<f64>,
    /// 30 s poll baseline delays (ms) over the same due times, pooled over
    /// [`POLL_PHASES`] random phases; sorted.
    poll_ms: Vec<f64>,
    /// Daemon context switches (voluntary, involuntary) during the window, all threads.
    window_ctx: Option<(u64, u64)>,
    outcomes: Vec<(String, usize)>,
    idle_cpu_pct: Option<f64>,
    idle_secs: f64,
    window_cpu_secs: f64,
    window_wall_secs: f64,
    rss_base_kb: u64,
    rss_idle_kb: u64,
    hwm_before_list_kb: u64,
    hwm_final_kb: u64,
    fds_base: usize,
    fds_idle: usize,
    fd_kinds_base: String,
    fd_kinds_idle: String,
    threads_idle: u64,
    /// The five largest delays: (ms, due offset from the first deadline in s).
    worst: Vec<(f64, f64)>,
    probe_rss_kb: Option<u64>,
    probe_anon_kb: Option<u64>,
    metrics: String,
    leftovers_killed: usize,
}

/// A running daemon with the probes it started; stopped (and its probes killed) on drop.
struct DaemonRun {
    child: Option<Child>,
    probes: Vec<i32>,
    token: String,
}

impl DaemonRun {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Kills probes still running (only processes whose command line carries our token), then
    /// stops the daemon (SIGTERM, SIGKILL after 5 s). Returns how many probes were killed.
    fn stop(&mut self) -> usize {
        let mut killed = 0;
        for &pid in &self.probes {
            if is_our_probe(pid, &self.token)
                && let Some(p) = rustix::process::Pid::from_raw(pid)
                && rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
            {
                killed += 1;
            }
        }
        if let Some(mut child) = self.child.take() {
            if killed > 0 {
                // Let the daemon reap them before it goes.
                std::thread::sleep(Duration::from_millis(500));
            }
            if let Some(p) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        killed
    }
}

impl Drop for DaemonRun {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_our_probe(pid: i32, token: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.contains(&b"probe".as_slice()) && args.contains(&token.as_bytes())
        }
        Err(_) => false,
    }
}

async fn run_one(ctx: RunCtx<'_>) -> Result<RunResult, String> {
    let o = ctx.opts;
    let n = ctx.n;
    let mut r = RunResult {
        n,
        ..RunResult::default()
    };
    if let Some((used, max)) = pid_headroom()
        && used + n as u64 + 200 > max
    {
        return Err(format!(
            "not enough pids: {used} of kernel.pid_max {max} in use, {n} jobs need {n} more (+200 margin)"
        ));
    }
    let data = ctx.dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let config = ctx.dir.join("jobwarden.toml");
    std::fs::write(
        &config,
        format!(
            "# jobwarden-bench\n[policy]\nglobal_default = \"2h\"\ngrace_period = \"1h\"\nwarn_before = \"{}\"\n\n[retention]\nsuccessful = \"7d\"\nfailed = \"7d\"\nterminated = \"7d\"\n",
            o.warn_before
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let log_path = ctx.dir.join("daemon.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let child = std::process::Command::new(ctx.daemon_exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("JOBWARDEN_CONFIG")
        .env_remove("JOBWARDEN_STORE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own group: a Ctrl-C at the terminal reaches only the bench, which cleans up.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", ctx.daemon_exe.display()))?;
    let mut daemon = DaemonRun {
        child: Some(child),
        probes: Vec::new(),
        token: ctx.token.to_owned(),
    };
    let pid = daemon.pid();
    let base = wait_listening(&mut daemon, &log_path, ctx.http).await?;
    eprintln!("jobwarden-bench: N = {n}: daemon pid {pid} on {base}");

    // Before any job.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.rss_base_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    r.fds_base = proc_fd_count(pid).unwrap_or(0);
    r.fd_kinds_base = proc_fd_kinds(pid);

    // Plan: deadline i at w0 + window·i/N.
    let window = o.window.0;
    let idle = o.idle.0;
    let lead = match o.lead {
        Some(l) => l.0,
        // ×2: the rate falls as the daemon holds more jobs (174/s at 1,000 → 118/s at 10,000).
        None => {
            Duration::from_secs_f64(n as f64 / ctx.rate_est * 2.0 + 1.0 + idle.as_secs_f64() + 2.0)
        }
    };
    r.lead_secs = lead.as_secs_f64();
    let start = clock::now();
    let w0 = add(start, lead);
    let slot = |i: usize| add(w0, window.mul_f64(i as f64 / n as f64));
    let max_secs = (lead + window).as_secs() + 600;
    let command: Vec<String> = vec![
        ctx.exe.display().to_string(),
        "probe".into(),
        "--token".into(),
        ctx.token.to_owned(),
        "--max-secs".into(),
        max_secs.to_string(),
    ];
    eprintln!(
        "jobwarden-bench: N = {n}: submitting ({} in flight); window starts in {:.1} s",
        o.concurrency,
        lead.as_secs_f64()
    );
    let t_submit = Instant::now();
    let mut jobs: Vec<Submitted> = Vec::with_capacity(n);
    {
        let http = ctx.http;
        let base = base.as_str();
        let command = &command;
        let mut stream = futures::stream::iter(0..n)
            .map(|i| async move {
                let now = clock::now();
                let secs = (micros_between(now, slot(i)) as f64 / 1e6).ceil().max(1.0) as u64;
                let req = SubmitRequest {
                    command: command.clone(),
                    name: Some(format!("bench-{i}")),
                    timeout: Some(Dur::secs(secs)),
                    grace: Some(GRACE),
                    ..SubmitRequest::default()
                };
                submit(http, base, &req).await
            })
            .buffer_unordered(o.concurrency.max(1));
        let calib = n.min(100);
        let mut done = 0usize;
        while let Some(res) = stream.next().await {
            done += 1;
            match res {
                Ok(job) => {
                    if let Some(p) = job.pid {
                        daemon.probes.push(p);
                    }
                    jobs.push(Submitted {
                        id: job.id,
                        deadline: job.deadline,
                    });
                }
                Err(e) => {
                    r.submit_failures += 1;
                    if r.first_submit_error.is_none() {
                        eprintln!("jobwarden-bench: N = {n}: submission failed: {e}");
                        r.first_submit_error = Some(e);
                    }
                }
            }
            if done == calib && calib < n {
                let rate = done as f64 / t_submit.elapsed().as_secs_f64();
                let projected = add(start, Duration::from_secs_f64(n as f64 / rate));
                if projected > w0 {
                    eprintln!(
                        "jobwarden-bench: N = {n}: warning: at {rate:.0} jobs/s submissions end about {:.1} s after the window starts; deadlines will overlap submissions (use --lead)",
                        micros_between(w0, projected) as f64 / 1e6
                    );
                }
            }
            if done.is_multiple_of(1000) {
                eprintln!("jobwarden-bench: N = {n}: {done} submitted");
            }
        }
    }
    let sub_end = clock::now();
    r.submitted = jobs.len();
    r.submit_secs = t_submit.elapsed().as_secs_f64();
    r.submit_rate = n as f64 / r.submit_secs;
    let deadlines: Vec<Timestamp> = jobs.iter().filter_map(|j| j.deadline).collect();
    let (Some(first), Some(last)) = (
        deadlines.iter().min().copied(),
        deadlines.iter().max().copied(),
    ) else {
        return Err(format!(
            "no job was started ({} submissions failed: {})",
            r.submit_failures,
            r.first_submit_error.clone().unwrap_or_default()
        ));
    };
    r.span_secs = micros_between(first, last) as f64 / 1e6;
    r.overlap = deadlines.iter().filter(|d| **d <= sub_end).count();
    eprintln!(
        "jobwarden-bench: N = {n}: {} submitted in {:.1} s ({:.0}/s); deadlines from +{:.1} s over {:.1} s",
        r.submitted,
        r.submit_secs,
        r.submit_rate,
        micros_between(sub_end, first) as f64 / 1e6,
        r.span_secs
    );

    // Idle: every job waits, none is due.
    let idle_start = add(sub_end, Duration::from_secs(1));
    let idle_end = add(idle_start, idle).min(first - chrono::TimeDelta::milliseconds(500));
    if micros_between(idle_start, idle_end) >= 1_000_000 {
        sleep_until(idle_start).await;
        let (c0, t0) = (proc_cpu_ticks(pid), Instant::now());
        sleep_until(idle_end).await;
        let (c1, wall) = (proc_cpu_ticks(pid), t0.elapsed().as_secs_f64());
        if let (Some(c0), Some(c1)) = (c0, c1) {
            r.idle_cpu_pct = Some((c1 - c0) as f64 / USER_HZ / wall * 100.0);
            r.idle_secs = wall;
        }
    }
    r.rss_idle_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    r.fds_idle = proc_fd_count(pid).unwrap_or(0);
    r.fd_kinds_idle = proc_fd_kinds(pid);
    r.threads_idle = proc_status_kb(pid, "Threads").unwrap_or(0);
    let (mut rss, mut anon): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for &p in daemon
        .probes
        .iter()
        .step_by((daemon.probes.len() / 20).max(1))
    {
        if let (Some(a), Some(b)) = (
            proc_status_kb(p as u32, "VmRSS"),
            proc_status_kb(p as u32, "RssAnon"),
        ) {
            rss.push(a);
            anon.push(b);
        }
    }
    rss.sort_unstable();
    anon.sort_unstable();
    r.probe_rss_kb = rss.get(rss.len() / 2).copied();
    r.probe_anon_kb = anon.get(anon.len() / 2).copied();

    // The window: the bench only sleeps.
    sleep_until(first - chrono::TimeDelta::milliseconds(200)).await;
    let (wc0, wt0, wx0) = (proc_cpu_ticks(pid), Instant::now(), proc_ctx_switches(pid));
    eprintln!("jobwarden-bench: N = {n}: window open");
    sleep_until(add(last, Duration::from_secs(1))).await;
    let mut arrivals: HashMap<String, Timestamp> = HashMap::with_capacity(jobs.len());
    let bound = Instant::now() + Duration::from_secs(30) + Duration::from_millis(2 * n as u64);
    loop {
        for j in &jobs {
            if !arrivals.contains_key(&j.id)
                && let Some(t) =
                    read_arrival(&data.join("workspaces").join(&j.id).join(ARRIVAL_FILE))
            {
                arrivals.insert(j.id.clone(), t);
            }
        }
        if arrivals.len() == jobs.len() || Instant::now() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (wc1, wwall, wx1) = (
        proc_cpu_ticks(pid),
        wt0.elapsed().as_secs_f64(),
        proc_ctx_switches(pid),
    );
    if let (Some(a), Some(b)) = (wx0, wx1) {
        r.window_ctx = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    if let (Some(a), Some(b)) = (wc0, wc1) {
        r.window_cpu_secs = (b - a) as f64 / USER_HZ;
        r.window_wall_secs = wwall;
    }
    r.hwm_before_list_kb = proc_status_kb(pid, "VmHWM").unwrap_or(0);

    // The daemon's view.
    r.metrics = match get_text(ctx.http, &format!("{base}/metrics")).await {
        Ok(t) => summarize_metrics(&t),
        Err(e) => format!("unavailable: {e}"),
    };
    let views: Vec<JobView> = get_json(ctx.http, &format!("{base}/v1/jobs")).await?;
    r.hwm_final_kb = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    let by_id: HashMap<&str, &JobView> = views.iter().map(|v| (v.id.as_str(), v)).collect();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut due_times = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let Some(v) = by_id.get(j.id.as_str()) else {
            r.missing_count += 1;
            if r.missing.len() < 5 {
                r.missing.push(format!("{} (not listed)", j.id));
            }
            continue;
        };
        *outcomes
            .entry(format!(
                "stage {} outcome {}",
                v.stage,
                v.outcome
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into())
            ))
            .or_default() += 1;
        let Some(deadline) = v.deadline else { continue };
        due_times.push(deadline);
        let step = v.steps.iter().find(|s| s.step == Step::SoftKill);
        if let Some(s) = step {
            r.daemon_ms
                .push(micros_between(s.due_at, s.at) as f64 / 1e3);
        }
        match arrivals.get(&j.id) {
            Some(&at) => {
                let d = micros_between(deadline, at) as f64 / 1e3;
                r.delays_ms.push(d);
                r.worst
                    .push((d, micros_between(first, deadline) as f64 / 1e6));
                if let Some(s) = step {
                    r.after_step_ms.push(micros_between(s.at, at) as f64 / 1e3);
                }
            }
            None => {
                r.missing_count += 1;
                if r.missing.len() < 5 {
                    r.missing.push(format!(
                        "{} ({}, steps {:?}, exit {:?}, signal {:?})",
                        j.id,
                        v.stage,
                        v.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(),
                        v.exit_code,
                        v.signal
                    ));
                }
            }
        }
    }
    let mut outcomes: Vec<(String, usize)> = outcomes.into_iter().collect();
    outcomes.sort();
    r.outcomes = outcomes;
    r.poll_ms = ctx
        .poll_phases
        .iter()
        .flat_map(|&phase| {
            due_times
                .iter()
                .map(move |d| poll_delay_micros(d.timestamp_micros(), phase) as f64 / 1e3)
        })
        .collect();
    for v in [
        &mut r.delays_ms,
        &mut r.daemon_ms,
        &mut r.after_step_ms,
        &mut r.poll_ms,
    ] {
        v.sort_by(f64::total_cmp);
    }
    r.worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    r.worst.truncate(5);

    // Let the daemon reap every probe, then stop it.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && daemon.probes.iter().any(|p| is_our_probe(*p, ctx.token)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.leftovers_killed = daemon.stop();
    eprintln!(
        "jobwarden-bench: N = {n}: done: median {} p99 {} max {}",
        fmt_ms(pct(&r.delays_ms, 0.5)),
        fmt_ms(pct(&r.delays_ms, 0.99)),
        fmt_ms(r.delays_ms.last().copied())
    );
    Ok(r)
}

/// Waits for the daemon's "listening on" line, then `/healthz`; returns the base URL.
async fn wait_listening(
    daemon: &mut DaemonRun,
    log: &Path,
    http: &reqwest::Client,
) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(child) = daemon.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("the daemon exited ({status}):\n{}", tail(log, 20)));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("jobwarden listening on ").nth(1)
            && let Some(url) = rest.split_whitespace().next()
        {
            let url = url.to_owned();
            if get_text(http, &format!("{url}/healthz")).await.is_ok() {
                return Ok(url);
            }
        }
        if Instant::now() >= until {
            return Err(format!(
                "the daemon did not come up in 30 s:\n{}",
                tail(log, 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    req: &SubmitRequest,
) -> Result<JobView, String> {
    let resp = http
        .post(format!("{base}/v1/jobs"))
        .json(req)
        .send()
        .await
        .map_err(|e| format!("POST /v1/jobs: {e}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("POST /v1/jobs: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "POST /v1/jobs: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("POST /v1/jobs: {e}"))
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}: {}", text.trim()));
    }
    Ok(text)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let text = get_text(http, url).await?;
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}"))
}

// ----- time and /proc helpers -----

async fn sleep_until(t: Timestamp) {
    let d = since(t, clock::now());
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// `b − a` in microseconds (negative if `b` is earlier).
fn micros_between(a: Timestamp, b: Timestamp) -> i64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX)
}

fn read_arrival(path: &Path) -> Option<Timestamp> {
    let text = std::fs::read_to_string(path).ok()?;
    chrono::DateTime::from_timestamp_micros(text.trim().parse().ok()?)
}

/// Baseline (a): a loop checking every job at `phase + k·30 s`; the delay of a job due at
/// `due` is the time to the first tick at or after it.
fn poll_delay_micros(due: i64, phase: i64) -> i64 {
    let k = (due - phase).div_euclid(POLL_PERIOD_MICROS);
    let mut tick = phase + k * POLL_PERIOD_MICROS;
    if tick < due {
        tick += POLL_PERIOD_MICROS;
    }
    tick - due
}

/// utime + stime of `pid`, in ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A numeric field of `/proc/<pid>/status` (kB for the Vm*/Rss* ones).
fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Voluntary and involuntary context switches of all of `pid`'s threads.
fn proc_ctx_switches(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in status.lines() {
            let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                total.0 += num(v);
            } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                total.1 += num(v);
            }
        }
    }
    Some(total)
}

fn proc_fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Open fds of `pid` by kind (`pidfd`, `socket`, `pipe`, `file`, other anon inodes), as text.
fn proc_fd_kinds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "?".into();
    };
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for e in dir.flatten() {
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let kind = if target.starts_with("socket:") {
            "socket".to_owned()
        } else if target.starts_with("pipe:") {
            "pipe".to_owned()
        } else if let Some(a) = target.strip_prefix("anon_inode:") {
            a.trim_matches(|c| c == '[' || c == ']').to_owned()
        } else {
            "file".to_owned()
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The enforcement-delay histogram and step counters of `/metrics`, in one line.
fn summarize_metrics(text: &str) -> String {
    let mut buckets = Vec::new();
    let (mut count, mut sum) = (0.0, 0.0);
    let mut steps = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("jobwarden_enforcement_delay_seconds_bucket{le=\"")
            && let Some((le, v)) = rest.split_once("\"} ")
        {
            buckets.push((le.to_owned(), v.trim().parse::<f64>().unwrap_or(0.0)));
        } else if let Some(v) = line.strip_prefix("jobwarden_enforcement_delay_seconds_count ") {
            count = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("jobwarden_enforcement_delay_seconds_sum ") {
            sum = v.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("jobwarden_escalation_steps_total{action=\"")
            && let Some((a, v)) = rest.split_once("\"} ")
            && v.trim() != "0"
        {
            steps.push(format!("{a} {}", v.trim()));
        }
    }
    let mut out = format!("steps: {}; observations {count}", steps.join(", "));
    if count > 0.0 {
        let _ = write!(out, ", mean {}", fmt_ms(Some(sum / count * 1e3)));
        let q = |p: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= p * count)
                .map(|(le, _)| le.clone())
                .unwrap_or_default()
        };
        let _ = write!(
            out,
            ", p50 ≤ {} s, p99 ≤ {} s; per bucket (le s: n)",
            q(0.5),
            q(0.99)
        );
        let mut prev = 0.0;
        for (le, c) in &buckets {
            if *c > prev {
                let _ = write!(out, " {le}: {}", c - prev);
            }
            prev = *c;
        }
    }
    out
}

// ----- statistics and the report -----

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{:.1} s", v / 1e3),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
    }
}

fn fmt_ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("×{:.0}", a / b),
        _ => "n/a".into(),
    }
}

fn fmt_ratio2(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("×{:.1}", a / b),
        _ => "n/a".into(),
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn report(
    command_line: &str,
    o: &Opts,
    env: &Environment,
    floor: &[f64],
    seed: u64,
    results: &[RunResult],
    failure: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Enforcement benchmark\n");
    let _ = writeln!(s, "Command: `{command_line}`  ");
    let _ = writeln!(
        s,
        "Window {}, warn_before {}, grace {}, {} submissions in flight, idle sample {}, 30 s poll pooled over {POLL_PHASES} random phases (seed {seed}).  ",
        o.window, o.warn_before, GRACE, o.concurrency, o.idle
    );
    for l in &env.lines {
        let _ = writeln!(s, "{l}  ");
    }
    let _ = writeln!(
        s,
        "\nDelay = SIGTERM arrival in the job's process − the job's deadline (due time of soft_kill).\n"
    );
    let floor_med = pct(floor, 0.5);
    let _ = writeln!(
        s,
        "| N | median | p99 | max | 30s-poll median/p99 | ratio p99 (poll/jobwarden) | timeout(1) floor median | daemon CPU idle % | daemon peak RSS | RSS/job |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let p99 = pct(&r.delays_ms, 0.99);
        let poll_p99 = pct(&r.poll_ms, 0.99);
        let per_job_kb = r.rss_idle_kb.saturating_sub(r.rss_base_kb) as f64 / r.n as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {:.1} KB |",
            r.n,
            fmt_ms(pct(&r.delays_ms, 0.5)),
            fmt_ms(p99),
            fmt_ms(r.delays_ms.last().copied()),
            fmt_ms(pct(&r.poll_ms, 0.5)),
            fmt_ms(poll_p99),
            fmt_ratio(poll_p99, p99),
            fmt_ms(floor_med),
            r.idle_cpu_pct
                .map(|c| format!("{c:.2} %"))
                .unwrap_or_else(|| "n/a".into()),
            mb(r.hwm_final_kb),
            per_job_kb
        );
    }
    let _ = writeln!(
        s,
        "\ntimeout(1) floor over {} runs: median {}, p99 {}, max {} (spawn + 1 s → arrival; includes timeout(1)'s own exec).",
        floor.len(),
        fmt_ms(floor_med),
        fmt_ms(pct(floor, 0.99)),
        fmt_ms(floor.last().copied())
    );
    let _ = writeln!(s, "\n### Ratios\n");
    let _ = writeln!(
        s,
        "| N | median / floor median | p99 / floor p99 | max / floor max | poll median / median | poll p99 / p99 | poll max / max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in results {
        let d = &r.delays_ms;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            fmt_ratio2(pct(d, 0.5), floor_med),
            fmt_ratio2(pct(d, 0.99), pct(floor, 0.99)),
            fmt_ratio2(d.last().copied(), floor.last().copied()),
            fmt_ratio(pct(&r.poll_ms, 0.5), pct(d, 0.5)),
            fmt_ratio(pct(&r.poll_ms, 0.99), pct(d, 0.99)),
            fmt_ratio(r.poll_ms.last().copied(), d.last().copied()),
        );
    }
    let _ = writeln!(s, "\n### Details\n");
    for r in results {
        let _ = writeln!(s, "**N = {}**  ", r.n);
        let _ = writeln!(
            s,
            "- submitted {} ({} failed{}) in {:.1} s = {:.0} jobs/s; lead {:.1} s; deadlines spread over {:.2} s; {} deadline(s) fell before the last submission finished",
            r.submitted,
            r.submit_failures,
            r.first_submit_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            r.submit_secs,
            r.submit_rate,
            r.lead_secs,
            r.span_secs,
            r.overlap
        );
        let _ = writeln!(
            s,
            "- arrivals {} of {}{}; outcomes {}",
            r.delays_ms.len(),
            r.submitted,
            if r.missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}: {}", r.missing_count, r.missing.join("; "))
            },
            r.outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let stats = |v: &[f64]| {
            format!(
                "min {} median {} p99 {} max {}",
                fmt_ms(v.first().copied()),
                fmt_ms(pct(v, 0.5)),
                fmt_ms(pct(v, 0.99)),
                fmt_ms(v.last().copied())
            )
        };
        let _ = writeln!(s, "- delay deadline → arrival: {}", stats(&r.delays_ms));
        let _ = writeln!(
            s,
            "- largest delays (ms @ due time, s after the first deadline): {}",
            r.worst
                .iter()
                .map(|(d, at)| format!("{d:.1} @ {at:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "- daemon's soft_kill step, due → taken (`steps[].at − due_at`): {}",
            stats(&r.daemon_ms)
        );
        let _ = writeln!(
            s,
            "- step taken → arrival (store write, kill(2), probe wake-up): {}",
            stats(&r.after_step_ms)
        );
        let early = r.after_step_ms.iter().filter(|d| **d < 0.0).count();
        if early > 0 {
            let _ = writeln!(
                s,
                "- **{early} arrival(s) came before the daemon's soft_kill step was taken**: SIGTERM was sent by an earlier step (e.g. warn)"
            );
        }
        let _ = writeln!(
            s,
            "- 30 s poll, same due times, pooled over {POLL_PHASES} random phases: {}",
            stats(&r.poll_ms)
        );
        let _ = writeln!(
            s,
            "- daemon CPU idle (all {} jobs waiting, none due, {:.1} s sample): {}; during the window: {:.2} s CPU over {:.1} s wall ({:.0} % of one core)",
            r.submitted,
            r.idle_secs,
            r.idle_cpu_pct
                .map(|c| format!("{c:.2} %"))
                .unwrap_or_else(|| "not measured (lead too short)".into()),
            r.window_cpu_secs,
            r.window_wall_secs,
            if r.window_wall_secs > 0.0 {
                r.window_cpu_secs / r.window_wall_secs * 100.0
            } else {
                0.0
            }
        );
        if let Some((v, i)) = r.window_ctx {
            let _ = writeln!(
                s,
                "- daemon context switches during the window (all threads): {v} voluntary + {i} involuntary = {:.1} per job",
                (v + i) as f64 / r.submitted.max(1) as f64
            );
        }
        let _ = writeln!(
            s,
            "- daemon memory: RSS {} before jobs, {} with all jobs waiting ({:.1} KB/job); VmHWM {} before `GET /v1/jobs`, {} after it; {} threads",
            mb(r.rss_base_kb),
            mb(r.rss_idle_kb),
            r.rss_idle_kb.saturating_sub(r.rss_base_kb) as f64 / r.n as f64,
            mb(r.hwm_before_list_kb),
            mb(r.hwm_final_kb),
            r.threads_idle
        );
        let _ = writeln!(
            s,
            "- daemon fds: {} before jobs ({}), {} with all jobs waiting ({}; sockets include the bench's pooled HTTP connections): {:.2} per job",
            r.fds_base,
            r.fd_kinds_base,
            r.fds_idle,
            r.fd_kinds_idle,
            r.fds_idle.saturating_sub(r.fds_base) as f64 / r.n as f64
        );
        let _ = writeln!(
            s,
            "- one probe process (median of ≤ 21 sampled): VmRSS {} KB, RssAnon {} KB",
            r.probe_rss_kb
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            r.probe_anon_kb
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(s, "- daemon /metrics: {}", r.metrics);
        if r.leftovers_killed > 0 {
            let _ = writeln!(
                s,
                "- {} probe(s) still running at the end were killed",
                r.leftovers_killed
            );
        }
        let _ = writeln!(s);
    }
    if let Some(f) = failure {
        let _ = writeln!(s, "**Stopped:** {f}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delay_is_time_to_next_tick() {
        assert_eq!(poll_delay_micros(0, 0), 0);
        assert_eq!(poll_delay_micros(1, 0), POLL_PERIOD_MICROS - 1);
        assert_eq!(poll_delay_micros(10_000_000, 25_000_000), 15_000_000);
        assert_eq!(poll_delay_micros(26_000_000, 25_000_000), 29_000_000);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), Some(50.0));
        assert_eq!(pct(&v, 0.99), Some(99.0));
        assert_eq!(pct(&v, 1.0), Some(100.0));
        assert_eq!(pct(&[], 0.5), None);
    }

    #[test]
    fn metrics_summary_reads_the_histogram() {
        let text = "jobwarden_escalation_steps_total{action=\"soft_kill\"} 2\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"0.001\"} 1\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"0.0025\"} 2\n\
                    jobwarden_enforcement_delay_seconds_bucket{le=\"+Inf\"} 2\n\
                    jobwarden_enforcement_delay_seconds_sum 0.003\n\
                    jobwarden_enforcement_delay_seconds_count 2\n";
        let s = summarize_metrics(text);
        assert!(
            s.contains("soft_kill 2") && s.contains("p99 ≤ 0.0025 s") && s.contains("0.001: 1"),
            "{s}"
        );
    }
}
