//! The web console in a real browser: Debian's Chromium (`/usr/bin/chromium`) driven by
//! Playwright for Python (`tests/console/browser.py`), both installed by the project's own
//! scripts (`scripts/tools.sh` `ensure_browser`, called by `scripts/test.sh`, which exports
//! `JOBWARDEN_CHROMIUM` and `JOBWARDEN_PLAYWRIGHT_PYTHON`). Without them the tests fail under
//! CI (`CI` or `JOBWARDEN_REQUIRE_SERVERS=1`) and are skipped loudly elsewhere.
//!
//! - `the_console_in_a_browser`: a job submitted from the CLI appears on the jobs page without
//!   a reload, its time-left bar shrinks, `soft_kill` appears on its timeline after the
//!   deadline, a second job is cancelled with the button, the reclaimed CPU of a busy loop
//!   killed by its organisation's cap is on the Reclaimed page (the same number as
//!   `jobwarden report`), and the page reconnects after a daemon restart. Screenshots of each
//!   page go to `target/console-screenshots/`.
//! - `first_paint_with_10000_jobs`: the jobs page of a store with 10,000 jobs (9,900 finished
//!   ones written to the store, 100 running ones submitted; `JOBWARDEN_FIRST_PAINT_RUNNING`
//!   sets another number of running ones) paints its first content in under a second, median
//!   of five loads (BENCHMARKS.md has the figures).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::BIN;

/// One browser test at a time: the first-paint figure must not share the cores with the story.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// (the Playwright venv's python, chromium), or None after a loud notice when they are not
/// installed and not required.
fn tools() -> Option<(String, String)> {
    let python = std::env::var("JOBWARDEN_PLAYWRIGHT_PYTHON").ok();
    let chromium = std::env::var("JOBWARDEN_CHROMIUM").ok();
    match (python, chromium) {
        (Some(p), Some(c)) if Path::new(&p).exists() && Path::new(&c).exists() => Some((p, c)),
        (p, c) => {
            let why = format!(
                "the browser test needs JOBWARDEN_PLAYWRIGHT_PYTHON ({p:?}) and JOBWARDEN_CHROMIUM ({c:?}): run `bash scripts/test.sh`, or `source scripts/tools.sh && ensure_browser` first"
            );
            if common::require_servers() {
                panic!("{why}");
            }
            eprintln!("\n!!! SKIPPED the web console's browser test: {why}\n");
            None
        }
    }
}

/// Runs `browser.py MODE` on a fresh root dir with `config`; returns its stdout (panics with
/// its output when it fails).
fn run_script(mode: &str, root: &Path, extra: &[&str]) -> String {
    let (python, chromium) = tools().expect("checked by the caller");
    let out_dir = repo_root().join("target/console-screenshots");
    let port = common::free_port().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg(mode)
        .args(["--bin", BIN, "--port", &port, "--chromium", &chromium])
        .arg("--root")
        .arg(root)
        .arg("--out")
        .arg(&out_dir)
        .args(extra)
        .env_remove("JOBWARDEN_SERVER")
        .env_remove("JOBWARDEN_TOKEN")
        .env_remove("JOBWARDEN_CONFIG")
        .env_remove("JOBWARDEN_STORE");
    let out = cmd.output().expect("running tests/console/browser.py");
    common::kill_processes_under(root);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let logs: String = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("browser-daemon-")
            })
            .map(|e| {
                format!(
                    "----- {} -----\n{}",
                    e.file_name().to_string_lossy(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect();
        panic!(
            "browser.py {mode} failed ({}):\n{stdout}\n{stderr}\n{logs}",
            out.status
        );
    }
    eprintln!("{stderr}");
    stdout
}

fn root_with(config: &str) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("jw-browser-")
        .tempdir()
        .expect("tempdir");
    std::fs::write(root.path().join("config.toml"), config).expect("config");
    root
}

const CONFIG: &str = r#"
[policy]
warn_before = "2s"
grace_period = "3s"
[policy.organization_max]
acme = "3s"
[retention]
successful = "1h"
failed = "1h"
terminated = "1h"
"#;

#[test]
fn the_console_in_a_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if tools().is_none() {
        return;
    }
    let root = root_with(CONFIG);
    run_script("story", root.path(), &[]);
    let dir = repo_root().join("target/console-screenshots");
    for page in [
        "jobs",
        "job",
        "reclaimed",
        "audit",
        "queue",
        "orphans",
        "policy",
    ] {
        let png = dir.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is no screenshot ({} bytes)",
            png.display(),
            bytes.len()
        );
    }
}

