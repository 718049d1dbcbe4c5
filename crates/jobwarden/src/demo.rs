//! `jobwarden demo`: a real daemon on a temporary data dir, four real jobs, a live table.
//!
//! Nothing is scripted output: the jobs are shell processes, the ladder's signals are real,
//! and the table and audit log are read back from the daemon's HTTP API.
//! 1. `finishes` exits on its own;
//! 2. `saves-work` traps SIGTERM, writes `saved.txt` in its workspace and exits;
//! 3. `ignores-term` ignores SIGTERM and is SIGKILLed after its grace;
//! 4. `capped` asks for 1h but its organisation's maximum is 4s.

use std::time::{Duration, Instant};

use crate::api_types::{JobView, SubmitRequest};
use crate::cli::{Client, ServerArgs};
use crate::config::Config;
use crate::duration::Dur;
use crate::model::AuditEntry;

const CONFIG: &str = r#"
[policy]
global_default = "2h"
grace_period = "2s"
warn_before = "1s"
[policy.organization_max]
acme = "4s"
[retention]
successful = "1h"
failed = "1h"
terminated = "1h"
"#;

/// Runs the demo.
pub async fn run() -> crate::Result<()> {
    let dir = tempfile_dir()?;
    let config = Config::parse(CONFIG, "<demo config>")?;
    let data_dir = dir.join("data");
    let opts = crate::daemon::DaemonOptions {
        config,
        store_url: format!("sqlite://{}", data_dir.join("jobwarden.db").display()),
        artifacts_url: format!("file://{}", data_dir.join("artifacts").display()),
        data_dir: data_dir.clone(),
        listen: ([127, 0, 0, 1], 0).into(),
        dry_run: false,
        token: None,
    };
    let running = crate::daemon::start(opts).await?;
    let server = ServerArgs {
        server: format!("http://{}", running.addr),
    };
    println!(
        "jobwarden demo: daemon on {} with data in {}",
        server.server,
        data_dir.display()
    );
    println!(
        "policy: warn 1s before the deadline, SIGTERM at the deadline, SIGKILL 2s later; org acme max 4s\n"
    );
    let client = Client::new(&server)?;
    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let jobs = [
        (
            "finishes",
            sh("echo working; sleep 1; echo done"),
            Some(10),
            None,
        ),
        (
            "saves-work",
            sh(
                "trap 'echo \"progress saved at SIGTERM\" > saved.txt; exit 0' TERM; while :; do sleep 0.1; done",
            ),
            Some(3),
            None,
        ),
        (
            "ignores-term",
            sh("trap '' TERM; while :; do sleep 0.1; done"),
            Some(3),
            None,
        ),
        (
            "capped",
            vec!["sleep".into(), "3600".into()],
            Some(3600),
            Some("acme"),
        ),
    ];
    let mut ids = Vec::new();
    for (name, command, timeout, org) in jobs {
        let req = SubmitRequest {
            command,
            name: Some(name.into()),
            org: org.map(Into::into),
            timeout: timeout.map(Dur::secs),
            ..SubmitRequest::default()
        };
        let job: JobView = client.post("/v1/jobs", &req).await?;
        ids.push(job.id.clone());
    }
    let started = Instant::now();
    let mut done = false;
    while !done && started.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let jobs: Vec<JobView> = client.get("/v1/jobs").await?;
        done = jobs.iter().all(|j| j.finished_at.is_some());
        println!("t+{:>4.1}s", started.elapsed().as_secs_f64());
        print!("{}", crate::cli::jobs_table(&jobs, crate::clock::now()));
        println!();
    }
    let saved = data_dir.join("workspaces").join(&ids[1]).join("saved.txt");
    match std::fs::read_to_string(&saved) {
        Ok(s) => println!("saves-work wrote {}: {}", saved.display(), s.trim()),
        Err(e) => println!("saves-work left no file ({}: {e})", saved.display()),
    }
    let rows: Vec<AuditEntry> = client.get("/v1/audit").await?;
    println!("\naudit log ({} rows):", rows.len());
    for r in rows {
        let name = ids
            .iter()
            .position(|i| *i == r.job_id)
            .map(|i| ["finishes", "saves-work", "ignores-term", "capped"][i])
            .unwrap_or("?");
        println!(
            "  {}  {:<13} {:<12} {}",
            crate::model::fmt_ts(r.timestamp),
            name,
            r.action.as_str(),
            r.reason
        );
    }
    let _ = running.shutdown.send(true);
    let _ = running.done.await;
    let _ = std::fs::remove_dir_all(&dir);
    if !done {
        return Err(crate::Error::Timeout {
            what: "the demo's jobs finishing".into(),
            secs: 45,
        });
    }
    Ok(())
}

fn tempfile_dir() -> crate::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("jobwarden-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::file(&dir, e))?;
    Ok(dir)
}
