//! Scheduler and engine benchmarks (`cargo bench --bench engine`).
//!
//! 1. Scheduler: 1,000,000 deadlines — insert all, re-arm all (half earlier, half later),
//!    pop all due — median of 5 runs, and the process's peak RSS.
//! 2. Engine: 1,000,000 tracked jobs held as the local daemon holds them (its enforcer's
//!    compact table, [`Tracked`]) — the compact → record conversion, `decide` for every job
//!    plus arming the table's deadline heap with the returned wake-up; then one tick where 1%
//!    of the jobs are due, against the baseline design (the seed's 30 s polling loop, which
//!    calls the decision for every job per tick), and the peak RSS of this section alone.
//!
//! A plain `harness = false` program: each figure is a median over repeated runs measured
//! with a monotonic clock, printed with the ratio against its baseline from the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::daemon::enforcer::tracked::{Tracked, ulid_text};
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
        id: bench_id(i),
        run_id: ulid_text((1_800_000_000_001u128 << 80) | i as u128),
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

/// The id of bench job `i`: a lowercase ULID, as the daemon makes them (time part nonzero).
fn bench_id(i: usize) -> JobId {
    let bits = (1_800_000_000_000u128 << 80) | i as u128;
    JobId::parse(&ulid_text(bits)).expect("id")
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so the engine's figure is its
/// own and not the scheduler section's.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset VmHWM ({e}): the engine's peak includes the scheduler's");
    }
}

fn bench_engine() {
    let policy = Policy::from_config(&Config::default());
    let base = t0();
    reset_peak_rss();
    let rss_before = peak_rss_mb();
    // What the daemon holds per tracked job: the local enforcer's table, filled as the
    // daemon fills it (one record at a time, converted to the compact form).
    let mut tracked = Tracked::new();
    for i in 0..N {
        tracked.insert(job(i, base));
    }
    assert_eq!(tracked.held_whole(), 0, "every bench job is held compact");
    let rss_jobs = peak_rss_mb();
    // Compact → record, the conversion the enforcer makes before planning.
    let mut get_runs = vec![];
    for _ in 0..RUNS {
        let a = Instant::now();
        for i in 0..N {
            black_box(tracked.get(&bench_id(i)));
        }
        get_runs.push(a.elapsed());
    }
    // Decide (on the rebuilt record) for every job and arm the table's own deadline heap.
    let mut arm_runs = vec![];
    for _ in 0..RUNS {
        let a = Instant::now();
        for i in 0..N {
            let id = bench_id(i);
            let j = tracked.get(&id).expect("tracked");
            let (d, wake) = decide(&j, &Diagnosis::Healthy, &policy, base);
            black_box(&d);
            tracked.set(&id, wake);
        }
        arm_runs.push(a.elapsed());
    }
    // One tick at a time when ~1% of jobs are due: event-driven pops just those; the seed's
    // polling loop decides for every job.
    let now = add(base, Duration::from_secs(3000 + 72));
    let mut ev_runs = vec![];
    let mut poll_runs = vec![];
    for _ in 0..RUNS {
        let a = Instant::now();
        let due = tracked.pop_due(now, usize::MAX);
        let mut acted = 0usize;
        for (id, _) in &due {
            let j = tracked.get(id).expect("tracked");
            let (d, wake) = decide(&j, &Diagnosis::Healthy, &policy, now);
            if !matches!(d, jobwarden::engine::Decision::Nothing) {
                acted += 1;
            }
            tracked.set(id, wake.or(Some(now)));
        }
        ev_runs.push(a.elapsed());
        let b = Instant::now();
        let mut acted_poll = 0usize;
        for i in 0..N {
            let j = tracked.get(&bench_id(i)).expect("tracked");
            let (d, _) = decide(&j, &Diagnosis::Healthy, &policy, now);
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
    let get = median(get_runs);
    let arm = median(arm_runs);
    let ev = median(ev_runs);
    let poll = median(poll_runs);
    println!("engine, {N} tracked jobs (the local enforcer's table), median of {RUNS}:");
    println!(
        "  compact -> record {:>8.1} ms  ({:.0} ns per job, included in the figures below)",
        get.as_secs_f64() * 1e3,
        get.as_secs_f64() * 1e9 / N as f64
    );
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
        "  peak RSS          {:>8.1} MB  ({:.1} MB with the 1M jobs tracked, {:.1} MB before; target < 200 MB)",
        peak_rss_mb(),
        rss_jobs,
        rss_before
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
