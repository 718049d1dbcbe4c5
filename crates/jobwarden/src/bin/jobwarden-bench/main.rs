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
//!
//! This file owns the command line and the loop over N (`bench`). The other modules:
//! `probe.rs` (the hidden job subcommand and its arrival file), `run.rs` (one measured N),
//! `daemon.rs` (the daemon under test and the temporary directory), `baseline.rs` (the 30 s
//! poll and `timeout(1)` baselines), `procfs.rs` (the `/proc` readers), `environment.rs`
//! (limits and machine facts), `metrics.rs` (the `/metrics` summary), `report.rs`
//! (percentiles, formatting, the printed report) and `timing.rs` (wall-clock helpers).

mod baseline;
mod daemon;
mod environment;
mod metrics;
mod probe;
mod procfs;
mod report;
mod run;
mod timing;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jobwarden::clock;
use jobwarden::duration::Dur;
use rand::{Rng, SeedableRng};

use crate::baseline::{POLL_PERIOD_MICROS, POLL_PHASES, floor_baseline};
use crate::daemon::DirGuard;
use crate::environment::Environment;
use crate::probe::probe;
use crate::report::report;
use crate::run::{RunCtx, run_one};

/// Submission rate assumed for the first N before one was measured (jobs per second).
const INITIAL_RATE_GUESS: f64 = 50.0;

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
