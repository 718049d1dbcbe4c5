//! One measured run for one N: start a fresh daemon, submit N probe jobs whose deadlines fall
//! due over the window, sample the daemon idle and during the window, collect the SIGTERM
//! arrivals and the daemon's own view ([`run_one`], [`RunCtx`] in, [`RunResult`] out).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jobwarden::api_types::{JobView, SubmitRequest};
use jobwarden::clock;
use jobwarden::duration::Dur;
use jobwarden::model::{Step, Timestamp, add};

use crate::Opts;
use crate::baseline::poll_delay_micros;
use crate::daemon::{DaemonRun, get_json, get_text, is_our_probe, wait_listening};
use crate::metrics::summarize_metrics;
use crate::probe::{ARRIVAL_FILE, read_arrival};
use crate::procfs::{
    USER_HZ, pid_headroom, proc_cpu_ticks, proc_ctx_switches, proc_fd_count, proc_fd_kinds,
    proc_status_kb,
};
use crate::report::{fmt_ms, pct};
use crate::timing::{micros_between, sleep_until};

/// Grace given to every job: far beyond the window, so SIGKILL never comes into it.
pub(crate) const GRACE: Dur = Dur::secs(3600);

pub(crate) struct RunCtx<'a> {
    pub(crate) opts: &'a Opts,
    pub(crate) n: usize,
    pub(crate) daemon_exe: &'a Path,
    pub(crate) exe: &'a Path,
    pub(crate) dir: PathBuf,
    pub(crate) token: &'a str,
    pub(crate) http: &'a reqwest::Client,
    pub(crate) rate_est: f64,
    pub(crate) poll_phases: Vec<i64>,
}

/// A job as submitted.
struct Submitted {
    id: String,
    deadline: Option<Timestamp>,
}

/// What one N measured.
#[derive(Default)]
pub(crate) struct RunResult {
    pub(crate) n: usize,
    pub(crate) submitted: usize,
    pub(crate) submit_failures: usize,
    pub(crate) first_submit_error: Option<String>,
    pub(crate) submit_secs: f64,
    pub(crate) submit_rate: f64,
    pub(crate) lead_secs: f64,
    pub(crate) span_secs: f64,
    /// Jobs whose deadline fell before the last submission finished.
    pub(crate) overlap: usize,
    /// SIGTERM delay per job (ms), sorted.
    pub(crate) delays_ms: Vec<f64>,
    /// Jobs without an arrival file (first few ids).
    pub(crate) missing: Vec<String>,
    pub(crate) missing_count: usize,
    /// soft_kill step: `at − due_at` as the daemon recorded it (ms), sorted.
    pub(crate) daemon_ms: Vec<f64>,
    /// Arrival − the soft_kill step's `at` (ms): store write, kill(2), wake-up; sorted.
    pub(crate) after_step_ms: Vec<f64>,
    /// 30 s poll baseline delays (ms) over the same due times, pooled over
    /// [`crate::baseline::POLL_PHASES`] random phases; sorted.
    pub(crate) poll_ms: Vec<f64>,
    /// Daemon context switches (voluntary, involuntary) during the window, all threads.
    pub(crate) window_ctx: Option<(u64, u64)>,
    pub(crate) outcomes: Vec<(String, usize)>,
    pub(crate) idle_cpu_pct: Option<f64>,
    pub(crate) idle_secs: f64,
    pub(crate) window_cpu_secs: f64,
    pub(crate) window_wall_secs: f64,
    pub(crate) rss_base_kb: u64,
    pub(crate) rss_idle_kb: u64,
    pub(crate) hwm_before_list_kb: u64,
    pub(crate) hwm_final_kb: u64,
    pub(crate) fds_base: usize,
    pub(crate) fds_idle: usize,
    pub(crate) fd_kinds_base: String,
    pub(crate) fd_kinds_idle: String,
    pub(crate) threads_idle: u64,
    /// The five largest delays: (ms, due offset from the first deadline in s).
    pub(crate) worst: Vec<(f64, f64)>,
    pub(crate) probe_rss_kb: Option<u64>,
    pub(crate) probe_anon_kb: Option<u64>,
    pub(crate) metrics: String,
    pub(crate) leftovers_killed: usize,
}

pub(crate) async fn run_one(ctx: RunCtx<'_>) -> Result<RunResult, String> {
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