/// `n` finished jobs written straight to the store (a mix of organisations, types, stages
/// and outcomes, TTLs far away so that nothing falls due while the page is measured).
async fn fill_store(data: &Path, n: usize) {
    use jobwarden::model::{JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, StepTaken};
    std::fs::create_dir_all(data).expect("data dir");
    let url = format!("sqlite://{}", data.join("jobwarden.db").display());
    let store = jobwarden::store::Store::open(&url).await.expect("store");
    let now = jobwarden::clock::now();
    let ago = |s: i64| now - chrono::TimeDelta::seconds(s);
    for i in 0..n {
        let (stage, outcome) = match i % 4 {
            0 => (Stage::Completed, Outcome::Succeeded),
            1 => (Stage::Failed, Outcome::Terminated),
            2 => (Stage::Failed, Outcome::Failed),
            _ => (Stage::Cleaned, Outcome::Succeeded),
        };
        let started = ago(7200 + i as i64);
        let job = JobRecord {
            id: JobId::generate(started),
            run_id: format!("run-{i}"),
            attempt: 0,
            runtime: RuntimeKind::Local,
            namespace: None,
            name: format!("build-{i}"),
            org: Some(["acme", "globex", "initech", "umbrella"][i % 4].to_owned()),
            job_type: Some(["build", "test", "deploy"][i % 3].to_owned()),
            stage,
            outcome: Some(outcome),
            reason: Some("exited".into()),
            created_at: started,
            started_at: Some(started),
            finished_at: Some(ago(3600)),
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            ttl: Some(Duration::from_secs(30 * 86400)),
            deadline: Some(started + chrono::TimeDelta::seconds(3600)),
            steps: if outcome == Outcome::Terminated {
                vec![StepTaken {
                    step: Step::SoftKill,
                    due_at: ago(3600),
                    at: ago(3600),
                }]
            } else {
                vec![]
            },
            heartbeat_timeout: None,
            last_heartbeat: None,
            recovery_attempts: 0,
            pid: None,
            pid_start_ticks: None,
            exit_code: Some(0),
            signal: None,
            spec: serde_json::json!({
                "command": ["make", "test"],
                "policy": {"source": "job", "capped_by": null, "uncapped_seconds": 3600}
            }),
            dry_run: false,
        };
        store.insert_job(&job).await.expect("insert");
    }
    store.close().await;
}

#[test]
fn first_paint_with_10000_jobs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if tools().is_none() {
        return;
    }
    // 100 running jobs (JOBWARDEN_FIRST_PAINT_RUNNING: another number, for BENCHMARKS.md),
    // submitted as any job is, and the rest of 10,000 finished ones written to the store.
    let running: usize = std::env::var("JOBWARDEN_FIRST_PAINT_RUNNING")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n <= 10_000)
        .unwrap_or(100);
    let root = root_with("");
    let data = root.path().join("data");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(fill_store(&data, 10_000 - running));
    let stdout = run_script(
        "first-paint",
        root.path(),
        &["--runs", "5", "--running", &running.to_string()],
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("first-paint "))
        .unwrap_or_else(|| panic!("no first-paint line in:\n{stdout}"));
    let figure: serde_json::Value = serde_json::from_str(line).expect("JSON");
    eprintln!("first paint with 10,000 jobs: {figure}");
    assert_eq!(figure["jobs"], 10_000, "{figure}");
    assert_eq!(figure["rows_on_page"], 100, "one page of rows: {figure}");
    let median = figure["median_ms"].as_f64().expect("median");
    assert!(
        median < 1000.0,
        "first paint of the jobs page with 10,000 jobs took {median} ms (median), over the 1 s target: {figure}"
    );
}
