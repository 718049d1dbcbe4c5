//! Kubernetes enforcement delay (`cargo bench -p jobwarden --bench k8s_enforcement`): how long
//! after its due time each step's API call reaches the API server.
//!
//! N running Jobs (default 100 and 1,000; `-- --jobs 100,1000,3000`) are served by the
//! stateful fake API server of the tests (tests/k8s_support/fake.rs, in-process as kube's
//! `Client` service: list, watch, patch, Events) to the real controller with a real
//! Reconciler on a SQLite file. Their `status.startTime` (whole seconds, as the API server
//! sets it) and timeouts put the warnings and soft kills on the whole seconds of a 10 s window,
//! N/10 per second: the bursts a real cluster's whole-second start times produce. For each Job
//! the delay is from the step's due time to the arrival at the fake of its call: the
//! `TimeoutWarning` Event for warn, the Job PATCH for soft_kill. Issue 18's target: p99 ≤ 100 ms
//! at 3,000 Jobs, ≤ 250 ms at 10,000. The reconciler posts the Events that accompany kill steps
//! in the background, as `jobwarden run` does. Beside the figures: the process's CPU over the
//! run and, of it, the fake API server's own ([`Fake::busy`]), which a real API server spends
//! on other machines.
//!
//! The baseline, computed over the same due times: the seed's design, a loop that lists every
//! 30 s and acts on what is overdue (its phase against the due times is uniform; a fixed seed).
//! A `harness = false` program: medians and p99 per N, and the ratio of the baseline's p99 to
//! ours from the same run.

#[path = "../tests/k8s_support/mod.rs"]
mod k8s_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use jobwarden::config::{Config, WarnBefore};
use jobwarden::duration::Dur;
use jobwarden::kubernetes::controller;
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{Timestamp, add, sub};
use jobwarden::runtime::kubernetes::actions::Actions;
use jobwarden::store::Store;
use k8s_support::fake::{Fake, k8s_time};
use serde_json::json;

/// Seconds between the start of a run and the first due time (listing, warming up).
const LEAD: u64 = 5;
/// The due times cover this many whole seconds.
const WINDOW: u64 = 10;
/// The seed's polling interval.
const POLL: f64 = 30.0;

fn t0() -> Timestamp {
    "2026-11-28T10:30:00Z".parse().expect("ts")
}

fn job(i: usize, start: Timestamp, timeout_secs: u64) -> serde_json::Value {
    let mut j = k8s_support::job_json();
    let name = format!("bench-{i:05}");
    let uid = format!("00000000-0000-4000-8000-{i:012}");
    let id = format!("j-{i:05}");
    j["metadata"]["name"] = name.clone().into();
    j["metadata"]["uid"] = uid.clone().into();
    j["metadata"]["labels"]["job-id"] = id.clone().into();
    j["metadata"]["creationTimestamp"] = k8s_time(start).into();
    j["metadata"]["annotations"] = json!({
        "flowforge.io/timeout-seconds": timeout_secs.to_string(),
        "flowforge.io/grace-period-seconds": "30",
    });
    j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] = uid.clone().into();
    j["spec"]["template"]["metadata"]["labels"]["job-id"] = id.into();
    j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] = name.into();
    j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = uid.into();
    j["status"]["startTime"] = k8s_time(start).into();
    j
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

