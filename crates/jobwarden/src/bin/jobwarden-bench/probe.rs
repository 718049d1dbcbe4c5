//! The hidden `probe` subcommand: the job each benchmark run submits. It waits for SIGTERM,
//! writes the arrival time to [`ARRIVAL_FILE`] in its cwd and exits; [`read_arrival`] reads
//! that file back.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use jobwarden::clock;
use jobwarden::model::Timestamp;

/// The file a probe writes in its cwd when SIGTERM arrives.
pub(crate) const ARRIVAL_FILE: &str = "sigterm-arrival";

/// The job: one small process per job. A current-thread runtime with only the IO (signal) and
/// time drivers; nothing allocates while it waits.
pub(crate) fn probe(max_secs: u64) -> ExitCode {
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

pub(crate) fn read_arrival(path: &Path) -> Option<Timestamp> {
    let text = std::fs::read_to_string(path).ok()?;
    chrono::DateTime::from_timestamp_micros(text.trim().parse().ok()?)
}
