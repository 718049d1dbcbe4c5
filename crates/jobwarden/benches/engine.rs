//! Scheduler and engine benchmarks (`cargo bench --bench engine`).
//!
//! 1. Scheduler: 1,000,000 deadlines — insert all, re-arm all (half earlier, half later),
//!    pop all due — median of 5 runs, and the process's peak RSS.
//! 2. Engine: 1,000,000 tracked jobs — `decide` for every job plus arming the scheduler with
//!    the returned wake-up; then one tick where 1% of the jobs are due, against the baseline
//!    design (the seed's 30 s polling loop, which calls the decision for every job per tick).
//!
//! A plain `harness = false` program: each figure is a median over repeated runs measured
//! with a monotonic clock, printed with the ratio against its baseline from the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::engine::decide::{Policy, decide};
use jobwarden::engine::recovery::Diagnosis;
use jobwarden::model::{JobId, JobRecord, RuntimeKind, Stage, Timestamp, add};
use jobwarden::scheduler::Scheduler;

const N: usize = 1_000_000;
const RUNS: usize = 5;

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("timestamp")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn job(i: usize, start: Timestamp) -> JobRecord {
    let timeout = Duration::from_secs(3600 + (i as u64 % 7200));
    JobRecord {
        id: JobId::parse(&format!("job-{i:08}")).expect("id"),
        run_id: format!("run-{i}"),
        attempt: 0,
        runtime: RuntimeKind::Local,
        namespace: None,
        name: format!("job-{i}"),
        org: None,
        job_type: None,
        stage: Stage::Running,
        outcome: None,
        reason: None,
        created_at: start,
        started_at: Some(start),
        finished_at: None,
        timeout,
        grace: Duration::from_secs(300),
        ttl: None,
        deadline: Some(add(start, timeout)),
        steps: vec![],
        heartbeat_timeout: None,
        last_heartbeat: None,
        recovery_attempts: 0,
        pid: None,
        pid_start_ticks: None,
        exit_code: None,
        signal: None,
        spec: serde_json::Value::Null,
        dry_run: false,
    }
}

fn bench_scheduler() {
    let base = t0();
    let deadlines: Vec<Timestamp> = (0..N)
        .map(|i| add(base, Duration::from_millis((i as u64 * 7919) % 86_400_000)))
        .collect();
    let (mut ins, mut rearm, mut pop, mut total) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let mut s: Scheduler<u32> = Scheduler::new();
        let a = Instant::now();
        for (i, d) in deadlines.iter().enumerate() {
            s.arm(i as u32, *d);
        }
        let b = Instant::now();
        for (i, d) in deadlines.iter().enumerate() {
            let shift = Duration::from_secs(600);
            let at = if i % 2 == 0 {
                jobwarden::model::sub(*d, shift)
            } else {
                add(*d, shift)
            };
            s.arm(i as u32, at);
        }
        let c = Instant::now();
        let popped = s.pop_due(add(base, Duration::from_secs(2 * 86_400)), usize::MAX);
        let d = Instant::now();
        assert_eq!(popped.len(), N);
        black_box(popped);
        ins.push(b - a);
        rearm.push(c - b);
        pop.push(d - c);
        total.push(d - a);
    }
    println!("scheduler, {N} deadlines (u32 keys), median of {RUNS}:");
    println!(
        "  insert all        {:>8.1} ms",
        median(ins).as_secs_f64() * 1e3
    );
    println!(
        "  re-arm all        {:>8.1} ms  (half earlier, half later)",
        median(rearm).as_secs_f64() * 1e3
    );
    println!(
        "  pop all due       {:>8.1} ms",
        median(pop).as_secs_f64() * 1e3
    );
    println!(
        "  total             {:>8.1} ms  (target < 1000 ms)",
        median(total).as_secs_f64() * 1e3
    );
    println!(
        "  peak RSS so far   {:>8.1} MB  (target < 200 MB)",
        peak_rss_mb()
    );
}

fn bench_engine() {
    let policy = Policy::from_config(&Config::default());
    let base = t0();
    let jobs: Vec<JobRecord> = (0..N).map(|i| job(i, base)).collect();
    let rss_jobs = peak_rss_mb();
    // Arm everything from decide().
    let mut arm_runs = vec![];
    let mut sched: Scheduler<u32> = Scheduler::new();
    for _ in 0..RUNS {
        sched = Scheduler::new();
        let a = Instant::now();
        for (i, j) in jobs.iter().enumerate() {
            let (d, wake) = decide(j, &Diagnosis::Healthy, &policy, base);
            black_box(&d);
            sched.set(i as u32, wake);
        }
        arm_runs.push(a.elapsed());
    }
    // One tick at a time when ~1% of jobs are due: event-driven pops just those; the seed's
    // polling loop decides for every job.
    let now = add(base, Duration::from_secs(3000 + 72));
    let mut ev_runs = vec![];
    let mut poll_runs = vec![];
    for _ in 0..RUNS {
        let mut s = sched.clone();
        let a = Instant::now();
        let due = s.pop_due(now, usize::MAX);
        let mut acted = 0usize;
        for (i, _) in &due {
            let (d, wake) = decide(&jobs[*i as usize], &Diagnosis::Healthy, &policy, now);
            if !matches!(d, jobwarden::engine::Decision::Nothing) {
                acted += 1;
            }
            s.set(*i, wake.or(Some(now)));
        }
        ev_runs.push(a.elapsed());
        let b = Instant::now();
        let mut acted_poll = 0usize;
        for j in &jobs {
            let (d, _) = decide(j, &Diagnosis::Healthy, &policy, now);
            if !matches!(d, jobwarden::engine::Decision::Nothing) {
                acted_poll += 1;
            }
        }
        poll_runs.push(b.elapsed());
        assert_eq!(
            acted, acted_poll,
            "both designs must find the same due work"
        );
        black_box((acted, due.len()));
    }
    let arm = median(arm_runs);
    let ev = median(ev_runs);
    let poll = median(poll_runs);
    println!("engine, {N} tracked jobs, median of {RUNS}:");
    println!(
        "  decide + arm all  {:>8.1} ms  ({:.0} ns per job)",
        arm.as_secs_f64() * 1e3,
        arm.as_secs_f64() * 1e9 / N as f64
    );
    println!(
        "  tick, 1% due: event-driven {:>8.2} ms vs polling every job {:>8.1} ms  (polling / event-driven = {:.0}x)",
        ev.as_secs_f64() * 1e3,
        poll.as_secs_f64() * 1e3,
        poll.as_secs_f64() / ev.as_secs_f64()
    );
    println!(
        "  peak RSS          {:>8.1} MB  ({:.1} MB of it the 1M job records)",
        peak_rss_mb(),
        rss_jobs
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: run a reduced check then.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    bench_scheduler();
    bench_engine();
}