/// The seed's loop over the same due times: it acts at the first poll at or after each.
fn poll_baseline(dues: &[f64], seed: u64) -> Vec<f64> {
    // A fixed linear-congruential phase: reproducible without a dependency.
    let phase = (seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 11) as f64
        / (1u64 << 53) as f64
        * POLL;
    let mut v: Vec<f64> = dues
        .iter()
        .map(|d| {
            let k = ((d - phase) / POLL).ceil();
            phase + k * POLL - d
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

struct Figures {
    warn: Vec<f64>,
    soft_kill: Vec<f64>,
    missing: usize,
    elapsed: Duration,
    /// The process's CPU (user + system) from the start of the controller to the end.
    cpu: Duration,
    /// Of it, the fake API server's own handling ([`Fake::busy`]).
    fake_busy: Duration,
}

/// This process's CPU time so far (user + system, from /proc/self/stat; 10 ms ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

async fn run(n: usize) -> Figures {
    let started = Instant::now();
    let clock = move || add(t0(), started.elapsed());
    let fake = Fake::new(clock);
    // Start times are whole seconds; soft kill due at T0 + LEAD + (i mod WINDOW), warning 2 s
    // before it.
    let start = sub(t0(), Duration::from_secs(3600));
    let mut due: HashMap<String, Timestamp> = HashMap::new();
    for i in 0..n {
        let timeout = 3600 + LEAD + (i as u64 % WINDOW);
        let j = job(i, start, timeout);
        due.insert(
            j["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            add(start, Duration::from_secs(timeout)),
        );
        fake.insert(j);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("sqlite://{}/jobwarden.db", dir.path().display()))
        .await
        .expect("store");
    let mut config = Config::default();
    config.policy.warn_before = WarnBefore::One(Dur::secs(2));
    let client = fake.client();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let reconciler = Reconciler::new(
        config,
        store,
        Actions::new(client.clone(), scope, false, "bench-0"),
    )
    .with_background_events();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (_leading, leading_rx) = tokio::sync::watch::channel(true);
    let task = tokio::spawn(controller::run(
        client,
        "job-id".into(),
        reconciler,
        Arc::new(AtomicBool::new(false)),
        leading_rx,
        stop_rx,
        clock,
    ));
    // Until every soft kill arrived, or well after the last was due.
    let deadline = Duration::from_secs(LEAD + WINDOW + 20);
    let cpu_before = process_cpu();
    let busy_before = fake.busy();
    loop {
        // Counted in place: copying every request every 100 ms would hold the fake's lock
        // (and its CPU) long enough at 10,000 Jobs to show in the figures.
        let patched = fake.count_requests(|r| r.method == "PATCH" && r.path.contains("/jobs/"));
        if patched >= n || started.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    let _ = task.await;
    let cpu = process_cpu().saturating_sub(cpu_before);
    let fake_busy = fake.busy().saturating_sub(busy_before);
    let (mut warn, mut soft_kill) = (Vec::new(), Vec::new());
    let mut seen_warn = std::collections::HashSet::new();
    let mut seen_kill = std::collections::HashSet::new();
    for (at, r) in fake.timed_requests() {
        if r.method == "PATCH" && r.path.contains("/jobs/") {
            let path = r.path.split('?').next().unwrap_or_default();
            let name = path.rsplit('/').next().unwrap_or_default().to_owned();
            if let Some(d) = due.get(&name)
                && seen_kill.insert(name)
            {
                soft_kill.push(secs(at - *d));
            }
        } else if r.method == "POST"
            && r.path.contains("/events")
            && r.body["reason"] == "TimeoutWarning"
        {
            let name = r.body["regarding"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if let Some(d) = due.get(&name)
                && seen_warn.insert(name)
            {
                warn.push(secs(at - sub(*d, Duration::from_secs(2))));
            }
        }
    }
    warn.sort_by(f64::total_cmp);
    soft_kill.sort_by(f64::total_cmp);
    Figures {
        missing: (n - soft_kill.len()) + (n - warn.len()),
        cpu,
        fake_busy,
        warn,
        soft_kill,
        elapsed: started.elapsed(),
    }
}

fn main() {
    let mut jobs = vec![100usize, 1000];
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--jobs") {
        match args.get(i + 1).map(|v| {
            v.split(',')
                .map(str::parse::<usize>)
                .collect::<Result<Vec<_>, _>>()
        }) {
            Some(Ok(v)) if !v.is_empty() && v.iter().all(|n| *n > 0) => jobs = v,
            _ => {
                eprintln!(
                    "--jobs: expected a comma-separated list of positive counts, e.g. 100,1000"
                );
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("Kubernetes enforcement delay: due time -> the step's API call at the API server");
    println!(
        "| N | step | median | p99 | max | seed's 30 s poll p99 | ratio | calls missing | run | CPU (all) | fake's CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in jobs {
        let f = rt.block_on(run(n));
        for (step, v, offset) in [("warn", &f.warn, 2.0), ("soft_kill", &f.soft_kill, 0.0)] {
            let dues: Vec<f64> = (0..n)
                .map(|i| (LEAD + (i as u64 % WINDOW)) as f64 - offset)
                .collect();
            let base = poll_baseline(&dues, n as u64);
            let p99 = quantile(v, 0.99);
            println!(
                "| {n} | {step} | {} | {} | {} | {:.1} s | x{:.0} | {} | {:.1} s | {:.2} s | {:.2} s |",
                ms(quantile(v, 0.5)),
                ms(p99),
                ms(v.last().copied().unwrap_or(f64::NAN)),
                quantile(&base, 0.99),
                quantile(&base, 0.99) / p99.max(1e-6),
                f.missing,
                f.elapsed.as_secs_f64(),
                f.cpu.as_secs_f64(),
                f.fake_busy.as_secs_f64(),
            );
        }
    }
}
