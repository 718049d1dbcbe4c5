//! jobwarden-init: the in-container supervisor. See README.md beside Cargo.toml.
//!
//! `main` parses and checks the configuration (exit 2 on any problem, before the command
//! starts), runs the supervisor on a current-thread runtime, prints the JSON summary on stdout
//! and exits with the command's status.

mod child;
mod cli;
mod clock;
mod duration;
mod error;
mod heartbeat;
mod job_id;
mod save;
mod supervise;
mod timing;

use std::io::Write;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};

fn main() {
    std::process::exit(match run() {
        Ok(code) => code,
        Err(err) => match err.downcast_ref::<error::Error>() {
            // Our errors already say what caused them.
            Some(ours) => {
                eprintln!("jobwarden-init: {ours}");
                ours.exit_code()
            }
            None => {
                eprintln!("jobwarden-init: {err:#}");
                2
            }
        },
    })
}

fn run() -> anyhow::Result<i32> {
    // Usage errors print clap's message and exit 2; --help and --version exit 0.
    let matches = cli::Args::command().get_matches();
    let args = cli::Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut config = cli::Config::from_matches(args, &matches, clock::now())?;
    config.check_paths()?;
    for warning in &config.warnings {
        eprintln!("jobwarden-init: warning: {warning}");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(supervise::run(config));
    // Do not wait for a blocking task (an archive being written) that a save left behind.
    runtime.shutdown_background();
    let summary = summary?;

    let json = serde_json::to_string(&summary).context("writing the summary")?;
    let mut stdout = std::io::stdout().lock();
    // The job's exit status matters more than a closed stdout: ignore write errors here.
    let _ = writeln!(stdout, "{json}");
    let _ = stdout.flush();
    Ok(summary.exit_code)
}
